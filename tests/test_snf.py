"""Tests for cohortctl.cluster.snf against a loop-based transcription of the published algorithm.

The reference functions below transcribe SNFtool's R code (``dist2``, ``affinityMatrix``,
``.dominateset``, the ``normalize`` used inside ``SNF``, and ``SNF``) and Wang et al. (2014)
eq. 3 (``P(i,j) = sum_{k in N_i} sum_{l in N_j} S(i,k) S(j,l) P(k,l)``) with explicit loops,
no vectorisation tricks, so that they can be checked line by line against the R source.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from cohortctl.cluster import snf as S

EPS = float(np.finfo(np.float64).eps)  # R .Machine$double.eps


# ------------------------------------------------------------------------------------------
# loop-based reference (SNFtool R code, line by line)


def ref_dist2(X: np.ndarray) -> np.ndarray:
    """SNFtool dist2: squared Euclidean distances."""
    n, d = X.shape
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = sum((X[i, k] - X[j, k]) ** 2 for k in range(d))
    return D


def ref_affinity(Diff: np.ndarray, K: int, sigma: float) -> np.ndarray:
    """SNFtool affinityMatrix(diff, K, sigma)."""
    n = Diff.shape[0]
    Diff = (Diff + Diff.T) / 2
    for i in range(n):
        Diff[i, i] = 0.0
    # sortedColumns[, 1:K+1] in R = sorted columns, positions 2..K+1 (skip the 0 self-distance)
    means = [float(np.mean(np.sort(Diff[:, j])[1 : K + 1])) + EPS for j in range(n)]
    dens = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            sig = (means[i] + means[j]) / 2 / 3 * 2 + Diff[i, j] / 3 + EPS
            sig = max(sig, EPS)
            sd = sigma * sig
            # dnorm(x, 0, sd)
            x = Diff[i, j]
            dens[i, j] = math.exp(-(x**2) / (2 * sd * sd)) / (sd * math.sqrt(2 * math.pi))
    return (dens + dens.T) / 2


def ref_normalize(X: np.ndarray) -> np.ndarray:
    """normalize() inside SNFtool SNF: X / (2 * (rowSums(X) - diag(X))), diag 1/2."""
    n = X.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        off = sum(X[i, k] for k in range(n)) - X[i, i]
        for j in range(n):
            out[i, j] = X[i, j] / (2 * off)
        out[i, i] = 0.5
    return out


def ref_dominateset(xx: np.ndarray, KK: int) -> np.ndarray:
    """SNFtool .dominateset: zero the n-KK smallest of each row (R's stable sort), row-normalise."""
    n = xx.shape[0]
    A = np.zeros((n, n))
    for i in range(n):
        row = xx[i].copy()
        order = np.argsort(row, kind="stable")
        row[order[: n - KK]] = 0.0
        A[i] = row
    for i in range(n):
        A[i] = A[i] / sum(A[i])
    return A


def ref_propagate(Sv: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Paper eq. 3: P(i,j) = sum_{k in N_i} sum_{q in N_j} S(i,k) S(j,q) M(k,q)."""
    n = Sv.shape[0]
    nbrs = [[k for k in range(n) if Sv[i, k] != 0] for i in range(n)]
    R = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            R[i, j] = sum(Sv[i, k] * Sv[j, q] * M[k, q] for k in nbrs[i] for q in nbrs[j])
    return R


def ref_snf(Wall: list[np.ndarray], K: int, t: int) -> np.ndarray:
    """SNFtool SNF(Wall, K, t)."""
    LW = len(Wall)
    Wall = [ref_normalize(W) for W in Wall]
    Wall = [(W + W.T) / 2 for W in Wall]
    newW = [ref_dominateset(W, K) for W in Wall]
    for _ in range(t):
        nextW = []
        for j in range(LW):
            sumWJ = sum(Wall[k] for k in range(LW) if k != j)
            nextW.append(ref_propagate(newW[j], sumWJ / (LW - 1)))
        Wall = [ref_normalize(W) for W in nextW]
        Wall = [(W + W.T) / 2 for W in Wall]
    W = sum(Wall) / LW
    W = ref_normalize(W)
    return (W + W.T) / 2


def ref_snf_masked(
    blocks: list[np.ndarray], masks: list[np.ndarray], K: int, mu: float, t: int
) -> np.ndarray:
    """The documented missing-block rule, spelt out pair by pair.

    Per view: affinity/normalise/dominate set on its present patients.  Diffusion of view v
    uses, for each pair (k, l), the mean of P_u(k, l) over the other views u holding both k
    and l, or P_v(k, l) if there is none.  Fused W(i, j) = mean of P_v(i, j) over the views
    holding both (0 if none), then SNF's normalize and symmetrisation.
    """
    n = masks[0].shape[0]
    L = len(blocks)
    idx = [list(np.flatnonzero(m)) for m in masks]
    P, Sv = [], []
    for X, ii in zip(blocks, idx, strict=True):
        p = ref_normalize(ref_affinity(ref_dist2(X), min(K, len(ii) - 1), mu))
        p = (p + p.T) / 2
        s = ref_dominateset(p, min(K, len(ii)))
        Pf, Sf = np.zeros((n, n)), np.zeros((n, n))
        for a, ia in enumerate(ii):
            for b, ib in enumerate(ii):
                Pf[ia, ib], Sf[ia, ib] = p[a, b], s[a, b]
        P.append(Pf)
        Sv.append(Sf)
    for _ in range(t):
        new = []
        for v in range(L):
            M = np.zeros((n, n))
            for k in idx[v]:
                for q in idx[v]:
                    holders = [u for u in range(L) if u != v and masks[u][k] and masks[u][q]]
                    others = [P[u][k, q] for u in holders]
                    M[k, q] = sum(others) / len(others) if others else P[v][k, q]
            R = ref_propagate(Sv[v], M)
            sub = ref_normalize(R[np.ix_(idx[v], idx[v])])
            sub = (sub + sub.T) / 2
            Pf = np.zeros((n, n))
            Pf[np.ix_(idx[v], idx[v])] = sub
            new.append(Pf)
        P = new
    W = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            vals = [P[v][i, j] for v in range(L) if masks[v][i] and masks[v][j]]
            W[i, j] = sum(vals) / len(vals) if vals else 0.0
    W = ref_normalize(W)
    return (W + W.T) / 2


# ------------------------------------------------------------------------------------------
# 1. vectorised implementation == loop-based reference


@pytest.fixture(scope="module")
def three_views() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(30, d)) for d in (4, 7, 3)]


@pytest.fixture(params=["default-tiles", "small-tiles"])
def tiling(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also run with tiny chunk/tile sizes so that n=30 spans many uneven tiles."""
    if request.param == "small-tiles":
        monkeypatch.setattr(S, "_ROW_CHUNK", 7)
        monkeypatch.setattr(S, "_COL_TILE", 7)
        monkeypatch.setattr(S, "_TILE", 8)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_affinity_matches_reference(
    three_views: list[np.ndarray], metric: str, tiling: None
) -> None:
    for X in three_views:
        D = ref_dist2(X) if metric == "sqeuclidean" else np.sqrt(ref_dist2(X))
        ref = ref_affinity(D, 5, 0.5)
        got = S.affinity_matrix(X, K=5, mu=0.5, metric=metric)
        assert np.abs(got - ref).max() < 1e-10
        assert np.array_equal(got, got.T)


@pytest.fixture(scope="module")
def reference_fusion(three_views: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    affs = [ref_affinity(ref_dist2(X), 5, 0.5) for X in three_views]
    return affs, ref_snf(affs, 5, 20)


def test_snf_matches_reference(
    three_views: list[np.ndarray],
    reference_fusion: tuple[list[np.ndarray], np.ndarray],
    tiling: None,
) -> None:
    affs, ref = reference_fusion
    got = S.snf(affs, K=5, t=20)
    assert np.abs(got - ref).max() < 1e-10
    # the whole pipeline from feature blocks (complete data) reduces to the same thing
    from_blocks = S.snf_from_blocks(three_views, K=5, mu=0.5, t=20)
    assert np.abs(from_blocks - ref).max() < 1e-10


def test_missing_block_fusion_matches_pairwise_reference(tiling: None) -> None:
    rng = np.random.default_rng(7)
    n, K, t = 22, 4, 6
    full = [rng.normal(size=(n, 3)), rng.normal(size=(n, 5)), rng.normal(size=(n, 2))]
    masks = [np.ones(n, bool) for _ in full]
    masks[0][[1, 5, 9, 13]] = False
    masks[1][[2, 5, 10, 20, 21]] = False
    masks[2][[1, 3, 9, 14, 21]] = False  # patient 1 and 9 only in view 1, 21 only in view 0
    present = [X[m] for X, m in zip(full, masks, strict=True)]
    ref = ref_snf_masked(present, masks, K, 0.5, t)
    got = S.snf_from_blocks(present, masks, K=K, mu=0.5, t=t)
    assert np.abs(got - ref).max() < 1e-10
    # blocks given with all n rows (absent rows ignored, here NaN) give the same network
    padded = []
    for X, m in zip(full, masks, strict=True):
        X = X.copy()
        X[~m] = np.nan
        padded.append(X)
    assert np.array_equal(S.snf_from_blocks(padded, masks, K=K, t=t), got)
    assert np.array_equal(S.snf_from_blocks(padded, None, K=K, t=t), got)


def test_complete_masks_take_the_plain_snf_path(three_views: list[np.ndarray]) -> None:
    masks = [np.ones(30, bool)] * 3
    a = S.snf_from_blocks(three_views, masks, K=6, t=5)
    b = S.snf([S.affinity_matrix(X, K=6) for X in three_views], K=6, t=5)
    assert np.array_equal(a, b)


def test_dominate_set_breaks_ties_like_r() -> None:
    P = np.array(
        [
            [0.5, 0.1, 0.1, 0.1, 0.2],
            [0.1, 0.5, 0.2, 0.2, 0.0],
            [0.1, 0.2, 0.5, 0.2, 0.0],
            [0.1, 0.2, 0.2, 0.5, 0.0],
            [0.2, 0.0, 0.0, 0.0, 0.5],
        ]
    )
    for K in range(1, 6):
        got = S._dominate_set(P, K).toarray()
        assert np.abs(got - ref_dominateset(P, K)).max() < 1e-15, K


def test_eigengap_matches_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(c, 1.0, size=(20, 2)) for c in (0.0, 6.0, 12.0)])
    W = S.snf([S.affinity_matrix(X, K=10)], K=10, t=5)
    best, scores = S.estimate_n_clusters(W, range(2, 7))
    # SNFtool estimateNumberOfClustersGivenGraph, eigen-gap part, with a full eigendecomposition
    A = (W + W.T) / 2
    np.fill_diagonal(A, 0)
    d = A.sum(axis=1)
    L = np.diag(d) - A
    Di = np.diag(1 / np.sqrt(d))
    lam = np.sort(np.linalg.eigvalsh(Di @ L @ Di))
    gap = np.abs(np.diff(lam)) * (1 - lam[:-1]) / (1 - lam[1:])  # gap[k-1] is the R eigengap[k]
    for k in range(2, 7):
        assert scores[k] == pytest.approx(gap[k - 1], abs=1e-10)
    assert best == 2 + int(np.argmax(gap[1:6])) == 3
    # the Lanczos path used for large cohorts gives the same scores
    monkeypatch.setattr(S, "_DENSE_EIG_MAX_N", 10)
    best_lanczos, scores_lanczos = S.estimate_n_clusters(W, range(2, 7))
    assert best_lanczos == best
    for k in range(2, 7):
        assert scores_lanczos[k] == pytest.approx(gap[k - 1], abs=1e-9)


# ------------------------------------------------------------------------------------------
# 2. hand-computable kernel values

X_LINE = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])


