"""Table 1: clinical characteristics per cluster, with tests of difference across clusters.

Per clinical column and displayed cluster:

* numeric -> median [IQR] of the non-missing values (withheld when there are fewer than
  ``min_cell``; quantiles of >= ``min_cell`` values do not reveal a withheld count), and the
  number missing; Kruskal–Wallis test across clusters;
* categorical / boolean (and integer 0/1) -> ``n (%)`` per level, chi-square test of the
  level x cluster table (Fisher's exact test for a 2 x 2 table with an expected count < 5).
  Only levels present in displayed clusters are listed.
  Percentages use the cluster size (missing included) as denominator, so the level and
  "missing" percentages of a cluster add to 100.

Missing counts are shown per column. Tests use assigned clusters with >= ``min_cell`` patients
(unassigned and suppressed clusters are excluded); BH q-values are computed across the tested
columns. The "overall" column sums the displayed clusters only (suppressed clusters are left
out so that they cannot be recovered by subtraction). Identifier-like or high-cardinality
columns are skipped with a note naming the column, never its values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from cohortctl.characterise.multiple_testing import (
    display_p,
    publish_family,
)
from cohortctl.characterise.privacy import (
    NOT_SHOWN,
    SUPPRESSED_CLUSTER,
    CharacteriseInputError,
    ClusterLayout,
    Release,
    Suppression,
    check_min_cell,
    cluster_name,
    format_count,
    format_number,
    join_labels,
    published,
    published_percent,
    suppress_with_margins,
    to_jsonable,
)

__all__ = ["TableOne", "linked_columns", "table_one"]

#: Column names that look like identifiers (skipped whatever their content).
_ID_SUFFIX = re.compile(r"(?:^|[_\W])(?:id|ids|uuid|guid|barcode|mrn|ssn)$", re.IGNORECASE)
_ID_CAMEL = re.compile(r"[a-z](?:ID|Id|IDs|Ids)$")
_ID_WHOLE = re.compile(
    r"^(?:patient|sample|subject|case|name|patient_?name|full_?name)$", re.IGNORECASE
)


def looks_like_id_name(name: str) -> bool:
    """Whether a column name suggests identifiers (``*_id``, ``PatientID``, ``barcode``...)."""
    return bool(_ID_SUFFIX.search(name) or _ID_CAMEL.search(name) or _ID_WHOLE.match(name))


@dataclass
class TableOne:
    """Result of :func:`table_one`.

    ``table`` is the display table (strings); ``variables`` the raw numbers per column (with
    suppression applied); ``skipped`` columns not summarised and why.
    """

    table: pl.DataFrame
    variables: list[dict[str, Any]]
    clusters: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    min_cell: int = 5

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable raw numbers (suppressed values are ``None`` + flag)."""
        return to_jsonable(
            {
                "min_cell": self.min_cell,
                "clusters": self.clusters,
                "variables": self.variables,
                "skipped": self.skipped,
                "notes": self.notes,
            }
        )


def _kind(name: str, s: pl.Series) -> str | None:
    dt = s.dtype
    if dt == pl.Boolean:
        return "categorical"
    if dt.is_numeric():
        vals = s.drop_nulls()
        if dt.is_integer() and vals.len() and vals.is_in([0, 1]).all():
            return "categorical"
        return "numeric"
    if dt in (pl.String, pl.Categorical) or isinstance(dt, pl.Enum):
        return "categorical"
    return None


def _skip_reason(
    name: str, s: pl.Series, kind: str | None, ids: set[str], max_levels: int
) -> str | None:
    if kind is None:
        return f"unsupported type {s.dtype}"
    if looks_like_id_name(name):
        return "name looks like an identifier"
    vals = s.drop_nulls()
    if vals.is_empty():
        return None
    if kind == "categorical" and s.dtype != pl.Boolean and not s.dtype.is_numeric():
        text = vals.cast(pl.String)
        if text.is_in(list(ids)).any():
            return "contains patient identifiers"
        n_unique = text.n_unique()
        if n_unique > max_levels:
            return f"high cardinality (> {max_levels} levels)"
        if n_unique == vals.len() and vals.len() >= 3:
            return "unique per patient (identifier-like)"
    if kind == "numeric" and s.dtype.is_integer():
        text = vals.cast(pl.String)
        if vals.n_unique() == vals.len() and text.is_in(list(ids)).any():
            return "contains patient identifiers"
    return None


