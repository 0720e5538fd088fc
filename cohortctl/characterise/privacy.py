"""Small-cell suppression (OHDSI / CMS style) and the helpers every report table shares.

Rules (``min_cell`` defaults to 5):

* **Primary suppression** — every non-zero count below ``min_cell`` is withheld. Zeros are shown.
* **Secondary (complementary) suppression** — a table is displayed *with* its row and column
  totals, so a single withheld cell in a row or column could be recovered as
  ``total - sum(other cells)``. The table is therefore treated as an augmented
  ``(rows + 1) x (cols + 1)`` array whose last row / column are the totals and whose corner is
  the grand total; every line of it (each row and each column, totals line included) obeys
  ``margin = sum(cells)``. Suppression is extended until

  1. no line contains exactly one withheld entry (the next smallest non-zero cell of the line is
     withheld, else the line's total; zeros are never used, as with non-negativity a withheld
     zero can pin the cells it is meant to protect), and
  2. no withheld entry is determined by any linear combination of lines. Withheld entries are
     the edges of a bipartite graph (row lines x column lines); an entry is determined exactly
     when its edge is a *bridge* (lies on no cycle). Each bridge is broken by withholding the
     smallest further entry that closes a cycle through it.

  Both steps are repeated to a fixed point.
* **Nested / overlapping sums** (:func:`suppress_linear`, :func:`suppress_nested`) — e.g. a
  group's ``n`` and responders shown within a cluster whose size is public, plus a total of
  excluded patients: cells and published sums form a linear system; suppression is extended
  until no withheld entry (nor any small count that is never displayed, such as
  non-responders or patients excluded from a cluster) is determined by any linear combination
  of the published values. Zeros are treated as known (with non-negativity, a withheld zero
  can pin other cells) and never serve as complements.
* **Totals** — a non-zero row/column/grand total below ``min_cell`` is withheld too.
* **Small clusters** — clusters (and an unassigned set) with fewer than ``min_cell``
  patients are folded into one structural line, "not clustered or withheld": their patients
  are left out of every displayed count, percentage, median, curve and test (see
  :func:`small_clusters`, :class:`ClusterLayout`). Group sizes are structural, not patient
  attributes: a group of ``min_cell`` or more is never withheld to protect them.

Callers withhold anything derived from a withheld count (percentages, medians, curve steps).
Withheld values are ``None`` in raw output, with a ``<name>_suppressed: True`` flag beside them.
Display: every count withheld inside a table shows the same mark :data:`WITHHELD_MARK` (``*``);
showing ``"<5"`` for small cells but another mark for complementary ones would leak bounds
that can pin a small cell (e.g. ``[[5, 5], [3, 8]]`` fully withheld). Only the size of a
suppressed cluster (a standalone count that is small by definition) shows ``"<5"``. Withheld
numbers of excluded patients are described without a bound ("an undisclosed number").

Cluster sizes and the folded line are structural counts, public everywhere and exact: the
cohort total is public, so a "<5" beside them would pretend a protection the totals undo.
What is protected is every count of patients *with an attribute* (a level, an event, a
mutation, a response, missing data within a cluster). Consequently a
displayed number of analysed patients (survival, response, mutation data) would reveal the
number of patients of that cluster lacking the data; the functions' default
(``protect_missing=True``) protects that number like any other count, while the report's
:class:`DisclosurePolicy` publishes it (``protect_missing=False``: structural).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import numpy as np
import polars as pl

from cohortctl.errors import InputDataError

#: Display string of every count withheld inside a table (small, or withheld to stop
#: back-calculation of a small one); deliberately the same for both.
WITHHELD_MARK = "*"
#: Display string of a small cluster's statistics.
SUPPRESSED_CLUSTER = "suppressed"
#: Display string of a value that is withheld or not estimable.
NOT_SHOWN = "–"
#: Cluster label for patients the clustering did not assign.
UNASSIGNED = -1
#: The one structural line that holds every patient of no displayed group (unassigned or in
#: a cluster below ``min_cell``), and its JSON key.
FOLDED_LINE = "not clustered or withheld"
FOLDED_KEY = "not_clustered_or_withheld"

__all__ = [
    "CharacteriseInputError",
    "NOT_SHOWN",
    "WITHHELD_MARK",
    "SUPPRESSED_CLUSTER",
    "UNASSIGNED",
    "ClusterLayout",
    "DisclosurePolicy",
    "LinearSuppression",
    "NestedSuppression",
    "Release",
    "Suppression",
    "check_min_cell",
    "cluster_name",
    "format_count",
    "format_number",
    "format_percent",
    "published",
    "published_percent",
    "join_labels",
    "protect_nested",
    "small_clusters",
    "suppress_linear",
    "suppress_nested",
    "suppress_table",
    "suppress_with_margins",
    "to_jsonable",
]


class CharacteriseInputError(InputDataError, ValueError):
    """Invalid input to a characterisation function (a ``ValueError``; CLI exit status 65)."""


def check_min_cell(min_cell: int) -> int:
    """Validate ``min_cell`` (an integer >= 1; 1 disables suppression)."""
    if isinstance(min_cell, bool) or not isinstance(min_cell, (int, np.integer)) or min_cell < 1:
        raise ValueError(f"min_cell must be an integer >= 1, got {min_cell!r}")
    return int(min_cell)


# --------------------------------------------------------------------------------------------
# Table suppression
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suppression:
    """Masks (True = withheld) for a table's cells, its row/column totals and grand total."""

    cells: np.ndarray
    row_totals: np.ndarray
    col_totals: np.ndarray
    grand_total: bool

    @property
    def any(self) -> bool:
        """Whether anything at all is withheld."""
        return bool(
            self.cells.any() or self.row_totals.any() or self.col_totals.any() or self.grand_total
        )


def _augment(counts: np.ndarray) -> np.ndarray:
    r, c = counts.shape
    a = np.zeros((r + 1, c + 1), dtype=np.int64)
    a[:r, :c] = counts
    a[:r, c] = counts.sum(axis=1)
    a[r, :c] = counts.sum(axis=0)
    a[r, c] = counts.sum()
    return a


def _line_candidates(
    values: np.ndarray, mask: np.ndarray, crossing: np.ndarray | None = None
) -> int | None:
    """Index of the entry to withhold next in one line (last entry = the line's total).

    ``crossing[i]`` is the number of withheld entries in the line crossing entry ``i``:
    entries whose crossing line has exactly one withheld entry come first (withholding them
    protects that line too), then lines with more, then the rest; smallest value first.
    """
    free = np.flatnonzero(~mask[:-1])
    nonzero = free[values[free] > 0]
    if nonzero.size:
        if crossing is None:
            return int(nonzero[np.argmin(values[nonzero])])
        cr = crossing[nonzero]
        rank = np.where(cr == 1, 0, np.where(cr >= 2, 1, 2))
        return int(nonzero[np.lexsort((values[nonzero], rank))[0]])
    if not mask[-1] and values[-1] > 0:
        return len(values) - 1
    return None


