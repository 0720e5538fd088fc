"""Treatment response per cluster, the cluster x treatment interaction test, and numeric outcomes.

Response coding (case-insensitive, surrounding spaces ignored):

* responder (1): ``1``, ``true``, ``yes``, ``y``, ``responder``, ``response``, ``responded``,
  ``r``, RECIST ``CR`` / ``PR`` (``complete response``, ``partial response``);
* non-responder (0): ``0``, ``false``, ``no``, ``n``, ``non-responder``, ``nonresponder``,
  ``non responder``, ``non-response``, ``no response``, ``nr``, RECIST ``SD`` / ``PD``
  (``stable disease``, ``progressive disease``);
* missing (excluded, counted): null / empty, ``NE``, ``not evaluable``, ``unknown``.

Booleans map True -> 1; numbers must be 0 or 1. Any other value raises
:class:`~cohortctl.characterise.privacy.CharacteriseInputError` (a ``ValueError``) naming it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.proportion import proportion_confint
from statsmodels.tools.sm_exceptions import (
    ConvergenceWarning,
    PerfectSeparationError,
    PerfectSeparationWarning,
)

from cohortctl.characterise.multiple_testing import (
    bh_qvalues,
    display_p,
    format_p,
    publish_test,
)
from cohortctl.characterise.privacy import (
    NOT_SHOWN,
    SUPPRESSED_CLUSTER,
    CharacteriseInputError,
    ClusterLayout,
    check_min_cell,
    cluster_name,
    format_count,
    format_number,
    join_labels,
    suppress_with_margins,
    to_jsonable,
)

__all__ = [
    "NON_RESPONDER_LABELS",
    "RESPONDER_LABELS",
    "OutcomeTable",
    "ResponseResult",
    "outcome_table_by_cluster",
    "parse_response",
    "response_by_cluster",
]

RESPONDER_LABELS = frozenset(
    {
        "1",
        "true",
        "yes",
        "y",
        "responder",
        "response",
        "responded",
        "r",
        "cr",
        "pr",
        "complete response",
        "partial response",
    }
)
NON_RESPONDER_LABELS = frozenset(
    {
        "0",
        "false",
        "no",
        "n",
        "non-responder",
        "nonresponder",
        "non responder",
        "non-response",
        "no response",
        "nr",
        "sd",
        "pd",
        "stable disease",
        "progressive disease",
    }
)
MISSING_LABELS = frozenset({"", "ne", "not evaluable", "unknown"})


def parse_response(s: pl.Series) -> np.ndarray:
    """Map a response column to 1.0 / 0.0 / NaN (missing); see the module docstring."""
    if s.dtype == pl.Boolean:
        return s.cast(pl.Float64).to_numpy().astype(float)
    if s.dtype.is_numeric():
        v = s.cast(pl.Float64).fill_nan(None).to_numpy().astype(float)
        bad = v[np.isfinite(v) & ~np.isin(v, [0.0, 1.0])]
        if bad.size:
            raise CharacteriseInputError(
                f"response column {s.name!r} must be 0/1, found value {bad[0]!r}"
            )
        return v
    out = np.full(s.len(), np.nan)
    for i, raw in enumerate(s.cast(pl.String).to_list()):
        if raw is None:
            continue
        key = " ".join(raw.strip().lower().split())
        if key in RESPONDER_LABELS:
            out[i] = 1.0
        elif key in NON_RESPONDER_LABELS:
            out[i] = 0.0
        elif key in MISSING_LABELS:
            continue
        else:
            raise CharacteriseInputError(
                f"response column {s.name!r} has unrecognised value {raw!r}; expected 0/1, "
                "responder/non-responder or RECIST CR/PR/SD/PD"
            )
    return out


def _wilson(k: int, n: int) -> tuple[float, float]:
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def _two_by_k_test(table: np.ndarray) -> tuple[str | None, float, float]:
    """Test of a (responders, non-responders) x clusters table; NaN when not testable."""
    t = table[:, table.sum(axis=0) > 0]
    if t.shape[1] < 2 or np.any(t.sum(axis=1) == 0):
        return None, float("nan"), float("nan")
    expected = stats.contingency.expected_freq(t)
    if t.shape == (2, 2) and expected.min() < 5:
        res = stats.fisher_exact(t)
        return "fisher", float(res.statistic), float(res.pvalue)
    res = stats.chi2_contingency(t)
    return "chi2", float(res.statistic), float(res.pvalue)


def _dummies(codes: np.ndarray, levels: list[Any]) -> np.ndarray:
    return (
        np.column_stack([(codes == lv).astype(float) for lv in levels[1:]])
        if len(levels) > 1
        else np.zeros((codes.size, 0))
    )


def _glm_llf(y: np.ndarray, x: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("error", ConvergenceWarning)
        res = sm.GLM(y, x, family=sm.families.Binomial()).fit()
    llf = float(res.llf)
    if not np.isfinite(llf) or not np.all(np.isfinite(res.params)):
        raise PerfectSeparationError("non-finite fit")
    return llf


def interaction_lr_test(
    y: np.ndarray, cluster: np.ndarray, treatment: np.ndarray
) -> dict[str, Any]:
    """LR test of ``response ~ C(cluster) * C(treatment)`` vs the additive model (GLM Binomial).

    Returns ``statistic``, ``df``, ``p`` (None when not testable) and ``separation`` (True when
    a cluster x treatment cell has 0% or 100% response, or the fit fails).
    """
    cl_levels = sorted(set(cluster.tolist()))
    tr_levels = sorted(set(treatment.tolist()))
    out: dict[str, Any] = {
        "statistic": None,
        "df": None,
        "p": None,
        "separation": False,
        "method": "likelihood-ratio test, logistic GLM (statsmodels)",
    }
    if len(cl_levels) < 2 or len(tr_levels) < 2:
        out["note"] = "needs at least two clusters and two treatments"
        return out
    for c in cl_levels:
        for t in tr_levels:
            m = (cluster == c) & (treatment == t)
            if m.any() and (y[m].min() == y[m].max()):
                out["separation"] = True
    dc, dt = _dummies(cluster, cl_levels), _dummies(treatment, tr_levels)
    inter = np.column_stack(
        [dc[:, [i]] * dt[:, [j]] for i in range(dc.shape[1]) for j in range(dt.shape[1])]
    )
    inter = inter[:, inter.any(axis=0)]
    x_add = np.column_stack([np.ones(y.size), dc, dt])
    x_full = np.column_stack([x_add, inter])
    df = int(np.linalg.matrix_rank(x_full) - np.linalg.matrix_rank(x_add))
    out["df"] = df
    if df == 0:
        out["note"] = "no cluster has more than one treatment: interaction not estimable"
        out["df"] = None
        return out
    if out["separation"]:
        return out
    try:
        llf_full = _glm_llf(y, x_full)
        llf_add = _glm_llf(y, x_add)
    except (
        PerfectSeparationError,
        PerfectSeparationWarning,
        ConvergenceWarning,
        np.linalg.LinAlgError,
        ValueError,
    ):
        out["separation"] = True
        return out
    lr = max(0.0, 2.0 * (llf_full - llf_add))
    out.update(statistic=lr, p=float(stats.chi2.sf(lr, df)))
    return out


@dataclass
class ResponseResult:
    """Result of :func:`response_by_cluster`.

    ``table`` (display): per cluster x treatment n evaluable, responders, rate (95% Wilson CI).
    ``tests`` (display): per-treatment test across clusters with BH q. ``cells``/``treatments``/
    ``interaction`` hold the raw numbers.
    """

    table: pl.DataFrame
    tests: pl.DataFrame
    cells: list[dict[str, Any]]
    treatments: list[dict[str, Any]]
    interaction: dict[str, Any]
    excluded: dict[str, Any]
    layout: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    min_cell: int = 5

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable raw numbers (suppressed values are ``None`` + flag)."""
        return to_jsonable(
            {
                "min_cell": self.min_cell,
                "layout": self.layout,
                "cells": self.cells,
                "treatments": self.treatments,
                "interaction": self.interaction,
                "excluded": self.excluded,
                "notes": self.notes,
            }
        )


