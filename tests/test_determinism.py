"""Determinism: same inputs + same seed -> byte-identical assignments, whatever the
process, PYTHONHASHSEED or --threads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cohortctl.store import Store, verify_run

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "breast_tcga"
INGEST_ARGS = [f"--molecular=mrna={SAMPLE / 'mrna_train.parquet'}",
               f"--molecular=mirna={SAMPLE / 'mirna_train.parquet'}",
               f"--clinical={SAMPLE / 'clinical.parquet'}"]
# Default method (UMAP + HDBSCAN) with bootstrap workers: the least trivially
# deterministic path.
CLUSTER_ARGS = ["--seed", "3", "--bootstrap", "5"]
VARIANTS = {  # name: (PYTHONHASHSEED, --threads, store)
    "hash0-t1": ("0", "1", "a"),
    "hash12345-t2": ("12345", "2", "a"),
    "hash0-t2-other-ingest": ("0", "2", "b"),
}
# Another CPU: OpenBLAS forced onto an older kernel (no AVX2/FMA). numba's code is pinned to
# a generic x86-64 by cohortctl itself (unset here so that the pinning is what is tested).
# Same partition required (ARI >= 0.98).
OTHER_CPU = {"OPENBLAS_CORETYPE": "Sandybridge"}


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "cohortctl"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from cohortctl.cli import run; run()"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*cli(), "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two separately ingested stores; three runs in separate, concurrent processes."""
    tmp = tmp_path_factory.mktemp("determinism")
    for proc in [_run(["ingest", "-o", str(tmp / name), *INGEST_ARGS]) for name in "ab"]:
        _finish(proc)
    procs = {
        variant: _run(["cluster", str(tmp / store), *CLUSTER_ARGS, "--threads", threads,
                       "--run", variant, "--json"], dict(os.environ, PYTHONHASHSEED=hashseed))
        for variant, (hashseed, threads, store) in VARIANTS.items()
    }
    other_env = {k: v for k, v in os.environ.items() if k != "NUMBA_CPU_NAME"}
    procs["other-cpu"] = _run(["cluster", str(tmp / "a"), *CLUSTER_ARGS, "--run", "other-cpu",
                               "--json"], dict(other_env, PYTHONHASHSEED="0", **OTHER_CPU))
    return {v: Path(json.loads(_finish(p))["run_path"]) for v, p in procs.items()}


def test_stores_identical(runs: dict[str, Path]) -> None:
    """Two ingests of the same inputs give byte-identical tables."""
    a, b = (Store.open(p) for p in {r.parent.parent for r in runs.values()})
    assert [t["store_sha256"] for t in a.tables] == [t["store_sha256"] for t in b.tables]


def test_same_partition_on_another_instruction_set(runs: dict[str, Path]) -> None:
    """numba and OpenBLAS pick kernels by CPU: the floating-point results may differ in the
    last bits, the groups must not."""
    import polars as pl
    from sklearn.metrics import adjusted_rand_score

    host = pl.read_parquet(runs["hash0-t1"] / "assignments.parquet")
    other = pl.read_parquet(runs["other-cpu"] / "assignments.parquet")
    assert host["patient_id"].to_list() == other["patient_id"].to_list()
    ari = adjusted_rand_score(host["cluster"].to_list(), other["cluster"].to_list())
    identical = sha(runs["hash0-t1"] / "assignments.parquet") == sha(
        runs["other-cpu"] / "assignments.parquet")
    print(f"\n[determinism] older OpenBLAS kernel vs host: ARI {ari:.4f}, "
          f"byte-identical: {identical}")
    assert ari >= 0.98


def test_assignments_byte_identical(runs: dict[str, Path]) -> None:
    """assignments.parquet is the same bytes across processes, hash seeds and threads."""
    digests = {v: sha(p / "assignments.parquet") for v, p in runs.items() if v != "other-cpu"}
    for p in runs.values():
        verify_run(p)
    assert len(set(digests.values())) == 1, digests
    print(f"\n[determinism] {len(digests)} runs, assignments sha256 "
          f"{next(iter(digests.values()))[:16]}... identical")


@pytest.mark.parametrize("artefact", ["metrics.json", "model/integrated.parquet"])
def test_other_artefacts_identical(runs: dict[str, Path], artefact: str) -> None:
    """Metrics and the integrated space do not depend on the process either."""
    digests = {v: sha(p / artefact) for v, p in runs.items() if v != "other-cpu"}
    assert len(set(digests.values())) == 1, digests


def test_numba_code_is_pinned_to_a_generic_cpu() -> None:
    """Importing cohortctl compiles numba's kernels for a generic x86-64 (unless the user
    chose a target): the groups must not depend on the instruction set."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CPU_NAME"}
    code = "import cohortctl, numba; print(numba.config.CPU_NAME)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "generic"
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(env, NUMBA_CPU_NAME="haswell"), check=True).stdout.strip()
    assert chosen == "haswell"
