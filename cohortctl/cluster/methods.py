"""Clustering methods and their model selection.

* ``auto`` / ``hdbscan``: UMAP (5-D) of the integrated matrix, then HDBSCAN. Minimum
  cluster size candidates come from the cohort size (2, 3.5, 5, 7.5 and 10% of patients, at
  least 5) unless ``--min-cluster-size`` fixes it. Each candidate is scored by its bootstrap
  agreement: the mean adjusted Rand index between the candidate's partition and the
  re-clusterings of 80% subsamples (new UMAP, new HDBSCAN each). The most stable
  candidate wins (ties: the larger size). For cohorts up to ``CONSENSUS_MAX`` patients
  the final partition is HDBSCAN (min_samples = half the cluster size) on the consensus
  distance (1 - co-clustering frequency), which is far less sensitive to one embedding's
  randomness. Cohorts above ``LANDMARKS`` patients are clustered on that many random
  landmark patients; the others are placed by a weighted vote of their 15 nearest assigned
  landmarks in the integrated space (unassigned without a majority).
* ``kmeans``, ``ward``, ``spectral``, ``snf``: K chosen over ``--k-range`` by the mean
  silhouette (default) or by PAC of the bootstrap consensus (``--k-criterion pac``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import silhouette_score

from cohortctl.cluster import select, stability
from cohortctl.cluster.embed import umap_embed
from cohortctl.cluster.placement import PlacementRule, knn_vote, place

log = logging.getLogger("cohortctl")

CONSENSUS_MAX = 4000
MIN_CORE = 30  # fewest complete patients worth clustering on their own
LANDMARKS = 2000  # above this many patients, cluster landmarks and place the rest by kNN
UMAP_DIMS = 5
FAMILIES = ("hdbscan", "ward")  # candidate families of ``auto``
#: ``auto`` on a cohort of mutation calls only: k-means on the calls themselves (see run.py)
DISCRETE_FAMILIES = ("kmeans",)
KMEANS_INIT = 10  # k-means restarts per fit (the best of them by inertia)
NULL_SETS = 2  # Gaussian no-structure cohorts each candidate is also run on
NULL_MAX_ROWS = 1000  # null cohorts are at most this large (candidate sizes scale with them)
REFERENCE_EPOCHS = 200  # full-cohort embedding; bootstrap embeddings use the same


@dataclass
class ClusterResult:
    """Labels (-1 = unassigned) and everything needed to judge them."""

    labels: np.ndarray
    confidence: np.ndarray
    nearest: np.ndarray
    embedding: np.ndarray  # (n, UMAP_DIMS) space clustered (or integrated for K-methods)
    scores: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
    stability: dict[int, float] = field(default_factory=dict)
    consensus: dict[str, Any] | None = None
    runs: list[stability.BootRun] = field(default_factory=list)
    #: every scored candidate (partitions of the clustered cohort or landmark set); not saved
    candidates: list[select.Candidate] = field(default_factory=list)


def subsample_indices(n: int, rng: np.random.Generator, fraction: float, cap: int) -> np.ndarray:
    size = max(3, min(int(round(fraction * n)), cap))
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


#: Minimum cluster size candidates, as fractions of the cohort (scanned, scored by stability).
MCS_FRACTIONS = (0.02, 0.035, 0.05, 0.075, 0.10)


def _hdbscan(X: np.ndarray, mcs: int, precomputed: bool = False,
             min_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    import hdbscan

    mcs = max(2, min(mcs, X.shape[0] - 1))
    if min_samples is None and precomputed:
        # The consensus distance is already smoothed over bootstraps: a lighter density
        # requirement keeps boundary patients from being labelled noise.
        min_samples = max(1, mcs // 2)
    model = hdbscan.HDBSCAN(
        min_cluster_size=mcs, metric="precomputed" if precomputed else "euclidean",
        core_dist_n_jobs=1, min_samples=min_samples,
    )
    labels = model.fit_predict(X)
    return labels.astype(np.int64), np.asarray(model.probabilities_, dtype=np.float64)


def mcs_candidates(n: int, fixed: int | None) -> list[int]:
    if fixed:
        return [fixed]
    return sorted({max(5, int(round(f * n))) for f in MCS_FRACTIONS})


def auto_cluster(Z: np.ndarray, *, seed: int, bootstrap: int, fixed_mcs: int | None,
                 n_neighbors: int, subsample: float, max_subsample: int, workers: int = 1,
                 landmarks: int = LANDMARKS, complete: np.ndarray | None = None,
                 alternatives: dict[str, np.ndarray] | None = None, name: str = "default",
                 progress: Callable[[str], None] | None = None,
                 families: tuple[str, ...] = FAMILIES, rule: select.SelectionRule | None = None,
                 null_sets: int = NULL_SETS, null_fn: NullFn | None = None) -> ClusterResult:
    """Candidates of several families on a UMAP embedding, chosen by null-calibrated stability.

    ``families``: ``("hdbscan", "ward")`` for ``auto``, ``("hdbscan",)`` for ``hdbscan``;
    candidates and the selection rule are described in :mod:`cohortctl.cluster.select`
    (``null_sets`` = 0 scores raw stability, without the null; ``null_fn(Z, rows, rng)``
    draws a no-structure cohort like ``Z``, default Gaussian with Z's covariance).

    ``alternatives``: other geometries of the same patients (same rows), competing with
    ``Z`` under the same bootstrap-agreement criterion (see :func:`_auto_core`); the
    result's ``chosen["space"]`` names the winner (``name`` for ``Z``) and every later
    step (landmark placement, the returned embedding) uses it.

    Cohorts larger than ``landmarks`` are clustered on a random subset of that many
    landmark patients (same procedure), and every other patient is placed by a weighted
    vote of its nearest landmarks in the integrated space: cost grows linearly in n
    beyond the landmark set instead of with n UMAP/HDBSCAN fits.

    ``complete`` marks the patients measured on every modality. Patients missing one carry
    imputed scores (an average of their neighbours), which sit between groups and would
    bridge them; when at least half the cohort (or a full landmark set) is complete, the
    groups are found on complete patients only and the others are placed the same way.
    """
    n = Z.shape[0]
    spaces = {name: Z, **(alternatives or {})}
    pool = np.arange(n)
    if complete is not None and not complete.all():
        n_complete = int(complete.sum())
        if n_complete >= max(MIN_CORE, min(landmarks, n // 2)):
            pool = np.flatnonzero(complete)
    if pool.size == n and n <= landmarks:
        return _auto_core(spaces, seed=seed, bootstrap=bootstrap, fixed_mcs=fixed_mcs,
                          n_neighbors=n_neighbors, subsample=subsample,
                          max_subsample=max_subsample, workers=workers, progress=progress,
                          families=families, rule=rule, null_sets=null_sets,
                          null_fn=null_fn)
    size = min(landmarks, pool.size)
    rng = np.random.default_rng([seed, 7])
    marks = np.sort(pool[rng.choice(pool.size, size=size, replace=False)])
    scaled_mcs = None
    if fixed_mcs:
        scaled_mcs = max(2, int(round(fixed_mcs * size / n)))
    core = _auto_core({nm: S[marks] for nm, S in spaces.items()}, seed=seed,
                      bootstrap=bootstrap, fixed_mcs=scaled_mcs,
                      n_neighbors=n_neighbors, subsample=subsample,
                      max_subsample=max_subsample, workers=workers, progress=progress,
                      families=families, rule=rule, null_sets=null_sets, null_fn=null_fn)
    Z = spaces[core.chosen["space"]]
    if progress:
        progress(f"placing {n - size} patients by their nearest landmarks")
    # Non-landmarks are placed by the assigned landmarks; without a majority (half the
    # vote) for one cluster they stay unassigned, like HDBSCAN's outliers. Unassigned
    # landmarks get the same rule as everyone else.
    ok = core.labels >= 0
    if ok.any():
        labels, conf, _share = place(Z[marks][ok], core.labels[ok], core.confidence[ok], Z,
                                     PLACEMENT)
        labels[marks], conf[marks] = core.labels, core.confidence
        if (~ok).any():
            lone = marks[~ok]
            l2, c2, _s2 = place(Z[marks][ok], core.labels[ok], core.confidence[ok], Z[lone],
                                PLACEMENT)
            take = l2 >= 0
            labels[lone[take]], conf[lone[take]] = l2[take], c2[take]
    else:
        labels, conf, _share = knn_vote(Z[marks], core.labels, core.confidence, Z, PLACEMENT)
        labels[marks], conf[marks] = core.labels, core.confidence
    # Landmarks are sparse: near a boundary the 15 nearest reach far. Unsure patients get a
    # second vote at full resolution, among the confidently assigned patients of the cohort.
    voted = vote_unsure(Z, labels, conf)
    if voted is not None:
        labels, conf = voted
    nearest = labels.copy()
    if (labels < 0).any():
        nl, _c, _s = knn_vote(Z[marks], core.nearest, core.confidence, Z[labels < 0],
                              PLACEMENT)
        nearest[labels < 0] = nl
    nearest[marks] = np.where(labels[marks] >= 0, labels[marks], core.nearest)
    runs = [(marks[idx], lab) for idx, lab in core.runs]
    res = ClusterResult(labels=labels, confidence=np.round(conf, 6), nearest=nearest,
                        embedding=Z, scores=core.scores, stability=core.stability,
                        consensus=core.consensus, runs=runs, candidates=core.candidates)
    res.chosen = dict(core.chosen, landmarks=size,
                      landmark_pool=("patients with every modality" if pool.size < n
                                     else "all patients"),
                      placement="weighted vote of the 15 nearest assigned landmarks; "
                                "patients below confidence "
                                f"{STABLE_CONFIDENCE} then by the 15 nearest confidently "
                                "assigned patients of the cohort; unassigned without a "
                                "majority")
    return res


ATTACH_CONSENSUS = 0.5  # majority of the runs that assigned the patient
MIN_ASSIGNED_RATE = 0.2  # evidence needed: assigned in >= 20% of the runs sampling it


def assigned_rate(n: int, runs: list[stability.BootRun]) -> np.ndarray:
    """Per patient: the fraction of the bootstrap runs sampling it that assigned it."""
    sampled = np.zeros(n)
    assigned = np.zeros(n)
    for idx, labels in runs:
        sampled[idx] += 1
        assigned[idx] += labels >= 0
    return np.divide(assigned, sampled, out=np.zeros(n), where=sampled > 0)


def attach_consensus_noise(labels: np.ndarray, cons: np.ndarray, rate: np.ndarray,
                           threshold: float = ATTACH_CONSENSUS,
                           min_rate: float = MIN_ASSIGNED_RATE) -> np.ndarray:
    """Give an HDBSCAN outlier the cluster the bootstraps place it in, when they agree.

    HDBSCAN leaves density fringes unassigned even when the bootstrap runs agree where
    those patients belong. A patient joins cluster c when, over the runs that assigned it
    at all (at least ``min_rate`` of the runs that sampled it), it shared a cluster with
    c's members in at least ``threshold`` of them (mean consensus with c divided by its
    assignment rate). Others stay unassigned (-1).
    """
    noise = np.flatnonzero(labels < 0)
    clusters = np.unique(labels[labels >= 0])
    if noise.size == 0 or clusters.size == 0:
        return labels
    aff = np.column_stack([cons[np.ix_(noise, np.flatnonzero(labels == c))].mean(axis=1)
                           for c in clusters])
    r = rate[noise]
    share = np.divide(aff, r[:, None], out=np.zeros_like(aff), where=r[:, None] > 0)
    best = np.argmax(share, axis=1)
    ok = (share[np.arange(noise.size), best] >= threshold) & (r >= min_rate)
    out = labels.copy()
    out[noise[ok]] = clusters[best[ok]]
    return out


PLACEMENT = PlacementRule()  # the one rule cluster and assign place patients by


SCREEN_FRACTION = 3  # with competing geometries, 1/3 of the bootstraps screen each one

#: ``null_fn(Z, rows, rng)``: a cohort without groups, shaped like ``Z``.
NullFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


Task = tuple[np.ndarray, int]  # bootstrap subsample indices and the run's seed
Key = tuple[str, int]  # candidate: family and its parameter (HDBSCAN size or K)


def k_candidates(n: int, max_groups: int) -> list[int]:
    """Numbers of groups the K-based family tries: 2 .. max_groups (fewer for tiny cohorts)."""
    return list(range(2, max(2, min(max_groups, n // 5)) + 1))


@dataclass
class _Plan:
    """What each bootstrap computes: HDBSCAN sizes (scaled to the subsample), Ward Ks on
    the UMAP embedding and k-means Ks on the integrated space itself."""

    sizes: dict[int, int]  # candidate minimum cluster size -> size used on a subsample
    ks: list[int]
    kmeans: list[int] = field(default_factory=list)

    @property
    def boot_sizes(self) -> list[int]:
        return sorted(set(self.sizes.values()))

    def candidate_keys(self) -> list[Key]:
        return ([("hdbscan", m) for m in self.sizes] + [("ward", k) for k in self.ks]
                + [("kmeans", k) for k in self.kmeans])

    @property
    def needs_embedding(self) -> bool:
        """Whether a bootstrap run needs its own UMAP (not for k-means alone)."""
        return bool(self.sizes or self.ks)

    def boot_key(self, key: Key) -> Key:
        return ("hdbscan", self.sizes[key[1]]) if key[0] == "hdbscan" else key


def _boot_sizes(sizes: list[int], n: int, m_boot: int) -> dict[int, int]:
    """Each minimum cluster size and the size used on a subsample of ``m_boot`` patients:
    a capped subsample (much smaller than the cohort) gets proportionally smaller sizes."""
    ratio = m_boot / n if m_boot < 0.75 * n else 1.0
    return {m: max(5, int(round(m * ratio))) for m in sizes}


def _plan(n: int, m_boot: int, fixed_mcs: int | None, families: tuple[str, ...],
          max_groups: int) -> _Plan:
    sizes = (_boot_sizes(mcs_candidates(n, fixed_mcs), n, m_boot)
             if "hdbscan" in families else {})
    ks = k_candidates(n, max_groups) if "ward" in families and not fixed_mcs else []
    kmeans = k_candidates(n, max_groups) if "kmeans" in families and not fixed_mcs else []
    return _Plan(sizes, ks, kmeans)


def _tasks(n: int, count: int, rng: np.random.Generator, subsample: float,
           max_subsample: int) -> list[Task]:
    out = []
    for _b in range(count):
        idx = subsample_indices(n, rng, subsample, max_subsample)
        out.append((idx, int(rng.integers(0, 2**31 - 1))))
    return out


def _auto_core(spaces: dict[str, np.ndarray], *, seed: int, bootstrap: int,
               fixed_mcs: int | None, n_neighbors: int, subsample: float, max_subsample: int,
               workers: int = 1, progress: Callable[[str], None] | None = None,
               families: tuple[str, ...] = FAMILIES, rule: select.SelectionRule | None = None,
               null_sets: int = NULL_SETS, null_fn: NullFn | None = None) -> ClusterResult:
    """Bootstrap candidates on one cohort (or landmark set) and choose by the selection rule.

    Every bootstrap subsample gets a new UMAP; each candidate (HDBSCAN per minimum size,
    Ward per K) re-clusters it, and is scored by the mean ARI between its partition of the
    whole cohort (on the reference embedding) and those re-clusterings, minus the same
    score on Gaussian null cohorts (:mod:`cohortctl.cluster.select`). The chosen
    candidate's final partition is built from the bootstrap consensus (up to
    ``CONSENSUS_MAX`` patients). A fixed ``fixed_mcs`` skips the selection.

    With several geometries (``spaces``), each is first screened on the same
    ``bootstrap // SCREEN_FRACTION`` subsamples by the raw agreement of its best HDBSCAN
    candidate; the winner (ties: the first) gets the remaining bootstraps.
    """
    rule = rule or select.SelectionRule()
    names = list(spaces)
    n = spaces[names[0]].shape[0]
    rng = np.random.default_rng(seed)
    tasks = _tasks(n, bootstrap, rng, subsample, max_subsample)
    plan = _plan(n, len(tasks[0][0]) if tasks else n, fixed_mcs, families, rule.max_groups)
    use_consensus = n <= CONSENSUS_MAX and bootstrap >= 5

    screening: dict[str, float] = {}
    space = names[0]
    done: list[dict[Key, np.ndarray]] = []
    embedding: np.ndarray | None = None
    if len(names) > 1 and bootstrap >= 2 * SCREEN_FRACTION:
        screen = tasks[: bootstrap // SCREEN_FRACTION]
        trials = {}
        for name in names:
            boot, emb = _bootstrap_with_reference(spaces[name], screen, plan, n_neighbors,
                                                  seed, workers, progress)
            cands = _candidates(plan, screen, boot, emb, spaces[name], only="hdbscan")
            screening[name] = max((c.stability for c in cands), default=0.0)
            trials[name] = (boot, emb)
        space = max(names, key=lambda nm: (screening[nm], -names.index(nm)))
        done, embedding = trials[space]
    Z = spaces[space]
    rest, reference = _bootstrap_with_reference(Z, tasks[len(done):], plan, n_neighbors,
                                                seed, workers, progress,
                                                embed=embedding is None)
    embedding = reference if embedding is None else embedding
    assert embedding is not None
    boots = done + rest
    cands = _candidates(plan, tasks, boots, embedding, Z)
    selecting = not fixed_mcs and len(cands) > 1
    if selecting and null_sets > 0 and bootstrap >= 5:
        _null_stability(Z, cands, plan, null_fn=null_fn, seed=seed, sets=null_sets,
                        bootstrap=max(5, bootstrap // 3), n_neighbors=n_neighbors,
                        subsample=subsample, max_subsample=max_subsample, workers=workers,
                        progress=progress)
    if selecting:
        decision = select.choose(cands, rule)
    else:
        decision = select.Decision(cands[0] if cands else None, None,
                                   cands[0].score if cands else 0.0, "fixed by the user", rule)
    chosen = decision.chosen
    if chosen is None:
        res = finish(np.zeros(n, dtype=np.int64), embedding, [], None)
        refined = False
    else:
        runs = [(idx, b[plan.boot_key(chosen.key)]) for (idx, _s), b in zip(tasks, boots,
                                                                            strict=True)]
        labels, cons = _final_partition(chosen, runs, use_consensus)
        final = select.Candidate(chosen.family, chosen.param, labels, chosen.stability)
        if selecting and select.ineligible(final, rule) is not None:
            # The consensus partition broke the rule (more groups, a tiny group): keep the
            # candidate's own partition, which was checked.
            labels = chosen.labels
        res = finish(stability.relabel_by_size(labels), embedding, runs, cons)
        voted = vote_unsure(Z, res.labels, res.confidence)
        refined = voted is not None and not np.array_equal(voted[0], res.labels)
        if refined:
            assert voted is not None
            res = finish(stability.relabel_by_size(voted[0]), embedding, runs, cons)
    res.scores = [c.row(rule) for c in cands]
    res.candidates = cands
    res.chosen = {
        "family": None if chosen is None else chosen.family,
        "criterion": "bootstrap stability minus null stability" if selecting and null_sets
                     else "bootstrap stability",
        "selection": decision.summary(),
        "rule": rule.to_dict(),
        "null_sets": null_sets if selecting else 0,
        "final_partition": ("single group (no stable structure)" if chosen is None else
                            "consensus" if use_consensus else "embedding"),
        "unstable_patients": f"confidence < {STABLE_CONFIDENCE}: placed by the vote of stable "
                             "members in the integrated space" if refined else "kept",
        "space": space,
        "placement_rule": PLACEMENT.to_dict(),
    }
    if chosen is not None:
        res.chosen["min_cluster_size" if chosen.family == "hdbscan" else "k"] = chosen.param
    if screening:
        res.chosen["space_screening"] = {
            "bootstraps_each": bootstrap // SCREEN_FRACTION,
            "best_agreement_ari": {nm: round(v, 6) for nm, v in screening.items()}}
    elif len(names) > 1:
        res.chosen["space_screening"] = {
            "skipped": f"fewer than {2 * SCREEN_FRACTION} bootstraps: {names[0]} kept"}
    return res


def _reference_labels(key: Key, embedding: np.ndarray, ward: Any | None,
                      Z: np.ndarray) -> np.ndarray:
    """A candidate's partition of the whole cohort: on the reference embedding (HDBSCAN,
    Ward) or on the integrated space (k-means)."""
    from scipy.cluster.hierarchy import fcluster

    if key[0] == "hdbscan":
        return _hdbscan(embedding, key[1])[0]
    if key[0] == "kmeans":
        return _kmeans(Z, key[1], seed=0)
    return (fcluster(ward, key[1], "maxclust") - 1).astype(np.int64)


def _kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels (best of ``KMEANS_INIT`` k-means++ starts; deterministic per seed)."""
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=KMEANS_INIT, random_state=seed).fit_predict(X).astype(np.int64)