def _rate_text(k: int, n: int, shown: bool) -> str:
    if not shown or n == 0:
        return NOT_SHOWN
    lo, hi = _wilson(k, n)
    return f"{100 * k / n:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})"


def response_by_cluster(
    df: pl.DataFrame,
    min_cell: int = 5,
    *,
    treatment_col: str = "treatment",
    response_col: str = "response",
    overall: bool = False,
) -> ResponseResult:
    """Response rates per cluster x treatment, interaction LR test and per-treatment tests.

    ``df`` has columns ``patient_id``, ``cluster`` (-1 = unassigned), treatment and response.
    Patients with missing treatment or response are excluded and counted. ``overall=True``
    adds a per-treatment "overall" row (costs extra complementary suppression).
    """
    min_cell = check_min_cell(min_cell)
    for c in ("cluster", treatment_col, response_col):
        if c not in df.columns:
            raise CharacteriseInputError(f"response table lacks column {c!r}")
    if df["cluster"].null_count():
        raise CharacteriseInputError("cluster column has missing labels (use -1 for unassigned)")
    y_all = parse_response(df[response_col])
    trt_all = df[treatment_col].cast(pl.String).to_list()
    cl_all = df["cluster"].cast(pl.Int64).to_numpy()
    layout = ClusterLayout.from_labels(cl_all.tolist(), min_cell)
    ok = np.isfinite(y_all) & np.array([t is not None for t in trt_all])
    n_excl = int((~ok).sum())
    y = y_all[ok]
    cl = cl_all[ok]
    trt = np.array([t for t, o in zip(trt_all, ok, strict=True) if o], dtype=object)
    treatments = sorted(set(trt.tolist()))
    shown = layout.shown
    notes: list[str] = [
        "Response: CR/PR/responder/1/true = response; SD/PD/non-responder/0/false = no "
        "response; NE/unknown/missing excluded. Rates with 95% Wilson intervals."
    ]
    if layout.suppressed:
        notes.append(
            f"Clusters with fewer than {min_cell} patients are suppressed "
            f"({', '.join(layout.suppressed_names)}) and excluded from counts and tests."
        )
    if -1 in shown:
        notes.append("Unassigned patients are shown but excluded from tests.")

    rows: list[dict[str, str]] = []
    cells: list[dict[str, Any]] = []
    treat_raw: list[dict[str, Any]] = []
    any_tested_sup = False
    for g in treatments:
        gm = trt == g
        r = np.array([int(y[gm & (cl == k)].sum()) for k in shown], dtype=np.int64)
        n = np.array([int((gm & (cl == k)).sum()) for k in shown], dtype=np.int64)
        sup = suppress_with_margins(
            np.vstack([r, n - r]), min_cell, row_totals="shown" if overall else "hidden"
        )
        for j, k in enumerate(shown):
            if n[j] == 0:
                continue
            n_sup = bool(sup.col_totals[j])
            r_sup = bool(sup.cells[0, j])
            show_rate = not (n_sup or r_sup or sup.cells[1, j])
            lo, hi = _wilson(int(r[j]), int(n[j])) if show_rate else (None, None)
            cells.append(
                {
                    "cluster": k,
                    "name": cluster_name(k),
                    "treatment": g,
                    "n": None if n_sup else int(n[j]),
                    "n_suppressed": n_sup,
                    "responders": None if r_sup else int(r[j]),
                    "responders_suppressed": r_sup,
                    "rate": float(r[j] / n[j]) if show_rate else None,
                    "ci_lower": lo,
                    "ci_upper": hi,
                    "rate_withheld": not show_rate,
                }
            )
            rows.append(
                {
                    "cluster": cluster_name(k),
                    "treatment": g,
                    "n": format_count(int(n[j]), n_sup, min_cell),
                    "responders": format_count(int(r[j]), r_sup, min_cell),
                    "response rate (95% CI)": _rate_text(int(r[j]), int(n[j]), show_rate),
                }
            )
        tot_n, tot_r = int(n.sum()), int(r.sum())
        t_show = not (sup.grand_total or sup.row_totals[0] or sup.row_totals[1])
        if overall:
            rows.append(
                {
                    "cluster": "overall",
                    "treatment": g,
                    "n": format_count(tot_n, bool(sup.grand_total), min_cell),
                    "responders": format_count(tot_r, bool(sup.row_totals[0]), min_cell),
                    "response rate (95% CI)": _rate_text(tot_r, tot_n, t_show and tot_n > 0),
                }
            )
        tested_cols = [shown.index(k) for k in layout.tested]
        table = np.vstack([r, n - r])[:, tested_cols]
        test, stat, p = _two_by_k_test(table)
        treat_raw.append(
            {
                "treatment": g,
                **(
                    {
                        "n": None if sup.grand_total else tot_n,
                        "n_suppressed": bool(sup.grand_total),
                        "responders": None if sup.row_totals[0] else tot_r,
                        "responders_suppressed": bool(sup.row_totals[0]),
                    }
                    if overall
                    else {}
                ),
                "test": test,
                "statistic": stat if test else None,
                "p": p if test else None,
                "q": None,
                "_coarsen": bool(sup.cells[:, tested_cols].any()),
            }
        )
        any_tested_sup |= bool(sup.cells[:, tested_cols].any())
    for k in layout.suppressed:
        rows.append(
            {
                "cluster": cluster_name(k),
                "treatment": SUPPRESSED_CLUSTER,
                "n": f"<{min_cell}",
                "responders": SUPPRESSED_CLUSTER,
                "response rate (95% CI)": SUPPRESSED_CLUSTER,
            }
        )
    q = bh_qvalues([t["p"] if t["p"] is not None else np.nan for t in treat_raw])
    for t, qq in zip(treat_raw, q, strict=True):
        t["q"] = float(qq) if np.isfinite(qq) else None
        publish_test(t, t.pop("_coarsen"))
    tests = pl.DataFrame(
        [
            {
                "treatment": t["treatment"],
                "test": {"chi2": "chi-square", "fisher": "Fisher", None: "not testable"}[t["test"]],
                "p": display_p(t, "p"),
                "q": display_p(t, "q"),
            }
            for t in treat_raw
        ],
        schema={c: pl.String for c in ["treatment", "test", "p", "q"]},
        orient="row",
    )

    tm = np.isin(cl, layout.tested)
    inter = interaction_lr_test(y[tm], cl[tm], trt[tm])
    inter["q"] = None
    publish_test(inter, any_tested_sup)
    inter.pop("q")
    inter.pop("q_bound", None)
    if any(t["p_coarsened"] for t in treat_raw) or inter["p_coarsened"]:
        notes.append(
            "p/q-values are shown only as categories (<0.001, <0.01, <0.05, ≥0.05) for tests "
            "whose table has withheld counts."
        )
    if inter.get("separation"):
        inter["fallback"] = "per-treatment tests across clusters with BH FDR (see tests)"
        notes.append(
            "Interaction test not computed: perfect or quasi-complete separation (a cluster x "
            "treatment cell with 0% or 100% response). Falling back to per-treatment tests of "
            "response across clusters (chi-square / Fisher) with Benjamini–Hochberg q-values."
        )
    elif inter.get("p") is not None or inter.get("p_coarsened"):
        notes.append(
            f"Cluster x treatment interaction (LR test, df={inter['df']}): "
            f"chi2={format_number(inter['statistic'])}, p={display_p(inter)}."
        )
    elif inter.get("note"):
        notes.append(f"Interaction test not computed: {inter['note']}.")
    if n_excl:
        shown_n = format_count(n_excl, 0 < n_excl < min_cell, min_cell, standalone=True)
        notes.append(f"{shown_n} patient(s) excluded for missing treatment or response.")
    display = pl.DataFrame(
        rows,
        schema={
            c: pl.String
            for c in ["cluster", "treatment", "n", "responders", "response rate (95% CI)"]
        },
        orient="row",
    )
    return ResponseResult(
        table=display,
        tests=tests,
        cells=cells,
        treatments=treat_raw,
        interaction=inter,
        excluded={
            "n_excluded": None if 0 < n_excl < min_cell else n_excl,
            "n_excluded_suppressed": 0 < n_excl < min_cell,
        },
        layout=layout.to_dict(),
        notes=notes,
        min_cell=min_cell,
    )