def _neighbours(edges: np.ndarray, u: int, nr: int) -> list[int]:
    if u < nr:
        return [nr + int(c) for c in np.flatnonzero(edges[u])]
    return [int(r) for r in np.flatnonzero(edges[:, u - nr])]


def _component(edges: np.ndarray, start: int, skip: tuple[int, int]) -> set[int]:
    """Vertices reachable from ``start`` without using the edge ``skip`` (row, nr + col)."""
    nr = edges.shape[0]
    seen = {start}
    stack = [start]
    while stack:
        u = stack.pop()
        for v in _neighbours(edges, u, nr):
            if {u, v} == set(skip):
                continue
            if v not in seen:
                seen.add(v)
                stack.append(v)
    return seen


def _find_bridge(edges: np.ndarray, protected: np.ndarray) -> tuple[int, int] | None:
    """A protected withheld entry whose edge (row line -> column line) lies on no cycle.

    Unknown entries are the edges of a bipartite graph of lines; an entry is determined by the
    displayed values exactly when its edge is a bridge.
    """
    nr = edges.shape[0]
    for i, j in zip(*np.nonzero(protected), strict=True):
        i, j = int(i), int(j)
        if nr + j not in _component(edges, i, (i, nr + j)):
            return i, j
    return None


def _break_bridge(
    a: np.ndarray, blocked: np.ndarray, edges: np.ndarray, edge: tuple[int, int]
) -> tuple[int, int] | None:
    """Entry whose withholding closes a cycle through ``edge`` (interior first, smallest
    first); ``blocked`` entries (withheld, hidden or public) and zeros cannot be chosen (with
    non-negativity a withheld zero can pin the cells it is meant to protect)."""
    nr = edges.shape[0]
    i, j = edge
    side = _component(edges, i, (i, nr + j))
    other = _component(edges, nr + j, (i, nr + j))
    last_r, last_c = edges.shape[0] - 1, edges.shape[1] - 1
    cands: list[tuple[int, int, int, int, int]] = []
    for a_side, b_side in ((side, other), (other, side)):
        for u in a_side:
            if u >= nr:
                continue
            for v in b_side:
                if v < nr or blocked[u, v - nr]:
                    continue
                c = v - nr
                val = int(a[u, c])
                if val == 0:
                    continue
                margin = int(u == last_r) + int(c == last_c)
                cands.append((margin, 0, val, u, c))
    if not cands:
        return None
    best = min(cands)
    return best[3], best[4]


_STATUSES = ("shown", "hidden", "public")


@lru_cache(maxsize=8192)
def _suppress_cached(
    data: bytes, shape: tuple[int, int], min_cell: int, row_totals: str, col_totals: str
) -> bytes:
    counts = np.frombuffer(data, dtype=np.int64).reshape(shape)
    a = _augment(counts)
    public = np.zeros(a.shape, dtype=bool)
    hidden = np.zeros(a.shape, dtype=bool)
    for status, sl in ((row_totals, (slice(None), -1)), (col_totals, (-1, slice(None)))):
        if status == "public":
            public[sl] = True
        elif status == "hidden":
            hidden[sl] = True
    if public[-1, -1]:
        hidden[-1, -1] = False
    mask = (a > 0) & (a < min_cell) & ~public & ~hidden
    blocked_base = public | hidden

    while True:
        changed = True
        while changed:
            changed = False
            for i in range(a.shape[0]):
                if mask[i].sum() == 1 and not hidden[i].any():
                    k = _line_candidates(a[i], mask[i] | blocked_base[i], mask.sum(axis=0))
                    if k is None:
                        return (~public).tobytes()
                    mask[i, k] = True
                    changed = True
            for j in range(a.shape[1]):
                if mask[:, j].sum() == 1 and not hidden[:, j].any():
                    k = _line_candidates(a[:, j], mask[:, j] | blocked_base[:, j], mask.sum(axis=1))
                    if k is None:
                        return (~public).tobytes()
                    mask[k, j] = True
                    changed = True
        bridge = _find_bridge(mask | hidden, mask)
        if bridge is None:
            break
        entry = _break_bridge(a, mask | blocked_base, mask | hidden, bridge)
        if entry is None:
            # Last resort: no complementary entry exists; withhold everything not public.
            return (~public).tobytes()
        mask[entry] = True
    return (mask | hidden).tobytes()


def suppress_with_margins(
    counts: np.ndarray,
    min_cell: int = 5,
    *,
    row_totals: str = "shown",
    col_totals: str = "shown",
) -> Suppression:
    """Suppression masks for a 2-D table and its row, column and grand totals.

    ``row_totals`` / ``col_totals`` say how the margins are published:

    * ``"shown"`` (default): displayed with the table, so they can be withheld too;
    * ``"hidden"``: not displayed at all (returned as withheld); a line whose total is hidden
      cannot be used for back-calculation, so it needs no complementary suppression;
    * ``"public"``: published elsewhere (e.g. cluster sizes in a header row); never withheld,
      protection is found among the other entries.
    """
    min_cell = check_min_cell(min_cell)
    for v in (row_totals, col_totals):
        if v not in _STATUSES:
            raise ValueError(f"totals status must be one of {_STATUSES}, got {v!r}")
    arr = np.asarray(counts)
    if arr.ndim != 2:
        raise ValueError(f"counts must be 2-D, got shape {arr.shape}")
    if arr.size and (np.any(arr < 0) or not np.all(np.equal(np.mod(arr, 1), 0))):
        raise ValueError("counts must be non-negative integers")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    r, c = arr.shape
    if r == 0 or c == 0:
        return Suppression(np.zeros((r, c), bool), np.zeros(r, bool), np.zeros(c, bool), False)
    raw = _suppress_cached(arr.tobytes(), (r, c), min_cell, row_totals, col_totals)
    mask = np.frombuffer(raw, dtype=bool).reshape(r + 1, c + 1).copy()
    return Suppression(mask[:r, :c], mask[:r, c], mask[r, :c], bool(mask[r, c]))


def suppress_table(counts: np.ndarray, min_cell: int = 5) -> np.ndarray:
    """Boolean mask (True = withhold) of the cells of a table shown with its totals.

    See the module docstring for the rules; :func:`suppress_with_margins` also returns the
    masks of the totals.
    """
    return suppress_with_margins(counts, min_cell).cells


