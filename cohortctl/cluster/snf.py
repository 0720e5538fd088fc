"""Similarity Network Fusion (SNF) for multi-omic patient clustering.

Implements Wang et al. (2014), "Similarity network fusion for aggregating data types on a
genomic scale", Nature Methods 11:333, following the authors' R package SNFtool (>= 2.3:
``affinityMatrix``, ``.dominateset``, ``SNF``, ``estimateNumberOfClustersGivenGraph``)
operation for operation, so results are comparable with published analyses.

Why SNF: each omic block gives its own patient-similarity network; SNF diffuses every network
through the K-nearest-neighbour graphs of the others until they agree, so structure supported by
several blocks is reinforced and block-specific noise is damped.

Conventions and choices (see also the docstrings):

* Kernel.  ``affinity_matrix`` uses the scaled exponential kernel as *implemented* by SNFtool
  and snfpy: a normal density ``dnorm(rho, 0, mu * eps_ij)`` with
  ``eps_ij = (mean_kNN_i + mean_kNN_j + rho_ij) / 3``.  (Paper eq. 1 prints
  ``exp(-rho^2 / (mu eps))``; every reference implementation uses the density instead.)
  ``rho`` defaults to the *squared* Euclidean distance, as snfpy's ``make_affinity``
  (``metric='sqeuclidean'``) and SNFtool <= 2.2's documented ``dist2`` usage; SNFtool >= 2.3's
  documentation passes ``dist2(X, X)^(1/2)``, available here as ``metric="euclidean"``.
  Inputs are used as given: standardise features upstream (both references z-score first).
* Normalisation.  ``P = W / (2 * (rowSums(W) - diag(W)))`` with ``diag(P) = 1/2``, then
  ``P = (P + P^T) / 2``, exactly as SNFtool's ``SNF``; the local kernel ``S`` keeps the K
  largest entries of each row of that ``P`` (the 1/2 self-similarity is one of them, as in
  SNFtool) and row-normalises them.  Ties at the K-th value keep the later columns, as R's
  stable ``sort`` does.
* Missing blocks (``snf_from_blocks``).  Each block's affinity, ``P`` and ``S`` are computed on
  the patients that have that block only.  In the diffusion step of view v the "mean of the
  other networks" for a pair (i, j) averages only over the other views in which both i and j are
  present; if no other view has the pair, view v's own current network is used.  The fused
  ``W(i, j)`` is the mean over the views containing both patients (0 if none does), then
  normalised as above.  With no missing data this is exactly SNFtool's ``SNF``.  A patient with
  no block at all raises ``ValueError``; nobody is dropped.
* Memory.  SNF is dense: every network is ``n x n`` float64, i.e. ``8 n^2`` bytes each
  (n=5000: 0.19 GiB per matrix).  Fusion holds ``n_views + 5`` of them (one more with missing
  blocks); ``snf_memory_bytes`` gives the estimate and the functions raise ``SNFMemoryError``
  (a ``ValueError``) when it exceeds ``max_bytes`` (default 4 GiB).
* Speed.  ``S`` has K non-zeros per row, so ``S M S^T`` is two sparse-dense products
  (``O(K n^2)`` rather than ``O(n^3)``), computed in cache-sized column tiles into
  preallocated buffers, the second one on the upper triangle only (the result is symmetric).
  Every entry is summed in the same order whatever the tiling/threads, so results are
  deterministic.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy import linalg

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SNFMemoryError",
    "affinity_matrix",
    "estimate_n_clusters",
    "snf",
    "snf_from_blocks",
    "snf_memory_bytes",
    "spectral_labels",
]

DEFAULT_MAX_BYTES = 4 * 2**30
"""Default cap on SNF's working memory (4 GiB)."""

Metric = Literal["sqeuclidean", "euclidean"]

_EPS = float(np.finfo(np.float64).eps)  # R's .Machine$double.eps, snfpy's np.spacing(1)
_TILE = 256  # tile edge for cache-friendly transposes
_ROW_CHUNK = 128  # rows per chunk in row-wise passes (partition, dominate set)
_COL_TILE = 64  # dense columns per sparse-dense product task (cache-sized tiles)
_THREAD_MIN_N = 1024  # below this, threading overhead is not worth it
_DENSE_EIG_MAX_N = 2000  # above this, estimate_n_clusters uses Lanczos (ARPACK)