def dnorm(x: float, sd: float) -> float:
    return math.exp(-(x**2) / (2 * sd**2)) / (sd * math.sqrt(2 * math.pi))


def test_affinity_known_values_euclidean() -> None:
    # distances from 0,1,3,6,10; the K=2 nearest-neighbour means, by hand:
    # row 0: {1, 3} -> 2; row 1: {1, 2} -> 1.5; row 2: {2, 3} -> 2.5; row 3: {3, 4} -> 3.5;
    # row 4: {4, 7} -> 5.5.  sd = mu * (m_i + m_j + d_ij) / 3 with mu = 0.5.
    W = S.affinity_matrix(X_LINE, K=2, mu=0.5, metric="euclidean")
    expected = {
        (0, 1): dnorm(1.0, 0.5 * (2 + 1.5 + 1) / 3),  # sd 0.75
        (2, 4): dnorm(7.0, 0.5 * (2.5 + 5.5 + 7) / 3),  # sd 2.5
        (1, 3): dnorm(5.0, 0.5 * (1.5 + 3.5 + 5) / 3),
        (0, 0): dnorm(0.0, 0.5 * (2 + 2 + 0) / 3),  # 1 / ((2/3) sqrt(2 pi))
        (4, 4): dnorm(0.0, 0.5 * (5.5 + 5.5) / 3),
    }
    assert expected[(0, 1)] == pytest.approx(math.exp(-1 / 1.125) / (0.75 * math.sqrt(2 * math.pi)))
    for (i, j), value in expected.items():
        assert W[i, j] == pytest.approx(value, rel=1e-12)
        assert W[j, i] == pytest.approx(value, rel=1e-12)


