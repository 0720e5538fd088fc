"""Feature building: the streaming column pre-filter matches the in-memory filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cohortctl.features import (
    BlockModel,
    FeatureSettings,
    components_above_noise,
    prefilter_columns,
)


@pytest.mark.parametrize("kind", ["expression", "methylation", "counts"])
def test_streaming_prefilter_matches_in_memory_fit(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(3)
    n, p = 120, 300
    if kind == "methylation":
        X = rng.beta(2, 5, size=(n, p))
    elif kind == "counts":
        X = rng.poisson(rng.gamma(2, 800, size=p), size=(n, p)).astype(float)
    else:
        X = rng.normal(0, rng.gamma(2, 1, size=p), size=(n, p))
    X[rng.random((n, p)) < 0.05] = np.nan
    X[:, :10][rng.random((n, 10)) < 0.5] = np.nan  # too missing
    X[:, 10:15] = 1.0  # constant
    df = pl.DataFrame({"patient_id": [f"P{i}" for i in range(n)],
                       **{f"f{j}": X[:, j] for j in range(p)}}).fill_nan(None)
    path = tmp_path / "m.parquet"
    df.write_parquet(path, row_group_size=50)
    settings = FeatureSettings(top_features=100)
    full = BlockModel(name="m", kind="molecular").fit(df, settings)
    keep, dropped, transform = prefilter_columns(path, settings, target_cells=n * 37)
    assert transform == full.transform
    assert keep == full.features
    assert dropped == {k: full.dropped.get(k, 0) for k in dropped}


def test_parallel_analysis_finds_planted_rank() -> None:
    """Components above the permutation noise floor: the planted rank, not an 80%-variance
    count of noise components."""
    rng = np.random.default_rng(0)
    n, p, rank = 600, 300, 3
    signal = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, p)) * 0.4
    X = signal + rng.normal(size=(n, p))
    X = (X - X.mean(0)) / X.std(0)
    assert components_above_noise(X, 50) == rank
    noise = rng.normal(size=(n, p))
    assert components_above_noise((noise - noise.mean(0)) / noise.std(0), 50) == 0
    # Sparse binary (mutation-like) block with 4 groups: 3 between-group directions.
    groups = rng.integers(0, 4, n)
    freq = np.full((4, 120), 0.03)
    for g in range(4):
        freq[g, g * 10:(g + 1) * 10] = 0.5
    M = (rng.random((n, 120)) < freq[groups]).astype(float)
    M = (M - M.mean(0)) / M.std(0)
    assert components_above_noise(M, 50) == 3


def test_block_keeps_at_least_one_component_of_pure_noise() -> None:
    rng = np.random.default_rng(3)
    df = pl.DataFrame({"patient_id": [f"P{i}" for i in range(80)],
                       **{f"g{j}": rng.normal(size=80) for j in range(30)}})
    m = BlockModel("noise", "molecular").fit(df, FeatureSettings())
    assert m.components is not None and m.components.shape[0] == 1
    m2 = BlockModel("noise", "molecular").fit(df, FeatureSettings(components="variance"))
    assert m2.components is not None and m2.components.shape[0] > 10


def _module_dominated_table(seed: int = 5) -> tuple[pl.DataFrame, np.ndarray]:
    """Two groups differing along a weak axis, under four strong continuous programmes
    (co-expression modules of 40 genes each, the same in both groups)."""
    rng = np.random.default_rng(seed)
    n, p = 400, 200
    groups = rng.integers(0, 2, n)
    X = rng.normal(size=(n, p))
    for m in range(4):
        X[:, m * 40:(m + 1) * 40] += 1.5 * rng.normal(size=n)[:, None]
    X[:, 160:190] += 1.0 * groups[:, None]
    df = pl.DataFrame({"patient_id": [f"P{i}" for i in range(n)],
                       **{f"g{j}": X[:, j] for j in range(p)}})
    return df, groups


def _neighbour_agreement(scores: np.ndarray, groups: np.ndarray, k: int = 15) -> float:
    from sklearn.neighbors import NearestNeighbors

    _d, idx = NearestNeighbors(n_neighbors=k + 1).fit(scores).kneighbors(scores)
    return float((groups[idx[:, 1:]] == groups[:, None]).mean())


def test_equal_component_weight_lets_a_weak_group_axis_count() -> None:
    df, groups = _module_dominated_table()
    plain = BlockModel("m", "molecular").fit(df, FeatureSettings())
    equal = BlockModel("m", "molecular").fit(df, FeatureSettings(component_weight="equal"))
    s_plain, s_equal = plain.fit_scores[0], equal.fit_scores[0]
    assert plain.component_weights == [] and len(equal.component_weights) == 5
    # Same components, same total variance; each component now has the same variance.
    assert s_equal.shape == s_plain.shape
    assert np.isclose((s_equal**2).sum(), (s_plain**2).sum())
    var = s_equal.var(axis=0)
    assert np.allclose(var, var[0], rtol=1e-6)
    # The group axis is the weaker one: neighbours agree on the group far more often.
    assert _neighbour_agreement(s_equal, groups) > _neighbour_agreement(s_plain, groups) + 0.1


def test_equal_component_weight_survives_save_load_and_transform(tmp_path: Path) -> None:
    df, _groups = _module_dominated_table()
    model = BlockModel("m", "molecular").fit(df, FeatureSettings(component_weight="equal"))
    model.save(tmp_path)
    again = BlockModel.load(tmp_path, "m")
    assert again.component_weights == model.component_weights
    scores, _observed = again.transform_frame(df)
    assert np.allclose(scores, model.fit_scores[0])
