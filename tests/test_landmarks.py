"""Large-cohort path: landmark clustering and nearest-landmark placement."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from cohortctl.cluster.methods import auto_cluster, knn_vote


def test_landmark_path_recovers_groups_and_places_everyone() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, size=(4, 10))
    truth = rng.integers(0, 4, size=1500)
    Z = centres[truth] + rng.normal(0, 1, size=(1500, 10))
    res = auto_cluster(Z, seed=0, bootstrap=6, fixed_mcs=None, n_neighbors=15,
                       subsample=0.8, max_subsample=3000, workers=1, landmarks=400)
    assert res.labels.shape == (1500,)
    assert res.chosen["landmarks"] == 400
    assert adjusted_rand_score(truth, res.labels) > 0.9
    assert (res.labels >= 0).mean() > 0.9
    assert np.all((res.confidence >= 0) & (res.confidence <= 1))
    assert np.all(res.nearest >= 0)


def test_knn_vote_majority_and_shares() -> None:
    ref = np.array([[0.0], [0.1], [0.2], [10.0], [10.1]])
    labels = np.array([0, 0, 0, 1, 1])
    lab, conf, share = knn_vote(ref, labels, np.ones(5), np.array([[0.05], [10.05]]), k=3)
    assert lab.tolist() == [0, 1]
    assert share[0] == 1.0 and 0.5 < share[1] < 1.0
    assert np.allclose(conf, share)