def _candidates(plan: _Plan, tasks: list[Task], boots: list[dict[Key, np.ndarray]],
                embedding: np.ndarray, Z: np.ndarray,
                only: str | None = None) -> list[select.Candidate]:
    """Every candidate with its stability: mean ARI of its whole-cohort partition with its
    re-clusterings of the bootstrap subsamples (0 when the partition has < 2 groups)."""
    from scipy.cluster.hierarchy import linkage

    ward = linkage(embedding, "ward") if plan.ks else None
    out = []
    for key in plan.candidate_keys():
        if only and key[0] != only:
            continue
        labels = _reference_labels(key, embedding, ward, Z)
        bk = plan.boot_key(key)
        agree = [stability.adjusted_rand(labels[idx], b[bk]) for (idx, _s), b in
                 zip(tasks, boots, strict=True)]
        groups = np.unique(labels[labels >= 0]).size
        score = float(np.mean(agree)) if agree and groups >= 2 else 0.0
        out.append(select.Candidate(key[0], key[1], labels, score))
    return out


def _null_stability(Z: np.ndarray, cands: list[select.Candidate], plan: _Plan, *,
                    null_fn: NullFn | None, seed: int,
                    sets: int, bootstrap: int, n_neighbors: int, subsample: float,
                    max_subsample: int, workers: int,
                    progress: Callable[[str], None] | None) -> None:
    """Each candidate's stability on Gaussian cohorts with Z's covariance (no groups).

    Null cohorts have ``min(n, NULL_MAX_ROWS)`` patients; HDBSCAN sizes keep their share
    of the cohort, Ks are the same. Fills ``Candidate.null_stability``.
    """
    n = Z.shape[0]
    rows = min(n, NULL_MAX_ROWS)
    for j in range(sets):
        rng = np.random.default_rng([seed, 11, j])
        Zn = (null_fn or select.gaussian_null)(Z, rows, rng)
        tasks = _tasks(rows, bootstrap, rng, subsample, max_subsample)
        scaled = {m: max(5, int(round(m * rows / n))) for m in plan.sizes}
        nplan = _Plan(_boot_sizes(list(scaled.values()), rows, len(tasks[0][0])), plan.ks,
                      plan.kmeans)
        if progress:
            progress(f"no-structure reference (null cohort) {j + 1}/{sets}")
        boots, emb = _bootstrap_with_reference(Zn, tasks, nplan, n_neighbors,
                                               int(rng.integers(0, 2**31 - 1)), workers, None)
        assert emb is not None
        null = {c.key: c.stability for c in _candidates(nplan, tasks, boots, emb, Zn)}
        for c in cands:
            key = ("hdbscan", scaled[c.param]) if c.family == "hdbscan" else c.key
            c.null_stability.append(null[key])