def test_affinity_known_values_sqeuclidean() -> None:
    # squared distances: row 0: 0 1 9 36 100; row 1: 1 0 4 25 81; row 2: 9 4 0 9 49;
    # row 3: 36 25 9 0 16; row 4: 100 81 49 16 0.  K=2 means: 5, 2.5, 6.5, 12.5, 32.5.
    W = S.affinity_matrix(X_LINE, K=2, mu=0.5)
    expected = {
        (0, 1): dnorm(1.0, 0.5 * (5 + 2.5 + 1) / 3),
        (3, 4): dnorm(16.0, 0.5 * (12.5 + 32.5 + 16) / 3),
        (0, 4): dnorm(100.0, 0.5 * (5 + 32.5 + 100) / 3),
        (2, 2): dnorm(0.0, 0.5 * (6.5 + 6.5) / 3),
    }
    for (i, j), value in expected.items():
        assert W[i, j] == pytest.approx(value, rel=1e-12)


def test_snf_normalisation_convention() -> None:
    # one view, no diffusion: P = normalize(W) symmetrised, then mean -> normalize -> symmetrise
    W = S.affinity_matrix(X_LINE, K=2)
    fused = S.snf([W], K=3, t=0)
    P = ref_normalize(W)
    P = (P + P.T) / 2
    P = ref_normalize(P)
    assert np.abs(fused - (P + P.T) / 2).max() < 1e-15
    assert np.all(np.diag(fused) == 0.5)