def _determines(frame: pl.DataFrame, a: str, b: str) -> bool:
    """Whether column ``a`` determines ``b`` (each value of ``a`` goes with one value of
    ``b``) on the rows where both have a value, ``b`` taking at least two values."""
    both = frame.select(pl.col(a).cast(pl.String), pl.col(b).cast(pl.String)).drop_nulls()
    if both.height == 0 or both[b].n_unique() < 2:
        return False
    return int(both.group_by(a).agg(pl.col(b).n_unique()).get_column(b).max()) == 1


def linked_columns(frame: pl.DataFrame, columns: Sequence[str],
                   anchors: Sequence[str]) -> list[str]:
    """The categorical ``columns`` whose counts must be protected together with others: a
    column that determines, or is determined by, an ``anchor`` (the treatment, event or
    response column: 'vital_status' beside the event, 'regimen' copying the treatment) or
    another such column ('stage' and 'stage_group'). Protected one by one, two columns that
    are functions of each other choose different complements and give each other's
    withheld cells back. Includes the anchors that are among ``columns``."""
    cats = [c for c in columns if _kind(c, frame[c]) == "categorical"]
    nodes = list(dict.fromkeys([*cats, *(a for a in anchors if a in frame.columns)]))
    edges = {c: set() for c in nodes}
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if _determines(frame, a, b) or _determines(frame, b, a):
                edges[a].add(b)
                edges[b].add(a)
    linked: set[str] = set()
    for c in nodes:
        if c in linked or (not edges[c] and c not in anchors):
            continue
        stack, seen = [c], {c}
        while stack:
            for d in edges[stack.pop()] - seen:
                seen.add(d)
                stack.append(d)
        if len(seen) > 1 or c in anchors:
            linked |= seen
    return [c for c in cats if c in linked]


def _levels(s: pl.Series) -> list[Any]:
    dt = s.dtype
    if isinstance(dt, pl.Enum):
        present = set(s.drop_nulls().cast(pl.String).to_list())
        return [v for v in dt.categories.to_list() if v in present]
    if dt != pl.Boolean:
        s = s.cast(pl.String)
    vals = s.drop_nulls().unique().to_list()
    return sorted(vals, key=lambda v: (str(type(v)), v))


RARE_LEVELS = "other (rare levels)"
QUANTILE_DIGITS = 3  # significant figures of published medians and quartiles


def _round_sig(x: float) -> float:
    """A published quantile, rounded to :data:`QUANTILE_DIGITS` significant figures (in
    the JSON too): an unrounded quartile of a few patients is one patient's exact value."""
    x = float(x)
    return x if x == 0 or not math.isfinite(x) else float(f"{x:.{QUANTILE_DIGITS}g}")


def _pool_rare_levels(levels: list[Any], values: list[Any], on_shown: np.ndarray,
                      min_cell: int) -> tuple[list[Any], list[Any], str]:
    """Levels held by fewer than ``min_cell`` displayed patients, pooled (global recoding).

    Showing a rare level with a withheld cell in one cluster and zeros elsewhere pins its
    patients (a lone "Inuit" patient) to that cluster, and complementary suppression then
    hides the common levels too. Rare levels become one :data:`RARE_LEVELS` level; when that
    pool is itself below ``min_cell``, it joins the most common level ("White or other"),
    where it changes the fewest proportions and is least likely to make a small cell.
    Returns the new levels, the recoded values and the pooled level's label ("" if none).
    """
    counts: dict[Any, int] = {}
    for v, shown in zip(values, on_shown, strict=True):
        if shown and v is not None:
            counts[v] = counts.get(v, 0) + 1
    rare = [lev for lev in levels if counts.get(lev, 0) < min_cell]
    if not rare or min_cell <= 1:
        return levels, values, ""
    kept = [lev for lev in levels if lev not in rare]
    label = RARE_LEVELS
    if sum(counts.get(lev, 0) for lev in rare) < min_cell and kept:
        host = max(kept, key=lambda lev: (counts[lev], str(lev)))
        label = f"{host} or other"
        kept = [label if lev == host else lev for lev in kept]
        pooled = set(rare) | {host}
    else:
        kept.append(label)
        pooled = set(rare)
    return kept, [label if v in pooled else v for v in values], label


