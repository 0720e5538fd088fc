"""End to end: the three commands as subprocesses, chained in a pipe, on the sample data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
BREAST = ROOT / "sample_data" / "breast_tcga"
LAML = ROOT / "sample_data" / "laml_tcga"
CLI = [sys.executable, "-m", "cohortctl"]


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def breast_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    cli = " ".join(CLI)
    cmd = (f"{cli} ingest -o cohort --clinical {BREAST}/clinical.parquet "
           f"--molecular mrna={BREAST}/mrna_train.parquet "
           f"--molecular mirna={BREAST}/mirna_train.parquet "
           f"--molecular protein={BREAST}/protein_train.parquet --reference subtype "
           f"| {cli} cluster --seed 0 | {cli} report -o report.html")
    proc = _run(cmd, work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "report.html"
    return work


def test_pipe_produces_store_run_and_report(breast_pipeline: Path) -> None:
    work = breast_pipeline
    manifest = json.loads((work / "cohort" / "manifest.json").read_text())
    assert {t["name"] for t in manifest["tables"]} == {"clinical", "mrna", "mirna", "protein"}
    runs = sorted((work / "cohort" / "runs").iterdir())
    assert len(runs) == 1
    a = pl.read_parquet(runs[0] / "assignments.parquet")
    assert a.columns == ["patient_id", "cluster", "confidence", "nearest_cluster",
                         "embedding_1", "embedding_2"]
    assert a.height == 150
    assert a["confidence"].is_between(0, 1).all()
    assert a.filter(pl.col("cluster") >= 0)["cluster"].n_unique() >= 2
    for name in ("params.json", "metrics.json", "run.json"):
        json.loads((runs[0] / name).read_text())
    html = (work / "report.html").read_text()
    for section in ("cohort", "groups", "clinical", "markers", "methods"):
        assert f'data-section="{section}"' in html
    assert "TCGA-" not in html  # no identifiers without --include-ids


def test_json_and_markdown_formats_from_stored_run(breast_pipeline: Path) -> None:
    proc = _run(f"{' '.join(CLI)} report cohort --format json -o -", breast_pipeline)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["groups"]["n_clusters"] >= 2
    ari = rep["groups"]["reference_agreement"][0]
    assert ari["column"] == "subtype" and ari["ari"] > 0.5
    md = _run(f"{' '.join(CLI)} report cohort --format md -o -", breast_pipeline)
    assert md.returncode == 0 and md.stdout.startswith("# Patient stratification report")


def test_laml_maf_pipeline_with_survival(tmp_path: Path) -> None:
    cli = " ".join(CLI)
    cmd = (f"{cli} ingest -o laml --clinical {LAML}/clinical.tsv --genetic {LAML}/mutations.maf.gz"
           f" | {cli} cluster --method ward --k 3 --bootstrap 10"
           f" | {cli} report --format json -o laml.json")
    proc = _run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "laml.json").read_text())
    assert rep["survival"]["logrank"]["p"] is not None
    assert "mutations" in rep["mutations"]
    assert rep["cohort"]["clustered"] == 193


def test_report_refuses_to_overwrite_and_missing_store(breast_pipeline: Path) -> None:
    proc = _run(f"{' '.join(CLI)} report cohort -o report.html", breast_pipeline)
    assert proc.returncode == 73 and "exists" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _run(f"{' '.join(CLI)} cluster does-not-exist", breast_pipeline)
    assert proc.returncode == 66, proc.stderr
