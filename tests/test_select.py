"""Model selection: the pure selection rule, the null, and auto_cluster on simulated shapes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cohortctl.cluster import select
from cohortctl.cluster.methods import auto_cluster


def _cand(family: str, param: int, sizes: list[int], stability: float, null: float,
          unassigned: int = 0) -> select.Candidate:
    labels = np.concatenate([np.repeat(np.arange(len(sizes)), sizes),
                             np.full(unassigned, -1)]).astype(np.int64)
    return select.Candidate(family, param, labels, stability, [null])


RULE = select.SelectionRule(min_score=0.15, tolerance=0.05)


def test_no_candidate_above_the_null_means_one_group() -> None:
    cands = [_cand("ward", 2, [50, 50], 0.9, 0.85), _cand("ward", 3, [40, 30, 30], 0.7, 0.6)]
    d = select.choose(cands, RULE)
    assert d.chosen is None and not d.summary()["structure"]
    assert "null" in d.reason and d.runner_up is not None


def test_the_null_is_a_gate_and_the_most_stable_passing_candidate_wins() -> None:
    """A two-group split of a continuum is very stable, and so is the null's: it does not
    pass the gate. Of the candidates that do, the most stable wins, even when another has
    the larger stability-minus-null score (the null rests on fewer bootstraps)."""
    continuum = _cand("ward", 2, [50, 50], 0.97, 0.90)
    three = _cand("ward", 3, [40, 30, 30], 0.90, 0.50)  # score 0.40
    four = _cand("hdbscan", 8, [25] * 4, 0.80, 0.20)  # score 0.60
    d = select.choose([continuum, three, four], RULE)
    assert d.chosen is three and d.runner_up is four
    assert d.margin == pytest.approx(0.10) and d.decisive
    assert d.summary()["ranked_by"] == "stability"
    by_score = select.choose([continuum, three, four],
                             select.SelectionRule(min_score=0.15, rank="score"))
    assert by_score.chosen is four and by_score.margin == pytest.approx(0.20)


def test_within_tolerance_the_score_decides() -> None:
    """Stability favours coarse splits: on a simulated 10,000 x 20,000 cohort Ward K=2
    (stability 0.995, null 0.23) edged out the four planted groups (0.989, null 0.0).
    Within the tolerance the score (stability minus null) decides; then fewer groups."""
    two = _cand("ward", 2, [60, 40], 0.995, 0.23)
    four = _cand("hdbscan", 150, [25] * 4, 0.989, 0.0)
    rule = select.SelectionRule(min_score=0.25, tolerance=0.01)
    d = select.choose([two, four], rule)
    assert d.chosen is four and "highest score within 0.01" in d.reason
    assert not d.decisive  # the two-group split is 0.006 more stable
    exact = select.SelectionRule(min_score=0.25, tolerance=0.0)
    assert select.choose([two, four], exact).chosen is two
    three = _cand("hdbscan", 10, [40, 30, 30], 0.80, 0.40)
    same_score = _cand("ward", 4, [25] * 4, 0.80, 0.40)
    assert select.choose([same_score, three], rule).chosen is three
    assert select.choose([_cand("ward", 4, [25] * 4, 0.95, 0.40), three], rule).chosen.groups == 4


@pytest.mark.parametrize(("cand", "why"), [
    (_cand("ward", 3, [96, 2, 2], 0.99, 0.1), "smaller than"),
    (_cand("hdbscan", 5, [10] * 10, 0.99, 0.1), "more than 8 groups"),
    (_cand("hdbscan", 5, [20, 20], 0.99, 0.1, unassigned=60), "half the cohort"),
    (_cand("hdbscan", 5, [100], 0.99, 0.1), "fewer than 2"),
])
def test_unusable_partitions_are_never_chosen(cand: select.Candidate, why: str) -> None:
    reason = select.ineligible(cand, RULE)
    assert reason is not None and why in reason
    assert select.choose([cand], RULE).chosen is None


def test_limits_follow_the_rule() -> None:
    rule = select.SelectionRule(min_group_fraction=0.1, min_group_size=5, max_groups=3)
    assert rule.smallest_allowed(20) == 5 and rule.smallest_allowed(200) == 20
    assert select.ineligible(_cand("ward", 4, [50] * 4, 0.9, 0.1), rule) is not None


def test_gaussian_null_keeps_mean_and_covariance() -> None:
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(400, 3)) @ np.array([[3.0, 0, 0], [1.0, 1.0, 0], [0, 0, 0.1]]) + 5
    draw = select.gaussian_null(Z, 20000, np.random.default_rng(1))
    assert np.allclose(draw.mean(axis=0), Z.mean(axis=0), atol=0.1)
    assert np.allclose(np.cov(draw, rowvar=False), np.cov(Z, rowvar=False), atol=0.2)
    rank1 = np.outer(rng.normal(size=300), [1.0, 2.0])  # rank-deficient covariance
    assert np.isfinite(select.gaussian_null(rank1, 50, np.random.default_rng(2))).all()


KW = dict(seed=0, bootstrap=10, fixed_mcs=None, n_neighbors=15, subsample=0.8,
          max_subsample=3000, workers=1)


def test_pure_noise_gives_one_group() -> None:
    """No structure (independent Gaussian dimensions): one group, and the run says so."""
    Z = np.random.default_rng(3).normal(size=(240, 4))
    res = auto_cluster(Z, **KW)
    assert np.unique(res.labels).tolist() == [0]
    sel = res.chosen["selection"]
    assert sel["structure"] is False and res.chosen["family"] is None
    assert all(s["null_stability"] > 0 for s in res.scores)


def _blobs(rng: np.random.Generator, sizes: list[int], sep: float, dims: int = 4
           ) -> tuple[np.ndarray, np.ndarray]:
    truth = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(0, sep, (len(sizes), dims))
    return truth, centres[truth] + rng.normal(size=(truth.size, dims))


def test_well_separated_groups_are_found_with_a_decisive_margin() -> None:
    truth, Z = _blobs(np.random.default_rng(4), [60, 50, 40], sep=6.0)
    res = auto_cluster(Z, **KW)
    assert adjusted_rand_score(truth, res.labels) > 0.95
    sel = res.chosen["selection"]
    assert sel["structure"] and sel["chosen"]["clusters"] == 3
    assert sel["best_score"] >= select.SelectionRule().min_score


def test_unbalanced_groups_keep_the_small_one() -> None:
    """A group of 8% of the cohort is kept (above the 3% floor), not merged away."""
    truth, Z = _blobs(np.random.default_rng(5), [130, 50, 15], sep=7.0)
    res = auto_cluster(Z, **KW)
    assert adjusted_rand_score(truth, res.labels) > 0.9
    assert sorted(np.bincount(res.labels[res.labels >= 0]))[0] >= 12


@pytest.mark.xfail(strict=True, reason="known limitation (docs/methods.md): on a UMAP of a "
                   "long continuum plus two groups, the groups' split is less reproducible "
                   "than the null's split of the continuum, so no structure is reported")
def test_groups_beside_a_dominant_continuum_are_not_chopped() -> None:
    """One long continuous axis (no groups along it) plus two real groups: the split of
    the continuum is as stable in the null as here, so the real groups win."""
    rng = np.random.default_rng(6)
    truth = np.repeat([0, 1], [90, 90])
    Z = np.column_stack([rng.normal(0, 8, 180), truth * 6.0 + rng.normal(size=180),
                         rng.normal(size=180)])
    res = auto_cluster(Z, **KW)
    assert adjusted_rand_score(truth, res.labels) > 0.9


def test_max_groups_is_respected() -> None:
    truth, Z = _blobs(np.random.default_rng(7), [30] * 6, sep=9.0)
    res = auto_cluster(Z, **KW, rule=select.SelectionRule(max_groups=4))
    assert np.unique(res.labels[res.labels >= 0]).size <= 4
    assert all(not s["eligible"] for s in res.scores if s["clusters"] > 4)


def test_report_caveats_and_selection_table() -> None:
    """The report says when nothing was found, when the choice was close, and which
    groups are unstable; the candidate table keeps numbers as numbers."""
    from cohortctl.report.build import _published_score, _selection_table, selection_caveats

    none = select.choose([_cand("ward", 2, [50, 50], 0.9, 0.85)], RULE)
    text = selection_caveats({"selection": none.summary()}, [])
    assert len(text) == 1 and "no stable structure" in text[0]
    close = select.choose([_cand("ward", 4, [25] * 4, 0.83, 0.4),
                           _cand("hdbscan", 10, [40, 30, 30], 0.80, 0.4)], RULE)
    text = selection_caveats({"selection": close.summary()},
                             [{"name": "cluster 1", "suppressed": False, "stability": 0.4},
                              {"name": "cluster 0", "suppressed": False, "stability": 0.9}])
    assert any("not decisive" in t and "4 groups" in t for t in text)
    assert any(t.startswith("cluster 1 is unstable") for t in text)
    decisive = select.choose([_cand("ward", 3, [40, 30, 30], 0.9, 0.3)], RULE)
    assert selection_caveats({"selection": decisive.summary()}, []) == []
    rows = [c.row(RULE) for c in (_cand("ward", 3, [40, 30, 30], 0.9, 0.3),
                                  _cand("hdbscan", 5, [10] * 10, 0.99, 0.1))]
    table = _selection_table([_published_score(r, 11) for r in rows], 11)
    assert table["candidate"].to_list() == ["ward K=3", "hdbscan size=5"]
    assert table["score"].to_list() == [0.6, 0.89]
    assert table["usable"].to_list() == ["yes", "no: more than 8 groups"]
    # A group below the minimum cell shows only as such (for the chosen candidate it would
    # be a folded group's size).
    assert table["smallest group"].to_list() == ["30", "<11"]


def test_fast_adjusted_rand_equals_scikit_learn() -> None:
    """The model selection's ARI is scikit-learn's to the last bit (-1 labels included)."""
    from cohortctl.cluster.stability import adjusted_rand

    rng = np.random.default_rng(0)
    for t in range(3000):
        n = int(rng.integers(1, 200))
        a = rng.integers(-1, int(rng.integers(1, 8)), n)
        b = a.copy() if t % 3 == 0 else rng.integers(-1, int(rng.integers(1, 8)), n)
        if t % 5 == 0:
            b = np.where(rng.random(n) < 0.1, rng.integers(-1, 4, n), a)
        assert adjusted_rand(a, b) == adjusted_rand_score(a, b)