def _suppress(counts: np.ndarray, missing_row: bool, min_cell: int, row_totals: str,
              protect_missing: bool) -> Suppression:
    """Suppression of a variable's levels x clusters table (cluster sizes public).

    With ``protect_missing=False`` (the report's policy) the last row, the patients lacking
    the value, is structural and published: only the levels are protected, against the
    cluster sizes minus the missing counts (public too)."""
    if protect_missing or not missing_row:
        return suppress_with_margins(counts, min_cell, row_totals=row_totals,
                                     col_totals="public")
    inner = suppress_with_margins(counts[:-1], min_cell, row_totals=row_totals,
                                  col_totals="public")
    return Suppression(np.vstack([inner.cells, np.zeros((1, counts.shape[1]), bool)]),
                       np.append(inner.row_totals, False), inner.col_totals,
                       inner.grand_total)


def _suppress_in_release(release: Release, positions: np.ndarray, members: list[np.ndarray],
                         codes: np.ndarray, n_rows: int, has_missing: bool,
                         overall: bool) -> Suppression:
    """:func:`_suppress` within a :class:`Release` (cells as sets of patients), so that the
    counts other sections publish about the same patients (e.g. a treatment's patients per
    cluster in the response section) cannot give a withheld cell back. The missing row
    follows the release's ``protect_missing``, as in those sections.

    A cluster in which fewer than ``min_cell`` patients have a value (its size and missing
    count being public) gets every level withheld, zeros included: shown zeros would pin
    the one level its few patients share."""
    entries: list[tuple[np.ndarray, str, int]] = [(positions[m], "public", 1) for m in members]
    structural_missing = has_missing and not release.protect_missing
    with_value = [int((codes[m] != -1).sum()) for m in members]
    thin = [structural_missing and 0 < n < release.min_cell for n in with_value]
    cell_idx = np.zeros((n_rows, len(members)), dtype=np.int64)
    row_idx = []
    for i in range(n_rows):
        code = -1 if has_missing and i == n_rows - 1 else i
        structural = code == -1 and not release.protect_missing
        row = []
        for j, m in enumerate(members):
            cell_idx[i, j] = len(entries)
            row.append(positions[m[codes[m] == code]])
            st = "public" if structural else ("hidden" if thin[j] else "shown")
            entries.append((row[-1], st, 0))
        row_idx.append(len(entries))
        entries.append((np.concatenate(row), "shown" if overall else "hidden", 1))
    w = release.protect(entries)
    return Suppression(w[cell_idx], w[row_idx], np.zeros(len(members), bool), not overall)


def _cat_test(table: np.ndarray) -> tuple[str | None, float, float]:
    """Chi-square (or Fisher 2x2 with small expected counts) on levels x clusters."""
    t = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return None, float("nan"), float("nan")
    expected = stats.contingency.expected_freq(t)
    if t.shape == (2, 2) and expected.min() < 5:
        res = stats.fisher_exact(t)
        return "fisher", float(res.statistic), float(res.pvalue)
    res = stats.chi2_contingency(t)
    return "chi2", float(res.statistic), float(res.pvalue)


def _num_test(groups: list[np.ndarray]) -> tuple[str | None, float, float]:
    groups = [g for g in groups if g.size]
    if len(groups) < 2:
        return None, float("nan"), float("nan")
    allv = np.concatenate(groups)
    if np.all(allv == allv[0]):
        return None, float("nan"), float("nan")
    res = stats.kruskal(*groups)
    return "kruskal", float(res.statistic), float(res.pvalue)