# --------------------------------------------------------------------------------------------
# Numeric outcomes (e.g. drug IC50)
# --------------------------------------------------------------------------------------------


@dataclass
class OutcomeTable:
    """Result of :func:`outcome_table_by_cluster`.

    ``table`` (display): the ``top`` features most different across clusters (by q, then p)
    with per-cluster medians. ``features``: raw numbers for every feature.
    """

    table: pl.DataFrame
    features: list[dict[str, Any]]
    layout: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    min_cell: int = 5

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable raw numbers (withheld medians are ``None`` + flag)."""
        return to_jsonable(
            {
                "min_cell": self.min_cell,
                "layout": self.layout,
                "features": self.features,
                "top": self.table["feature"].to_list(),
                "skipped": self.skipped,
                "notes": self.notes,
            }
        )


def outcome_table_by_cluster(
    outcome: pl.DataFrame,
    labels: pl.DataFrame,
    min_cell: int = 5,
    top: int = 20,
    *,
    id_col: str = "patient_id",
) -> OutcomeTable:
    """Kruskal–Wallis test per numeric outcome across clusters, BH q, cluster medians, top N.

    Only patients present in both tables are used. Medians are withheld for cells with fewer
    than ``min_cell`` non-missing values.
    """
    min_cell = check_min_cell(min_cell)
    joined = join_labels(outcome, labels, id_col=id_col, how="inner")
    layout = ClusterLayout.from_labels(joined["cluster"].to_list(), min_cell)
    feats = [c for c in outcome.columns if c not in (id_col, "cluster")]
    skipped = [c for c in feats if not joined[c].dtype.is_numeric()]
    feats = [c for c in feats if c not in skipped]
    cl = joined["cluster"].to_numpy()
    shown = layout.shown
    idx = {k: np.flatnonzero(cl == k) for k in shown}
    raw: list[dict[str, Any]] = []
    for f in feats:
        v = joined[f].cast(pl.Float64).fill_nan(None).to_numpy().astype(float)
        meds = {}
        for k in shown:
            x = v[idx[k]]
            x = x[np.isfinite(x)]
            meds[k] = float(np.median(x)) if x.size >= min_cell else None
        groups = [v[idx[k]][np.isfinite(v[idx[k]])] for k in layout.tested]
        groups = [g for g in groups if g.size]
        stat = p = float("nan")
        if len(groups) >= 2:
            allv = np.concatenate(groups)
            if not np.all(allv == allv[0]):
                res = stats.kruskal(*groups)
                stat, p = float(res.statistic), float(res.pvalue)
        raw.append(
            {
                "feature": f,
                "statistic": stat,
                "p": p,
                "q": None,
                "medians": [
                    {
                        "cluster": k,
                        "name": cluster_name(k),
                        "median": meds[k],
                        "median_withheld": meds[k] is None,
                    }
                    for k in shown
                ],
            }
        )
    q = bh_qvalues([r["p"] for r in raw])
    for r, qq in zip(raw, q, strict=True):
        r["q"] = float(qq) if np.isfinite(qq) else None
        if not np.isfinite(r["p"]):
            r["p"] = r["statistic"] = None
    order = sorted(
        range(len(raw)),
        key=lambda i: (
            raw[i]["q"] if raw[i]["q"] is not None else 2.0,
            raw[i]["p"] if raw[i]["p"] is not None else 2.0,
            raw[i]["feature"],
        ),
    )[: max(0, int(top))]
    rows = []
    for i in order:
        r = raw[i]
        row = {"feature": r["feature"]}
        tested_meds = [
            (m["median"], m["name"])
            for m in r["medians"]
            if m["median"] is not None and m["cluster"] in layout.tested
        ]
        for m in r["medians"]:
            row[m["name"]] = format_number(m["median"])
        for k in layout.suppressed:
            row[cluster_name(k)] = SUPPRESSED_CLUSTER
        row["highest median"] = max(tested_meds)[1] if tested_meds else NOT_SHOWN
        row["H"] = format_number(r["statistic"])
        row["p"] = format_p(r["p"])
        row["q"] = format_p(r["q"])
        rows.append(row)
    cols = [
        "feature",
        *[cluster_name(k) for k in shown],
        *[cluster_name(k) for k in layout.suppressed],
        "highest median",
        "H",
        "p",
        "q",
    ]
    notes = [
        "Kruskal–Wallis test across assigned clusters with at least "
        f"{min_cell} patients; Benjamini–Hochberg q over {len(raw)} outcomes; medians withheld "
        f"for cells with fewer than {min_cell} values."
    ]
    if skipped:
        notes.append("Non-numeric outcome columns skipped: " + ", ".join(skipped) + ".")
    return OutcomeTable(
        table=pl.DataFrame(rows, schema={c: pl.String for c in cols}, orient="row"),
        features=raw,
        layout=layout.to_dict(),
        skipped=skipped,
        notes=notes,
        min_cell=min_cell,
    )
