"""Mutation frequencies, Fisher enrichment and oncoprint against scipy / hand computations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cohortctl.characterise import mutation_enrichment
from cohortctl.characterise.multiple_testing import p_bound

SIZES = {0: 40, 1: 30, 2: 25, 9: 3, -1: 5}


@pytest.fixture(scope="module")
def data() -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(31)
    cl = np.repeat(list(SIZES), list(SIZES.values()))
    base = {
        "TP53": {0: 0.7, 1: 0.2, 2: 0.2},
        "KRAS": {0: 0.15, 1: 0.6, 2: 0.2},
        "PIK3CA": {0: 0.3, 1: 0.3, 2: 0.3},
        "RARE1": {0: 0.03, 1: 0.03, 2: 0.03},
        "NONE": {0: 0.0, 1: 0.0, 2: 0.0},
    }
    genes = list(base)
    m = np.zeros((cl.size, len(genes)), dtype=int)
    for j, g in enumerate(genes):
        prob = np.array([base[g].get(int(k), 0.5) for k in cl])
        m[:, j] = rng.random(cl.size) < prob
    ids = [f"T{i}" for i in range(cl.size)]
    mut = pl.DataFrame({"patient_id": ids, **{g: m[:, j] for j, g in enumerate(genes)}})
    labels = pl.DataFrame({"patient_id": ids, "cluster": cl})
    return mut, labels, m, cl


def test_enrichment_matches_fisher_exact(data) -> None:
    mut, labels, m, cl = data
    res = mutation_enrichment(mut, labels, top=5)
    genes = mut.columns[1:]
    tested = [0, 1, 2]
    pool = np.isin(cl, tested)  # suppressed cluster 9 and unassigned are not in "rest"
    ref_p = np.full((len(genes), 3), np.nan)
    ref_or = np.full((len(genes), 3), np.nan)
    for i in range(len(genes)):
        for g, k in enumerate(tested):
            a = int(m[cl == k, i].sum())
            b = int((cl == k).sum()) - a
            c = int(m[pool & (cl != k), i].sum())
            d = int((pool & (cl != k)).sum()) - c
            if a + c == 0:
                continue  # never mutated among tested patients: not tested
            fe = stats.fisher_exact([[a, b], [c, d]], alternative="greater")
            ref_p[i, g], ref_or[i, g] = fe.pvalue, fe.statistic
    ok = np.isfinite(ref_p)
    ref_q = np.full(ref_p.shape, np.nan)
    ref_q[ok] = multipletests(ref_p[ok], method="fdr_bh")[1]
    enr = res.enrichment
    assert enr.height == len(genes) * 3
    for row in enr.iter_rows(named=True):
        i, g = genes.index(row["gene"]), tested.index(row["cluster"])
        if not ok[i, g]:
            assert row["p"] is None and row["p_bound"] is None
        elif row["p_coarsened"]:
            assert row["p"] is None and row["odds_ratio"] is None
            assert row["p_bound"] == p_bound(ref_p[i, g])
        else:
            assert row["p"] == pytest.approx(ref_p[i, g], rel=1e-9)
            assert row["odds_ratio"] == pytest.approx(ref_or[i, g], rel=1e-9)
        if row["q"] is not None:
            assert row["q"] == pytest.approx(ref_q[i, g], rel=1e-9)
    top = enr.filter((pl.col("gene") == "TP53") & (pl.col("cluster") == 0)).row(0, named=True)
    assert top["q"] < 0.001
    assert res.table["gene"].to_list()[:2] == ["TP53", "KRAS"]
    assert res.table["most enriched in"].to_list()[:2] == ["cluster 0", "cluster 1"]


def test_frequencies_and_oncoprint(data) -> None:
    mut, labels, m, cl = data
    res = mutation_enrichment(mut, labels, top=4)
    genes = mut.columns[1:]
    for row in res.frequencies.iter_rows(named=True):
        x = m[cl == row["cluster"], genes.index(row["gene"])]
        assert row["n_patients"] == x.size
        if row["n_mutated_suppressed"]:
            assert row["n_mutated"] is None and row["frequency"] is None
        else:
            assert row["n_mutated"] == x.sum()
            assert row["frequency"] == pytest.approx(x.mean())
    assert 9 not in res.frequencies["cluster"].to_list()
    assert "NONE" not in res.top_genes
    op = res.oncoprint
    # the 5 unassigned patients are a shown group; only the small cluster 9 is folded away
    assert op.genes == res.top_genes and op.matrix.shape == (len(op.genes), 40 + 30 + 25 + 5)
    assert sorted(set(op.column_clusters)) == [-1, 0, 1, 2]
    assert "oncoprint" not in res.to_dict()  # patient-level: never in report data
    cc = np.array(op.column_clusters)
    for gi, gene in enumerate(op.genes):
        for k in (0, 1, 2, -1):
            block = op.matrix[gi, cc == k]
            fr = res.frequencies.filter((pl.col("gene") == gene) & (pl.col("cluster") == k))
            if fr["n_mutated_suppressed"].item():
                assert (block == -1).all()
            else:
                assert block.sum() == fr["n_mutated"].item()
    # Within a cluster, columns are sorted with mutated patients of the first gene first.
    first = op.matrix[0, cc == 0]
    if (first >= 0).all():
        assert (np.diff(first) <= 0).all()
    json = res.to_dict()
    assert "T1" not in str(json)


def test_missing_mutation_data_protected() -> None:
    ids = [f"Q{i}" for i in range(60)]
    cl = np.repeat([0, 1], 30)
    rng = np.random.default_rng(2)
    m = (rng.random((60, 2)) < 0.4).astype(int)
    labels = pl.DataFrame({"patient_id": ids, "cluster": cl})
    mut = pl.DataFrame({"patient_id": ids, "A": m[:, 0], "B": m[:, 1]}).slice(2)  # 2 lack data
    res = mutation_enrichment(mut, labels)
    w = res.layout["with_data"]
    assert w[0]["n"] is None and w[0]["n_suppressed"] and w[1]["n"] == 30
    assert res.layout["n_without_data"] is None
    assert res.frequencies.filter(pl.col("cluster") == 0)["frequency"].is_null().all()
    assert 0 not in res.oncoprint.column_clusters
    assert res.enrichment.is_empty()  # only one cluster left with a known denominator
    assert all("%" not in v for v in res.table["cluster 0"].to_list())
    lax = mutation_enrichment(mut, labels, protect_missing=False)
    assert lax.layout["with_data"][0]["n"] == 28 and lax.layout["n_without_data"] == 2
    assert lax.enrichment.height == 4
