"""Large-cohort path: landmark clustering and nearest-landmark placement."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cohortctl.cluster.methods import auto_cluster, knn_vote, vote_unsure


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


def test_missing_modality_patients_do_not_shape_the_groups() -> None:
    """Patients with imputed (bridging) scores are placed, never used as landmarks."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 6, size=(3, 8))
    truth = rng.integers(0, 3, size=900)
    Z = centres[truth] + rng.normal(0, 1, size=(900, 8))
    complete = np.ones(900, dtype=bool)
    complete[rng.choice(900, 150, replace=False)] = False
    # What a block average does to a patient: pulled towards the middle of the groups.
    Z[~complete] = 0.5 * Z[~complete] + 0.5 * centres.mean(axis=0)
    res = auto_cluster(Z, seed=0, bootstrap=6, fixed_mcs=None, n_neighbors=15,
                       subsample=0.8, max_subsample=3000, workers=1, landmarks=2000,
                       complete=complete)
    assert res.chosen["landmark_pool"] == "patients with every modality"
    assert res.chosen["landmarks"] == 750
    sampled = np.unique(np.concatenate([idx for idx, _lab in res.runs]))
    assert complete[sampled].all()
    assert adjusted_rand_score(truth[complete], res.labels[complete]) > 0.95
    # A small complete minority is not enough to define the groups alone.
    few = np.zeros(900, dtype=bool)
    few[:20] = True
    res2 = auto_cluster(Z, seed=0, bootstrap=4, fixed_mcs=None, n_neighbors=15,
                        subsample=0.8, max_subsample=3000, workers=1, landmarks=2000,
                        complete=few)
    assert "landmark_pool" not in res2.chosen


def test_unstable_patients_are_re_placed_by_stable_neighbours() -> None:
    rng = np.random.default_rng(2)
    Z = np.vstack([rng.normal(0, 1, (60, 4)), rng.normal(8, 1, (60, 4))])
    labels = np.repeat([0, 1], 60)
    conf = np.ones(120)
    labels[[3, 70]] = [1, 0]  # two patients put in the wrong group by an unstable layout
    conf[[3, 70]] = 0.4
    voted = vote_unsure(Z, labels, conf)
    assert voted is not None
    out = voted[0]
    assert out[3] == 0 and out[70] == 1
    assert np.array_equal(np.delete(out, [3, 70]), np.delete(labels, [3, 70]))
    # A stable wrong-looking patient is left alone: the bootstraps agreed on it.
    conf[[3, 70]] = 1.0
    assert vote_unsure(Z, labels, conf) is None
    # Too few stable members in a group: keep the consensus labels.
    conf[:58] = 0.1
    assert vote_unsure(Z, labels, conf) is None


def test_second_look_decides_unsure_patients_at_full_resolution() -> None:
    rng = np.random.default_rng(4)
    Z = np.vstack([rng.normal(0, 1, (200, 3)), rng.normal(6, 1, (200, 3)), [[0.5, 0.5, 0.5]]])
    labels = np.concatenate([np.zeros(200, int), np.ones(200, int), [-1]])
    conf = np.ones(401)
    conf[[10, 250]] = 0.3  # assigned, but the landmark vote was unsure
    labels[250] = 0  # ... and wrong: it sits among cluster 1
    voted = vote_unsure(Z, labels, conf)
    assert voted is not None
    out, out_conf = voted
    assert out[400] == 0  # unassigned by the landmarks, clearly inside cluster 0
    assert out[250] == 1 and out[10] == 0
    assert np.array_equal(out[:400][conf[:400] == 1], labels[:400][conf[:400] == 1])
    assert 0 < out_conf[400] <= 1


def _three_groups(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    truth = rng.integers(0, 3, n)
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.87]]) * 9.0
    return truth, centres[truth] + rng.normal(0, 1, (n, 2))


@pytest.mark.parametrize(("seed", "landmarks"), [(0, 2000), (1, 2000), (0, 200)])
def test_competing_geometry_wins_when_groups_sit_on_weak_axes(seed: int, landmarks: int) -> None:
    """Groups on two weak axes under three strong group-free ones: the variance-weighted
    space cannot separate them, the equal-variance one can; the bootstrap screening picks
    it and the final partition (and embedding) come from it, on the landmark path too."""
    rng = np.random.default_rng(seed)
    truth, weak = _three_groups(rng, 600)
    Z = np.hstack([rng.normal(0, 12, (600, 3)), weak])
    equal = Z / Z.std(axis=0)
    res = auto_cluster(Z, seed=0, bootstrap=6, fixed_mcs=None, n_neighbors=15, subsample=0.8,
                       max_subsample=3000, workers=1, landmarks=landmarks,
                       alternatives={"equal": equal})
    alone = auto_cluster(Z, seed=0, bootstrap=6, fixed_mcs=None, n_neighbors=15,
                         subsample=0.8, max_subsample=3000, workers=1, landmarks=landmarks)
    screening = res.chosen["space_screening"]["best_agreement_ari"]
    assert res.chosen["space"] == "equal" and screening["equal"] > screening["default"]
    assert adjusted_rand_score(truth, res.labels) > 0.95
    assert adjusted_rand_score(truth, alone.labels) < 0.5
    assert len(res.runs) == 6  # 2 screening runs reused + 4 more, all in the chosen space
    if landmarks < 600:  # placement votes in the chosen space, which is also returned
        assert res.chosen["landmarks"] == landmarks and res.embedding is equal


def test_tied_geometries_keep_the_default_and_few_bootstraps_skip_the_screening() -> None:
    rng = np.random.default_rng(0)
    truth, groups = _three_groups(rng, 600)
    Z = np.hstack([groups, rng.normal(0, 0.3, (600, 4))])
    kw = dict(seed=0, fixed_mcs=None, n_neighbors=15, subsample=0.8, max_subsample=3000,
              workers=1)
    res = auto_cluster(Z, bootstrap=6, alternatives={"same": Z.copy()}, **kw)
    scores = res.chosen["space_screening"]["best_agreement_ari"]
    assert scores["same"] == scores["default"] and res.chosen["space"] == "default"
    assert adjusted_rand_score(truth, res.labels) > 0.95
    few = auto_cluster(Z, bootstrap=4, alternatives={"same": Z.copy()}, **kw)
    assert few.chosen["space"] == "default"
    assert "skipped" in few.chosen["space_screening"]
