"""Treatment response and numeric outcomes against statsmodels / scipy / hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cohortctl.characterise import (
    interaction_lr_test,
    outcome_table_by_cluster,
    parse_response,
    response_by_cluster,
)


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def _trial(rates: dict[tuple[int, str], float], n_cell: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for (k, g), r in rates.items():
        y = rng.random(n_cell) < r
        rows += [(k, g, int(v)) for v in y]
    cl, trt, y = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "patient_id": [f"R{i}" for i in range(len(cl))],
            "cluster": cl,
            "treatment": trt,
            "response": y,
        }
    )


def _statsmodels_lr(df: pl.DataFrame) -> tuple[float, float]:
    pdf = pd.DataFrame(
        {"y": df["response"].to_numpy(), "cl": df["cluster"].to_numpy(), "trt": df["treatment"]}
    )
    full = smf.logit("y ~ C(cl) * C(trt)", pdf).fit(disp=0)
    add = smf.logit("y ~ C(cl) + C(trt)", pdf).fit(disp=0)
    lr = 2 * (full.llf - add.llf)
    return lr, stats.chi2.sf(lr, full.df_model - add.df_model)


def test_planted_interaction_detected_and_matches_statsmodels() -> None:
    df = _trial({(0, "A"): 0.8, (0, "B"): 0.2, (1, "A"): 0.2, (1, "B"): 0.8}, 100, seed=1)
    res = response_by_cluster(df)
    lr, p = _statsmodels_lr(df)
    assert res.interaction["statistic"] == pytest.approx(lr, rel=1e-6)
    assert res.interaction["p"] == pytest.approx(p, rel=1e-6, abs=1e-300)
    assert res.interaction["df"] == 1
    assert res.interaction["p"] < 0.001


def test_no_interaction_not_significant() -> None:
    df = _trial({(0, "A"): 0.6, (0, "B"): 0.3, (1, "A"): 0.6, (1, "B"): 0.3}, 100, seed=2)
    res = response_by_cluster(df)
    lr, p = _statsmodels_lr(df)
    assert res.interaction["statistic"] == pytest.approx(lr, rel=1e-6)
    assert res.interaction["p"] == pytest.approx(p, rel=1e-6)
    assert res.interaction["p"] > 0.05


def test_three_clusters_three_arms_interaction_df() -> None:
    rates = {(k, g): 0.3 + 0.1 * k + (0.2 if g == "C" else 0) for k in range(3) for g in "ABC"}
    df = _trial(rates, 40, seed=3)
    lr, p = _statsmodels_lr(df)
    out = interaction_lr_test(
        df["response"].to_numpy(), df["cluster"].to_numpy(), np.array(df["treatment"].to_list())
    )
    assert out["df"] == 4
    assert out["statistic"] == pytest.approx(lr, rel=1e-6)
    assert out["p"] == pytest.approx(p, rel=1e-6)


def test_rates_wilson_and_tests() -> None:
    df = _trial({(0, "A"): 0.7, (0, "B"): 0.4, (1, "A"): 0.3, (1, "B"): 0.5}, 30, seed=4)
    res = response_by_cluster(df)
    y = df["response"].to_numpy()
    cl = df["cluster"].to_numpy()
    trt = np.array(df["treatment"].to_list())
    for c in res.cells:
        m = (cl == c["cluster"]) & (trt == c["treatment"])
        k, n = int(y[m].sum()), int(m.sum())
        assert c["n"] == n and c["responders"] == k
        assert c["rate"] == pytest.approx(k / n)
        lo, hi = _wilson_by_hand(k, n)
        assert c["ci_lower"] == pytest.approx(lo) and c["ci_upper"] == pytest.approx(hi)
        row = res.table.filter(
            (pl.col("cluster") == f"cluster {c['cluster']}")
            & (pl.col("treatment") == c["treatment"])
        )
        assert row["response rate (95% CI)"].item() == (
            f"{100 * k / n:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})"
        )
    # Per treatment: response across clusters (2 x 2 -> Yates chi-square unless sparse).
    ps = []
    for t in res.treatments:
        m = trt == t["treatment"]
        tab = np.array([[y[m & (cl == k)].sum(), (1 - y[m & (cl == k)]).sum()] for k in (0, 1)]).T
        exp = stats.contingency.expected_freq(tab)
        ref = stats.fisher_exact(tab) if exp.min() < 5 else stats.chi2_contingency(tab)
        assert t["p"] == pytest.approx(ref.pvalue)
        ps.append(ref.pvalue)
    ref_q = multipletests(ps, method="fdr_bh")[1].tolist()
    assert [t["q"] for t in res.treatments] == pytest.approx(ref_q)
    # Per cluster: response across treatments, BH over clusters.
    ps = []
    for b in res.by_cluster:
        m = cl == b["cluster"]
        tab = np.array([[y[m & (trt == g)].sum(), (1 - y[m & (trt == g)]).sum()] for g in "AB"]).T
        exp = stats.contingency.expected_freq(tab)
        ref = stats.fisher_exact(tab) if exp.min() < 5 else stats.chi2_contingency(tab)
        assert b["p"] == pytest.approx(ref.pvalue)
        ps.append(ref.pvalue)
    ref_q = multipletests(ps, method="fdr_bh")[1].tolist()
    assert [b["q"] for b in res.by_cluster] == pytest.approx(ref_q)
    assert res.cluster_tests.height == 2


def test_separation_falls_back_to_per_cluster_tests() -> None:
    # Nobody responds to arm B in any cluster: the additive model has no finite MLE.
    df = _trial({(0, "A"): 0.7, (0, "B"): 0.0, (1, "A"): 0.3, (1, "B"): 0.0}, 30, seed=5)
    res = response_by_cluster(df)
    assert res.interaction["p"] is None and res.interaction["separation"]
    assert res.interaction["fallback"]
    assert all(b["p"] is not None for b in res.by_cluster)
    assert any("not computed" in n for n in res.notes)
    # Too few: each cluster received a single treatment -> no interaction df.
    one = _trial({(0, "A"): 0.5, (1, "B"): 0.5}, 30, seed=6)
    out = response_by_cluster(one).interaction
    assert out["p"] is None and out["df"] is None and "not estimable" in out["note"]


def test_parse_response_and_missing_excluded() -> None:
    s = pl.Series("r", ["CR", "pr", " SD ", "PD", "Responder", "non-responder", "NE", None, ""])
    out = parse_response(s)
    assert out[:6].tolist() == [1, 1, 0, 0, 1, 0] and np.isnan(out[6:]).all()
    with pytest.raises(ValueError, match="maybe"):
        parse_response(pl.Series("r", ["CR", "maybe"]))
    with pytest.raises(ValueError):
        parse_response(pl.Series("r", [0, 2]))
    df = _trial({(0, "A"): 0.5, (0, "B"): 0.5, (1, "A"): 0.5, (1, "B"): 0.5}, 25, seed=7)
    resp = df["response"].cast(pl.String).to_list()
    for i in range(8):  # 8 patients of cluster 0 without a response
        resp[i] = None
    res = response_by_cluster(df.with_columns(pl.Series("response", resp)))
    assert res.excluded == {"n_excluded": 8, "n_excluded_suppressed": False}
    assert sum(c["n"] for c in res.cells if c["cluster"] == 0) == 42


def test_outcome_table_kruskal_bh_and_medians() -> None:
    rng = np.random.default_rng(8)
    cl = np.repeat([0, 1, 2], [30, 25, 20])
    ids = [f"O{i}" for i in range(cl.size)]
    drugs = {
        "drugA": rng.normal(cl * 1.0, 1.0),
        "drugB": rng.normal(0, 1.0, cl.size),
        "drugC": rng.normal(cl * 0.3, 1.0),
    }
    drugs["drugB"][:3] = np.nan
    out = pl.DataFrame({"patient_id": ids, **drugs})
    labels = pl.DataFrame({"patient_id": ids, "cluster": cl})
    res = outcome_table_by_cluster(out, labels)
    ps = []
    for f in res.features:
        x = drugs[f["feature"]]
        groups = [x[(cl == k) & np.isfinite(x)] for k in (0, 1, 2)]
        ref = stats.kruskal(*groups)
        assert f["p"] == pytest.approx(ref.pvalue) and f["statistic"] == pytest.approx(
            ref.statistic
        )
        for m, g in zip(f["medians"], groups, strict=True):
            assert m["median"] == pytest.approx(np.median(g))
        ps.append(ref.pvalue)
    ref_q = multipletests(ps, method="fdr_bh")[1].tolist()
    assert [f["q"] for f in res.features] == pytest.approx(ref_q)
    assert res.table["feature"].to_list()[0] == "drugA"
    assert res.table["highest median"].to_list()[0] == "cluster 2"
