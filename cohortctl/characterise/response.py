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
from scipy import special, stats
from statsmodels.genmod import families
from statsmodels.genmod.generalized_linear_model import GLM
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
    publish_family,
    publish_test,
)
from cohortctl.characterise.privacy import (
    NOT_SHOWN,
    WITHHELD_MARK,
    CharacteriseInputError,
    ClusterLayout,
    Release,
    check_min_cell,
    cluster_name,
    format_count,
    format_number,
    join_labels,
    protect_nested,
    published,
    suppress_nested,
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
    """Test of a 2 x k table (rows: responders, non-responders); NaN when not testable.

    Chi-square test of independence (``scipy.stats.chi2_contingency``, Yates-corrected for
    2 x 2), or Fisher's exact test for a 2 x 2 table with an expected count below 5.
    """
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
        warnings.simplefilter("ignore", RuntimeWarning)
        res = GLM(y, x, family=families.Binomial()).fit()
    llf = float(res.llf)
    if not np.isfinite(llf) or not np.all(np.isfinite(res.params)):
        raise PerfectSeparationError("non-finite fit")
    mu = np.asarray(res.fittedvalues, dtype=float)
    # Quasi-complete separation: IRLS "converges" with a diverging coefficient and fitted
    # probabilities pinned at 0 or 1 (the MLE does not exist).
    if np.any(np.abs(res.params) > 15) or np.any((mu < 1e-7) | (mu > 1 - 1e-7)):
        raise PerfectSeparationError("quasi-complete separation")
    return llf


def interaction_lr_test(
    y: np.ndarray, cluster: np.ndarray, treatment: np.ndarray
) -> dict[str, Any]:
    """LR test of ``response ~ C(cluster) * C(treatment)`` vs ``C(cluster) + C(treatment)``.

    The interaction model is saturated in the cluster x treatment cells, so its maximised
    log-likelihood is computed exactly from the cell proportions (finite even when a cell has
    0% or 100% response); the additive logistic model is fitted with statsmodels (GLM
    Binomial). ``df`` = number of non-empty cells - rank of the additive design. Returns
    ``statistic``, ``df``, ``p`` (None when not testable, with a ``note``), ``separation``
    (True when the additive model cannot be fitted: perfect/quasi-complete separation) and
    ``sparse_cells`` (some cell has 0% or 100% response; the test is then approximate).
    """
    y = np.asarray(y, dtype=float)
    cluster = np.asarray(cluster)
    treatment = np.asarray(treatment, dtype=object)
    cl_levels = sorted(set(cluster.tolist()))
    tr_levels = sorted(set(treatment.tolist()))
    out: dict[str, Any] = {
        "statistic": None,
        "df": None,
        "p": None,
        "separation": False,
        "sparse_cells": False,
        "note": None,
        "method": "likelihood-ratio test: saturated cluster x treatment logistic model vs "
        "additive model (statsmodels GLM)",
    }
    if len(cl_levels) < 2 or len(tr_levels) < 2:
        out["note"] = "needs at least two clusters and two treatments"
        return out
    dc, dt = _dummies(cluster, cl_levels), _dummies(treatment, tr_levels)
    x_add = np.column_stack([np.ones(y.size), dc, dt])
    llf_full = 0.0
    n_cells = 0
    for c in cl_levels:
        for t in tr_levels:
            m = (cluster == c) & (treatment == t)
            n = int(m.sum())
            if n == 0:
                continue
            n_cells += 1
            r = float(y[m].sum())
            if r in (0.0, float(n)):
                out["sparse_cells"] = True
            llf_full += float(special.xlogy(r, r / n) + special.xlogy(n - r, 1 - r / n))
    df = n_cells - int(np.linalg.matrix_rank(x_add))
    if df <= 0:
        out["note"] = "no cluster has more than one treatment: interaction not estimable"
        return out
    out["df"] = df
    if y.sum() in (0, y.size):
        out["note"] = "response does not vary"
        out["df"] = None
        return out
    try:
        llf_add = _glm_llf(y, x_add)
    except (
        PerfectSeparationError,
        PerfectSeparationWarning,
        ConvergenceWarning,
        np.linalg.LinAlgError,
        ValueError,
    ):
        out["separation"] = True
        out["note"] = "additive model not estimable (separation)"
        return out
    lr = max(0.0, 2.0 * (llf_full - llf_add))
    out.update(statistic=lr, p=float(stats.chi2.sf(lr, df)))
    return out


@dataclass
class ResponseResult:
    """Result of :func:`response_by_cluster`.

    Display tables: ``table`` -- per cluster x treatment n evaluable, responders, rate (95%
    Wilson CI); ``tests`` -- per treatment, does response differ across clusters (chi-square /
    Fisher, BH q over treatments); ``cluster_tests`` -- per cluster, does response differ
    between treatments (BH q over clusters). Raw numbers: ``cells``, ``treatments``,
    ``by_cluster`` and ``interaction`` (cluster x treatment LR test).
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
    cluster_tests: pl.DataFrame = field(default_factory=pl.DataFrame)
    by_cluster: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable raw numbers (suppressed values are ``None`` + flag)."""
        return to_jsonable(
            {
                "min_cell": self.min_cell,
                "layout": self.layout,
                "cells": self.cells,
                "treatments": self.treatments,
                "by_cluster": self.by_cluster,
                "interaction": self.interaction,
                "excluded": self.excluded,
                "notes": self.notes,
            }
        )


def _published_rate(k: int, n: int) -> tuple[float, float, float]:
    """Rate and Wilson 95% interval from the counts as published (rounded under the strict
    profile: exact ones would give the counts back)."""
    k, n = published(k), published(n)
    lo, hi = _wilson(k, n)
    return k / n, lo, hi


def _rate_text(k: int, n: int, shown: bool) -> str:
    if not shown or n == 0:
        return NOT_SHOWN
    rate, lo, hi = _published_rate(k, n)
    return f"{100 * rate:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})"


_TEST_NAMES = {"chi2": "chi-square", "fisher": "Fisher", None: "not testable"}


def _test_table(results: list[dict[str, Any]], label: str, key: str) -> pl.DataFrame:
    """Published test results as strings: ``label`` (from ``key``), test, p, q."""
    return pl.DataFrame(
        [{label: r[key], "test": _TEST_NAMES[r["test"]], "p": display_p(r, "p"),
          "q": display_p(r, "q")} for r in results],
        schema={c: pl.String for c in [label, "test", "p", "q"]},
        orient="row",
    )


def response_by_cluster(
    df: pl.DataFrame,
    min_cell: int = 5,
    *,
    treatment_col: str = "treatment",
    response_col: str = "response",
    overall: bool = False,
    protect_missing: bool = True,
    release: Release | None = None,
) -> ResponseResult:
    """Response rates per cluster x treatment, interaction LR test and per-group tests.

    ``df`` has one row per clustered patient (every patient of the clustering, so that cluster
    sizes match the rest of the report) with columns ``cluster`` (-1 = unassigned),
    treatment and response (see :func:`parse_response`). Patients with missing treatment or
    response are excluded and counted (among displayed clusters). ``overall=True`` adds a
    per-treatment "overall" row (costs extra complementary suppression). Cluster sizes are
    public, so with ``protect_missing`` (default) a small number of excluded patients in a
    cluster withholds what would reveal it; ``protect_missing=False`` treats numbers of
    patients without response data as disclosable. With a ``release`` (and a ``patient_id``
    column) the counts are protected together with what other sections published about the
    same patients (:class:`~cohortctl.characterise.privacy.Release`).

    Whether the treatment effect differs between clusters is tested by the likelihood-ratio
    test of the cluster x treatment interaction (:func:`interaction_lr_test`); when that is
    not estimable (separation, too few patients) the per-cluster treatment tests with BH
    q-values (``cluster_tests``) are the fallback.
    """
    min_cell = check_min_cell(min_cell)
    for c in ("cluster", treatment_col, response_col):
        if c not in df.columns:
            raise CharacteriseInputError(f"response table lacks column {c!r}")
    if df["cluster"].null_count():
        raise CharacteriseInputError("cluster column has missing labels (use -1 for unassigned)")
    y_all = parse_response(df[response_col])
    trt_all = [
        None if t is None or not str(t).strip() else str(t).strip()
        for t in df[treatment_col].cast(pl.String).to_list()
    ]
    cl_all = df["cluster"].cast(pl.Int64).to_numpy()
    layout = ClusterLayout.from_labels(cl_all.tolist(), min_cell)
    ok = np.isfinite(y_all) & np.array([t is not None for t in trt_all], dtype=bool)
    # A cluster with fewer than min_cell analysed patients is not broken down by treatment:
    # which arms have a row would tell its few patients' arms (a missing row is a shown
    # zero), the numbers lacking data being public. Its patients count as excluded.
    thin = [k for k in layout.shown if 0 < int((ok & (cl_all == k)).sum()) < min_cell]
    ok &= ~np.isin(cl_all, thin)
    y = y_all[ok]
    cl = cl_all[ok]
    trt = np.array([t for t, o in zip(trt_all, ok, strict=True) if o], dtype=object)
    shown = layout.shown
    treatments = sorted(set(trt[np.isin(cl, shown)].tolist()))
    notes: list[str] = [
        "Response: CR/PR/responder/1/true = response; SD/PD/non-responder/0/false = no "
        "response; NE/unknown/missing excluded. Rates with 95% Wilson intervals."
    ]
    if layout.suppressed:
        notes.append(
            f"Groups with fewer than {min_cell} patients are counted only in the line "
            "'not clustered or withheld' "
            f"({', '.join(layout.suppressed_names)}) and excluded from counts and tests."
        )
    if -1 in shown:
        notes.append("Unassigned patients are shown but excluded from tests.")
    if thin:
        notes.append(f"Not broken down by treatment (fewer than {min_cell} patients with a "
                     "treatment and a response; counted as excluded): "
                     + ", ".join(cluster_name(k) for k in thin) + ".")

    n_arr = np.array([[int(((trt == g) & (cl == k)).sum()) for k in shown] for g in treatments])
    r_arr = np.array([[int(y[(trt == g) & (cl == k)].sum()) for k in shown] for g in treatments])
    n_arr = n_arr.reshape(len(treatments), len(shown)).astype(np.int64)
    r_arr = r_arr.reshape(len(treatments), len(shown)).astype(np.int64)
    excl = [layout.sizes[k] - int(n_arr[:, j].sum()) for j, k in enumerate(shown)]
    if release is None:
        sup = suppress_nested(
            [layout.sizes[k] for k in shown],
            [
                {
                    g: (int(n_arr[i, j]), int(r_arr[i, j]))
                    for i, g in enumerate(treatments)
                    if n_arr[i, j]
                }
                for j in range(len(shown))
            ],
            [[x] for x in excl],
            min_cell,
            group_totals=overall,
            protect_excluded=protect_missing,
        )
    else:
        if "patient_id" not in df.columns:
            raise CharacteriseInputError("response table lacks column 'patient_id' (needed to "
                                         "protect counts across sections)")
        where = release.positions(df["patient_id"].to_list())
        analysed = where[ok]
        sup = protect_nested(
            release,
            [where[cl_all == k] for k in shown],
            [{g: (analysed[(cl == k) & (trt == g)], analysed[(cl == k) & (trt == g) & (y == 1)])
              for i, g in enumerate(treatments) if n_arr[i, j]} for j, k in enumerate(shown)],
            [[where[(cl_all == k) & ~ok]] for k in shown],
            group_totals=overall,
            protect_excluded=protect_missing,
        )
    n_sup = np.array(
        [[sup.n[j].get(g, False) for j in range(len(shown))] for g in treatments], dtype=bool
    ).reshape(n_arr.shape)
    r_sup = np.array(
        [[sup.positive[j].get(g, False) for j in range(len(shown))] for g in treatments],
        dtype=bool,
    ).reshape(n_arr.shape)
    any_sup = n_sup | r_sup

    rows: list[dict[str, str]] = []
    cells: list[dict[str, Any]] = []
    treat_raw: list[dict[str, Any]] = []
    tested_cols = [shown.index(k) for k in layout.tested]
    for i, g in enumerate(treatments):
        for j, k in enumerate(shown):
            n, r = int(n_arr[i, j]), int(r_arr[i, j])
            if n == 0:
                continue
            show_rate = not any_sup[i, j]
            rate, lo, hi = _published_rate(r, n) if show_rate else (None, None, None)
            cells.append(
                {
                    "cluster": k,
                    "name": cluster_name(k),
                    "treatment": g,
                    "n": None if n_sup[i, j] else published(n),
                    "n_suppressed": bool(n_sup[i, j]),
                    "responders": None if r_sup[i, j] else published(r),
                    "responders_suppressed": bool(r_sup[i, j]),
                    "rate": rate,
                    "ci_lower": lo,
                    "ci_upper": hi,
                    "rate_withheld": not show_rate,
                }
            )
            rows.append(
                {
                    "cluster": cluster_name(k),
                    "treatment": g,
                    "n": format_count(n, bool(n_sup[i, j]), min_cell),
                    "responders": format_count(r, bool(r_sup[i, j]), min_cell),
                    "response rate (95% CI)": _rate_text(r, n, show_rate),
                }
            )
        tot_n, tot_r = int(n_arr[i].sum()), int(r_arr[i].sum())
        extra: dict[str, Any] = {}
        if overall:
            tn_sup = bool(sup.group_n_totals.get(g, False))
            tr_sup = bool(sup.group_positive_totals.get(g, False))
            rows.append(
                {
                    "cluster": "overall",
                    "treatment": g,
                    "n": format_count(tot_n, tn_sup, min_cell),
                    "responders": format_count(tot_r, tr_sup, min_cell),
                    "response rate (95% CI)": _rate_text(
                        tot_r, tot_n, not (tn_sup or tr_sup) and tot_n > 0
                    ),
                }
            )
            extra = {
                "n": None if tn_sup else published(tot_n),
                "n_suppressed": tn_sup,
                "responders": None if tr_sup else published(tot_r),
                "responders_suppressed": tr_sup,
            }
        table = np.vstack([r_arr[i], n_arr[i] - r_arr[i]])[:, tested_cols]
        test, stat, p = _two_by_k_test(table)
        treat_raw.append(
            {
                "treatment": g,
                **extra,
                "test": test,
                "statistic": stat if test else None,
                "p": p if test else None,
                "q": None,
                "_coarsen": bool(any_sup[i, tested_cols].any()),
            }
        )
    publish_family(treat_raw)
    tests = _test_table(treat_raw, "treatment", "treatment")

    # Per cluster: does response differ between treatments?
    by_cluster: list[dict[str, Any]] = []
    for j in tested_cols:
        k = shown[j]
        present = n_arr[:, j] > 0
        table = np.vstack([r_arr[present, j], n_arr[present, j] - r_arr[present, j]])
        test, stat, p = _two_by_k_test(table)
        by_cluster.append(
            {
                "cluster": k,
                "name": cluster_name(k),
                "treatments": [g for g, pr in zip(treatments, present, strict=True) if pr],
                "test": test,
                "statistic": stat if test else None,
                "p": p if test else None,
                "q": None,
                "_coarsen": bool(any_sup[present, j].any()),
            }
        )
    publish_family(by_cluster)
    cluster_tests = _test_table(by_cluster, "cluster", "name")

    tm = np.isin(cl, layout.tested)
    inter = interaction_lr_test(y[tm], cl[tm], trt[tm])
    inter["q"] = None
    publish_test(inter, bool(any_sup[:, tested_cols].any()))
    for key in ("q", "q_bound", "q_coarsened"):
        inter.pop(key, None)
    if (
        any(t["p_coarsened"] or t["q_coarsened"] for t in treat_raw + by_cluster)
        or inter["p_coarsened"]
    ):
        notes.append(
            "p/q-values are shown only as categories (<0.001, <0.01, <0.05, ≥0.05) for tests "
            "whose table has withheld counts (and q-values that would reveal such a test's "
            "p-value)."
        )
    if inter.get("p") is not None or inter.get("p_coarsened"):
        inter["fallback"] = None
        notes.append(
            f"Cluster x treatment interaction (LR test, df={inter['df']}): "
            + (
                f"chi2={format_number(inter['statistic'])}, "
                if inter.get("statistic") is not None
                else ""
            )
            + f"p={display_p(inter)}."
            + (
                " Some cluster x treatment cells have 0% or 100% response; the test is approximate."
                if inter.get("sparse_cells")
                else ""
            )
        )
    else:
        inter["fallback"] = "per-cluster treatment tests with BH FDR (cluster_tests)"
        notes.append(
            f"Cluster x treatment interaction test not computed ({inter.get('note')}); see the "
            "per-cluster treatment tests (chi-square / Fisher, Benjamini–Hochberg q-values)."
        )
    n_excl = int(sum(excl))
    x_sup = bool(sup.excluded_totals[0]) if shown else False
    if n_excl:
        what = (f"An undisclosed number ({WITHHELD_MARK}) of" if x_sup
                else str(published(n_excl)))
        notes.append(
            f"{what} patient(s) of the displayed clusters excluded for missing treatment or "
            "response."
        )
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
        excluded={"n_excluded": None if x_sup else published(n_excl),
                  "n_excluded_suppressed": x_sup},
        layout=layout.to_dict(),
        notes=notes,
        min_cell=min_cell,
        cluster_tests=cluster_tests,
        by_cluster=by_cluster,
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

    Only patients present in both tables are used; which clusters are displayed, tested or
    suppressed follows the whole clustering in ``labels``. The test uses the assigned clusters
    with >= ``min_cell`` patients; medians are withheld for cells with fewer than ``min_cell``
    non-missing values.
    """
    min_cell = check_min_cell(min_cell)
    joined = join_labels(outcome, labels, id_col=id_col, how="inner")
    # Cluster sizes (and so which clusters are suppressed) come from the whole clustering.
    layout = ClusterLayout.from_labels(labels["cluster"].cast(pl.Int64).to_list(), min_cell)
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
        row["highest median"] = max(tested_meds)[1] if tested_meds else NOT_SHOWN
        row["H"] = format_number(r["statistic"])
        row["p"] = format_p(r["p"])
        row["q"] = format_p(r["q"])
        rows.append(row)
    cols = [
        "feature",
        *[cluster_name(k) for k in shown],
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