def _final_partition(chosen: select.Candidate, runs: list[stability.BootRun],
                     use_consensus: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The chosen candidate's partition, from the bootstrap consensus when affordable.

    HDBSCAN: HDBSCAN on the consensus distance, outliers attached where the bootstraps
    agree. Ward K: average linkage of the consensus distance cut at K (as
    ConsensusClusterPlus does). Without consensus: the reference-embedding partition.
    """
    n = chosen.labels.size
    if not use_consensus:
        return chosen.labels, None
    cons = stability.coassociation(n, runs)
    if chosen.family == "hdbscan":
        labels, _prob = _hdbscan(1.0 - cons, chosen.param, precomputed=True)
        return attach_consensus_noise(labels, cons, assigned_rate(n, runs)), cons
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    dist = 1.0 - cons
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), "average")
    return (fcluster(tree, chosen.param, "maxclust") - 1).astype(np.int64), cons


STABLE_CONFIDENCE = 0.8  # co-clustered with their cluster in >= 80% of the bootstraps
MIN_STABLE_MEMBERS = 5


def vote_unsure(Z: np.ndarray, labels: np.ndarray, conf: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """Re-place unsure patients by the vote of their confident neighbours in ``Z``.

    Unsure = unassigned or below ``STABLE_CONFIDENCE``: in the core, patients the
    bootstrap runs put in different groups (where one UMAP layout is least faithful);
    after the landmark placement, also patients whose nearest landmarks were split. Their
    15 nearest confident patients in the integrated space vote (the landmark placement's
    weighted vote; unassigned without a majority). Returns the new labels and confidences,
    or None (keep everything) when fewer than two groups exist, some group has fewer than
    ``MIN_STABLE_MEMBERS`` confident members, or nobody is unsure.
    """
    clusters = np.unique(labels[labels >= 0])
    confident = (labels >= 0) & (conf >= STABLE_CONFIDENCE)
    unsure = ~confident
    if clusters.size < 2 or not unsure.any():
        return None
    if min(int((confident & (labels == c)).sum()) for c in clusters) < MIN_STABLE_MEMBERS:
        return None
    voted, voted_conf, _share = place(Z[confident], labels[confident], conf[confident],
                                      Z[unsure], PLACEMENT)
    labels, conf = labels.copy(), conf.copy()
    labels[unsure], conf[unsure] = voted, voted_conf
    return labels, conf


_SHARED: dict[str, Any] = {}
PARALLEL_MIN_N = 1000  # below this a bootstrap UMAP takes ~0.05 s: worker start-up costs more


def _boot_one(task: Task) -> dict[Key, np.ndarray]:
    """One bootstrap re-clustering: new UMAP of the subsample, then every candidate."""
    Z, plan, n_neighbors = _SHARED["Z"], _SHARED["plan"], _SHARED["n_neighbors"]
    idx, run_seed = task
    out: dict[Key, np.ndarray] = {("kmeans", k): _kmeans(Z[idx], k, seed=run_seed)
                                  for k in plan.kmeans}
    if not plan.needs_embedding:
        return out
    emb = umap_embed(Z[idx], n_components=UMAP_DIMS, n_neighbors=n_neighbors, seed=run_seed,
                     n_epochs=200)
    out.update({("hdbscan", m): _hdbscan(emb, m, min_samples=max(1, m // 2))[0]
                for m in plan.boot_sizes})
    if plan.ks:
        from scipy.cluster.hierarchy import fcluster, linkage

        tree = linkage(emb, "ward")
        for k in plan.ks:
            out[("ward", k)] = (fcluster(tree, k, "maxclust") - 1).astype(np.int64)
    return out


def _worker_init(Z: np.ndarray, plan: _Plan, n_neighbors: int) -> None:
    """Workers are single-threaded: parallelism comes from the pool itself."""
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(1)
    threadpool_limits(limits=1)
    _SHARED.update(Z=Z, plan=plan, n_neighbors=n_neighbors)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Keep worker start-up from re-running the caller's ``__main__`` script.

    Workers only need this module; re-importing an unguarded user script (or ``python -m``
    entry) in every worker would rerun the whole command.
    """
    import sys

    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    try:
        if "__file__" in saved:
            delattr(main, "__file__")
        if "__spec__" in saved:
            main.__spec__ = None  # type: ignore[union-attr]
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _bootstrap_with_reference(Z: np.ndarray, tasks: list[Task], plan: _Plan, n_neighbors: int,
                              seed: int, workers: int,
                              progress: Callable[[str], None] | None, embed: bool = True
                              ) -> tuple[list[dict[Key, np.ndarray]], np.ndarray | None]:
    """Bootstrap runs (in worker processes for larger cohorts) and the full-cohort embedding
    (None when ``embed`` is false: the caller has it already).

    Each run depends only on its own (indices, seed), so the result is the same whatever
    the number of workers. Workers come from a *forkserver* (a clean interpreter), never a
    plain fork of this process: forking after OpenMP/polars threads have started can
    deadlock the child.
    """
    n = Z.shape[0]

    def reference() -> np.ndarray | None:
        if not embed:
            return None
        return umap_embed(Z, n_components=UMAP_DIMS, n_neighbors=n_neighbors, seed=seed,
                          n_epochs=REFERENCE_EPOCHS)

    if workers <= 1 or len(tasks) < 4 or n < PARALLEL_MIN_N:
        _SHARED.update(Z=Z, plan=plan, n_neighbors=n_neighbors)
        try:
            embedding = reference()
            out = []
            for i, task in enumerate(tasks):
                out.append(_boot_one(task))
                if progress:
                    progress(f"bootstrap re-clustering {i + 1}/{len(tasks)}")
            return out, embedding
        finally:
            _SHARED.clear()
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["cohortctl.cluster.methods"])
    with _main_module_hidden(), ctx.Pool(processes=workers, initializer=_worker_init,
                                         initargs=(Z, plan, n_neighbors)) as pool:
        pending = pool.map_async(_boot_one, tasks, chunksize=1)
        embedding = reference()
        out = pending.get()
        pool.close()
        pool.join()
    # Release the pool's semaphores now: the CLI exits without interpreter teardown, and
    # multiprocessing's resource tracker would otherwise warn about them on stderr.
    del pool, pending
    import gc

    gc.collect()
    return out, embedding


