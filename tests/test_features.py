"""Feature building: the streaming column pre-filter matches the in-memory filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cohortctl.features import BlockModel, FeatureSettings, prefilter_columns


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
