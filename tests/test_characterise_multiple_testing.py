"""Benjamini–Hochberg q-values and p-value publication rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from cohortctl.characterise.multiple_testing import (
    bh_qvalues,
    bh_sources,
    coarsen_flags_for_q,
    display_p,
    format_p,
    p_bound,
    publish_test,
)


def _bh_by_hand(p: list[float]) -> list[float]:
    """Textbook step-up: q_(i) = min_{j >= i} p_(j) * m / j, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    return q


def test_bh_matches_hand_computation_small_example() -> None:
    p = [0.01, 0.04, 0.03, 0.20]
    # Sorted: 0.01 (r1) 0.03 (r2) 0.04 (r3) 0.20 (r4); m = 4.
    # r4: 0.20; r3: min(0.20, 0.04*4/3=0.0533)=0.0533; r2: min(0.0533, 0.03*2=0.06)=0.0533;
    # r1: min(0.0533, 0.04) = 0.04.
    expected = [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.20]
    np.testing.assert_allclose(bh_qvalues(p), expected, rtol=1e-12)
    np.testing.assert_allclose(bh_qvalues(p), _bh_by_hand(p), rtol=1e-12)


def test_bh_random_matches_hand_and_statsmodels_and_skips_nan() -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0, 0.2, 37)
    p[[3, 11]] = np.nan
    q = bh_qvalues(p)
    ok = np.isfinite(p)
    assert np.isnan(q[~ok]).all()
    np.testing.assert_allclose(q[ok], _bh_by_hand(list(p[ok])), rtol=1e-12)
    np.testing.assert_allclose(q[ok], multipletests(p[ok], method="fdr_bh")[1], rtol=1e-12)
    # Shape is kept for matrices (genes x clusters).
    assert bh_qvalues(p.reshape(-1, 1)).shape == (37, 1)


def test_bh_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        bh_qvalues([0.5, 1.2])


def test_bh_sources_and_q_coarsening() -> None:
    p = [0.01, 0.04, 0.03, 0.20]
    src = bh_sources(p)
    # q of tests 0, 1 and 2 all come from test 1 (0.04 * 4 / 3 or 0.04 * 4 / 4 ...).
    q = bh_qvalues(p)
    for i, s in enumerate(src):
        ranks = {j: r + 1 for r, j in enumerate(np.argsort(p, kind="mergesort"))}
        assert math.isclose(q[i], p[s] * len(p) / ranks[s])
    # If test 2 is coarsened, anyone whose q equals test 2's p*m/rank must be coarsened too.
    flags = coarsen_flags_for_q(p, [False, False, True, False])
    assert list(flags) == [bool(s == 2) for s in src]


def test_format_and_publish() -> None:
    assert format_p(0.0004) == "<0.001"
    assert format_p(0.0123) == "0.012"
    assert format_p(0.432) == "0.43"
    assert format_p(float("nan")) == "–"
    assert p_bound(0.004) == 0.01 and p_bound(0.3) == 1.0
    res = publish_test({"statistic": 3.2, "p": 0.004, "q": 0.02}, True)
    assert res["p"] is None and res["statistic"] is None and res["q"] is None
    assert display_p(res, "p") == "<0.01" and display_p(res, "q") == "<0.05"
    res = publish_test({"statistic": 3.2, "p": 0.004, "q": 0.02}, False, coarsen_q=True)
    assert res["p"] == 0.004 and res["q"] is None and display_p(res, "q") == "<0.05"
