"""``cohortctl cluster``: store -> feature blocks -> integrated matrix -> groups -> run dir."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cohortctl.cluster import methods
from cohortctl.cluster.embed import limit_threads
from cohortctl.errors import InputDataError, OutputError, UsageError
from cohortctl.features import BlockModel, FeatureSettings, Integrated, integrate
from cohortctl.store import (
    RUN_FORMAT,
    RUN_MANIFEST,
    Store,
    atomic_directory,
    fsync_tree,
    manifest_files,
    valid_name,
    version_info,
    write_json,
    write_parquet,
)

log = logging.getLogger("cohortctl")

METHODS = ("auto", "hdbscan", "kmeans", "ward", "spectral", "snf")


@dataclass
class ClusterOptions:
    """Every clustering parameter (resolved values are written to params.json)."""

    modalities: list[str] | None = None
    with_clinical: list[str] = field(default_factory=list)
    method: str = "auto"
    k: int | None = None
    k_range: tuple[int, int] = (2, 8)
    k_criterion: str = "silhouette"
    min_cluster_size: int | None = None
    n_neighbors: int = 15
    seed: int = 0
    bootstrap: int = 30
    subsample: float = 0.8
    max_subsample: int = 3000
    landmarks: int = methods.LANDMARKS
    max_groups: int = 8
    min_group_fraction: float = 0.03
    null_sets: int = methods.NULL_SETS
    assign_noise: bool = False
    run: str | None = None
    threads: int | None = None
    features: FeatureSettings = field(default_factory=FeatureSettings)


def parse_k_range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:\.\.|-|:)\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 2 or int(m.group(2)) < int(m.group(1)):
        raise UsageError(f"--k-range must look like 2..8 (both >= 2, ascending), not {text!r}")
    return int(m.group(1)), int(m.group(2))


BlockScores = dict[str, tuple[list[str], np.ndarray]]


def build_blocks(store: Store, opts: ClusterOptions) -> tuple[dict[str, BlockModel], BlockScores]:
    """Fit one BlockModel per chosen modality (+ clinical block when asked)."""
    available = {t["name"]: t for t in store.feature_tables()}
    names = opts.modalities or list(available)
    unknown = [m for m in names if m not in available]
    if unknown:
        raise UsageError(
            f"--modalities: no genetic/molecular table named {', '.join(unknown)} "
            f"(have: {', '.join(available)})"
        )
    models: dict[str, BlockModel] = {}
    scores: dict[str, tuple[list[str], np.ndarray]] = {}
    settings = opts.features
    if (not opts.with_clinical and settings.components == "noise"
            and all(available[nm]["kind"] == "genetic" for nm in names)):
        # Mutation calls alone: keep their whole (Hamming) geometry; see _run_method.
        settings = replace(settings, discrete_components="all")
    for name in names:
        entry = available[name]
        model = BlockModel(name=name, kind=entry["kind"])
        df = _read_block(store, entry, model, settings)
        model.fit(df, settings)
        s, _obs = model.fit_scores
        models[name] = model
        scores[name] = (df["patient_id"].to_list(), s)
        del df
    if opts.with_clinical:
        clin = store.clinical()
        if clin is None:
            raise UsageError("--with-clinical needs a clinical table in the store")
        forbidden = forbidden_columns(store)
        for col in opts.with_clinical:
            if col in forbidden:
                raise UsageError(
                    f"--with-clinical: {col!r} is {forbidden[col]} and can never be a "
                    "clustering input"
                )
            if col not in clin.columns:
                raise UsageError(f"--with-clinical: no clinical column {col!r}")
        df = clin.select("patient_id", *opts.with_clinical)
        model = BlockModel(name="clinical", kind="clinical").fit(df, opts.features)
        models["clinical"] = model
        scores["clinical"] = (df["patient_id"].to_list(), model.transform_frame(df)[0])
    return models, scores


K_IMPUTE = 10  # complete patients averaged to fill a missing block (recorded for assign)
STREAM_MIN_VALUES = 50_000_000  # tables above this many cells are pre-filtered column-wise


def _read_block(store: Store, entry: dict[str, Any], model: BlockModel,
                settings: FeatureSettings) -> pl.DataFrame:
    """The block's table; for big molecular tables only the columns that can be selected.

    A streaming pass over column chunks applies the same missingness, constant and
    top-variance filters as :meth:`BlockModel.fit`, so memory stays at one chunk plus the
    selected columns instead of the whole patients x features matrix.
    """
    from cohortctl.features import prefilter_columns

    rows, cols = int(entry.get("rows") or 0), int(entry.get("columns") or 0)
    if entry["kind"] != "molecular" or rows * cols <= STREAM_MIN_VALUES:
        return store.read(entry)
    path = store.verify(entry)  # once: the pre-filter pass and the read below share it
    keep, dropped, transform = prefilter_columns(path, settings)
    model.prefiltered = dropped
    if settings.transform == "auto":
        model.forced_transform = transform
    return store.read(entry, columns=["patient_id", *keep], verified=True)


def forbidden_columns(store: Store) -> dict[str, str]:
    """Clinical columns that must never enter clustering, with the reason."""
    roles = store.roles
    out = {}
    for role in ("time", "event", "treatment", "response"):
        if roles.get(role):
            out[roles[role]] = f"the {role} outcome column"
    for ref in roles.get("reference", []) or []:
        out[ref] = "a reference labelling"
    out["patient_id"] = "the patient identifier"
    return out


def cluster(store: Store, opts: ClusterOptions,
            progress: Callable[[str], None] | None = None) -> Path:
    """Run the whole clustering and write ``STORE/runs/<run>/``; returns its path."""
    if opts.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}")
    if opts.run is not None and not valid_name(opts.run):
        raise UsageError(f"--run {opts.run!r}: use letters, digits, '_', '-', '.'")
    if not 0.1 <= opts.subsample <= 1.0:
        raise UsageError("--subsample must be between 0.1 and 1")
    if opts.bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    if opts.max_groups < 2:
        raise UsageError("--max-groups must be >= 2")
    if not 0.0 <= opts.min_group_fraction < 0.5:
        raise UsageError("--min-group-fraction must be in [0, 0.5)")
    with limit_threads(opts.threads):
        models, scores = build_blocks(store, opts)
        integ = integrate(scores, k_impute=K_IMPUTE)
        n = len(integ.patient_ids)
        if n < 6:
            raise InputDataError(f"only {n} patients with data: too few to find groups")
        if progress:
            progress(f"{n} patients, {integ.matrix.shape[1]} integrated dimensions")
        alternatives = _alternative_geometries(models, scores, opts, n)
        result = _run_method(integ, scores, opts, progress,
                             {name: alt.matrix for name, alt in alternatives.items()}, models)
        if result.chosen.get("space") in alternatives:
            integ = alternatives[result.chosen["space"]]
            for m in models.values():
                m.use_equal_weights()
    labels = result.labels.copy()
    if opts.assign_noise:
        labels = result.nearest.copy()
    display = _display_embedding(result.embedding)
    assignments = pl.DataFrame({
        "patient_id": integ.patient_ids,
        "cluster": labels.astype(np.int64),
        "confidence": result.confidence.astype(np.float64),
        "nearest_cluster": result.nearest.astype(np.int64),
        "embedding_1": display[:, 0],
        "embedding_2": display[:, 1],
    })
    no_data = _patients_without_data(store, set(integ.patient_ids))
    params = _params(opts, result, models)
    metrics = _metrics(result, labels, integ, no_data)
    return _write_run(store, opts, assignments, params, metrics, models, integ, result)


def _alternative_geometries(models: dict[str, BlockModel], scores: BlockScores,
                            opts: ClusterOptions, n: int) -> dict[str, Integrated]:
    """With ``component_weight="auto"``, the equal-variance geometry that competes with the
    variance-weighted one in the UMAP-based model selection of cohorts clustered on
    landmarks (above ``--landmarks`` patients). Not for smaller cohorts: there the
    screening's 10 bootstraps cannot separate two about equally stable geometries, and
    the choice flipped with the seed and the CPU (TCGA breast); nothing to compete with
    when every block kept a single component, or for the K-based methods."""
    if (opts.features.component_weight != "auto" or opts.method not in ("auto", "hdbscan")
            or n <= opts.landmarks or discrete_only(models)):
        return {}
    weights = {name: w for name, m in models.items()
               if (w := m.equal_component_weights()) is not None and w.size > 1}
    if not weights:
        return {}
    equal = {name: (ids, s * weights[name] if name in weights else s)
             for name, (ids, s) in scores.items()}
    return {"equal": integrate(equal, k_impute=K_IMPUTE)}


def _run_method(integ: Integrated, scores: dict[str, tuple[list[str], np.ndarray]],
                opts: ClusterOptions, progress: Callable[[str], None] | None,
                alternatives: dict[str, np.ndarray],
                models: dict[str, BlockModel]) -> methods.ClusterResult:
    Z = integ.matrix
    if opts.method == "auto" and opts.min_cluster_size and discrete_only(models):
        raise UsageError("--min-cluster-size sets HDBSCAN's size, but a cohort of mutation "
                         "calls alone is clustered with k-means candidates: use --method "
                         "hdbscan --min-cluster-size N, or --method kmeans --k K")
    if opts.method in ("auto", "hdbscan"):
        return methods.auto_cluster(
            Z, seed=opts.seed, bootstrap=opts.bootstrap, fixed_mcs=opts.min_cluster_size,
            n_neighbors=opts.n_neighbors, subsample=opts.subsample,
            max_subsample=opts.max_subsample, workers=_workers(opts.threads),
            landmarks=opts.landmarks,
            complete=np.all(np.column_stack(list(integ.present.values())), axis=1),
            alternatives=alternatives, progress=progress,
            name="equal" if opts.features.component_weight == "equal" else "variance",
            families=(("hdbscan",) if opts.method == "hdbscan" else
                      methods.DISCRETE_FAMILIES if discrete_only(models) else methods.FAMILIES),
            rule=selection_rule(opts), null_sets=opts.null_sets,
            null_fn=_null_cohort(integ, models),
        )
    k_values = [opts.k] if opts.k else list(range(opts.k_range[0], opts.k_range[1] + 1))
    affinity_fn = None
    if opts.method == "snf":
        affinity_fn = _snf_affinity(integ)
    return methods.k_cluster(
        opts.method, Z, k_values=k_values, seed=opts.seed, bootstrap=opts.bootstrap,
        criterion=opts.k_criterion, subsample=opts.subsample, max_subsample=opts.max_subsample,
        affinity_fn=affinity_fn, progress=progress,
    )


def discrete_only(models: dict[str, BlockModel]) -> bool:
    """Whether the cohort is clustered on mutation calls alone.

    Then ``auto`` runs k-means on the calls' own geometry (every component kept) instead
    of UMAP-based candidates: a UMAP of 0/1 data turns each combination of a few recurrent
    mutations into its own island, and those islands are as stable in a cohort whose
    mutations were permuted (no structure) as in the real one, so the null-calibrated
    selection could tell nothing apart (measured: one group on a simulated cohort with
    four planted mutation patterns, every seed).
    """
    return bool(models) and all(m.kind == "genetic" for m in models.values())


def _null_cohort(integ: Integrated, models: dict[str, BlockModel]) -> methods.NullFn:
    """The no-structure cohorts the model selection compares against, block by block.

    Continuous blocks: Gaussian with the block's mean and covariance in the clustered space
    (no groups, but the same elongation: a continuum is not mistaken for groups). Discrete
    blocks (mutations): each centred feature permuted on its own, projected by the
    block's PCA and rescaled to the clustered space's spread: the values stay discrete (a
    few recurrent mutations make islands of identical patients, which are not groups
    either) while the co-occurrence between features is destroyed. Blocks are drawn
    independently of each other.
    """
    from cohortctl.cluster.select import gaussian_null

    whole = discrete_only(models)

    def draw(Z: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((rows, Z.shape[1]))
        for name, (s0, s1) in integ.block_slices.items():
            real = Z[:, s0:s1]
            sample = getattr(models.get(name), "discrete_sample", None)
            if sample is None or sample.shape[0] < rows:
                out[:, s0:s1] = gaussian_null(real, rows, rng)
                continue
            perm = np.column_stack([rng.permutation(sample[:, j])[:rows]
                                    for j in range(sample.shape[1])])
            block = models[name]._scores(perm)
            if whole:
                # Mutation calls alone (every component kept under the default
                # --components noise): the permuted calls as they are (same mutation
                # frequencies, no co-occurrence). Matching each component's spread to the
                # real one would give the null the real data's co-occurrence spectrum back,
                # which *is* the grouping here.
                out[:, s0:s1] = block
                continue
            spread = block.std(axis=0)
            scale = np.divide(real.std(axis=0), spread, out=np.zeros_like(spread),
                              where=spread > 1e-12)
            out[:, s0:s1] = real.mean(axis=0) + (block - block.mean(axis=0)) * scale
        return out

    return draw


def selection_rule(opts: ClusterOptions) -> methods.select.SelectionRule:
    """The documented selection rule with the user's group-count and group-size limits."""
    return methods.select.SelectionRule(max_groups=opts.max_groups,
                                        min_group_fraction=opts.min_group_fraction)


