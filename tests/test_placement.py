"""Tests for cohortctl.cluster.placement: the one rule that places patients by a vote."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cohortctl.cluster.placement import (
    MIN_FLOOR,
    PlacementRule,
    knn_vote,
    place,
    reference_floor,
)


def _blobs(seed: int = 0, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 0.5, size=(n, 3))
    b = rng.normal(0.0, 0.5, size=(n, 3)) + np.array([20.0, 0.0, 0.0])
    return np.vstack([a, b]), np.repeat([0, 1], n)


def test_two_separated_blobs_get_their_label_with_full_share() -> None:
    ref, lab = _blobs()
    conf = np.full(lab.size, 0.8)
    query = np.array([[0.1, 0.0, 0.0], [19.9, 0.2, -0.1], [-0.3, 0.4, 0.1]])
    labels, confidence, share = place(ref, lab, conf, query)
    assert labels.tolist() == [0, 1, 0]
    assert np.array_equal(share, np.ones(3))
    assert np.allclose(confidence, 0.8)  # share 1 x mean confidence of the voters


def test_even_split_between_clusters_is_unassigned_under_a_high_majority() -> None:
    ref = np.array([[-1.0], [-1.1], [-1.2], [1.0], [1.1], [1.2]])
    lab = np.array([0, 0, 0, 1, 1, 1])
    query = np.array([[0.0]])
    rule = PlacementRule(k=6, majority=0.6)
    raw, _c, share = knn_vote(ref, lab, np.ones(6), query, rule)
    assert share[0] == pytest.approx(0.5)
    assert raw[0] == 0  # a tie goes to the lowest label ...
    labels, _conf, share2 = place(ref, lab, np.ones(6), query, rule)
    assert labels.tolist() == [-1]  # ... but 50% < 60%: unassigned
    assert share2[0] == pytest.approx(0.5)
    # Slightly off centre: the nearer cluster wins the (k=6) vote, still without majority.
    labels, _conf, share = place(ref, lab, np.ones(6), np.array([[0.05]]), rule)
    assert 0.5 < share[0] < 0.6 and labels.tolist() == [-1]
    # ... and gets its label under the default 50% majority.
    labels, _conf, _share = place(ref, lab, np.ones(6), np.array([[0.05]]),
                                  PlacementRule(k=6))
    assert labels.tolist() == [1]


def test_result_does_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(4)
    ref, lab = _blobs(seed=1, n=60)
    lab = lab.copy()
    lab[::7] = -1
    conf = rng.uniform(0.3, 1.0, lab.size)
    query = rng.uniform(-3, 23, size=(157, 3))
    rule = PlacementRule(k=9, majority=0.55)
    whole = knn_vote(ref, lab, conf, query, rule, chunk=100000)
    for chunk in (1, 7, 50):
        parts = knn_vote(ref, lab, conf, query, rule, chunk=chunk)
        assert np.array_equal(parts[0], whole[0])
        assert np.allclose(parts[1], whole[1], rtol=0, atol=1e-12)
        assert np.allclose(parts[2], whole[2], rtol=0, atol=1e-12)
    # A query's result does not depend on the other queries placed with it either.
    alone = [knn_vote(ref, lab, conf, query[i:i + 1], rule) for i in (0, 50, 156)]
    for i, one in zip((0, 50, 156), alone, strict=True):
        assert one[0][0] == whole[0][i] and one[2][0] == pytest.approx(whole[2][i], abs=1e-12)


def test_floor_is_a_property_of_the_reference() -> None:
    ref = np.array([[0.0], [1.0], [3.0], [3.0], [7.0]])  # a duplicate at 3.0
    # Nearest positive distances: 1, 1, 2, 2, 4 -> median 2 -> floor 0.1 * 2.
    assert reference_floor(ref) == pytest.approx(0.2)
    assert reference_floor(ref, PlacementRule(floor_fraction=0.5)) == pytest.approx(1.0)
    assert reference_floor(np.zeros((4, 2))) == MIN_FLOOR
    assert reference_floor(np.zeros((1, 2))) == MIN_FLOOR
    # The floor sets the weights: a query at a reference point is dominated by it.
    lab = np.array([0, 1, 1, 1, 1])
    _l, _c, share = knn_vote(ref, lab, np.ones(5), np.array([[0.0]]), PlacementRule(k=2))
    assert share[0] == pytest.approx((1 / 0.2) / (1 / 0.2 + 1 / 1.2))


def test_noise_references_vote_so_a_query_amid_noise_stays_unassigned() -> None:
    rng = np.random.default_rng(2)
    cluster = rng.normal(0, 0.3, size=(30, 2))
    noise = rng.uniform(8, 12, size=(30, 2))
    ref = np.vstack([cluster, noise])
    lab = np.r_[np.zeros(30, dtype=int), np.full(30, -1)]
    labels, _conf, share = place(ref, lab, np.ones(60), np.array([[10.0, 10.0], [0.0, 0.1]]))
    assert labels.tolist() == [-1, 0]
    assert share[0] == 1.0 and share[1] == 1.0
    # Without the noise references the same query would have been given cluster 0.
    only = place(cluster, np.zeros(30, dtype=int), np.ones(30), np.array([[10.0, 10.0]]))[0]
    assert only.tolist() == [0]


def test_k_is_capped_at_the_reference_size_and_overridable() -> None:
    ref = np.array([[0.0], [0.1], [5.0]])
    lab = np.array([0, 0, 1])
    labels, _c, share = knn_vote(ref, lab, np.ones(3), np.array([[5.0]]), PlacementRule(k=50))
    assert labels.tolist() == [1] and 0.5 < share[0] < 1.0  # all three voted
    labels, _c, share = knn_vote(ref, lab, np.ones(3), np.array([[5.0]]), k=1)
    assert labels.tolist() == [1] and share[0] == 1.0


def test_rule_round_trips_and_tolerates_missing_keys() -> None:
    rule = PlacementRule(k=9, floor_fraction=0.25, majority=0.6)
    d = rule.to_dict()
    assert d == {"k": 9, "floor_fraction": 0.25, "majority": 0.6}
    assert PlacementRule.from_dict(json.loads(json.dumps(d))) == rule
    assert PlacementRule.from_dict({}) == PlacementRule()
    assert PlacementRule.from_dict(None) == PlacementRule()
    assert PlacementRule.from_dict({"k": 7, "unknown": 1}) == PlacementRule(k=7)
    assert PlacementRule() == PlacementRule(k=15, floor_fraction=0.1, majority=0.5)
    with pytest.raises(ValueError):
        PlacementRule(k=0)
    with pytest.raises(ValueError):
        PlacementRule(majority=1.5)
    with pytest.raises(ValueError):
        PlacementRule(floor_fraction=-0.1)