# ------------------------------------------------------------------------------------------
# 3./4. behaviour on planted structure


def planted(seed: int, n_per: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three clusters; view 1 separates cluster 0 well but 1 vs 2 poorly, view 2 the reverse."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n_per)
    sep, weak = 6.0, 1.4
    centres1 = np.array([[sep, 0.0], [0.0, weak], [0.0, -weak]])
    centres2 = np.array([[0.0, weak], [0.0, -weak], [sep, 0.0]])

    def view(centres: np.ndarray) -> np.ndarray:
        signal = rng.normal(size=(y.size, 2)) + centres[y]
        return np.hstack([signal, rng.normal(size=(y.size, 4))])

    return y, view(centres1), view(centres2)


def best_accuracy(y: np.ndarray, labels: np.ndarray) -> float:
    return max(float(np.mean(np.array(p)[labels] == y)) for p in itertools.permutations(range(3)))


def test_fusion_beats_each_view_and_finds_three_clusters() -> None:
    y, X1, X2 = planted(0)
    A1, A2 = S.affinity_matrix(X1, K=20), S.affinity_matrix(X2, K=20)
    W = S.snf([A1, A2], K=20, t=20)
    fused = adjusted_rand_score(y, S.spectral_labels(W, 3))
    alone = [adjusted_rand_score(y, S.spectral_labels(A, 3)) for A in (A1, A2)]
    assert fused >= 0.9
    assert fused > max(alone)
    assert max(alone) < 0.9
    k, scores = S.estimate_n_clusters(W)
    assert k == 3
    assert set(scores) == set(range(2, 9))
    assert np.array_equal(S.snf([A1, A2], K=20, t=20), W)  # deterministic


def test_missing_modality_patients_get_consistent_labels() -> None:
    y, X1, X2 = planted(0)
    n = y.size
    perm = np.random.default_rng(100).permutation(n)
    m1, m2 = np.ones(n, bool), np.ones(n, bool)
    m2[perm[:36]] = False  # 20% have no view 2
    m1[perm[36:72]] = False  # another 20% have no view 1
    W = S.snf_from_blocks([X1[m1], X2[m2]], [m1, m2], K=20)
    assert W.shape == (n, n) and np.all(np.isfinite(W))
    labels = S.spectral_labels(W, 3)
    assert labels.shape == (n,)
    assert adjusted_rand_score(y, labels) >= 0.85
    assert best_accuracy(y[m1 & m2], labels[m1 & m2]) >= 0.95
    assert best_accuracy(y[~m2], labels[~m2]) >= 0.8
    assert best_accuracy(y[~m1], labels[~m1]) >= 0.8
    assert S.estimate_n_clusters(W)[0] == 3


def test_patient_without_any_block_is_an_error() -> None:
    X = np.random.default_rng(0).normal(size=(6, 2))
    m1 = np.array([True, True, True, False, True, True])
    m2 = np.array([True, True, False, False, True, True])
    with pytest.raises(ValueError, match="no data block"):
        S.snf_from_blocks([X, X], [m1, m2], K=3)


def test_memory_guard() -> None:
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(S.SNFMemoryError, match=r"SNF needs ~.* GiB for n=50 patients"):
        S.snf_from_blocks([X, X], K=5, max_bytes=1000)
    with pytest.raises(ValueError, match="use --method auto"):
        S.snf([np.ones((50, 50))], max_bytes=1000)
    assert S.snf_memory_bytes(5000, 3) == 8 * 5000**2 * 8


def test_inputs_not_modified() -> None:
    A = S.affinity_matrix(np.random.default_rng(0).normal(size=(12, 3)), K=4)
    before = A.copy()
    S.snf([A, A], K=4, t=3)
    assert np.array_equal(A, before)


# ------------------------------------------------------------------------------------------
# 5. properties


@st.composite
def cohorts(draw: st.DrawFn) -> tuple[list[np.ndarray], list[np.ndarray], int, int]:
    n = draw(st.integers(3, 12))
    n_views = draw(st.integers(1, 3))
    value = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
    blocks = []
    for _ in range(n_views):
        d = draw(st.integers(1, 3))
        flat = draw(st.lists(value, min_size=n * d, max_size=n * d))
        blocks.append(np.array(flat).reshape(n, d))
    masks = [np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))) for _ in blocks]
    for i in range(n):  # every patient in at least one block
        if not any(m[i] for m in masks):
            masks[draw(st.integers(0, n_views - 1))][i] = True
    for m in masks:  # every block with at least two patients
        m[:2] = True
    return blocks, masks, draw(st.integers(1, n)), draw(st.integers(0, 4))


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(cohorts())
def test_fused_network_properties(
    case: tuple[list[np.ndarray], list[np.ndarray], int, int],
) -> None:
    blocks, masks, K, t = case
    W = S.snf_from_blocks(blocks, masks, K=K, t=t)
    n = masks[0].size
    assert W.shape == (n, n)
    assert np.all(np.isfinite(W))
    assert np.all(W >= 0)
    assert np.array_equal(W, W.T)
    assert np.all(np.diag(W) == 0.5)
