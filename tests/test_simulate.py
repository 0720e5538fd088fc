"""Tests for cohortctl.simulate: planted truth is written, recoverable and deterministic."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from cohortctl import simulate
from cohortctl.simulate import SimulationResult, simulate_cohort

SMALL = dict(genes=40, methylation_features=30, mutation_genes=30)


def _read(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)


def _maf(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, separator="\t", quote_char=None, infer_schema_length=0)


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


def _logrank(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> float:
    """K-sample log-rank test p-value (no external survival package needed)."""
    groups = np.unique(group)
    k = groups.size
    o_minus_e = np.zeros(k)
    var = np.zeros((k, k))
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        n = at_risk.sum()
        d = ((time == t) & (event == 1)).sum()
        n_k = np.array([(at_risk & (group == g)).sum() for g in groups], dtype=float)
        d_k = np.array([((time == t) & (event == 1) & (group == g)).sum() for g in groups])
        o_minus_e += d_k - d * n_k / n
        if n > 1:
            frac = n_k / n
            var += d * (n - d) / (n - 1) * (np.diag(frac) - np.outer(frac, frac))
    stat = o_minus_e[:-1] @ np.linalg.solve(var[:-1, :-1], o_minus_e[:-1])
    return float(stats.chi2.sf(stat, k - 1))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    """The default cohort (500 patients, 4 subtypes, 2000 genes, noise 1)."""
    return simulate_cohort(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def truth(cohort: SimulationResult) -> dict:
    return json.loads(cohort.paths["truth_json"].read_text())


@pytest.fixture(scope="module")
def joined(cohort: SimulationResult) -> pl.DataFrame:
    clin = _read(cohort.paths["clinical"])
    return clin.join(_read(cohort.paths["truth"]), on="patient_id", validate="1:1")


def test_files_and_summary(cohort: SimulationResult) -> None:
    names = sorted(p.name for p in cohort.out_dir.iterdir())
    assert names == ["clinical.parquet", "expression.parquet", "methylation.parquet",
                     "mutations.maf", "truth.json", "truth.parquet"]  # no temp files left
    d = cohort.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["patients"] == 500 and d["genes"] == 2000 and d["methylation_features"] == 500
    assert sum(d["subtype_counts"]) == 500
    assert all(Path(p).exists() for p in d["paths"].values())


def test_patients_and_subtypes(cohort: SimulationResult) -> None:
    truth_tbl = _read(cohort.paths["truth"])
    assert truth_tbl.columns == ["patient_id", "subtype"]
    assert truth_tbl["patient_id"].to_list() == [f"SIM-{i:06d}" for i in range(1, 501)]
    counts = np.bincount(truth_tbl["subtype"].to_numpy(), minlength=4)
    assert counts.tolist() == cohort.subtype_counts
    assert counts.min() >= 50 and counts.max() < 250  # unequal but none tiny (>= 10%)
    assert len(set(counts.tolist())) > 1


def test_expression_table(cohort: SimulationResult) -> None:
    expr = _read(cohort.paths["expression"])
    assert expr.columns[0] == "patient_id"
    assert expr.columns[1:3] == ["GENE00001", "GENE00002"] and expr.width == 2001
    assert all(dt == pl.Float32 for dt in expr.dtypes[1:])
    ids = expr["patient_id"].to_list()
    assert ids == sorted(ids) and len(ids) == cohort.n_expression
    x = expr.drop("patient_id").to_numpy()
    missing = np.isnan(x).mean()
    assert 0.002 < missing < 0.01
    assert np.nanmin(x) >= 0 and 5.0 < np.nanmean(x) < 7.0
    # Realistic correlated modules: some gene pairs are strongly correlated.
    corr = np.corrcoef(np.nan_to_num(x[:, :300], nan=float(np.nanmean(x))), rowvar=False)
    assert (np.abs(corr[np.triu_indices(300, 1)]) > 0.4).sum() > 20


def test_methylation_table(cohort: SimulationResult) -> None:
    meth = _read(cohort.paths["methylation"])
    assert meth.columns[1] == "CPG000001" and meth.width == 501
    b = meth.drop("patient_id").to_numpy()
    assert b.dtype == np.float32
    assert np.nanmin(b) >= 0.0 and np.nanmax(b) <= 1.0
    assert np.isnan(b).any()
    # Bimodal like real arrays: many CpGs near 0 and many near 1.
    med = np.nanmedian(b, axis=0)
    assert (med < 0.2).mean() > 0.2 and (med > 0.8).mean() > 0.2


def test_missing_modality(cohort: SimulationResult, truth: dict) -> None:
    all_ids = set(_read(cohort.paths["clinical"])["patient_id"])
    expr_ids = set(_read(cohort.paths["expression"])["patient_id"])
    meth_ids = set(_read(cohort.paths["methylation"])["patient_id"])
    assert expr_ids | meth_ids == all_ids  # every patient has a molecular modality
    lacking = (all_ids - expr_ids) | (all_ids - meth_ids)
    assert len(lacking) == round(0.1 * 500)
    assert (all_ids - expr_ids) and (all_ids - meth_ids)
    mods = truth["modalities"]
    assert set(mods["lacking_expression"]) == all_ids - expr_ids
    assert mods["n_lacking_methylation"] == len(all_ids - meth_ids)


def test_mutations(cohort: SimulationResult, truth: dict, joined: pl.DataFrame) -> None:
    maf = _maf(cohort.paths["mutations"])
    for col in ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode", "Chromosome",
                "Start_Position", "Variant_Type", "Reference_Allele", "Tumor_Seq_Allele2",
                "Protein_Change"):
        assert col in maf.columns
    assert maf.height == cohort.n_mutations
    assert all(re.fullmatch(r"MUTG\d{4}", g) for g in maf["Hugo_Symbol"].unique())
    classes = maf["Variant_Classification"].value_counts()
    share = dict(zip(classes["Variant_Classification"], classes["count"] / maf.height,
                     strict=True))
    assert max(share, key=share.get) == "Missense_Mutation"
    for cls in ("Silent", "Nonsense_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins",
                "Splice_Site", "In_Frame_Del", "Intron", "3'UTR", "IGR"):
        assert cls in share, cls
    assert share["Silent"] > 0.08
    assert set(maf["Variant_Type"]) <= {"SNP", "DEL", "INS"}
    barcodes = set(maf["Tumor_Sample_Barcode"])
    patients = set(joined["patient_id"])
    assert barcodes <= patients
    wildtype = set(truth["mutations"]["wildtype_patients"])
    assert wildtype and wildtype <= patients - barcodes  # listed in clinical, absent from MAF
    # Drivers: frequent in their own subtype, rare elsewhere.
    sub = dict(zip(joined["patient_id"], joined["subtype"], strict=True))
    n_sub = np.bincount(joined["subtype"].to_numpy())
    for s, drivers in truth["mutations"]["driver_genes"].items():
        assert 3 <= len(drivers) <= 5
        for d in drivers:
            hit = set(maf.filter(pl.col("Hugo_Symbol") == d["gene"])["Tumor_Sample_Barcode"])
            inside = sum(sub[b] == int(s) for b in hit) / n_sub[int(s)]
            outside = sum(sub[b] != int(s) for b in hit) / (500 - n_sub[int(s)])
            assert inside > 0.3 and outside < 0.1, (d, inside, outside)


def test_clinical_table(cohort: SimulationResult, joined: pl.DataFrame) -> None:
    clin = _read(cohort.paths["clinical"])
    assert clin.columns == ["patient_id", "age", "sex", "stage", "treatment", "response",
                            "os_time", "os_event"]
    assert clin["age"].dtype == pl.Int64 and 18 <= clin["age"].min() <= clin["age"].max() <= 95
    assert set(clin["sex"]) == {"F", "M"}
    assert set(clin["stage"]) == {"I", "II", "III", "IV"}
    arms = clin["treatment"].value_counts()["count"].to_list()
    assert sorted(set(clin["treatment"])) == ["ARM_A", "ARM_B"] and max(arms) - min(arms) <= 1
    assert set(clin["response"]) == {0, 1}
    assert clin["os_time"].min() > 0
    censored = 1 - clin["os_event"].mean()
    assert 0.2 < censored < 0.4


def test_subtypes_recoverable(cohort: SimulationResult) -> None:
    expr = _read(cohort.paths["expression"])
    meth = _read(cohort.paths["methylation"])
    both = expr.join(meth, on="patient_id").join(_read(cohort.paths["truth"]), on="patient_id")
    y = both["subtype"].to_numpy()
    feats = []
    for frame, is_beta in ((expr, False), (meth, True)):
        x = both.select(frame.columns[1:]).to_numpy().astype(np.float64)
        if is_beta:
            x = np.log2(x / (1 - x))  # M-values
        x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
        sd = x.std(axis=0)
        feats.append((x - x.mean(axis=0)) / np.where(sd > 0, sd, 1))
    pcs = PCA(n_components=20, random_state=0).fit_transform(np.hstack(feats))
    labels = KMeans(n_clusters=4, n_init=10, random_state=0).fit_predict(pcs)
    assert both.height >= 400
    assert adjusted_rand_score(y, labels) >= 0.9


def _rates(frame: pl.DataFrame) -> dict[tuple[int, str], float]:
    g = frame.group_by("subtype", "treatment").agg(pl.col("response").mean())
    return {(s, t): r for s, t, r in g.iter_rows()}


def test_response_interaction(joined: pl.DataFrame, truth: dict) -> None:
    rates = _rates(joined)
    preferred = truth["response"]["preferred_arm"]
    assert sum(a is not None for a in preferred.values()) >= 2
    for s, arm in preferred.items():
        other = "ARM_B" if arm == "ARM_A" else "ARM_A"
        if arm is None:  # refractory subtype: poor on both arms
            assert rates[(int(s), "ARM_A")] < 0.35 and rates[(int(s), "ARM_B")] < 0.35
        else:
            assert rates[(int(s), arm)] - rates[(int(s), other)] > 0.3, (s, rates)
    # Both arms are best for some subtype: a qualitative interaction.
    assert {a for a in preferred.values() if a} == {"ARM_A", "ARM_B"}


def test_no_interaction_control(tmp_path: Path) -> None:
    res = simulate_cohort(tmp_path, patients=4000, interaction=False, **SMALL)
    t = json.loads(res.paths["truth_json"].read_text())["response"]
    assert t["interaction"] is False
    logit = t["logit"]
    arm_effect = {round(v["ARM_B"] - v["ARM_A"], 6) for v in logit.values()}
    assert len(arm_effect) == 1  # additive on the logit scale
    df = _read(res.paths["clinical"]).join(_read(res.paths["truth"]), on="patient_id")
    rates = _rates(df)
    diffs = [rates[(s, "ARM_B")] - rates[(s, "ARM_A")] for s in range(4)]
    assert max(abs(d) for d in diffs) < 0.25
    assert max(diffs) - min(diffs) < 0.25


def test_survival_effect(joined: pl.DataFrame, tmp_path: Path) -> None:
    p = _logrank(joined["os_time"].to_numpy(), joined["os_event"].to_numpy(),
                 joined["subtype"].to_numpy())
    assert p < 1e-3
    res = simulate_cohort(tmp_path, patients=500, survival_effect=False, **SMALL)
    hr = json.loads(res.paths["truth_json"].read_text())["survival"]["hazard_ratio"]
    assert all(v == hr["0"] for v in hr.values())  # no subtype effect planted
    df = _read(res.paths["clinical"]).join(_read(res.paths["truth"]), on="patient_id")
    p_null = _logrank(df["os_time"].to_numpy(), df["os_event"].to_numpy(),
                      df["subtype"].to_numpy())
    assert p_null > 1e-3


def test_same_seed_byte_identical(tmp_path: Path) -> None:
    kw = dict(patients=120, subtypes=3, batch_effect=0.5, **SMALL)
    a = simulate_cohort(tmp_path / "a", seed=7, **kw)
    b = simulate_cohort(tmp_path / "b", seed=7, **kw)
    c = simulate_cohort(tmp_path / "c", seed=8, **kw)
    ha, hb, hc = _hashes(a.out_dir), _hashes(b.out_dir), _hashes(c.out_dir)
    assert ha == hb and len(ha) == 6
    assert all(ha[k] != hc[k] for k in ha)


def test_csv_byte_identical_and_matches_parquet(tmp_path: Path) -> None:
    kw = dict(patients=60, subtypes=2, seed=3, **SMALL)
    a = simulate_cohort(tmp_path / "a", fmt="csv", **kw)
    b = simulate_cohort(tmp_path / "b", fmt="csv", **kw)
    pq_run = simulate_cohort(tmp_path / "p", fmt="parquet", **kw)
    assert _hashes(a.out_dir) == _hashes(b.out_dir)
    assert a.paths["expression"].name == "expression.csv"
    for key in ("expression", "methylation"):
        from_csv = pl.read_csv(a.paths[key]).with_columns(pl.exclude("patient_id")
                                                          .cast(pl.Float32))
        assert from_csv.equals(_read(pq_run.paths[key]))  # float32 text round-trips exactly
    assert pl.read_csv(a.paths["clinical"]).equals(_read(pq_run.paths["clinical"]))
    assert a.paths["mutations"].read_bytes() == pq_run.paths["mutations"].read_bytes()


def test_values_independent_of_chunk_rows(tmp_path: Path) -> None:
    kw = dict(patients=2300, subtypes=3, seed=11, **SMALL)  # spans several RNG blocks
    runs = {c: simulate_cohort(tmp_path / str(c), chunk_rows=c, **kw) for c in (7, 1000, 5000)}
    ref = runs[5000]
    assert pq.ParquetFile(runs[7].paths["expression"]).num_row_groups > 100
    for res in runs.values():
        for key in ("expression", "methylation", "clinical", "truth"):
            assert _read(res.paths[key]).equals(_read(ref.paths[key])), key
        for key in ("mutations", "truth_json"):
            assert res.paths[key].read_bytes() == ref.paths[key].read_bytes()


def test_streams_independent_of_other_parameters(tmp_path: Path) -> None:
    a = simulate_cohort(tmp_path / "a", patients=80, genes=30, methylation_features=20)
    b = simulate_cohort(tmp_path / "b", patients=80, genes=60, methylation_features=20)
    for key in ("clinical", "truth", "mutations", "methylation"):
        assert a.paths[key].read_bytes() == b.paths[key].read_bytes(), key


def test_batch_effect(tmp_path: Path) -> None:
    res = simulate_cohort(tmp_path, patients=300, batch_effect=2.0, missing_modality_rate=0.0,
                          genes=200, methylation_features=50, mutation_genes=20)
    clin = _read(res.paths["clinical"])
    assert clin.columns[-1] == "batch" and set(clin["batch"]) == {"B1", "B2"}
    expr = _read(res.paths["expression"]).join(clin.select("patient_id", "batch"),
                                               on="patient_id")
    x = expr.select(pl.selectors.starts_with("GENE")).to_numpy()
    in_b2 = (expr["batch"] == "B2").to_numpy()
    shift = np.abs(np.nanmean(x[in_b2], axis=0) - np.nanmean(x[~in_b2], axis=0))
    assert (shift > 0.5).mean() > 0.3  # "many genes" shifted
    assert json.loads(res.paths["truth_json"].read_text())["expression"]["n_batch_genes"] == 100


def test_single_treatment_and_edge_sizes(tmp_path: Path) -> None:
    res = simulate_cohort(tmp_path / "one", patients=40, subtypes=2, treatments=1, **SMALL)
    clin = _read(res.paths["clinical"])
    assert set(clin["treatment"]) == {"ARM_A"}
    assert "batch" not in clin.columns
    tiny = simulate_cohort(tmp_path / "tiny", patients=2, subtypes=1, genes=1, mutation_genes=0,
                           methylation_features=1, missing_modality_rate=0.9)
    assert _maf(tiny.paths["mutations"]).height == 0
    ids = set(_read(tiny.paths["expression"])["patient_id"])
    ids |= set(_read(tiny.paths["methylation"])["patient_id"])
    assert ids == {"SIM-000001", "SIM-000002"}


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subtypes=st.integers(1, 6), extra=st.integers(0, 60), treatments=st.integers(1, 4),
       rate=st.floats(0.0, 0.95), seed=st.integers(0, 2**32))
def test_design_invariants(tmp_path: Path, subtypes: int, extra: int, treatments: int,
                           rate: float, seed: int) -> None:
    n = 2 * subtypes + extra
    out = tmp_path / f"{subtypes}-{extra}-{treatments}-{rate}-{seed}"
    res = simulate_cohort(out, patients=n, subtypes=subtypes, treatments=treatments,
                          missing_modality_rate=rate, seed=seed, genes=3,
                          methylation_features=2, mutation_genes=4)
    truth_tbl = _read(res.paths["truth"])
    counts = np.bincount(truth_tbl["subtype"].to_numpy(), minlength=subtypes)
    assert counts.size == subtypes and counts.min() >= 2
    expr = set(_read(res.paths["expression"])["patient_id"])
    meth = set(_read(res.paths["methylation"])["patient_id"])
    ids = set(truth_tbl["patient_id"])
    assert expr | meth == ids
    assert len(ids - expr) + len(ids - meth) == int(np.floor(rate * n + 0.5))
    arms = _read(res.paths["clinical"])["treatment"].value_counts()["count"].to_numpy()
    assert arms.size == min(treatments, n) and arms.max() - arms.min() <= 1
    b = _read(res.paths["methylation"]).drop("patient_id").to_numpy()
    assert not (b < 0).any() and not (b > 1).any()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(patients=7, subtypes=4),
        dict(subtypes=0),
        dict(treatments=0),
        dict(missing_modality_rate=1.0),
        dict(missing_modality_rate=-0.1),
        dict(noise=-1.0),
        dict(noise=float("nan")),
        dict(fmt="xlsx"),
        dict(batch_effect=-0.5),
        dict(genes=0),
        dict(mutation_genes=-1),
        dict(methylation_features=0),
        dict(chunk_rows=0),
        dict(seed=-1),
        dict(patients=10.5),
    ],
)
def test_invalid_parameters(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        simulate_cohort(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # validated before anything is written


def test_failure_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(simulate, "_omic_block", boom)
    with pytest.raises(RuntimeError):
        simulate_cohort(tmp_path, patients=40, **SMALL)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["clinical.parquet", "mutations.maf", "truth.parquet"]  # no half files
