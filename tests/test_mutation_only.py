"""Mutation-only cohorts: ``auto`` clusters the 0/1 calls with k-means on their own
(Hamming) geometry, against a null in which every mutation keeps its frequency and loses
its co-occurrence (docs/methods.md, "Mutation calls alone")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import adjusted_rand_score

from cohortctl.cluster.run import ClusterOptions, cluster
from cohortctl.features import BlockModel, FeatureSettings
from cohortctl.ingest import IngestOptions, ingest
from cohortctl.io.readers import TableSpec
from cohortctl.store import Store


def _store(tmp: Path, X: np.ndarray) -> Store:
    ids = [f"P{i:04d}" for i in range(X.shape[0])]
    path = tmp / "calls.parquet"
    pl.DataFrame({"patient_id": ids, **{f"G{j}": X[:, j] for j in range(X.shape[1])}}
                 ).write_parquet(path)
    ingest(IngestOptions(out=tmp / "store", genetic=[TableSpec("calls", path)]))
    return Store.open(tmp / "store")


def _planted(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four groups of 60, each marked by one or two drivers at 85 % (5 % elsewhere) among
    60 passengers at 2-10 %."""
    truth = np.repeat(np.arange(4), 60)
    p = np.tile(rng.uniform(0.02, 0.10, 66), (4, 1))
    p[:, :6] = 0.05
    for g, drivers in {0: [0, 1], 1: [2], 2: [3, 4], 3: [1, 5]}.items():
        p[g, drivers] = 0.85
    return truth, (rng.random((truth.size, 66)) < p[truth]).astype(np.int8)


def _run(store: Store, seed: int) -> tuple[np.ndarray, dict]:
    run = cluster(store, ClusterOptions(seed=seed, run=f"s{seed}"))
    labels = pl.read_parquet(run / "assignments.parquet").sort("patient_id")["cluster"]
    return labels.to_numpy(), json.loads((run / "params.json").read_text())


def test_planted_mutation_patterns_are_found_by_kmeans_on_the_calls(tmp_path: Path) -> None:
    truth, X = _planted(np.random.default_rng(21))
    store = _store(tmp_path, X)
    labels, params = _run(store, seed=0)
    groups = np.unique(labels[labels >= 0]).size
    assert 3 <= groups <= 8
    assert adjusted_rand_score(truth, labels) > 0.4
    assert params["resolved"]["family"] == "kmeans"


def test_independent_mutations_give_one_group(tmp_path: Path) -> None:
    """No co-occurrence at all (each gene at its own 2-30 % rate): no stable structure,
    where a UMAP of the same calls shows islands for every frequent combination."""
    rng = np.random.default_rng(22)
    X = (rng.random((240, 70)) < rng.uniform(0.02, 0.3, 70)).astype(np.int8)
    labels, params = _run(_store(tmp_path, X), seed=1)
    assert np.unique(labels).tolist() == [0]
    assert params["resolved"]["selection"]["structure"] is False


def test_calls_are_centred_not_scaled() -> None:
    """A rare passenger must not outweigh a common driver: 0/1 calls keep unit steps."""
    rng = np.random.default_rng(23)
    X = np.column_stack([rng.random(200) < 0.5, rng.random(200) < 0.03]).astype(np.int8)
    df = pl.DataFrame({"patient_id": [f"P{i}" for i in range(200)], "common": X[:, 0],
                       "rare": X[:, 1]})
    model = BlockModel(name="calls", kind="genetic").fit(df, FeatureSettings(min_mutated=3))
    assert model.scale == [1.0, 1.0]


def test_min_cluster_size_is_refused_on_mutation_calls_alone(tmp_path: Path) -> None:
    """It used to give one group silently (no k-means candidate with a fixed size)."""
    import pytest

    from cohortctl.errors import UsageError

    _truth, X = _planted(np.random.default_rng(24))
    with pytest.raises(UsageError, match="--min-cluster-size"):
        cluster(_store(tmp_path, X), ClusterOptions(min_cluster_size=10))
