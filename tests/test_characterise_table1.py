"""Table 1 against independent computations (numpy quantiles, scipy tests, hand BH)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cohortctl.characterise import table_one
from cohortctl.characterise.privacy import WITHHELD_MARK


@pytest.fixture(scope="module")
def cohort() -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(11)
    sizes = {0: 60, 1: 50, 2: 40}
    cl = np.repeat(list(sizes), list(sizes.values()))
    n = cl.size
    ids = [f"PT-{i:03d}" for i in range(n)]
    age = rng.normal(50 + 6 * cl, 8).round(1) + 0.05
    age[[3, 9, 17, 23, 31]] = np.nan  # 5 missing, all in cluster 0
    stage_p = {0: [0.6, 0.2, 0.2], 1: [0.2, 0.5, 0.3], 2: [0.2, 0.2, 0.6]}
    stage = [str(rng.choice(["I", "II", "III"], p=stage_p[int(k)])) for k in cl]
    smoker = rng.random(n) < np.where(cl == 1, 0.5, 0.2)
    clinical = pl.DataFrame(
        {
            "patient_id": ids,
            "age": age,
            "stage": stage,
            "smoker": smoker,
            "sample_id": [f"S{i}" for i in range(n)],
            "note": [f"free text {i}" for i in range(n)],
        }
    )
    labels = pl.DataFrame({"patient_id": ids, "cluster": cl})
    return clinical, labels


def test_numeric_median_iqr_and_kruskal(cohort) -> None:
    clinical, labels = cohort
    res = table_one(clinical, labels)
    var = next(v for v in res.variables if v["variable"] == "age")
    cl = labels["cluster"].to_numpy()
    age = clinical["age"].to_numpy()
    groups = []
    for cell in var["cells"]:
        x = age[cl == cell["cluster"]]
        x = x[np.isfinite(x)]
        groups.append(x)
        q1, med, q3 = (float(f"{v:.3g}") for v in np.percentile(x, [25, 50, 75]))
        # published quantiles are rounded to 3 significant figures, in the raw output too
        assert cell["median"] == med and cell["q1"] == q1 and cell["q3"] == q3
        assert cell["n"] == x.size
    kw = stats.kruskal(*groups)
    assert var["test"] == "kruskal"
    assert var["statistic"] == pytest.approx(kw.statistic)
    assert var["p"] == pytest.approx(kw.pvalue)
    row = res.table.filter((pl.col("variable") == "age") & (pl.col("level") == ""))
    assert row["statistic"].item() == "median [IQR]"
    med0 = [float(f"{v:.3g}") for v in np.percentile(groups[0], [25, 50, 75])]
    assert row["cluster 0"].item() == f"{med0[1]:.1f} [{med0[0]:.1f}, {med0[2]:.1f}]"
    miss = res.table.filter((pl.col("variable") == "age") & (pl.col("level") == "missing"))
    assert miss["cluster 0"].item() == "5 (8.3%)" and miss["cluster 1"].item() == "0 (0.0%)"


def test_small_missing_count_and_its_complement_withheld(cohort) -> None:
    clinical, labels = cohort
    age = clinical["age"].to_numpy().copy()
    age[[3, 9, 17, 23]] = 50.5  # now 1 missing in cluster 0
    res = table_one(clinical.with_columns(pl.Series("age", age)), labels, columns=["age"])
    miss = res.table.filter(pl.col("level") == "missing")
    assert miss["cluster 0"].item() == WITHHELD_MARK
    cell = res.variables[0]["cells"][0]
    # n non-missing (59) would reveal 60 - 59 = 1 missing: withheld too; the median is not.
    assert cell["missing"] is None and cell["n"] is None and cell["median"] is not None
    # protect_missing=False publishes the missing counts (structural elsewhere in reports).
    lax = table_one(clinical.with_columns(pl.Series("age", age)), labels, columns=["age"],
                    protect_missing=False)
    assert lax.table.filter(pl.col("level") == "missing")["cluster 0"].item().startswith("1 (")
    assert lax.variables[0]["cells"][0]["n"] == 59


def test_categorical_counts_percent_chi2_and_q(cohort) -> None:
    clinical, labels = cohort
    res = table_one(clinical, labels)
    var = next(v for v in res.variables if v["variable"] == "stage")
    cl = labels["cluster"].to_numpy()
    stage = np.array(clinical["stage"].to_list())
    table = np.array(
        [[np.sum((stage == lv) & (cl == k)) for k in (0, 1, 2)] for lv in ["I", "II", "III"]]
    )
    for i, lev in enumerate(var["levels"]):
        assert lev["level"] == ["I", "II", "III"][i]
        for j, cell in enumerate(lev["cells"]):
            if not cell["n_suppressed"]:
                assert cell["n"] == table[i, j]
                assert cell["percent"] == pytest.approx(100 * table[i, j] / (cl == j).sum())
    assert table.min() >= 5  # fixture: nothing withheld, so the test is published exactly
    chi = stats.chi2_contingency(table)
    assert var["test"] == "chi2"
    assert var["p"] == pytest.approx(chi.pvalue)
    assert var["statistic"] == pytest.approx(chi.statistic)
    # Boolean -> 2 x 3 chi-square; q-values are BH over the tested variables.
    smoker = clinical["smoker"].to_numpy()
    t2 = np.array([[np.sum((smoker == v) & (cl == k)) for k in (0, 1, 2)] for v in (False, True)])
    sm = next(v for v in res.variables if v["variable"] == "smoker")
    assert sm["p"] == pytest.approx(stats.chi2_contingency(t2).pvalue)
    age = next(v for v in res.variables if v["variable"] == "age")
    ps = [age["p"], var["p"], sm["p"]]
    assert all(p is not None for p in ps) and not var["p_coarsened"]
    qs = multipletests(ps, method="fdr_bh")[1].tolist()
    assert [age["q"], var["q"], sm["q"]] == pytest.approx(qs)


def test_a_rare_level_is_pooled_not_pinned_to_its_cluster() -> None:
    """A lone "Inuit" patient: the level never appears; pooled with the most common level,
    nothing is withheld (before: "Inuit" * / 0 pinned the patient, and hid "White")."""
    ids = [f"p{i}" for i in range(60)]
    eth = ["White"] * 29 + ["Inuit"] + ["White"] * 20 + ["Black"] * 10
    res = table_one(pl.DataFrame({"patient_id": ids, "ethnicity": eth}),
                    pl.DataFrame({"patient_id": ids, "cluster": [0] * 30 + [1] * 30}))
    assert "Inuit" not in res.table.write_csv() and "Inuit" not in str(res.to_dict())
    rows = res.table.filter(pl.col("variable") == "ethnicity")
    assert rows["level"].to_list() == ["Black", "White or other"]
    assert rows["cluster 0"].to_list() == ["0 (0.0%)", "30 (100.0%)"]
    assert "*" not in rows.write_csv()
    # Several rare levels that together reach min_cell keep a level of their own.
    eth2 = ["White"] * 40 + ["A", "B", "C"] * 2 + ["Black"] * 14
    res2 = table_one(pl.DataFrame({"patient_id": ids, "ethnicity": eth2}),
                     pl.DataFrame({"patient_id": ids, "cluster": [0] * 30 + [1] * 30}))
    levels = res2.table.filter(pl.col("variable") == "ethnicity")["level"].to_list()
    assert levels == ["Black", "White", "other (rare levels)"]


def test_identifier_like_and_free_text_columns_skipped(cohort) -> None:
    clinical, labels = cohort
    res = table_one(clinical, labels)
    skipped = {d["column"]: d["reason"] for d in res.skipped}
    assert "sample_id" in skipped and "note" in skipped
    assert "PT-" not in res.table.write_csv() and "PT-" not in str(res.to_dict())


def test_fisher_for_sparse_2x2_and_level_only_in_suppressed_cluster() -> None:
    # Two clusters of 12 and 10, a binary column with small expected counts -> Fisher;
    # a third cluster of 3 has the only "rare" level, which must not appear at all. The five
    # unassigned patients are a group of min_cell: shown, never withheld for cluster 2.
    ids = [f"id{i}" for i in range(30)]
    cl = [0] * 12 + [1] * 10 + [2] * 3 + [-1] * 5
    flag = ["yes"] * 1 + ["no"] * 11 + ["yes"] * 6 + ["no"] * 4 + ["rare"] * 3 + ["no"] * 5
    clinical = pl.DataFrame({"patient_id": ids, "flag": flag})
    labels = pl.DataFrame({"patient_id": ids, "cluster": cl})
    res = table_one(clinical, labels)
    var = res.variables[0]
    assert [lev["level"] for lev in var["levels"]] == ["no", "yes"]
    assert "rare" not in res.table.write_csv()
    assert "cluster 2" not in res.table.columns
    assert res.table.filter(pl.col("variable") == "N")["unassigned"].item() == "5"
    assert var["test"] == "fisher"
    # The cluster-0 "yes" cell (1) is withheld, so the p-value is only a category.
    assert var["p_coarsened"] and var["p"] is None and var["p_bound"] is not None
    assert stats.fisher_exact([[11, 4], [1, 6]]).pvalue < 0.05


def test_overall_column_and_validation(cohort) -> None:
    clinical, labels = cohort
    res = table_one(clinical, labels, columns=["stage"], overall=True)
    row = res.table.filter(pl.col("level") == "I")
    stage = np.array(clinical["stage"].to_list())
    n_i = int((stage == "I").sum())
    assert row["overall"].item().startswith(f"{n_i} (")
    with pytest.raises(ValueError):
        table_one(clinical, labels, columns=["nope"])
    with pytest.raises(ValueError):
        table_one(clinical, pl.concat([labels, labels.head(1)]))