class SNFMemoryError(ValueError):
    """SNF's dense n x n matrices would need more memory than allowed."""


# --------------------------------------------------------------------------------------------
# memory


def snf_memory_bytes(n: int, n_views: int, missing: bool = False) -> int:
    """Estimated peak bytes of ``snf``/``snf_from_blocks`` for n patients and n_views blocks.

    Counts the dense float64 ``n x n`` matrices alive at once: one network per view, the
    running and next sum, the per-view "other views" mean, two product buffers, plus one more
    for the pair counts when blocks are missing.  Lets callers (``--method auto``) choose a
    method before trying.
    """
    matrices = n_views + 5 + (1.125 if missing else 0.0)
    return int(8 * n * n * matrices)


def _check_memory(n: int, n_views: int, missing: bool, max_bytes: float | None) -> None:
    if max_bytes is None:
        return
    need = snf_memory_bytes(n, n_views, missing)
    if need > max_bytes:
        raise SNFMemoryError(
            f"SNF needs ~{need / 2**30:.1f} GiB for n={n} patients; use --method auto"
        )


# --------------------------------------------------------------------------------------------
# dense helpers (in place, tiled so transposed access stays in cache)


def _symmetrize_inplace(X: np.ndarray) -> np.ndarray:
    """X <- (X + X^T) / 2, exactly symmetric, without an n x n temporary."""
    n = X.shape[0]
    for i in range(0, n, _TILE):
        for j in range(i, n, _TILE):
            s = X[i : i + _TILE, j : j + _TILE] + X[j : j + _TILE, i : i + _TILE].T
            s *= 0.5
            X[i : i + _TILE, j : j + _TILE] = s
            X[j : j + _TILE, i : i + _TILE] = s.T
    return X