def finish(labels: np.ndarray, space: np.ndarray, runs: list[stability.BootRun],
           cons: np.ndarray | None) -> ClusterResult:
    """Confidence, nearest cluster, per-cluster stability and consensus summary."""
    n = labels.shape[0]
    clusters = [c for c in np.unique(labels) if c >= 0]
    nearest = labels.copy()
    if clusters and (labels < 0).any():
        noise = np.flatnonzero(labels < 0)
        if cons is not None:
            aff = np.column_stack([cons[np.ix_(noise, np.flatnonzero(labels == c))].mean(axis=1)
                                   for c in clusters])
        else:
            cents = np.vstack([space[labels == c].mean(axis=0) for c in clusters])
            aff = -((space[noise, None, :] - cents[None]) ** 2).sum(axis=2)
        nearest[noise] = np.asarray(clusters)[np.argmax(aff, axis=1)]
    if runs:
        conf = stability.patient_confidence(labels, runs)
        stab = stability.jaccard_stability(labels, runs)
        if (labels < 0).any():
            # Unassigned: how often they co-cluster with their nearest cluster.
            conf[labels < 0] = stability.patient_confidence(nearest, runs)[labels < 0] * 0.5
    else:
        conf = np.ones(n)
        stab = {}
    summary = stability.consensus_summary(cons, labels) if cons is not None else None
    return ClusterResult(labels=labels, confidence=np.round(conf, 6), nearest=nearest,
                         embedding=space, stability=stab, consensus=summary, runs=runs)


