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
     withheld, else the smallest zero cell, else the line's total), and
  2. no withheld entry is determined by any linear combination of lines. Withheld entries are
     the edges of a bipartite graph (row lines x column lines); an entry is determined exactly
     when its edge is a *bridge* (lies on no cycle). Each bridge is broken by withholding the
     smallest further entry that closes a cycle through it.

  Both steps are repeated to a fixed point.
* **Totals** — a non-zero row/column/grand total below ``min_cell`` is withheld too.
* **Small clusters** — clusters with fewer than ``min_cell`` patients are reported only as
  "suppressed": their patients are left out of every displayed count, percentage, median,
  curve and test (see :func:`small_clusters`, :class:`ClusterLayout`).

Callers withhold anything derived from a withheld count (percentages, medians, curve steps).
Withheld values are ``None`` in raw output, with a ``<name>_suppressed: True`` flag beside them.
Display: every count withheld inside a table shows the same mark :data:`WITHHELD_MARK` (``*``);
showing ``"<5"`` for small cells but another mark for complementary ones would leak bounds
that can pin a small cell (e.g. ``[[5, 5], [3, 8]]`` fully withheld). Standalone counts (size
of a suppressed cluster, excluded patients) show ``"<5"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
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

__all__ = [
    "CharacteriseInputError",
    "NOT_SHOWN",
    "WITHHELD_MARK",
    "SUPPRESSED_CLUSTER",
    "UNASSIGNED",
    "ClusterLayout",
    "Suppression",
    "check_min_cell",
    "cluster_name",
    "format_count",
    "format_number",
    "format_percent",
    "join_labels",
    "small_clusters",
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


def _line_candidates(values: np.ndarray, mask: np.ndarray) -> int | None:
    """Index of the entry to withhold next in one line (last entry = the line's total)."""
    free = np.flatnonzero(~mask[:-1])
    if free.size:
        vals = values[free]
        nonzero = free[vals > 0]
        if nonzero.size:
            return int(nonzero[np.argmin(values[nonzero])])
        return int(free[0])
    if not mask[-1]:
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
    """Entry whose withholding closes a cycle through ``edge`` (interior, non-zero, smallest
    first); ``blocked`` entries (withheld, hidden or public) cannot be chosen."""
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
                margin = int(u == last_r) + int(c == last_c)
                cands.append((margin, 0 if val > 0 else 1, val, u, c))
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
                    k = _line_candidates(a[i], mask[i] | blocked_base[i])
                    if k is None:
                        return (~public).tobytes()
                    mask[i, k] = True
                    changed = True
            for j in range(a.shape[1]):
                if mask[:, j].sum() == 1 and not hidden[:, j].any():
                    k = _line_candidates(a[:, j], mask[:, j] | blocked_base[:, j])
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
# Clusters
# --------------------------------------------------------------------------------------------


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
        small = small_clusters(sizes, min_cell)
        assigned = sorted(k for k in sizes if k != UNASSIGNED and k not in small)
        shown = assigned + ([UNASSIGNED] if UNASSIGNED in sizes and UNASSIGNED not in small else [])
        return cls(sizes, shown, assigned, sorted(small), min_cell)

    def name(self, k: int) -> str:
        """Display name of cluster ``k``."""
        return cluster_name(k)

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
                    "n": None if sup else self.sizes[k],
                    "n_suppressed": sup,
                    "tested": k in self.tested,
                }
            )
        return {"min_cell": self.min_cell, "clusters": out}


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
        return NOT_SHOWN if n is None else str(int(n))
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