def _normalize_inplace(X: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """SNFtool's ``normalize`` then symmetrisation, in place.

    ``X / (2 * (rowSums(X) - diag(X)))`` with the diagonal set to 1/2 (a row with no
    off-diagonal mass keeps zeros off the diagonal instead of dividing by zero), then
    ``(X + X^T) / 2``.  Rows of absent patients (``present`` False) are all zero and keep a
    zero diagonal.
    """
    diag = X.diagonal().copy()
    off = X.sum(axis=1) - diag
    off[off == 0] = 1.0
    off *= 2.0
    X /= off[:, None]
    half = np.full(X.shape[0], 0.5) if present is None else np.where(present, 0.5, 0.0)
    np.fill_diagonal(X, half)
    return _symmetrize_inplace(X)


def _dominate_set(P: np.ndarray, K: int) -> sp.csr_array:
    """SNFtool ``.dominateset``: keep the K largest entries per row, then row-normalise.

    Ties at the K-th largest value keep the highest column indices, which is what R's
    ``sort(x, index.return=TRUE)`` (stable, ascending) followed by zeroing the first
    ``n - K`` positions does.  Rows without positive entries stay empty.
    """
    n = P.shape[0]
    K = min(K, n)
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    vals_out: list[np.ndarray] = []
    for a in range(0, n, _ROW_CHUNK):
        block = P[a : a + _ROW_CHUNK]
        if n > K:
            thr = np.partition(block, n - K, axis=1)[:, n - K][:, None]
            greater = block > thr
            ties = block == thr
            need = K - greater.sum(axis=1)
            from_right = np.cumsum(ties[:, ::-1], axis=1)[:, ::-1]
            keep = greater | (ties & (from_right <= need[:, None]))
        else:
            keep = np.ones_like(block, dtype=bool)
        keep &= block != 0
        r, c = np.nonzero(keep)
        rows_out.append(r + a)
        cols_out.append(c)
        vals_out.append(block[r, c])
    rows = np.concatenate(rows_out)
    cols = np.concatenate(cols_out)
    vals = np.concatenate(vals_out)
    sums = np.bincount(rows, weights=vals, minlength=n)
    vals = vals / sums[rows]
    return sp.csr_array((vals, (rows, cols)), shape=(n, n))


def _embed_sparse(S: sp.csr_array, idx: np.ndarray, n: int) -> sp.csr_array:
    """Place an n_v x n_v sparse matrix on the rows/columns ``idx`` of an n x n one."""
    coo = S.tocoo()
    return sp.csr_array((coo.data, (idx[coo.row], idx[coo.col])), shape=(n, n))


class _SpMM:
    """Sparse (CSR, K non-zeros per row) times dense products into preallocated buffers.

    Work is split into column tiles of width ``_COL_TILE`` so the dense operand's tile stays
    in cache while the K rows per output row are gathered (the untiled product is
    memory-bound).  Each output entry is summed in the same order whatever the tiling or
    threading, so results are deterministic.
    """

    def __init__(self, n: int) -> None:
        workers = min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers) if n >= _THREAD_MIN_N and workers > 1 else None

    def _run(self, task: Callable[[int], None], n: int) -> None:
        starts = range(0, n, _COL_TILE)
        if self._pool is None:
            for j in starts:
                task(j)
        else:
            list(self._pool.map(task, starts))

    def product(self, S: sp.csr_array, X: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out <- S @ X."""
        n = X.shape[1]

        def task(j: int) -> None:
            out[:, j : j + _COL_TILE] = S @ np.ascontiguousarray(X[:, j : j + _COL_TILE])

        self._run(task, n)
        return out

    def sandwich(self, S: sp.csr_array, A: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out <- S @ A^T for A = S @ M with M symmetric, i.e. S M S^T (symmetric).

        Only the block upper triangle is computed; the rest is mirrored from it.
        """
        n = A.shape[0]

        def task(j: int) -> None:
            end = min(n, j + _COL_TILE)
            tile = np.ascontiguousarray(A[j:end].T)  # columns j:end of A^T
            out[:end, j:end] = S[:end] @ tile

        self._run(task, n)
        for j in range(_COL_TILE, n, _COL_TILE):
            out[j : j + _COL_TILE, :j] = out[:j, j : j + _COL_TILE].T
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


# --------------------------------------------------------------------------------------------
# affinity


def _sq_distances(X: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances via the Gram matrix (BLAS), exactly symmetric, diag 0."""
    Xc = X - X.mean(axis=0)  # centring reduces cancellation in |x|^2 + |y|^2 - 2 x.y
    sq = np.einsum("ij,ij->i", Xc, Xc)
    D = Xc @ Xc.T
    D *= -2.0
    D += sq[:, None]
    D += sq[None, :]
    np.maximum(D, 0.0, out=D)
    _symmetrize_inplace(D)
    np.fill_diagonal(D, 0.0)
    return D


def _affinity_from_distances(D: np.ndarray, K: int, mu: float) -> np.ndarray:
    """SNFtool ``affinityMatrix`` on a symmetric distance matrix (overwritten with the result)."""
    n = D.shape[0]
    k = min(K, n - 1)
    # mean distance to the k nearest neighbours = sum of the k+1 smallest (incl. the 0 self)
    means = np.empty(n)
    for a in range(0, n, _ROW_CHUNK):
        part = np.partition(D[a : a + _ROW_CHUNK], k, axis=1)[:, : k + 1]
        means[a : a + _ROW_CHUNK] = part.sum(axis=1) / k
    means += _EPS
    scale = np.add.outer(means, means)
    scale += D
    scale /= 3.0
    scale += _EPS
    np.maximum(scale, _EPS, out=scale)
    scale *= mu  # sd of the normal density: mu * eps_ij
    D /= scale
    np.square(D, out=D)
    D *= -0.5
    np.exp(D, out=D)
    scale *= math.sqrt(2.0 * math.pi)
    D /= scale
    return D


def affinity_matrix(
    X: np.ndarray,
    K: int = 20,
    mu: float = 0.5,
    *,
    metric: Metric = "sqeuclidean",
    max_bytes: float | None = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Patient-similarity network of one data block (rows = patients, columns = features).

    Scaled exponential kernel of SNFtool's ``affinityMatrix``:
    ``W_ij = dnorm(rho_ij, 0, mu * (m_i + m_j + rho_ij) / 3)`` where ``m_i`` is the mean
    ``rho`` from patient i to its K nearest neighbours, so the kernel width adapts to local
    density.  ``rho`` is the squared Euclidean distance by default (snfpy's default; SNFtool
    >= 2.3 documents plain Euclidean, ``metric="euclidean"``).  K is capped at ``n - 1``.
    Returns a symmetric ``n x n`` float64 array.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (patients x features), got shape {X.shape}")
    n = X.shape[0]
    if n < 2:
        raise ValueError("affinity_matrix needs at least 2 patients")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values; impute or mask them first")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    if not mu > 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    if metric not in ("sqeuclidean", "euclidean"):
        raise ValueError(f"metric must be 'sqeuclidean' or 'euclidean', got {metric!r}")
    if max_bytes is not None and 8 * 3 * n * n > max_bytes:
        raise SNFMemoryError(
            f"SNF needs ~{8 * 3 * n * n / 2**30:.1f} GiB for n={n} patients; use --method auto"
        )
    D = _sq_distances(X)
    if not np.all(np.isfinite(D)):
        raise ValueError("distances overflowed; rescale the features")
    if metric == "euclidean":
        np.sqrt(D, out=D)
    return _affinity_from_distances(D, int(K), float(mu))


# --------------------------------------------------------------------------------------------
# fusion


def _fuse(
    P: list[np.ndarray],
    S: list[sp.csr_array],
    t: int,
    masks: list[np.ndarray] | None,
) -> np.ndarray:
    """SNF diffusion on normalised networks ``P`` (consumed) with local kernels ``S``.

    ``masks`` (one boolean vector per view) switches on pairwise averaging over the views in
    which both patients are present; ``None`` means every patient is in every view.
    """
    n = P[0].shape[0]
    L = len(P)
    inv_other: np.ndarray | None = None  # 1 / (number of other views holding the pair)
    fallback: np.ndarray | None = None
    if masks is not None:
        # number of *other* views holding both patients of each pair (relevant pairs: >= 0)
        other = _pair_counts(masks, n)
        other -= 1.0
        fallback = other <= 0
        with np.errstate(divide="ignore"):
            np.divide(1.0, other, out=other)
        other[fallback] = 0.0
        inv_other = other
        del other

    total = np.zeros((n, n))
    for p in P:
        total += p
    new_total = np.empty((n, n))
    M = np.empty((n, n))
    A = np.empty((n, n))
    spmm = _SpMM(n)
    try:
        for _ in range(t):
            new_total.fill(0.0)
            for v in range(L):
                # M = mean of the other views' networks (pairwise over present views)
                if L == 1:
                    np.copyto(M, P[v])  # no other view: diffuse the view through itself
                else:
                    np.subtract(total, P[v], out=M)
                    if inv_other is None:
                        M /= L - 1  # SNFtool: sumWJ / (LW - 1)
                    else:
                        M *= inv_other
                    if fallback is not None:
                        np.copyto(M, P[v], where=fallback)
                # P_v <- S_v M S_v^T  (M symmetric, so S (S M)^T = S M S^T)
                spmm.product(S[v], M, A)
                spmm.sandwich(S[v], A, M)
                _normalize_inplace(M, None if masks is None else masks[v])
                P[v], M = M, P[v]  # old P_v no longer needed: recycle its buffer
                new_total += P[v]
            total, new_total = new_total, total
    finally:
        spmm.close()
    del M, A, new_total, P, inv_other, fallback

    W = total
    if masks is None:
        W /= L
    else:
        counts = _pair_counts(masks, n)
        np.divide(W, counts, out=W, where=counts > 0)
        W[counts == 0] = 0.0
        del counts
    return _normalize_inplace(W)


def _pair_counts(masks: list[np.ndarray], n: int) -> np.ndarray:
    """counts[i, j] = number of views in which both patients i and j are present."""
    counts = np.zeros((n, n))
    for m in masks:
        idx = np.flatnonzero(m)
        counts[np.ix_(idx, idx)] += 1.0
    return counts


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def snf(
    affinities: Sequence[np.ndarray],
    K: int = 20,
    t: int = 20,
    *,
    max_bytes: float | None = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Fuse same-sized patient-similarity networks into one (SNFtool ``SNF``).

    Each network is normalised (``P``, diagonal 1/2) and given a K-nearest-neighbour kernel
    ``S``; then ``t`` times, synchronously for every view v,
    ``P_v <- normalise(S_v (mean_{u != v} P_u) S_v^T)``.  Returns the normalised, symmetric
    mean of the ``P_v``.  Inputs are not modified.  With a single network the "other views"
    mean is the network itself (SNFtool would divide by zero).
    """
    if len(affinities) == 0:
        raise ValueError("snf needs at least one affinity matrix")
    K = _check_int("K", K, 1)
    t = _check_int("t", t, 0)
    mats = [np.array(a, dtype=np.float64, copy=True) for a in affinities]
    n = mats[0].shape[0]
    for i, a in enumerate(mats):
        if a.ndim != 2 or a.shape != (n, n):
            raise ValueError(
                f"affinity {i} has shape {a.shape}; all must be square and equal ({n}, {n})"
            )
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"affinity {i} must be finite and non-negative")
    if n < 2:
        raise ValueError("snf needs at least 2 patients")
    _check_memory(n, len(mats), False, max_bytes)
    P = [_normalize_inplace(a) for a in mats]
    S = [_dominate_set(p, K) for p in P]
    return _fuse(P, S, t, None)


def snf_from_blocks(
    blocks: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
    K: int = 20,
    mu: float = 0.5,
    t: int = 20,
    *,
    metric: Metric = "sqeuclidean",
    max_bytes: float | None = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Fused patient network straight from feature blocks, tolerating missing blocks.

    ``masks[b]`` is a boolean vector over the ``n`` cohort patients saying who has block b.
    A block may be given either with one row per cohort patient (``n`` rows; rows of absent
    patients are ignored and may hold NaN) or with rows for its present patients only
    (``masks[b].sum()`` rows, in cohort order).  Without ``masks`` every block must have ``n``
    rows and an all-NaN row marks the patient absent from that block.  Present rows must be
    finite.  Affinities, ``P`` and ``S`` are built per block on its present patients only;
    fusion averages, for each pair, only the views containing both patients (see the module
    docstring).  Raises ``ValueError`` if a patient has no block or a block has fewer than 2
    patients.  Returns the ``n x n`` fused network in cohort order.
    """
    if len(blocks) == 0:
        raise ValueError("snf_from_blocks needs at least one block")
    K = _check_int("K", K, 1)
    t = _check_int("t", t, 0)
    arrays = []
    for b, X in enumerate(blocks):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise ValueError(f"block {b} must be 2-D (patients x features), got {X.shape}")
        arrays.append(X)

    mask_list: list[np.ndarray] = []
    present_rows: list[np.ndarray] = []  # each block restricted to its present patients
    if masks is None:
        n = arrays[0].shape[0]
        for b, X in enumerate(arrays):
            if X.shape[0] != n:
                raise ValueError(f"block {b} has {X.shape[0]} rows, block 0 has {n}")
            m = ~np.all(np.isnan(X), axis=1)
            mask_list.append(m)
            present_rows.append(X[m])
    else:
        if len(masks) != len(arrays):
            raise ValueError(f"got {len(masks)} masks for {len(arrays)} blocks")
        n = np.asarray(masks[0]).shape[0]
        for b, (X, m) in enumerate(zip(arrays, masks, strict=True)):
            m = np.asarray(m)
            if m.dtype != bool and m.size and np.isin(m, (0, 1)).all():
                m = m.astype(bool)
            if m.shape != (n,) or m.dtype != bool:
                raise ValueError(f"mask {b} must be a boolean vector of length {n}")
            if X.shape[0] == n:
                present_rows.append(X[m])
            elif X.shape[0] == int(m.sum()):
                present_rows.append(X)
            else:
                raise ValueError(
                    f"block {b} has {X.shape[0]} rows; expected {n} (all patients) or "
                    f"{int(m.sum())} (patients present in its mask)"
                )
            mask_list.append(m.copy())

    coverage = np.sum(mask_list, axis=0)
    if np.any(coverage == 0):
        lost = np.flatnonzero(coverage == 0)
        shown = ", ".join(map(str, lost[:10])) + (", ..." if lost.size > 10 else "")
        raise ValueError(f"{lost.size} patient(s) have no data block (row indices: {shown})")
    for b, (X, m) in enumerate(zip(present_rows, mask_list, strict=True)):
        if m.sum() < 2:
            raise ValueError(f"block {b} has {int(m.sum())} patient(s); SNF needs >= 2")
        if not np.all(np.isfinite(X)):
            raise ValueError(
                f"block {b} has NaN/inf values in rows marked present; impute them or "
                "mark the patient absent from the block"
            )
    missing = not all(m.all() for m in mask_list)
    _check_memory(n, len(arrays), missing, max_bytes)

    P: list[np.ndarray] = []
    S: list[sp.csr_array] = []
    for X, m in zip(present_rows, mask_list, strict=True):
        if m.all():
            p = _normalize_inplace(affinity_matrix(X, K, mu, metric=metric, max_bytes=None))
            P.append(p)
            S.append(_dominate_set(p, K))
            continue
        idx = np.flatnonzero(m)
        p_sub = _normalize_inplace(affinity_matrix(X, K, mu, metric=metric, max_bytes=None))
        S.append(_embed_sparse(_dominate_set(p_sub, K), idx, n))
        p = np.zeros((n, n))
        p[np.ix_(idx, idx)] = p_sub
        del p_sub
        P.append(p)
    return _fuse(P, S, t, mask_list if missing else None)


# --------------------------------------------------------------------------------------------
# clustering on the fused network


def spectral_labels(W: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster labels (0..n_clusters-1) by spectral clustering of an affinity matrix.

    scikit-learn ``SpectralClustering`` on the precomputed affinity with Yu-Shi
    ``discretize`` label assignment -- the same normalised-Laplacian embedding + discretisation
    as SNFtool's ``spectralClustering`` -- seeded for determinism.  Labels are renumbered in
    order of first appearance so equal partitions give equal label vectors.
    """
    from sklearn.cluster import SpectralClustering

    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square, got shape {W.shape}")
    n = W.shape[0]
    n_clusters = _check_int("n_clusters", n_clusters, 1)
    if n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of patients ({n})")
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    model = SpectralClustering(
        n_clusters=n_clusters,
        affinity="precomputed",
        assign_labels="discretize",
        random_state=seed,
    )
    raw = model.fit_predict((W + W.T) / 2)
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse.ravel()]


def estimate_n_clusters(
    W: np.ndarray, k_range: Iterable[int] = range(2, 9)
) -> tuple[int, dict[int, float]]:
    """Best number of clusters by SNFtool's eigen-gap heuristic, with every candidate's score.

    As ``estimateNumberOfClustersGivenGraph`` (first return value): with ``lambda_1 <= ...``
    the eigenvalues of the normalised Laplacian ``I - D^-1/2 W D^-1/2`` (diagonal of W
    zeroed), the score of k is ``|lambda_{k+1} - lambda_k| * (1 - lambda_k) / (1 - lambda_{k+1})``.
    Returns ``(argmax_k score, {k: score})``; ties go to the smaller k.  Candidates k >= n are
    skipped.  Only the ``max(k_range) + 1`` smallest eigenvalues are computed (dense LAPACK up
    to n=2000, seeded ARPACK above).
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square, got shape {W.shape}")
    n = W.shape[0]
    ks = sorted({int(k) for k in k_range if 2 <= int(k) < n})
    if not ks:
        raise ValueError(f"no candidate k in k_range with 2 <= k < n={n}")
    A = (W + W.T) / 2
    np.fill_diagonal(A, 0.0)
    deg = A.sum(axis=1)
    deg[deg == 0] = _EPS
    dinv = 1.0 / np.sqrt(deg)
    A *= dinv[:, None]
    A *= dinv[None, :]  # D^-1/2 W D^-1/2; Laplacian eigenvalues are 1 - its eigenvalues
    n_eig = max(ks) + 1
    if n <= _DENSE_EIG_MAX_N:
        mu = linalg.eigh(
            A, eigvals_only=True, subset_by_index=[n - n_eig, n - 1], check_finite=False
        )
    else:  # Lanczos on the top of the spectrum: dense eigh costs O(n^3) (~30 s at n=5000)
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(0).random(n)
        ncv = min(n, max(2 * n_eig + 1, 40))
        mu = eigsh(A, k=n_eig, which="LA", v0=v0, ncv=ncv, tol=1e-12, return_eigenvectors=False)
    lam = np.sort(1.0 - mu)
    scores: dict[int, float] = {}
    for k in ks:
        lo, hi = lam[k - 1], lam[k]  # lambda_k, lambda_{k+1} (1-based)
        denom = 1.0 - hi
        if denom == 0:
            denom = _EPS
        scores[k] = float(abs(hi - lo) * (1.0 - lo) / denom)
    best = max(ks, key=lambda k: (scores[k], -k))
    return best, scores