# --------------------------------------------------------------------------------------------
# General linear suppression (tables with nested or overlapping published sums)
# --------------------------------------------------------------------------------------------

_CELL_STATUSES = ("shown", "hidden", "free")
_AGG_STATUSES = ("shown", "hidden", "public", "protected")


@dataclass(frozen=True)
class LinearSuppression:
    """Masks (True = not published) of the cells and aggregates of :func:`suppress_linear`."""

    cells: np.ndarray
    aggregates: np.ndarray

    @property
    def any(self) -> bool:
        """Whether any shown cell or aggregate is withheld (hidden ones included)."""
        return bool(self.cells.any() or self.aggregates.any())


def _null_basis(rows: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of the null space of ``rows`` (published sums x unknowns)."""
    n = rows.shape[1]
    if rows.shape[0] == 0 or n == 0:
        return np.eye(n)
    try:
        _, s, vt = np.linalg.svd(rows, full_matrices=True)
    except np.linalg.LinAlgError:  # seen with threaded OpenBLAS 0.3.31 on 0/1 matrices
        import scipy.linalg

        _, s, vt = scipy.linalg.svd(rows, full_matrices=True, lapack_driver="gesvd")
    rank = int((s > 1e-9 * max(1.0, float(s[0]))).sum()) if s.size else 0
    return vt[rank:].T


def _determined_items(
    inc: np.ndarray, cell_unknown: np.ndarray, agg_unpublished: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which cells / aggregates are determined by the published values.

    ``inc`` is the aggregates x cells incidence matrix. A linear functional of the cells is
    determined exactly when it is orthogonal to every direction in which the unknown cells can
    move without changing a published value (the null space of the published sums).
    """
    unk = np.flatnonzero(cell_unknown)
    basis = _null_basis(inc[~agg_unpublished][:, unk].astype(float))
    cell_det = np.ones(cell_unknown.size, dtype=bool)
    if unk.size:
        cell_det[unk] = np.linalg.norm(basis, axis=1) < 1e-8
    agg_det = np.linalg.norm(inc[:, unk].astype(float) @ basis, axis=1) < 1e-8
    return cell_det, agg_det


@lru_cache(maxsize=16384)
def _suppress_linear_cached(
    values: tuple[int, ...],
    aggregates: tuple[tuple[int, ...], ...],
    min_cell: int,
    cell_status: tuple[str, ...],
    agg_status: tuple[str, ...],
    agg_rank: tuple[int, ...],
) -> tuple[bytes, bytes]:
    v = np.array(values, dtype=np.int64)
    inc = np.zeros((len(aggregates), v.size), dtype=np.int8)
    for i, members in enumerate(aggregates):
        inc[i, list(members)] = 1
    av = inc.astype(np.int64) @ v
    c_free = np.array([s == "free" for s in cell_status], dtype=bool)
    c_hidden = np.array([s == "hidden" for s in cell_status], dtype=bool) | c_free
    a_protected = np.array([s == "protected" for s in agg_status], dtype=bool) & (av > 0)
    a_hidden = np.array([s in ("hidden", "protected") for s in agg_status], dtype=bool)
    a_public = np.array([s == "public" for s in agg_status], dtype=bool)
    c_small = (v > 0) & (v < min_cell) & ~c_free
    a_small = (av > 0) & (av < min_cell) & ~a_public & ~a_hidden
    cw = c_hidden | c_small
    aw = a_hidden | a_small
    if not (c_small.any() or a_small.any() or a_protected.any()):
        return cw.tobytes(), aw.tobytes()  # nothing small: nothing to protect
    # Zero cells are treated as known to the reader whether published or not: with
    # non-negativity a withheld zero can pin other cells, so it never protects anything.
    nonzero = v > 0
    # Entries determined by the public aggregates alone cannot be protected (small ones are
    # still withheld from display).
    pub_c, pub_a = _determined_items(inc, np.ones(v.size, dtype=bool), ~a_public)

    def leak(cw_: np.ndarray, aw_: np.ndarray) -> tuple[str, int] | None:
        """First protected entry (withheld shown entry, or small hidden cell) determined."""
        cdet, adet = _determined_items(inc, cw_ & nonzero, aw_)
        prot_c = nonzero & ~pub_c & ((cw_ & ~c_hidden) | c_small)
        hit = np.flatnonzero(prot_c & cdet)
        if hit.size:
            return "cell", int(hit[0])
        hit = np.flatnonzero(((aw_ & ~a_hidden) | a_protected) & ~pub_a & adet)
        if hit.size:
            return "agg", int(hit[0])
        return None

    def fixes(cw_: np.ndarray, aw_: np.ndarray, item: tuple[str, int]) -> bool:
        cdet, adet = _determined_items(inc, cw_ & nonzero, aw_)
        return not bool(cdet[item[1]] if item[0] == "cell" else adet[item[1]])

    while (item := leak(cw, aw)) is not None:
        cands = sorted(
            [
                ((0, int(v[i]), int(i)), "cell", int(i))
                for i in np.flatnonzero(~cw & nonzero & ~pub_c)
            ]
            + [
                ((agg_rank[j], int(av[j]), int(j)), "agg", int(j))
                for j in np.flatnonzero(~aw & ~a_public & (av > 0) & ~pub_a)
            ]
        )
        choice: list[tuple[str, int]] | None = None
        for _, kind, idx in cands:
            cw2, aw2 = cw.copy(), aw.copy()
            (cw2 if kind == "cell" else aw2)[idx] = True
            if fixes(cw2, aw2, item):
                choice = [(kind, idx)]
                break
        if choice is None:
            head = cands[:12]
            for a_ in range(len(head)):
                for b_ in range(a_ + 1, len(head)):
                    cw2, aw2 = cw.copy(), aw.copy()
                    for _, kind, idx in (head[a_], head[b_]):
                        (cw2 if kind == "cell" else aw2)[idx] = True
                    if fixes(cw2, aw2, item):
                        choice = [head[a_][1:], head[b_][1:]]
                        break
                if choice is not None:
                    break
        if choice is None:
            # Last resort: withhold everything that is not public.
            return np.ones(v.size, bool).tobytes(), (~a_public).tobytes()
        for kind, idx in choice:
            (cw if kind == "cell" else aw)[idx] = True
    return cw.tobytes(), aw.tobytes()


def suppress_linear(
    values: Sequence[int] | np.ndarray,
    aggregates: Sequence[Sequence[int]] = (),
    min_cell: int = 5,
    *,
    cell_status: Sequence[str] | None = None,
    aggregate_status: Sequence[str] | None = None,
    aggregate_rank: Sequence[int] | None = None,
) -> LinearSuppression:
    """Small-cell suppression of counts published as cells and (overlapping) sums of cells.

    ``values`` are the counts of the finest cells; ``aggregates`` lists, for every published
    sum, the indices of the cells it adds up (e.g. a group's size = responders + others).

    * ``cell_status``: ``"shown"`` (displayed unless withheld; default), ``"hidden"`` (never
      displayed, e.g. non-responders when only ``n`` and responders are shown; protected
      when small) or ``"free"`` (never displayed nor protected: the finest cells of a
      :class:`Release`, whose meaning lies only in the sums);
    * ``aggregate_status``: ``"shown"`` (default), ``"hidden"`` (not displayed),
      ``"public"`` (published elsewhere, e.g. cluster sizes; never withheld) or
      ``"protected"`` (not displayed, and must stay undetermined: withheld elsewhere);
    * ``aggregate_rank``: preference when choosing complements (cells rank 0, aggregates 1
      by default; lower first, then smaller counts).

    Every non-zero shown cell or shown aggregate below ``min_cell`` is withheld, and so is
    every further entry needed until no withheld entry -- and no hidden cell below
    ``min_cell`` -- is determined by the published values (exactly: by any linear
    combination of them). Complementary entries are chosen cells first, non-zero before zero,
    smallest first. Returns masks with True = not published (hidden entries included).
    """
    min_cell = check_min_cell(min_cell)
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError("values must be 1-D")
    if v.size and (np.any(v < 0) or not np.all(np.equal(np.mod(v, 1), 0))):
        raise ValueError("counts must be non-negative integers")
    cs = tuple(cell_status) if cell_status is not None else ("shown",) * v.size
    ast = tuple(aggregate_status) if aggregate_status is not None else ("shown",) * len(aggregates)
    if len(cs) != v.size or len(ast) != len(aggregates):
        raise ValueError("status lists must match values / aggregates in length")
    if any(s not in _CELL_STATUSES for s in cs) or any(s not in _AGG_STATUSES for s in ast):
        raise ValueError(f"cell status in {_CELL_STATUSES}, aggregate status in {_AGG_STATUSES}")
    rank = tuple(int(r) for r in aggregate_rank) if aggregate_rank is not None else (1,) * len(ast)
    if len(rank) != len(ast):
        raise ValueError("aggregate_rank must match aggregates in length")
    aggs = tuple(tuple(sorted({int(i) for i in a})) for a in aggregates)
    if any(i < 0 or i >= v.size for a in aggs for i in a):
        raise ValueError("aggregate index out of range")
    if v.size == 0:
        return LinearSuppression(np.zeros(0, bool), np.array([s != "public" for s in ast], bool))
    raw_c, raw_a = _suppress_linear_cached(tuple(int(x) for x in v), aggs, min_cell, cs, ast,
                                           rank)
    return LinearSuppression(
        np.frombuffer(raw_c, dtype=bool).copy(), np.frombuffer(raw_a, dtype=bool).copy()
    )


@dataclass(frozen=True)
class NestedSuppression:
    """Result of :func:`suppress_nested` (True = withheld), indexed like its inputs."""

    n: list[dict[str, bool]]
    positive: list[dict[str, bool]]
    excluded_totals: list[bool]
    group_n_totals: dict[str, bool]
    group_positive_totals: dict[str, bool]


def suppress_nested(
    sizes: Sequence[int],
    groups: Sequence[Mapping[str, tuple[int, int]]],
    excluded: Sequence[Sequence[int]] = (),
    min_cell: int = 5,
    *,
    group_totals: bool = False,
    protect_excluded: bool = True,
) -> NestedSuppression:
    """Suppression for per-cluster tables of groups whose cluster sizes are public.

    Cluster ``k`` (size ``sizes[k]``, published elsewhere) is split into groups (e.g.
    treatments) ``groups[k][label] = (n, positive)`` -- ``n`` and ``positive`` (events,
    responders) are displayed, ``n - positive`` is not -- and into patients excluded for
    reason ``r`` (``excluded[k][r]``, not displayed per cluster; only the total over clusters
    per reason is). With ``group_totals`` the per-label totals of ``n`` and ``positive`` over
    clusters are displayed too. Because the cluster sizes are public, a displayed ``n`` would
    otherwise reveal a small number of excluded patients; :func:`suppress_linear` withholds
    what is needed (see there). ``protect_excluded=False`` treats the numbers of excluded
    patients as disclosable (they are then published exactly and never withheld).
    """
    values: list[int] = []
    status: list[str] = []
    aggs: list[list[int]] = []
    astat: list[str] = []
    n_idx: list[dict[str, int]] = []
    pos_idx: list[dict[str, int]] = []
    n_reasons = max((len(e) for e in excluded), default=0)
    reason_cells: list[list[int]] = [[] for _ in range(n_reasons)]
    label_cells: dict[str, tuple[list[int], list[int]]] = {}
    for k, size in enumerate(sizes):
        members: list[int] = []
        n_idx.append({})
        pos_idx.append({})
        for label, (n, pos) in groups[k].items():
            if pos > n or pos < 0:
                raise ValueError("positive count must lie in [0, n]")
            base = len(values)
            values += [int(pos), int(n) - int(pos)]
            status += ["shown", "hidden"]
            members += [base, base + 1]
            pos_idx[k][label] = base
            n_idx[k][label] = len(aggs)
            aggs.append([base, base + 1])
            astat.append("shown")
            lc = label_cells.setdefault(label, ([], []))
            lc[0].append(base)
            lc[1].extend([base, base + 1])
        for r, x in enumerate(excluded[k] if k < len(excluded) else ()):
            values.append(int(x))
            status.append("hidden")
            members.append(len(values) - 1)
            reason_cells[r].append(len(values) - 1)
            if not protect_excluded:
                aggs.append([len(values) - 1])
                astat.append("public")
        if sum(values[i] for i in members) != int(size):
            raise ValueError(f"cluster {k}: groups and exclusions do not add up to its size")
        aggs.append(members)
        astat.append("public")
    tot_idx = []
    for cells in reason_cells:
        tot_idx.append(len(aggs))
        aggs.append(cells)
        astat.append("shown" if protect_excluded else "public")
    gn_idx: dict[str, int] = {}
    gp_idx: dict[str, int] = {}
    if group_totals:
        for label, (pos_cells, all_cells) in label_cells.items():
            gp_idx[label] = len(aggs)
            aggs.append(pos_cells)
            astat.append("shown")
            gn_idx[label] = len(aggs)
            aggs.append(all_cells)
            astat.append("shown")
    sup = suppress_linear(values, aggs, min_cell, cell_status=status, aggregate_status=astat)
    return NestedSuppression(
        n=[{lab: bool(sup.aggregates[i]) for lab, i in d.items()} for d in n_idx],
        positive=[{lab: bool(sup.cells[i]) for lab, i in d.items()} for d in pos_idx],
        excluded_totals=[bool(sup.aggregates[i]) for i in tot_idx],
        group_n_totals={lab: bool(sup.aggregates[i]) for lab, i in gn_idx.items()},
        group_positive_totals={lab: bool(sup.aggregates[i]) for lab, i in gp_idx.items()},
    )


# --------------------------------------------------------------------------------------------
# One release: counts published by several sections about the same patients
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fact:
    """One count of a :class:`Release`: the patients it counts and how it was published."""

    patients: np.ndarray
    #: "structural" (published regardless, e.g. a cluster size), "shown" (published),
    #: "withheld" (displayed as withheld: a reader knows it is at least 1, as zeros are
    #: shown) or "hidden" (never displayed; protected when small).
    kind: str
    rank: int = 1

    @property
    def signature(self) -> bytes:
        return hashlib.blake2b(self.patients.tobytes(), digest_size=16).digest()


def _pinned(inc: np.ndarray, av: np.ndarray, eq: np.ndarray, ge: np.ndarray, t: int) -> bool:
    """Whether count ``t`` (row of the facts x atoms incidence ``inc``) takes one value in
    every non-negative integer solution with the ``eq`` rows at their values and the ``ge``
    rows at least 1 (two mixed-integer programs, scipy's HiGHS ``milp``)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    if inc.shape[1] == 0:
        return True  # no patient behind any count: every count is 0
    cons = []
    if eq.any():
        cons.append(LinearConstraint(inc[eq], av[eq], av[eq]))
    if ge.any():
        cons.append(LinearConstraint(inc[ge], 1, np.inf))
    kw: dict[str, Any] = {"constraints": cons, "integrality": np.ones(inc.shape[1]),
                          "bounds": Bounds(0, np.inf)}
    lo = milp(inc[t], **kw)
    hi = milp(-inc[t], **kw)
    if lo.status != 0 or hi.status != 0:
        return False
    return round(-hi.fun) <= round(lo.fun)


def _linear_status(fact: _Fact, new: bool) -> str:
    """A fact's status for :func:`suppress_linear`: counts published by earlier sections
    are public; a new shown count may still be withheld; withheld and hidden ones are
    protected."""
    if fact.kind == "structural" or (fact.kind == "shown" and not new):
        return "public"
    return "shown" if fact.kind == "shown" else "protected"


class Release:
    """Every count that several report sections publish about the same patients, protected
    together (docs/usage.md, "Disclosure control").

    Sections that each protect their own table can still give a withheld count back between
    them: the survival section publishes a cluster's events, the by-treatment section the
    events of every arm but one, and their difference is the withheld arm. A ``Release``
    records each published count as the *set of patients* it counts (positions in the
    report's patient list), so a count published anywhere is a linear fact about the same
    unknowns. :meth:`protect` withholds, among a section's new counts, what is needed so that
    no count withheld in any section so far -- nor any small count never shown -- is
    determined by everything published so far: first exactly by linear combinations
    (:func:`suppress_linear` on the atoms, the groups of patients counted by the same sets),
    then with bounds (:func:`_pinned`: non-negative integers, and withheld counts at least 1
    since zeros are shown). A section cannot revise what earlier sections published: when
    a later count is pinned by them, :meth:`audit` names the earlier counts to withhold and
    the report is computed again with them ``forced`` (see :func:`gather`). Numbers of
    patients lacking a value (no follow-up, no response, no treatment) are treated alike by
    every section of a release (``protect_missing``): one section publishing what another
    protects would make the protection void.
    """

    def __init__(self, patient_ids: Iterable[str], min_cell: int = 5, *,
                 protect_missing: bool = True, forced: frozenset[bytes] = frozenset()) -> None:
        self.min_cell = check_min_cell(min_cell)
        #: Whether numbers of patients lacking a value are protected (else structural and
        #: public); one choice for every section of the release (:class:`DisclosurePolicy`).
        self.protect_missing = protect_missing
        #: Signatures of counts to withhold whatever their section decides (from an audit).
        self.forced = forced
        self._index = {str(p): i for i, p in enumerate(patient_ids)}
        self._facts: list[_Fact] = []

    def positions(self, ids: Iterable[Any]) -> np.ndarray:
        """Positions of ``ids`` in the release's patient list."""
        try:
            return np.array([self._index[str(p)] for p in ids], dtype=np.int64)
        except KeyError as exc:
            raise CharacteriseInputError(f"patient {exc.args[0]!r} is not in the report's "
                                         "patient list") from None

    def protect(self, entries: Sequence[tuple[np.ndarray, str, int]]) -> np.ndarray:
        """Withheld flags (True = not published) of ``entries``, then record them as published.

        Each entry is ``(positions, status, rank)``: the patients counted; ``"shown"`` (to be
        displayed unless withheld), ``"hidden"`` (never displayed; protected when below
        ``min_cell``, e.g. non-responders) or ``"public"`` (published regardless, e.g. a
        cluster size); ``rank`` orders the choice of complements (lower first).
        """
        new: list[_Fact] = []
        where: list[int] = []  # entry -> index in new (or -1: hidden and not small)
        for m, st, rank in entries:
            if st not in ("shown", "hidden", "public"):
                raise ValueError(f"entry status {st!r}")
            f = _Fact(np.unique(np.asarray(m, dtype=np.int64)),
                      {"public": "structural", "shown": "shown", "hidden": "hidden"}[st],
                      int(rank))
            if st == "hidden" and not 0 < f.patients.size < self.min_cell:
                where.append(-1)
                continue
            where.append(len(new))
            new.append(f)
        facts = self._facts + new
        w = np.array([f.kind in ("withheld", "hidden") for f in facts], dtype=bool)
        if facts:
            old = len(self._facts)
            aggs, values = self._atoms([f.patients for f in facts])
            status = [_linear_status(f, i >= old) for i, f in enumerate(facts)]
            sup = suppress_linear(values, aggs, self.min_cell, cell_status=["free"] * len(values),
                                  aggregate_status=status,
                                  aggregate_rank=[f.rank for f in facts])
            w = sup.aggregates.copy()
            for j, f in enumerate(new):
                if f.kind == "shown" and f.signature in self.forced:
                    w[old + j] = True
                if f.kind == "shown" and f.patients.size == 0:
                    w[old + j] = False  # zeros are shown
            inc, av = self._incidence(aggs, values)
            self._free(inc, av, facts, w, new_from=old)
            # A group size the structural counts fix (a cluster's analysed n = its size minus
            # those lacking follow-up) is public whatever it is: shown, not marked withheld.
            # (Counts of an attribute, rank 0, stay marked even then.)
            structural = np.array([f.kind == "structural" for f in facts])
            none = np.zeros(len(facts), dtype=bool)
            for j, f in enumerate(new):
                t = old + j
                if f.kind == "shown" and f.rank >= 1 and w[t] and \
                        f.signature not in self.forced and _pinned(inc, av, structural, none, t):
                    w[t] = False
        withheld = np.ones(len(entries), dtype=bool)
        for i, j in enumerate(where):
            if j < 0:
                continue
            f = new[j]
            hide = bool(w[len(self._facts) + j]) and f.kind == "shown"
            withheld[i] = f.kind == "hidden" or hide
            if hide:
                f = _Fact(f.patients, "withheld" if f.patients.size else "shown", f.rank)
            new[j] = f
        withheld &= np.array([st != "public" for _, st, _ in entries], dtype=bool)
        self._facts.extend(new)
        return withheld

    def _targets(self, facts: list[_Fact], av: np.ndarray, w: np.ndarray) -> list[int]:
        """Counts that must not be pinned: withheld shown counts and small hidden ones."""
        return [t for t, f in enumerate(facts) if av[t] > 0 and (
            (w[t] and f.kind in ("shown", "withheld"))
            or (f.kind == "hidden" and av[t] < self.min_cell))]

    def _free(self, inc: np.ndarray, av: np.ndarray, facts: list[_Fact], w: np.ndarray, *,
              new_from: int) -> None:
        """Withhold more of the new shown counts (``w``, in place) until no target is pinned
        with bounds (:func:`_pinned`). A count pinned even with every new count withheld is
        left to :meth:`audit` (earlier sections must withhold instead)."""
        kinds = np.array([f.kind for f in facts])
        new = np.arange(len(facts)) >= new_from
        shown = (kinds == "shown") & new
        shown_kind = np.isin(kinds, ["shown", "withheld"])
        fixed_eq = (kinds == "structural") | ((kinds == "shown") & ~new)

        def pinned(wd: np.ndarray, t: int) -> bool:
            return _pinned(inc, av, fixed_eq | (shown & ~wd), wd & shown_kind & (av > 0), t)

        everything = w | (shown & (av > 0))
        pending = [t for t in self._targets(facts, av, w) if not pinned(everything, t)]

        @cache
        def useful(j: int) -> bool:
            """Withholding ``j`` can protect something: it is not pinned anyway."""
            return not pinned(everything, j)

        # Withholding more only widens every range: a count found free stays free.
        while pending:
            hit = pending[0]
            if not pinned(w, hit):
                pending.pop(0)
                continue
            cands = sorted((facts[j].rank, av[j], j)
                           for j in np.flatnonzero(shown & ~w & (av > 0)) if useful(j))
            for _, _, j in cands:
                trial = w.copy()
                trial[j] = True
                if not pinned(trial, hit):
                    w[j] = True
                    break
            else:  # no single complement helps: withhold every new shown count
                w[:] = everything

    def audit(self) -> frozenset[bytes]:
        """Signatures of published counts to withhold so that no withheld or small hidden
        count of the whole release is pinned (empty when none is). Counts pinned by
        structural counts alone cannot be helped and are skipped."""
        facts = self._facts
        if not facts:
            return frozenset()
        aggs, values = self._atoms([f.patients for f in facts])
        inc, av = self._incidence(aggs, values)
        kinds = np.array([f.kind for f in facts])
        w = np.isin(kinds, ["withheld", "hidden"])
        shown = np.isin(kinds, ["shown"])
        shown_kind = np.isin(kinds, ["shown", "withheld"])
        structural = kinds == "structural"

        def pinned(wd: np.ndarray, t: int) -> bool:
            return _pinned(inc, av, structural | (shown & ~wd), wd & shown_kind & (av > 0), t)

        everything = w | (shown & (av > 0))

        @cache
        def useful(j: int) -> bool:
            """Withholding ``j`` can protect something: it is not pinned anyway."""
            return not pinned(everything, j)

        force: set[bytes] = set()
        for t in self._targets(facts, av, w):
            if pinned(everything, t):
                continue
            while pinned(w, t):
                cands = sorted((facts[j].rank, av[j], j)
                               for j in np.flatnonzero(shown & ~w & (av > 0)) if useful(j))
                chosen = next((j for _, _, j in cands
                               if not pinned(w | (np.arange(len(facts)) == j), t)), None)
                picks = [chosen] if chosen is not None else [j for _, _, j in cands]
                if not picks:
                    break  # nothing left to withhold: pinned by what must stay published
                for j in picks:
                    w[j] = True
                    force.add(facts[j].signature)
        return frozenset(force)

    @staticmethod
    def _incidence(aggs: list[list[int]], values: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Facts x atoms incidence matrix and the facts' values."""
        inc = np.zeros((len(aggs), len(values)))
        for i, members in enumerate(aggs):
            inc[i, members] = 1.0
        return inc, inc @ np.asarray(values, dtype=float)

    def _atoms(self, sets: list[np.ndarray]) -> tuple[list[list[int]], list[int]]:
        """Group patients by the sets they belong to: each set as a list of atoms, and the
        atoms' sizes."""
        involved = np.unique(np.concatenate(sets)) if sets else np.zeros(0, np.int64)
        member = np.zeros((len(sets), involved.size), dtype=bool)
        for i, s in enumerate(sets):
            member[i, np.searchsorted(involved, s)] = True
        packed = np.ascontiguousarray(np.packbits(member, axis=0).T)
        keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
        _, atom_of, sizes = np.unique(keys, return_inverse=True, return_counts=True)
        aggs = [sorted({int(a) for a in atom_of[np.searchsorted(involved, s)]}) for s in sets]
        return aggs, [int(x) for x in sizes]


def protect_nested(
    release: Release,
    clusters: Sequence[np.ndarray],
    groups: Sequence[Mapping[str, tuple[np.ndarray, np.ndarray]]],
    excluded: Sequence[Sequence[np.ndarray]] = (),
    *,
    group_totals: bool = False,
    protect_excluded: bool = True,
    displayed_totals: Sequence[bool] | None = None,
) -> NestedSuppression:
    """:func:`suppress_nested` within a :class:`Release`: the same table (public cluster
    sizes; per group ``n`` and positives shown, the rest hidden; excluded patients per reason
    and their totals), given as patient positions instead of counts, so that counts other
    sections published about the same patients are taken into account.
    ``displayed_totals`` says which reasons' totals the section displays (default all): an
    undisplayed one is not recorded (the reader does not know it)."""
    entries: list[tuple[np.ndarray, str, int]] = []
    n_idx: list[dict[str, int]] = []
    pos_idx: list[dict[str, int]] = []
    reasons: dict[int, list[np.ndarray]] = {}
    label_sets: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for k, members in enumerate(clusters):
        entries.append((members, "public", 1))
        n_idx.append({})
        pos_idx.append({})
        for label, (n_set, pos_set) in groups[k].items():
            pos_idx[k][label] = len(entries)
            # In a group of fewer than min_cell patients the positives are never shown, not
            # even a zero: with the group's n known (often from public counts), a withheld
            # count known to be >= 1 could be pinned (1 patient, withheld responders: 1).
            small = 0 < np.unique(n_set).size < release.min_cell
            entries.append((pos_set, "hidden" if small else "shown", 0))
            n_idx[k][label] = len(entries)
            entries.append((n_set, "shown", 1))
            entries.append((np.setdiff1d(n_set, pos_set), "hidden", 1))
            ls = label_sets.setdefault(label, ([], []))
            ls[0].append(pos_set)
            ls[1].append(n_set)
        for r, x in enumerate(excluded[k] if k < len(excluded) else ()):
            entries.append((x, "hidden" if protect_excluded else "public", 1))
            reasons.setdefault(r, []).append(x)
    empty = np.zeros(0, np.int64)
    tot_idx = []
    for r in sorted(reasons):
        tot_idx.append(len(entries))
        shown_total = displayed_totals is None or displayed_totals[r]
        entries.append((np.concatenate(reasons[r]) if reasons[r] else empty,
                        ("shown" if protect_excluded else "public") if shown_total else "hidden",
                        1))
    gn_idx: dict[str, int] = {}
    gp_idx: dict[str, int] = {}
    if group_totals:
        for label, (pos_sets, n_sets) in label_sets.items():
            gp_idx[label] = len(entries)
            entries.append((np.concatenate(pos_sets), "shown", 1))
            gn_idx[label] = len(entries)
            entries.append((np.concatenate(n_sets), "shown", 1))
    w = release.protect(entries)
    return NestedSuppression(
        n=[{lab: bool(w[i]) for lab, i in d.items()} for d in n_idx],
        positive=[{lab: bool(w[i]) for lab, i in d.items()} for d in pos_idx],
        excluded_totals=[bool(w[i]) for i in tot_idx],
        group_n_totals={lab: bool(w[i]) for lab, i in gn_idx.items()},
        group_positive_totals={lab: bool(w[i]) for lab, i in gp_idx.items()},
    )


# --------------------------------------------------------------------------------------------
# Clusters
# --------------------------------------------------------------------------------------------


#: Base to which published counts of patients are rounded (1 = exact), set by the policy in
#: force (:meth:`DisclosurePolicy.in_force`); read only through :func:`published`.
_ROUNDING: ContextVar[int] = ContextVar("cohortctl_count_rounding", default=1)

#: Named disclosure profiles (docs/usage.md, "Disclosure control"): base of rounding.
PROFILES = {"standard": 1, "strict": 5}


def published(n: int) -> int:
    """A count of patients as the policy in force publishes it: exact (``standard``), or
    rounded to the nearest multiple of the profile's base, halves up (``strict``; a count
    between 0 and the base is shown as the base, never as 0)."""
    n = int(n)
    base = _ROUNDING.get()
    if base <= 1 or n <= 0:
        return n
    return max(base, base * ((2 * n + base) // (2 * base)))


def published_percent(n: int, denom: int) -> float | None:
    """Percentage of two published counts (rounded ones under ``strict``, so that the
    percentage does not give the exact counts back); ``None`` for an empty denominator."""
    d = published(denom)
    return 100.0 * published(n) / d if d > 0 else None


@dataclass(frozen=True)
class DisclosurePolicy:
    """The report's one disclosure policy, built once by ``report`` and handed to every
    section (docs/usage.md, "Disclosure control").

    ``min_cell``: counts of patients *with an attribute* (a level, an event, a mutation, a
    response) below it are withheld, with complementary suppression. Structural counts
    (group sizes, the folded "not clustered or withheld" line, numbers of patients lacking
    follow-up, a response or mutation calls) are shown: they describe the data set, not a
    patient, and the public totals give them back anyway. (In Table 1, "missing" is a level
    of its variable like any other and stays protected: it is also the cheapest complement
    for a small level.) ``protect_missing=True`` protects the numbers lacking
    data like attribute counts (the former behaviour: it hid the AML survival curves
    because 12 patients had no valid follow-up).
    """

    min_cell: int = 5
    protect_missing: bool = False
    #: ``standard`` publishes counts exactly; ``strict`` rounds every published count of
    #: patients (and the percentages and rates computed from them) to ``PROFILES["strict"]``.
    profile: str = "standard"

    def __post_init__(self) -> None:
        check_min_cell(self.min_cell)
        if self.profile not in PROFILES:
            raise CharacteriseInputError(f"disclosure profile must be one of "
                                         f"{sorted(PROFILES)}, got {self.profile!r}")

    @property
    def rounding(self) -> int:
        """Base to which published counts are rounded (1 = exact)."""
        return PROFILES[self.profile]

    @contextmanager
    def in_force(self) -> Iterator[None]:
        """Make this policy's rounding the one :func:`published` applies (while a report
        is computed), so that every section and presenter rounds alike."""
        token = _ROUNDING.set(self.rounding)
        try:
            yield
        finally:
            _ROUNDING.reset(token)

    def describe(self, include_ids: bool) -> str:
        """One sentence for the report's privacy note."""
        return (f"Counts of patients with an attribute (a level, an event, a mutation, a "
                f"response) below {self.min_cell} are withheld (shown as a mark), with "
                "complementary suppression, and so is every statistic derived from them. "
                f"Groups of fewer than {self.min_cell} patients are counted only in one "
                f"'{FOLDED_LINE}' line. Group sizes and numbers of patients lacking follow-up, a "
                "response or mutation calls are "
                + ("protected too. " if self.protect_missing else "shown. ")
                + "The embedding is drawn as areas of at least "
                f"{self.min_cell} patients, never as points. "
                + (f"Profile 'strict': every published count of patients is rounded to a "
                   f"multiple of {self.rounding} (percentages and rates from the rounded "
                   "counts). " if self.rounding > 1 else "")
                + ("Patient identifiers are included in --tables output (--include-ids)."
                   if include_ids else "No patient identifiers are included."))


def small_clusters(sizes: Mapping[int, int], min_cell: int = 5) -> set[int]:
    """Clusters (including -1, unassigned) with fewer than ``min_cell`` patients."""
    min_cell = check_min_cell(min_cell)
    return {int(k) for k, n in sizes.items() if 0 < int(n) < min_cell}


def cluster_name(k: int) -> str:
    """Display name of a cluster: ``"cluster 3"`` or ``"unassigned"`` for -1."""
    return "unassigned" if int(k) == UNASSIGNED else f"cluster {int(k)}"


@dataclass(frozen=True)
class ClusterLayout:
    """Which clusters are displayed, tested, or suppressed in a table.

    ``shown`` are the displayed columns (assigned clusters ascending, then unassigned);
    ``tested`` the assigned clusters large enough for tests of difference; ``suppressed`` the
    clusters below ``min_cell`` (reported only as "suppressed"). The true sizes are kept for
    internal use only; :meth:`to_dict` reports them with suppression applied.
    """

    sizes: dict[int, int]
    shown: list[int]
    tested: list[int]
    suppressed: list[int]
    min_cell: int

    @classmethod
    def from_labels(cls, clusters: Iterable[int], min_cell: int = 5) -> ClusterLayout:
        """Build from an iterable of (per patient) cluster labels."""
        min_cell = check_min_cell(min_cell)
        arr = np.asarray(list(clusters), dtype=np.int64)
        ks, ns = np.unique(arr, return_counts=True)
        sizes = {int(k): int(n) for k, n in zip(ks, ns, strict=True)}
        # Structural counts (how many patients each group has, how many were not
        # assigned) are not attributes of a patient: a group of >= min_cell patients is
        # never withheld to protect one of them (that hid a 23-patient cluster because 4
        # patients were unassigned). Small groups are folded into one "not clustered or
        # withheld" line (:attr:`folded`), whose patients are left out of every statistic.
        small = small_clusters(sizes, min_cell)
        assigned = sorted(k for k in sizes if k != UNASSIGNED and k not in small)
        shown = assigned + ([UNASSIGNED] if UNASSIGNED in sizes and UNASSIGNED not in small else [])
        return cls(sizes, shown, assigned, sorted(small), min_cell)

    def name(self, k: int) -> str:
        """Display name of cluster ``k``."""
        return cluster_name(k)

    @property
    def folded(self) -> int:
        """Patients in no displayed group: unassigned and small-cluster patients, when
        either is below ``min_cell`` (one structural line, see :data:`FOLDED_LINE`)."""
        return sum(self.sizes[k] for k in self.suppressed)


    @property
    def suppressed_names(self) -> list[str]:
        """Display names of the suppressed clusters."""
        return [cluster_name(k) for k in self.suppressed]

    def to_dict(self) -> dict[str, Any]:
        """Clusters with their sizes, small ones as ``None`` + flag."""
        out = []
        for k in sorted(self.sizes, key=lambda x: (x == UNASSIGNED, x)):
            sup = k in self.suppressed
            out.append(
                {
                    "cluster": k,
                    "name": cluster_name(k),
                    "n": None if sup else published(self.sizes[k]),
                    "n_suppressed": sup,
                    "tested": k in self.tested,
                }
            )
        folded = self.folded
        return {"min_cell": self.min_cell, "clusters": out,
                FOLDED_KEY: published(folded) if self.suppressed else None}


def join_labels(
    data: pl.DataFrame,
    labels: pl.DataFrame,
    id_col: str = "patient_id",
    cluster_col: str = "cluster",
    how: str = "left",
) -> pl.DataFrame:
    """Attach cluster labels to ``data`` (``how="left"`` keeps every labelled patient).

    Returns ``labels`` joined with ``data`` on ``id_col``; the label column is called
    ``cluster`` (Int64). Duplicate IDs in either table are an error.
    """
    for name, df, cols in (("labels", labels, (id_col, cluster_col)), ("data", data, (id_col,))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise CharacteriseInputError(f"{name} table lacks column(s) {missing}")
        if df.height != df.select(pl.col(id_col).n_unique()).item():
            raise CharacteriseInputError(f"{name} table has duplicate values in {id_col!r}")
    lab = labels.select(pl.col(id_col), pl.col(cluster_col).cast(pl.Int64).alias("__cluster__"))
    if lab["__cluster__"].null_count():
        raise CharacteriseInputError(
            "labels table has missing cluster labels (use -1 for unassigned)"
        )
    other = data.drop([c for c in ("cluster", "__cluster__") if c in data.columns and c != id_col])
    if how == "left":
        joined = lab.join(other, on=id_col, how="left", coalesce=True)
    else:
        joined = lab.join(other, on=id_col, how="inner")
    return joined.rename({"__cluster__": "cluster"})


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def format_count(
    n: int | None, suppressed: bool, min_cell: int = 5, *, standalone: bool = False
) -> str:
    """Display string of a count: the number, or a mark when withheld.

    Counts withheld inside a table show the single mark :data:`WITHHELD_MARK` whether they are
    small (primary) or withheld only to protect another cell (complementary): distinguishing
    the two (``"<5"`` vs. another mark) reveals bounds that can pin a small cell down. A
    ``standalone`` count (not part of a table with complementary suppression, e.g. the size of
    a suppressed cluster or a number of excluded patients) shows ``"<min_cell"``.
    """
    if not suppressed:
        return NOT_SHOWN if n is None else str(published(int(n)))
    if standalone:
        return f"<{min_cell}"
    return WITHHELD_MARK


def format_percent(p: float | None, digits: int = 1) -> str:
    """Display string of a percentage (``None``/NaN -> "–")."""
    if p is None or not math.isfinite(p):
        return NOT_SHOWN
    return f"{p:.{digits}f}%"


def format_number(x: float | None) -> str:
    """Compact display of a statistic (3 significant figures, thousands without exponent)."""
    if x is None:
        return NOT_SHOWN
    x = float(x)
    if not math.isfinite(x):
        return NOT_SHOWN
    ax = abs(x)
    if ax == 0:
        return "0"
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.01:
        return f"{x:.3g}"
    return f"{x:.2g}"


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy/polars scalars to Python; NaN/inf -> ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, pl.DataFrame):
        return [to_jsonable(r) for r in obj.to_dicts()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


@dataclass
class Notes:
    """Collects human-readable notes (never containing patient identifiers)."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        """Append a note once."""
        if text not in self.items:
            self.items.append(text)