def _workers(threads: int | None) -> int:
    """Bootstrap worker processes: ``--threads`` if given, else every core."""
    import os

    return max(1, threads or len(os.sched_getaffinity(0)))


def _snf_affinity(integ: Integrated) -> Callable[[np.ndarray | None], np.ndarray]:
    from cohortctl.cluster import snf

    def fused(idx: np.ndarray | None) -> np.ndarray:
        sel = np.arange(len(integ.patient_ids)) if idx is None else idx
        blocks, masks = [], []
        for b, (s0, s1) in integ.block_slices.items():
            mask = integ.present[b][sel]
            blocks.append(integ.matrix[sel][mask, s0:s1])
            masks.append(mask)
        k = max(2, min(20, len(sel) // 10 or 2))
        return snf.snf_from_blocks(blocks, masks, K=k)

    return fused


def _display_embedding(space: np.ndarray) -> np.ndarray:
    """2-D view: the clustered space itself if 2-D, else its first two principal axes."""
    if space.shape[1] <= 2:
        out = np.zeros((space.shape[0], 2))
        out[:, : space.shape[1]] = space
        return out
    centred = space - space.mean(axis=0)
    _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
    idx = np.argmax(np.abs(vt[:2]), axis=1)
    vt2 = vt[:2] * np.sign(vt[:2][np.arange(2), idx])[:, None]
    return centred @ vt2.T


def _patients_without_data(store: Store, clustered: set[str]) -> list[str]:
    clin = store.clinical()
    if clin is None:
        return []
    return sorted(set(clin["patient_id"].to_list()) - clustered)


def _params(opts: ClusterOptions, result: methods.ClusterResult,
            models: dict[str, BlockModel]) -> dict[str, Any]:
    d = asdict(opts)
    d["k_range"] = list(opts.k_range)
    d["resolved"] = result.chosen
    d["umap"] = {"n_components": methods.UMAP_DIMS, "min_dist": 0.0,
                 "n_neighbors": opts.n_neighbors, "metric": "euclidean"}
    d["blocks"] = {
        name: {"kind": m.kind, "features_used": len(m.features), "transform": m.transform,
               "components": int(m.components.shape[0]) if m.components is not None else 0,
               "explained_variance": round(float(sum(m.explained_variance_ratio)), 6),
               "weight": round(1.0 / m.first_singular_value, 8),
               "component_weights": [round(w, 6) for w in m.component_weights] or None,
               "dropped": m.dropped}
        for name, m in models.items()
    }
    d["versions"] = version_info()
    if opts.features.components != "noise":
        rule = f"components to {opts.features.variance:.0%} variance"
    elif discrete_only(models):
        rule = "every component of the centred mutation calls (Hamming geometry)"
    else:
        rule = ("components above the permutation noise floor (parallel analysis: max-null; "
                "same-rank for 0/1 blocks)")
    # auto/hdbscan name the space they clustered; K methods use the setting (auto: variance).
    used = result.chosen.get("space",
                             "equal" if opts.features.component_weight == "equal" else "variance")
    equal = ("every kept component rescaled to the same variance (block total kept), "
             if used == "equal" else "")
    d["component_weight_used"] = used
    d["integration"] = (f"per-block PCA ({rule}, <= {opts.features.max_components}), {equal}"
                        "scores divided by the block's first singular value (MFA weighting)")
    return d


def _metrics(result: methods.ClusterResult, labels: np.ndarray, integ: Integrated,
             no_data: list[str]) -> dict[str, Any]:
    from sklearn.metrics import silhouette_score

    assigned = labels >= 0
    sil = None
    if len(set(labels[assigned])) > 1 and assigned.sum() > len(set(labels[assigned])):
        # Exact up to 10,000 patients; a fixed-seed sample of 10,000 above (it is O(n^2)).
        sample = 10_000 if int(assigned.sum()) > 10_000 else None
        sil = float(silhouette_score(result.embedding[assigned], labels[assigned],
                                     sample_size=sample, random_state=0))
    sizes = {int(c): int((labels == c).sum()) for c in np.unique(labels) if c >= 0}
    conf = {int(c): round(float(result.confidence[labels == c].mean()), 6) for c in sizes}
    return {
        "n_patients": int(labels.size),
        "n_clusters": len(sizes),
        "cluster_sizes": sizes,
        "unassigned": int((labels < 0).sum()),
        "silhouette": None if sil is None else round(sil, 6),
        "selection_scores": result.scores,
        "selected": result.chosen,
        "stability": {int(k): round(v, 6) for k, v in result.stability.items()},
        "mean_confidence": conf,
        "consensus": result.consensus,
        "bootstrap_runs": len(result.runs),
        "modalities": integ.summary(),
        "patients_imputed_blocks": {b: len(v) for b, v in integ.imputed_blocks.items()},
        "patients_without_any_modality": len(no_data),
    }


def _write_run(store: Store, opts: ClusterOptions, assignments: pl.DataFrame,
               params: dict[str, Any], metrics: dict[str, Any], models: dict[str, BlockModel],
               integ: Integrated, result: methods.ClusterResult) -> Path:
    runs_dir = store.runs_dir
    try:
        runs_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{runs_dir}: cannot create ({exc.strerror})") from None
    base = opts.run or datetime.now(UTC).strftime(f"%Y%m%d-%H%M%S-{opts.method}-s{opts.seed}")
    if opts.run and (runs_dir / opts.run).exists():
        raise OutputError(f"{runs_dir / opts.run}: run already exists (runs are never overwritten)")
    for attempt in range(100):
        name = base if attempt == 0 else f"{base}-{attempt + 1}"
        if (runs_dir / name).exists():
            continue
        try:
            # Numbering and publishing under one lock: concurrent runs get distinct,
            # ordered sequence numbers and never the same directory.
            with store.run_lock(), atomic_directory(runs_dir / name) as tmp:
                _fill_run(tmp, store, name, assignments, params, metrics, models, integ, result)
            return runs_dir / name
        except OutputError:
            if opts.run or not (runs_dir / name).exists():
                raise
    raise OutputError(f"{runs_dir}: could not find a free run name")


def _fill_run(tmp: Path, store: Store, name: str, assignments: pl.DataFrame,
              params: dict[str, Any], metrics: dict[str, Any], models: dict[str, BlockModel],
              integ: Integrated, result: methods.ClusterResult) -> None:
    write_parquet(assignments, tmp / "assignments.parquet")
    write_json(params, tmp / "params.json")
    write_json(metrics, tmp / "metrics.json")
    model_dir = tmp / "model"
    model_dir.mkdir()
    for m in models.values():
        m.save(model_dir)
    dims = {f"dim{i + 1}": integ.matrix[:, i] for i in range(integ.matrix.shape[1])}
    space = pl.DataFrame({"patient_id": integ.patient_ids, **dims})
    write_parquet(space, model_dir / "integrated.parquet")
    write_json({"blocks": list(models), "block_slices": integ.block_slices,
                "k_impute": K_IMPUTE,
                "clustered_space": ("umap" if params["method"] in ("auto", "hdbscan")
                                    else "integrated"),
                "present": {b: int(m.sum()) for b, m in integ.present.items()},
                "imputed_patients": integ.imputed_blocks},
               model_dir / "integration.json")
    meta = {
        "format": "cohortctl-run",
        "format_version": RUN_FORMAT,
        "name": name,
        "sequence": store.next_sequence(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": manifest_files(tmp),
    }
    (tmp / RUN_MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    fsync_tree(tmp)