# -- K-based methods ------------------------------------------------------------------
def _k_labels(method: str, X: np.ndarray, k: int, seed: int,
              affinity: np.ndarray | None = None) -> np.ndarray:
    if method == "kmeans":
        return _kmeans(X, k, seed)
    if method == "ward":
        from sklearn.cluster import AgglomerativeClustering

        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(X)
    if method == "spectral":
        from sklearn.cluster import SpectralClustering

        nn = max(2, min(10, X.shape[0] - 1))
        return SpectralClustering(n_clusters=k, affinity="nearest_neighbors", n_neighbors=nn,
                                  random_state=seed, assign_labels="cluster_qr").fit_predict(X)
    if method == "snf":
        from cohortctl.cluster.snf import spectral_labels

        assert affinity is not None
        return spectral_labels(affinity, k, seed=seed)
    raise ValueError(method)


def k_cluster(method: str, X: np.ndarray, *, k_values: list[int], seed: int, bootstrap: int,
              criterion: str, subsample: float, max_subsample: int,
              affinity_fn: Callable[[np.ndarray | None], np.ndarray] | None = None,
              progress: Callable[[str], None] | None = None) -> ClusterResult:
    """Fit every K, score it, keep the best; bootstrap stability for the chosen K."""
    n = X.shape[0]
    k_values = [k for k in k_values if 2 <= k < n]
    if not k_values:
        from cohortctl.errors import InputDataError

        raise InputDataError(f"only {n} patients: too few for any K in the requested range")
    rng = np.random.default_rng(seed)
    full_aff = affinity_fn(None) if affinity_fn else None
    fits, scores = {}, []
    boot_idx = [subsample_indices(n, rng, subsample, max_subsample) for _ in range(bootstrap)]
    for k in k_values:
        labels = _k_labels(method, X, k, seed, full_aff)
        fits[k] = labels
        if method == "snf" and full_aff is not None:
            dist = 1.0 - full_aff / max(full_aff.max(), 1e-12)
            np.fill_diagonal(dist, 0.0)
            sil = (silhouette_score(dist, labels, metric="precomputed")
                   if len(set(labels)) > 1 else -1.0)
        else:
            sil = silhouette_score(X, labels) if len(set(labels)) > 1 else -1.0
        row: dict[str, Any] = {"k": k, "silhouette": round(float(sil), 6)}
        if criterion == "pac" and bootstrap and n <= CONSENSUS_MAX:
            runs = [(idx, _k_labels(method, X[idx], k, seed,
                                    affinity_fn(idx) if affinity_fn else None))
                    for idx in boot_idx]
            row["pac"] = round(stability.pac_score(stability.coassociation(n, runs)), 6)
        scores.append(row)
        if progress:
            progress(f"fitting candidates K={k}")
    if criterion == "pac" and all("pac" in s for s in scores):
        best = min(scores, key=lambda s: (s["pac"], -s["silhouette"]))["k"]
    else:
        best = max(scores, key=lambda s: (s["silhouette"], -s["k"]))["k"]
    labels = stability.relabel_by_size(fits[best])
    runs = [(idx, _k_labels(method, X[idx], best, seed, affinity_fn(idx) if affinity_fn else None))
            for idx in boot_idx]
    cons = stability.coassociation(n, runs) if runs and n <= CONSENSUS_MAX else None
    res = finish(labels, X, runs, cons)
    res.scores = scores
    res.chosen = {"k": best, "criterion": criterion}
    return res
