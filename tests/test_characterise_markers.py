"""Marker statistics (cluster vs rest) against scipy and hand computations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cohortctl.characterise import markers


def _smd(a: np.ndarray, b: np.ndarray) -> float:
    pooled = np.sqrt(
        ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    )
    return (a.mean() - b.mean()) / pooled


@pytest.fixture(scope="module")
def data() -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    # Cluster 2 is small (7) so its comparisons use scipy's exact p-value; 9 is suppressed
    # (3 patients) and -1 unassigned: both are left out of every comparison.
    cl = np.repeat([0, 1, 2, 9, -1], [40, 30, 7, 3, 6])
    x = rng.normal(size=(cl.size, 12))
    x[cl == 0, 0] += 3.0  # planted marker of cluster 0
    x[cl == 1, 1] -= 3.0  # planted (down) marker of cluster 1
    x[cl == 2, 2] += 3.0
    x[5, 3] = np.nan
    x[:, 4] = np.round(x[:, 4])  # ties
    ids = [f"M{i}" for i in range(cl.size)]
    mat = pl.DataFrame({"patient_id": ids, **{f"f{j}": x[:, j] for j in range(12)}})
    labels = pl.DataFrame({"patient_id": ids, "cluster": cl})
    return mat, labels, x, cl


def test_statistics_match_scipy_and_hand(data) -> None:
    mat, labels, x, cl = data
    res = markers(mat, labels, top=3)
    st = res.stats
    assert sorted(st["cluster"].unique().to_list()) == [0, 1, 2]
    pool = np.isin(cl, [0, 1, 2])
    p_all = []
    for row in st.iter_rows(named=True):
        j = int(row["feature"][1:])
        v = x[:, j]
        a = v[(cl == row["cluster"]) & np.isfinite(v)]
        b = v[pool & (cl != row["cluster"]) & np.isfinite(v)]
        assert row["smd"] == pytest.approx(_smd(a, b), rel=1e-9)
        assert row["effect"] == pytest.approx(a.mean() - b.mean(), rel=1e-9)
        assert row["mean_in"] == pytest.approx(a.mean()) and row["mean_rest"] == pytest.approx(
            b.mean()
        )
        ref = stats.mannwhitneyu(a, b, alternative="two-sided")  # method="auto"
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        p_all.append(row["p"])
    ref_q = multipletests(np.array(p_all), method="fdr_bh")[1]
    np.testing.assert_allclose(st["q"].to_numpy(), ref_q, rtol=1e-9)
    assert res.effect_kind == "mean_difference"


def test_top_markers_and_heatmap(data) -> None:
    mat, labels, x, cl = data
    res = markers(mat, labels, top=3)
    top = {
        r["cluster"]: [t["feature"] for t in res.top_raw if t["cluster"] == r["cluster"]]
        for r in res.top_raw
    }
    assert top[0][0] == "f0" and top[1][0] == "f1" and top[2][0] == "f2"
    f1 = next(t for t in res.top_raw if t["cluster"] == 1 and t["feature"] == "f1")
    assert f1["direction"] == "down" and f1["q"] < 0.05
    # Heatmap: displayed clusters x union of top features; z-scale over displayed patients.
    # the unassigned group is large enough to be shown; the small cluster is folded away
    assert res.heatmap["cluster"].to_list() == ["cluster 0", "cluster 1", "cluster 2",
                                                "unassigned"]
    shown = np.isin(cl, [0, 1, 2, -1])
    for feat in res.heatmap.columns[1:]:
        v = x[:, int(feat[1:])]
        z = (v - np.nanmean(v[shown])) / np.nanstd(v[shown], ddof=1)
        for k, val in zip([0, 1, 2, -1], res.heatmap[feat].to_list(), strict=True):
            assert val == pytest.approx(np.nanmean(z[cl == k]))
    d = res.to_dict()
    assert d["heatmap"]["features"] == res.heatmap.columns[1:]
    assert "cluster 9" not in str(d["top"]) and "M1" not in str(d)


def test_counts_use_log2_fold_change_and_small_cluster_withheld() -> None:
    rng = np.random.default_rng(4)
    cl = np.repeat([0, 1], [20, 20])
    counts = rng.poisson(np.where(cl[:, None] == 0, [30, 5, 5], [5, 5, 5]), size=(40, 3))
    counts[:17, 2] = -1  # will be made missing: cluster 0 keeps only 3 values
    ids = [f"C{i}" for i in range(40)]
    mat = pl.DataFrame(
        {"patient_id": ids, **{f"g{j}": counts[:, j].astype(float) for j in range(3)}}
    ).with_columns(pl.when(pl.col("g2") < 0).then(None).otherwise(pl.col("g2")).alias("g2"))
    labels = pl.DataFrame({"patient_id": ids, "cluster": cl})
    res = markers(mat, labels)
    assert res.effect_kind == "log2_fold_change"
    row = res.stats.filter((pl.col("feature") == "g0") & (pl.col("cluster") == 0)).row(
        0, named=True
    )
    a, b = counts[cl == 0, 0], counts[cl == 1, 0]
    assert row["effect"] == pytest.approx(np.log2((a.mean() + 1) / (b.mean() + 1)))
    g2 = res.stats.filter(pl.col("feature") == "g2")
    assert g2["withheld"].all() and g2["p"].is_null().all()
