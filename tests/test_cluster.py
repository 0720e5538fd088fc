"""Clustering: agreement with known biology, planted truth, determinism, forbidden inputs."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from sklearn.metrics import adjusted_rand_score

from cohortctl.cli import main
from cohortctl.cluster.run import ClusterOptions, cluster
from cohortctl.errors import UsageError
from cohortctl.store import Store

ROOT = Path(__file__).resolve().parents[1]
BREAST = ROOT / "sample_data" / "breast_tcga"


@pytest.fixture(scope="module")
def breast_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cl") / "breast"
    code = main(["-q", "ingest", "-o", str(out), "--clinical", str(BREAST / "clinical.parquet"),
                 "--molecular", f"mrna={BREAST / 'mrna_train.parquet'}",
                 "--molecular", f"mirna={BREAST / 'mirna_train.parquet'}",
                 "--molecular", f"protein={BREAST / 'protein_train.parquet'}",
                 "--reference", "subtype"])
    assert code == 0
    return out


def _ari_vs_subtype(run_dir: Path) -> float:
    a = pl.read_parquet(run_dir / "assignments.parquet")
    ref = pl.read_parquet(BREAST / "clinical.parquet").select("patient_id", "subtype")
    j = a.join(ref, on="patient_id")  # labels read only here, to score
    assert j.height == 150
    return adjusted_rand_score(j["subtype"].to_list(), j["cluster"].to_list())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_breast_default_settings_agree_with_subtype(breast_store: Path, seed: int) -> None:
    run = cluster(Store.open(breast_store), ClusterOptions(seed=seed, run=f"seed{seed}"))
    ari = _ari_vs_subtype(run)
    print(f"seed {seed}: ARI {ari:.3f}")
    assert ari >= 0.80


def test_same_seed_identical_assignments_across_thread_counts(breast_store: Path) -> None:
    st = Store.open(breast_store)
    a = cluster(st, ClusterOptions(seed=7, threads=1, run="t1", bootstrap=8))
    b = cluster(st, ClusterOptions(seed=7, threads=2, run="t2", bootstrap=8))
    assert (a / "assignments.parquet").read_bytes() == (b / "assignments.parquet").read_bytes()


def test_runs_never_overwrite_and_latest_resolves(breast_store: Path) -> None:
    st = Store.open(breast_store)
    first = cluster(st, ClusterOptions(seed=3, run="fixed", bootstrap=4))
    with pytest.raises(Exception) as err:
        cluster(st, ClusterOptions(seed=3, run="fixed", bootstrap=4))
    assert getattr(err.value, "exit_code", None) == 73
    assert Store.open(breast_store).resolve_run("latest") == first


@pytest.mark.parametrize("column", ["subtype", "patient_id"])
def test_reference_and_ids_can_never_be_inputs(breast_store: Path, column: str) -> None:
    with pytest.raises(UsageError, match="never|cannot|identifier|reference"):
        cluster(Store.open(breast_store), ClusterOptions(with_clinical=[column], bootstrap=2))


def test_outcome_columns_refused_as_inputs(tmp_path: Path) -> None:
    clin = tmp_path / "clin.csv"
    mol = tmp_path / "mol.csv"
    rows = ["patient_id,os_time,os_event,treatment,response,age"]
    mrows = ["patient_id," + ",".join(f"g{j}" for j in range(6))]
    for i in range(30):
        rows.append(f"P{i},{100 + i},{i % 2},{'AB'[i % 2]},{i % 3 == 0:d},{40 + i}")
        mrows.append(f"P{i}," + ",".join(str((i * 7 + j * 3) % 11 + (i % 3) * 5)
                                        for j in range(6)))
    clin.write_text("\n".join(rows) + "\n")
    mol.write_text("\n".join(mrows) + "\n")
    store = tmp_path / "s"
    assert main(["-q", "ingest", "-o", str(store), "--clinical", str(clin),
                 "--molecular", str(mol)]) == 0
    roles = json.loads((store / "manifest.json").read_text())["roles"]
    assert roles["time"] == "os_time" and roles["treatment"] == "treatment"
    for col in ("os_time", "os_event", "treatment", "response"):
        with pytest.raises(UsageError):
            cluster(Store.open(store), ClusterOptions(with_clinical=[col], bootstrap=2))
    # a real clinical covariate is allowed
    run = cluster(Store.open(store), ClusterOptions(with_clinical=["age"], bootstrap=2,
                                                    method="kmeans", k=2))
    params = json.loads((run / "params.json").read_text())
    assert "clinical" in params["blocks"]


def test_k_method_scores_every_k(breast_store: Path) -> None:
    run = cluster(Store.open(breast_store), ClusterOptions(method="kmeans", k_range=(2, 5),
                                                           bootstrap=5, run="km"))
    metrics = json.loads((run / "metrics.json").read_text())
    ks = [s["k"] for s in metrics["selection_scores"]]
    assert ks == [2, 3, 4, 5]
    assert metrics["selected"]["k"] in ks


def test_simulated_planted_subtypes_recovered(tmp_path: Path) -> None:
    from cohortctl.simulate import simulate_cohort

    sim = simulate_cohort(tmp_path / "sim", patients=500, subtypes=4, seed=0)
    p = sim.paths
    store = tmp_path / "store"
    assert main(["-q", "ingest", "-o", str(store), "--clinical", str(p["clinical"]),
                 "--genetic", f"mutations={p['mutations']}",
                 "--molecular", f"expression={p['expression']}",
                 "--molecular", f"methylation={p['methylation']}"]) == 0
    run = cluster(Store.open(store), ClusterOptions(seed=0))
    a = pl.read_parquet(run / "assignments.parquet")
    truth = pl.read_parquet(p["truth"])
    j = a.join(truth, on="patient_id")
    assert j.height == 500  # patients missing a modality are clustered, not dropped
    ari = adjusted_rand_score(j["subtype"].to_list(), j["cluster"].to_list())
    print(f"simulated ARI {ari:.3f}")
    assert ari >= 0.95
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["modalities"]["patients_missing_any_block"] > 0