def table_one(
    clinical: pl.DataFrame,
    labels: pl.DataFrame,
    columns: list[str] | None = None,
    min_cell: int = 5,
    *,
    id_col: str = "patient_id",
    max_levels: int = 20,
    overall: bool = False,
    protect_missing: bool = True,
    release: Release | None = None,
    release_columns: Sequence[str] = (),
) -> TableOne:
    """Summarise clinical columns per cluster (see module docstring).

    ``protect_missing`` (default) protects the numbers of patients lacking a value like any
    count; ``False`` publishes them (structural counts, the report's policy).
    ``release_columns`` (e.g. the treatment) are protected within ``release``, together with
    what other sections publish about the same patients.

    ``overall=True`` adds an "overall" column (sum of the displayed clusters). Because every
    row then has a displayed total, it costs extra complementary suppression.
    """
    min_cell = check_min_cell(min_cell)
    row_totals = "shown" if overall else "hidden"
    joined = join_labels(clinical, labels, id_col=id_col)
    layout = ClusterLayout.from_labels(joined["cluster"].to_list(), min_cell)
    if columns is None:
        columns = [c for c in clinical.columns if c not in (id_col, "cluster")]
    else:
        bad = [c for c in columns if c not in clinical.columns]
        if bad:
            raise CharacteriseInputError(f"clinical table has no column(s) {bad}")
        columns = [c for c in columns if c != id_col]
    ids = set(joined[id_col].cast(pl.String).to_list())

    shown = layout.shown
    tested = layout.tested
    # Folded groups (below min_cell) get no column: their size is in the report's one
    # "not clustered or withheld" line, and nothing else about them is shown.
    col_order = list(shown)
    col_names = [cluster_name(k) for k in col_order]
    sizes_shown = np.array([layout.sizes[k] for k in shown], dtype=np.int64)
    cl = joined["cluster"].to_numpy()
    shown_idx = {k: np.flatnonzero(cl == k) for k in shown}
    on_shown = np.isin(cl, shown)
    notes: list[str] = []
    if layout.suppressed:
        notes.append(
            f"Groups with fewer than {min_cell} patients ({', '.join(layout.suppressed_names)}) "
            "have no column; their patients are excluded from every count, summary and test"
            + (", and from the overall column." if overall else ".")
        )
    if -1 in shown:
        notes.append("Unassigned patients are shown but excluded from tests of difference.")

    rows: list[dict[str, str]] = []

    def display_row(variable: str, level: str, stat: str, cells: dict[int, str], overall: str):
        row = {"variable": variable, "level": level, "statistic": stat}
        for k, name in zip(col_order, col_names, strict=True):
            row[name] = cells.get(k, SUPPRESSED_CLUSTER if k in layout.suppressed else NOT_SHOWN)
        row["overall"] = overall
        row["test"] = ""
        row["p"] = ""
        row["q"] = ""
        rows.append(row)
        return row

    display_row(
        "N",
        "",
        "n",
        {k: str(published(layout.sizes[k])) for k in shown},
        str(published(int(sizes_shown.sum()))),
    )

    variables: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    first_rows: list[dict[str, str]] = []

    for name in columns:
        s = joined[name]
        kind = _kind(name, s)
        reason = _skip_reason(name, s, kind, ids, max_levels)
        if reason is not None:
            skipped.append({"column": name, "reason": reason})
            continue
        if not shown:
            skipped.append({"column": name, "reason": "no cluster large enough to display"})
            continue
        if kind == "numeric":
            vals = s.cast(pl.Float64).fill_nan(None).to_numpy()
            nonmiss = np.array([np.isfinite(vals[shown_idx[k]]).sum() for k in shown])
            miss = sizes_shown - nonmiss
            counts = np.vstack([nonmiss, miss])
            sup = _suppress(counts, True, min_cell, row_totals, protect_missing)
            cells_raw = []
            med_cells: dict[int, str] = {}
            miss_cells: dict[int, str] = {}
            for j, k in enumerate(shown):
                v = vals[shown_idx[k]]
                v = v[np.isfinite(v)]
                # The median of >= min_cell values does not reveal the (possibly withheld) count.
                withheld = v.size < min_cell
                if withheld or v.size == 0:
                    med = q1 = q3 = None
                else:
                    q1, med, q3 = (_round_sig(x) for x in np.percentile(v, [25, 50, 75]))
                m_sup = bool(sup.cells[1, j])
                cells_raw.append(
                    {
                        "cluster": k,
                        "name": cluster_name(k),
                        "n": None if sup.cells[0, j] else published(int(nonmiss[j])),
                        "n_suppressed": bool(sup.cells[0, j]),
                        "missing": None if m_sup else published(int(miss[j])),
                        "missing_suppressed": m_sup,
                        "median": med,
                        "q1": q1,
                        "q3": q3,
                        "summary_withheld": withheld,
                    }
                )
                med_cells[k] = (
                    NOT_SHOWN
                    if med is None
                    else f"{format_number(med)} [{format_number(q1)}, {format_number(q3)}]"
                )
                miss_cells[k] = _n_pct(int(miss[j]), m_sup, int(sizes_shown[j]), min_cell)
            allv = np.concatenate([vals[shown_idx[k]] for k in shown])
            allv = allv[np.isfinite(allv)]
            o_sup = bool(sup.row_totals[0])
            if allv.size < min_cell:
                o_stats: tuple[float | None, ...] = (None, None, None)
            else:
                o_stats = tuple(_round_sig(x) for x in np.percentile(allv, [25, 50, 75]))
            test, stat, p = _num_test(
                [vals[shown_idx[k]][np.isfinite(vals[shown_idx[k]])] for k in tested]
            )
            tot_miss = int(miss.sum())
            om_sup = bool(sup.row_totals[1])
            var = {
                "variable": name,
                "kind": "numeric",
                "test": test,
                "statistic": stat,
                "p": p,
                "q": None,
                "cells": cells_raw,
                "_coarsen": False,
                "overall": {
                    "n": None if o_sup else published(int(allv.size)),
                    "n_suppressed": o_sup,
                    "missing": None if om_sup else published(tot_miss),
                    "missing_suppressed": om_sup,
                    "median": o_stats[1],
                    "q1": o_stats[0],
                    "q3": o_stats[2],
                },
            }
            o_txt = (
                NOT_SHOWN
                if o_stats[1] is None
                else f"{format_number(o_stats[1])} [{format_number(o_stats[0])}, "
                f"{format_number(o_stats[2])}]"
            )
            first = display_row(name, "", "median [IQR]", med_cells, o_txt)
            if tot_miss > 0:
                display_row(
                    name,
                    "missing",
                    "n (%)",
                    miss_cells,
                    _n_pct(tot_miss, om_sup, int(sizes_shown.sum()), min_cell),
                )
        else:
            text = s.cast(pl.String) if s.dtype != pl.Boolean else s
            # Levels present in displayed clusters only: a level row of zeros would reveal
            # that a suppressed cluster has it.
            levels = _levels(s.filter(pl.Series(on_shown)))
            if not levels:
                skipped.append({"column": name, "reason": "no non-missing values"})
                continue
            lv = text.to_list()
            levels, lv, pooled = _pool_rare_levels(levels, lv, on_shown, min_cell)
            if pooled:
                notes.append(f"{name}: levels with fewer than {min_cell} patients are pooled "
                             f"as '{pooled}' (a rare level beside its cluster would single "
                             "its patients out).")
            level_idx = {lev: i for i, lev in enumerate(levels)}
            codes = np.array([level_idx.get(v, -1) if v is not None else -1 for v in lv])
            counts = np.zeros((len(levels) + 1, len(shown)), dtype=np.int64)
            for j, k in enumerate(shown):
                c = codes[shown_idx[k]]
                counts[:, j] = np.bincount(c + 1, minlength=len(levels) + 1)[
                    list(range(1, len(levels) + 1)) + [0]
                ]
            has_missing = counts[-1].sum() > 0
            if not has_missing:
                counts = counts[:-1]
            if release is not None and name in release_columns:
                sup = _suppress_in_release(
                    release, release.positions(joined[id_col].to_list()),
                    [shown_idx[k] for k in shown], codes, counts.shape[0], has_missing,
                    overall)
            else:
                sup = _suppress(counts, has_missing, min_cell, row_totals, protect_missing)
            level_names = [str(x) for x in levels] + (["missing"] if has_missing else [])
            lev_raw = []
            first = None
            for i, lname in enumerate(level_names):
                cells_raw = []
                cells_txt: dict[int, str] = {}
                for j, k in enumerate(shown):
                    n = int(counts[i, j])
                    cs = bool(sup.cells[i, j])
                    cells_raw.append(
                        {
                            "cluster": k,
                            "name": cluster_name(k),
                            "n": None if cs else published(n),
                            "n_suppressed": cs,
                            "percent": None if cs else published_percent(
                                n, int(sizes_shown[j])),
                        }
                    )
                    cells_txt[k] = _n_pct(n, cs, int(sizes_shown[j]), min_cell)
                tot = int(counts[i].sum())
                ts = bool(sup.row_totals[i])
                entry = {
                    "level": lname,
                    "is_missing": has_missing and i == len(level_names) - 1,
                    "cells": cells_raw,
                    "overall": {
                        "n": None if ts else published(tot),
                        "n_suppressed": ts,
                        "percent": None if ts else published_percent(
                            tot, int(sizes_shown.sum())),
                    },
                }
                lev_raw.append(entry)
                r = display_row(
                    name,
                    lname,
                    "n (%)",
                    cells_txt,
                    _n_pct(tot, ts, int(sizes_shown.sum()), min_cell),
                )
                if first is None:
                    first = r
            tested_cols = [shown.index(k) for k in tested]
            test, stat, p = _cat_test(counts[: len(levels)][:, tested_cols])
            var = {
                "variable": name,
                "kind": "categorical",
                "test": test,
                "statistic": stat,
                "p": p,
                "q": None,
                "levels": lev_raw,
                "_coarsen": bool(sup.cells[: len(levels)][:, tested_cols].any()),
            }
        variables.append(var)
        first_rows.append(first)

    publish_family(variables)
    coarsened = []
    for v, r in zip(variables, first_rows, strict=True):
        if v["p_coarsened"] or v["q_coarsened"]:
            coarsened.append(v["variable"])
        if v["test"] is None:
            r["test"] = "not testable"
        else:
            r["test"] = {"kruskal": "Kruskal–Wallis", "chi2": "chi-square", "fisher": "Fisher"}[
                v["test"]
            ]
        r["p"] = display_p(v, "p")
        r["q"] = display_p(v, "q")
    if coarsened:
        notes.append(
            "p/q-values are shown only as categories (<0.001, <0.01, <0.05, ≥0.05) for tests "
            "whose table has withheld counts (and q-values that would reveal such a test's "
            "p-value): " + ", ".join(coarsened) + "."
        )
    if skipped:
        notes.append(
            "Columns not summarised: "
            + "; ".join(f"{d['column']} ({d['reason']})" for d in skipped)
            + "."
        )
    schema = ["variable", "level", "statistic", *col_names, "overall", "test", "p", "q"]
    table = pl.DataFrame(rows, schema={c: pl.String for c in schema}, orient="row")
    if not overall:
        table = table.drop("overall")
        for v in variables:
            v.pop("overall", None)
            for lev in v.get("levels", []):
                lev.pop("overall", None)
    return TableOne(
        table=table,
        variables=variables,
        clusters=layout.to_dict(),
        skipped=skipped,
        notes=notes,
        min_cell=min_cell,
    )


def _n_pct(n: int, suppressed: bool, denom: int, min_cell: int) -> str:
    if suppressed:
        return format_count(n, True, min_cell)
    p = published_percent(n, denom)
    return f"{published(n)} ({p:.1f}%)" if p is not None else str(published(n))
