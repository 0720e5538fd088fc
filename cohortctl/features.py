"""Feature matrices per modality, fitted once and re-applied to new patients.

Each :class:`BlockModel` is estimator-like (``fit`` / ``transform``) and serialises to
JSON + Parquet (never pickle), so ``assign`` can place new patients later.

Per block (documented in docs/methods.md):

1. drop features missing in more than ``max_missing`` of patients (default 20%);
2. molecular: methylation-like blocks (all values in [0, 1]) -> M-values
   ``log2((b+eps)/(1-b+eps))``; non-negative integer-valued blocks with a large range
   (counts) -> ``log1p``;
3. drop near-constant features; keep the ``top_features`` most variable (default 2000);
   genetic: keep genes mutated in at least ``min_mutated`` patients (default
   ``max(3, 1% of patients)``);
4. impute (median for continuous, mode for binary) and standardise;
5. PCA keeping the components above the noise floor found by parallel analysis (at
   most 50; ``components="variance"``, and clinical blocks always, keep those explaining
   ``variance`` instead);
6. MFA weighting: the block's scores are divided by its first singular value, so that
   no modality dominates because it has more features. With
   ``component_weight="equal"`` (molecular and genetic blocks) every kept component is
   first given the same variance, the block's total variance unchanged: an axis of
   structure then counts as much as a stronger one. ``"auto"`` (default) leaves the fit
   as ``"variance"``; ``cluster`` then lets both geometries compete (docs/methods.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cohortctl.errors import InputDataError

EPS_BETA = 1e-3


@dataclass
class FeatureSettings:
    """User-tunable preprocessing settings (all recorded in params.json)."""

    max_missing: float = 0.2
    top_features: int = 2000
    min_mutated: int | None = None
    variance: float = 0.8
    max_components: int = 50
    components: str = "noise"  # noise (parallel analysis) | variance (to ``variance``)
    #: auto (``cluster`` lets the two geometries compete) | variance (PCA scores as they
    #: are) | equal (every kept component the same variance)
    component_weight: str = "auto"
    transform: str = "auto"  # auto | none | mvalue | log1p
    #: components of a mutation (0/1) block: noise (parallel analysis) | all (up to
    #: ``max_components``: the block keeps its Hamming geometry; set by ``cluster`` when
    #: the cohort is clustered on mutation calls alone)
    discrete_components: str = "noise"


NULL_SAMPLE_ROWS = 1000  # rows kept from a discrete block for the model-selection null


@dataclass
class BlockModel:
    """Fitted preprocessing of one modality (a 'block')."""

    name: str
    kind: str  # molecular | genetic | clinical
    features: list[str] = field(default_factory=list)
    transform: str = "none"
    impute: list[float] = field(default_factory=list)
    center: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    components: np.ndarray | None = None  # (k, p)
    explained_variance_ratio: list[float] = field(default_factory=list)
    first_singular_value: float = 1.0
    #: Per-component multipliers of the scores (empty = all 1: ``component_weight="variance"``).
    component_weights: list[float] = field(default_factory=list)
    n_fit_patients: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)  # clinical one-hot

    # -- fitting ------------------------------------------------------------------
    def fit(self, df: pl.DataFrame, settings: FeatureSettings) -> BlockModel:
        """Learn features, transform, imputation, scaling and PCA from ``df``."""
        n = df.height
        if n < 3:
            raise InputDataError(
                f"modality {self.name!r}: only {n} patient(s); at least 3 are needed to cluster"
            )
        if self.kind == "clinical":
            df = self._expand_clinical(df, fit=True)
        values = df.drop("patient_id")
        miss = values.null_count().row(0)
        cols = values.columns
        keep = [c for c, m in zip(cols, miss, strict=True) if m / n <= settings.max_missing]
        self.dropped["too_missing"] = len(cols) - len(keep)
        X = _to_numpy(values.select(keep))
        if self.kind == "molecular":
            forced = getattr(self, "forced_transform", None)
            self.transform = forced or _choose_transform(X, settings.transform)
            X = _apply_transform(X, self.transform)
        with np.errstate(invalid="ignore"):
            var = np.nanvar(X, axis=0) if X.size else np.zeros(0)
        var = np.nan_to_num(var, nan=0.0)
        if self.kind == "genetic":
            min_mut = settings.min_mutated or max(3, int(np.ceil(0.01 * n)))
            counts = np.nansum(X != 0, axis=0)
            ok = counts >= min_mut
            self.dropped["rare"] = int((~ok).sum())
        else:
            ok = var > 1e-12 * max(1.0, float(np.nanmax(np.abs(X))) if X.size else 1.0)
            self.dropped["constant"] = int((~ok).sum())
        idx = np.flatnonzero(ok)
        if self.kind != "genetic" and idx.size > settings.top_features:
            order = np.argsort(-var[idx], kind="stable")[: settings.top_features]
            self.dropped["low_variance"] = int(idx.size - settings.top_features)
            idx = np.sort(idx[order])
        if idx.size == 0:
            raise InputDataError(
                f"modality {self.name!r}: no usable feature left after filtering "
                "(all too missing, constant or rare)"
            )
        self.features = [keep[i] for i in idx]
        # From here on X is worked in place: at 100,000 patients every copy is ~1.6 GB.
        X = X[:, idx] if idx.size < X.shape[1] else X
        if not X.flags.writeable:  # a read-only view of the polars frame: never write there
            X = X.copy()
        missing = np.isnan(X)
        observed = 1.0 - missing.mean(axis=1) if X.size else np.zeros(n)
        binary = self.kind == "genetic" or np.all(np.isin(X[~missing], (0.0, 1.0)))
        if binary:
            imp = np.array([_mode01(X[:, j]) for j in range(X.shape[1])])
        else:
            imp = np.nanmedian(X, axis=0)
        rows, cols_missing = np.nonzero(missing)
        X[rows, cols_missing] = imp[cols_missing]
        del missing, rows, cols_missing
        center = X.mean(axis=0)
        if binary and self.kind != "clinical":
            # 0/1 calls are centred, not scaled: the distance stays the Hamming distance
            # (each mutation counts once). Dividing by sqrt(p(1-p)) would give a 2 %
            # passenger seven times the weight of a 50 % driver, and the rare calls' spikes
            # then dominate the spectrum and its noise floor.
            scale = np.ones_like(center)
        else:
            scale = X.std(axis=0)
            scale[scale < 1e-12] = 1.0
        self.impute, self.center, self.scale = imp.tolist(), center.tolist(), scale.tolist()
        X -= center
        X /= scale
        Xs = X
        self._fit_pca(Xs, settings, discrete=binary and self.kind != "clinical")
        assert self.components is not None
        #: Training scores, identical to ``transform_frame`` on the same table.
        self.fit_scores = (self._scores(Xs), observed)
        #: Discrete blocks (mutations, 0/1 calls): standardised rows from which the model
        #: selection draws its no-structure null (each feature permuted on its own, so the
        #: values stay discrete). A fixed-seed sample; never saved.
        self.discrete_sample = None
        if binary and self.kind != "clinical":
            take = np.random.default_rng(0).permutation(n)[:NULL_SAMPLE_ROWS]
            self.discrete_sample = Xs[np.sort(take)].copy()
        self.n_fit_patients = n
        for key, count in (getattr(self, "prefiltered", None) or {}).items():
            self.dropped[key] = self.dropped.get(key, 0) + count
        return self

    def _fit_pca(self, Xs: np.ndarray, settings: FeatureSettings, discrete: bool = False) -> None:
        n, p = Xs.shape
        kmax = max(1, min(settings.max_components, n - 1, p))
        s, vt = _top_singular(Xs, kmax)
        assert vt is not None
        vt = _fix_signs(vt)
        flat = Xs.reshape(-1)
        total = float(np.dot(flat, flat))
        ratio = (s**2) / total if total > 0 else np.zeros_like(s)
        # Clinical inputs are variables the user named one by one: each may carry a group on
        # its own, which a permutation test (correlation structure only) cannot see.
        if discrete and settings.discrete_components == "all":
            k = int(np.sum(s > 1e-9 * s[0])) if s[0] > 0 else 1
        elif settings.components == "variance" or self.kind == "clinical":
            k = int(np.searchsorted(np.cumsum(ratio), settings.variance) + 1)
        else:
            k = components_above_noise(Xs, kmax, observed=s,
                                       rank_by_rank=discrete)
        k = max(1, min(k, kmax))
        self.components = vt[:k]
        self.explained_variance_ratio = ratio[:k].tolist()
        self.first_singular_value = float(s[0]) / np.sqrt(n) if s[0] > 0 else 1.0
        if settings.component_weight == "equal":
            self.use_equal_weights()

    def equal_component_weights(self) -> np.ndarray | None:
        """Multipliers that give each kept component the same variance (block total kept);
        None for a clinical block, which is never reweighted (its columns are variables the
        user named one by one)."""
        if self.kind == "clinical":
            return None
        return equal_variance_weights(np.sqrt(np.asarray(self.explained_variance_ratio)))

    def use_equal_weights(self) -> None:
        """Switch the block to the equal-variance geometry (clinical blocks stay as they are)."""
        weights = self.equal_component_weights()
        if weights is not None:
            self.component_weights = weights.tolist()

    def _scores(self, Xs: np.ndarray) -> np.ndarray:
        """Standardised rows -> weighted block scores (the integrated space's columns)."""
        assert self.components is not None
        scores = Xs @ self.components.T / self.first_singular_value
        if self.component_weights:
            scores *= np.asarray(self.component_weights)
        return scores

    # -- applying -------------------------------------------------------------------
    def transform_frame(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Weighted block scores for the patients in ``df`` and the fraction of
        features each patient actually had (before imputation)."""
        if self.kind == "clinical":
            df = self._expand_clinical(df, fit=False)
        missing = [f for f in self.features if f not in df.columns]
        present = [f for f in self.features if f in df.columns]
        cols = [
            pl.col(f).cast(pl.Float64) if f in present else pl.lit(None, pl.Float64).alias(f)
            for f in self.features
        ]
        X = _to_numpy(df.select(cols))
        if self.kind == "molecular":
            X = _apply_transform(X, self.transform)
        observed = 1.0 - np.isnan(X).mean(axis=1) if X.size else np.zeros(df.height)
        if missing:
            observed = observed * 1.0
        X = np.where(np.isnan(X), np.asarray(self.impute), X)
        Xs = (X - np.asarray(self.center)) / np.asarray(self.scale)
        return self._scores(Xs), observed

    def _expand_clinical(self, df: pl.DataFrame, fit: bool) -> pl.DataFrame:
        out = [df["patient_id"]]
        for c in df.columns:
            if c == "patient_id":
                continue
            col = df[c]
            if col.dtype.is_numeric() and not (fit is False and c in self.categories):
                out.append(col.cast(pl.Float64))
                continue
            if fit:
                levels = sorted(str(v) for v in col.drop_nulls().unique().to_list())
                self.categories[c] = levels
            for level in self.categories.get(c, []):
                ind = (col.cast(pl.String) == level).cast(pl.Float64)
                out.append(ind.alias(f"{c}={level}"))
        return pl.DataFrame(out)

    # -- serialisation ----------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """``block-<name>.json`` (settings, vectors) + ``block-<name>-pca.parquet``."""
        meta = asdict(self)
        meta.pop("components")
        (directory / f"block-{self.name}.json").write_text(
            json.dumps(meta, indent=2, sort_keys=True) + "\n"
        )
        assert self.components is not None
        comp = pl.DataFrame(
            {"feature": self.features,
             **{f"pc{i + 1}": self.components[i] for i in range(self.components.shape[0])}}
        )
        from cohortctl.store import write_parquet

        write_parquet(comp, directory / f"block-{self.name}-pca.parquet")

    @classmethod
    def load(cls, directory: Path, name: str) -> BlockModel:
        meta = json.loads((directory / f"block-{name}.json").read_text())
        comp = pl.read_parquet(directory / f"block-{name}-pca.parquet")
        if comp["feature"].to_list() != meta["features"]:
            raise InputDataError(f"{directory}: block {name!r} loadings do not match its features")
        model = cls(**meta)
        model.components = comp.drop("feature").to_numpy().T.copy()
        numbers = [model.impute, model.center, model.scale, model.component_weights,
                   [model.first_singular_value], model.components.ravel()]
        if not all(np.all(np.isfinite(np.asarray(v, dtype=float))) for v in numbers):
            raise InputDataError(f"{directory}: block {name!r} holds a non-finite number "
                                 "(NaN or infinity); the run is corrupt")
        return model


def equal_variance_weights(singular: np.ndarray) -> np.ndarray:
    """Score multipliers giving every component the same variance, total unchanged.

    PCA scores carry each component's variance, so the strongest axes (often continuous
    programmes such as a co-expression module) dominate distances, and groups that differ
    along a weaker axis are merged. Multiplying component j by s_1 / s_j equalises them;
    one common factor then restores the block's total variance, so the balance between
    blocks set by the MFA weighting is kept.
    """
    s = np.asarray(singular, dtype=np.float64)
    if s.size == 0 or s[0] <= 0:
        return np.ones(s.size)
    s = np.where(s > 0, s, s[0])
    return (s[0] / s) * np.sqrt(np.mean((s / s[0]) ** 2))


def _top_singular(X: np.ndarray, k: int, *, vectors: bool = True
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The top ``k`` singular values and, if asked, right singular vectors (exact when
    the matrix is small, randomised with a fixed seed otherwise)."""
    if min(X.shape) <= 1000:
        if not vectors:
            return np.linalg.svd(X, compute_uv=False)[:k], None
        _u, s, vt = np.linalg.svd(X, full_matrices=False)
        return s[:k], vt[:k]
    from sklearn.utils.extmath import randomized_svd

    _u, s, vt = randomized_svd(X, n_components=k, random_state=0, n_iter=6)
    return s, (vt if vectors else None)


NOISE_ROWS = 5000  # patients used by the parallel analysis (a fixed random subset)
NOISE_PERMUTATIONS = 5
NOISE_QUANTILE = 0.95


def components_above_noise(Xs: np.ndarray, kmax: int,
                           observed: np.ndarray | None = None,
                           rank_by_rank: bool = False) -> int:
    """How many principal components stand above noise (parallel analysis).

    ``rank_by_rank=False`` (continuous blocks): the max-null rule below.
    ``rank_by_rank=True`` (0/1 mutation blocks): Horn's original rule, each eigenvalue
    against the same-rank null eigenvalue; the spectrum of sparse calls has no clear bulk
    edge, and the max-null rule kept a single component where three stood above the bulk.

    Every column is permuted independently, which keeps each feature's distribution
    (a mutation's frequency, a gene's skew) and destroys only the structure between
    features. Components are kept while their eigenvalue exceeds the 95th percentile of the
    *largest* eigenvalue of the permuted copies: once the real structure is taken out, what
    remains is a noise bulk whose top is that largest null eigenvalue (comparing the k-th
    with the k-th null eigenvalue, Horn's original rule, keeps the top of the bulk too).
    Components past that point are noise: with equal block weighting they add distance
    that carries no grouping, and a sparse mutation block has dozens of them. Above
    ``NOISE_ROWS`` patients the observed and permuted spectra both come from the same
    fixed random subset, so the comparison stays like-for-like and the cost bounded.
    ``observed``: the top singular values of ``Xs`` if the caller has them already (used
    when no subset is drawn).
    """
    rng = np.random.default_rng(0)
    n = Xs.shape[0]
    if n > NOISE_ROWS:
        sub, observed = Xs[np.sort(rng.choice(n, NOISE_ROWS, replace=False))], None
    else:
        sub = Xs
    kmax = max(1, min(kmax, sub.shape[0] - 1, sub.shape[1]))
    if observed is None:
        observed = _top_singular(sub, kmax, vectors=False)[0]
    observed = observed[:kmax]
    if rank_by_rank:
        null = np.array([_top_singular(rng.permuted(sub, axis=0), kmax, vectors=False)[0]
                         for _ in range(NOISE_PERMUTATIONS)])
        above = observed > np.quantile(null, NOISE_QUANTILE, axis=0)
    else:
        null_top = [_top_singular(rng.permuted(sub, axis=0), min(kmax, 5), vectors=False)[0][0]
                    for _ in range(NOISE_PERMUTATIONS)]
        above = observed > np.quantile(null_top, NOISE_QUANTILE)
    return int(kmax if above.all() else np.argmin(above))


def _to_numpy(df: pl.DataFrame) -> np.ndarray:
    if df.width == 0:
        return np.zeros((df.height, 0))
    return df.select(pl.all().cast(pl.Float64)).to_numpy().astype(np.float64, copy=False)


def _mode01(col: np.ndarray) -> float:
    vals = col[~np.isnan(col)]
    if vals.size == 0:
        return 0.0
    uniq, counts = np.unique(vals, return_counts=True)
    return float(uniq[np.argmax(counts)])


def _choose_transform(X: np.ndarray, requested: str) -> str:
    if requested != "auto":
        return requested
    finite = X[~np.isnan(X)]
    if finite.size == 0:
        return "none"
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0 and np.unique(finite[:1000]).size > 2:
        return "mvalue"
    if lo >= 0.0 and hi > 1000 and np.all(np.mod(finite[:100000], 1) == 0):
        return "log1p"
    return "none"


def _apply_transform(X: np.ndarray, transform: str) -> np.ndarray:
    if transform == "mvalue":
        b = np.clip(X, 0.0, 1.0)
        return np.log2((b + EPS_BETA) / (1.0 - b + EPS_BETA))
    if transform == "log1p":
        return np.log1p(np.clip(X, 0.0, None))
    return X


def _fix_signs(vt: np.ndarray) -> np.ndarray:
    """Deterministic component signs: largest absolute loading positive."""
    idx = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(vt.shape[0]), idx])
    signs[signs == 0] = 1.0
    return vt * signs[:, None]


@dataclass
class Integrated:
    """The integrated matrix: every patient with at least one block, in one space."""

    patient_ids: list[str]
    matrix: np.ndarray
    block_slices: dict[str, tuple[int, int]]
    present: dict[str, np.ndarray]  # block -> bool mask over patients
    imputed_blocks: dict[str, list[str]]  # block -> patients whose scores were imputed

    def summary(self) -> dict[str, Any]:
        n = len(self.patient_ids)
        return {
            "patients": n,
            "dimensions": int(self.matrix.shape[1]),
            "patients_per_block": {b: int(m.sum()) for b, m in self.present.items()},
            "missing_per_block": {b: int(n - m.sum()) for b, m in self.present.items()},
            "patients_missing_any_block": int(
                sum(1 for i in range(n) if not all(m[i] for m in self.present.values()))
            ),
        }


def integrate(blocks: dict[str, tuple[list[str], np.ndarray]], k_impute: int = 10) -> Integrated:
    """Concatenate weighted block scores; a patient missing a block gets that block's
    scores from its nearest complete patients, measured on the blocks it has."""
    ids = sorted(set().union(*(set(p) for p, _ in blocks.values())))
    index = {p: i for i, p in enumerate(ids)}
    n = len(ids)
    widths = {b: s.shape[1] for b, (_, s) in blocks.items()}
    slices, start = {}, 0
    for b in blocks:
        slices[b] = (start, start + widths[b])
        start += widths[b]
    M = np.zeros((n, start))
    present = {}
    for b, (pids, scores) in blocks.items():
        rows = np.fromiter((index[p] for p in pids), dtype=np.int64, count=len(pids))
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        M[rows, slices[b][0]:slices[b][1]] = scores
        present[b] = mask
    complete = np.all(np.column_stack(list(present.values())), axis=1)
    imputed: dict[str, list[str]] = {b: [] for b in blocks}
    if not complete.all():
        if complete.sum() < 2:
            raise InputDataError(
                "fewer than 2 patients have every modality; cannot place patients missing one "
                "(cluster fewer modalities with --modalities)"
            )
        M = impute_missing_blocks(M, present, slices, complete, k_impute)
        for b, mask in present.items():
            imputed[b] = [ids[i] for i in np.flatnonzero(~mask)]
    return Integrated(ids, M, slices, present, imputed)


def impute_missing_blocks(M: np.ndarray, present: dict[str, np.ndarray],
                          slices: dict[str, tuple[int, int]], complete: np.ndarray,
                          k: int, reference: np.ndarray | None = None) -> np.ndarray:
    """Fill absent blocks with the mean of the k nearest reference patients (complete
    training patients), distances computed on the blocks the patient has."""
    from sklearn.neighbors import NearestNeighbors

    ref = M[complete] if reference is None else reference
    M = M.copy()
    masks = np.column_stack([present[b] for b in slices])
    patterns = {tuple(row) for row in masks[~masks.all(axis=1)]}
    names = list(slices)
    for pat in sorted(patterns):
        rows = np.flatnonzero((masks == np.array(pat)).all(axis=1))
        have = [b for b, h in zip(names, pat, strict=True) if h]
        lack = [b for b, h in zip(names, pat, strict=True) if not h]
        cols = np.concatenate([np.arange(*slices[b]) for b in have])
        kk = min(k, ref.shape[0])
        nn = NearestNeighbors(n_neighbors=kk).fit(ref[:, cols])
        _d, nbr = nn.kneighbors(M[np.ix_(rows, cols)])
        for b in lack:
            s0, s1 = slices[b]
            M[rows, s0:s1] = ref[:, s0:s1][nbr].mean(axis=1)
    return M


def prefilter_columns(path: Path, settings: FeatureSettings,
                      target_cells: int = 25_000_000) -> tuple[list[str], dict[str, int], str]:
    """Streaming version of the column filters of :meth:`BlockModel.fit` for a big table.

    Reads the Parquet file a chunk of columns at a time (about ``target_cells`` values),
    applies the transform chosen from a sample, and keeps the columns that pass the
    missingness and constant filters, best ``top_features`` by variance. Returns the kept
    column names (file order), the counts dropped per reason, and the transform.
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    cols = [c for c in pf.schema_arrow.names if c != "patient_id"]
    n = pf.metadata.num_rows
    sample = next(pf.iter_batches(batch_size=min(n, 2000), columns=cols[:500]), None)
    transform = settings.transform
    if transform == "auto":
        Xs = _to_numpy(pl.from_arrow(sample)) if sample is not None else np.zeros((0, 0))
        finite = Xs[np.isfinite(Xs)]
        lo, hi = _global_stat(pf, cols, min), _global_stat(pf, cols, max)
        if lo is None or hi is None:
            lo = float(finite.min()) if finite.size else 0.0
            hi = float(finite.max()) if finite.size else 0.0
        transform = "none"
        if lo >= 0.0 and hi <= 1.0 and np.unique(finite[:1000]).size > 2:
            transform = "mvalue"
        elif lo >= 0.0 and hi > 1000 and finite.size and np.all(np.mod(finite, 1) == 0):
            transform = "log1p"
    step = max(1, target_cells // max(n, 1))
    miss = np.empty(len(cols))
    var = np.empty(len(cols))
    maxabs = 0.0
    for s0 in range(0, len(cols), step):
        chunk = cols[s0:s0 + step]
        X = _to_numpy(pl.from_arrow(pf.read(columns=chunk)))
        miss[s0:s0 + len(chunk)] = np.isnan(X).sum(axis=0) / max(n, 1)
        X = _apply_transform(X, transform)
        with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore", RuntimeWarning)
            var[s0:s0 + len(chunk)] = np.nan_to_num(np.nanvar(X, axis=0), nan=0.0)
            if X.size and np.isfinite(X).any():
                maxabs = max(maxabs, float(np.nanmax(np.abs(X))))
        del X
    ok_missing = miss <= settings.max_missing
    ok_var = var > 1e-12 * max(1.0, maxabs)
    idx = np.flatnonzero(ok_missing & ok_var)
    dropped = {"too_missing": int((~ok_missing).sum()),
               "constant": int((ok_missing & ~ok_var).sum()), "low_variance": 0}
    if idx.size > settings.top_features:
        order = np.argsort(-var[idx], kind="stable")[: settings.top_features]
        dropped["low_variance"] = int(idx.size - settings.top_features)
        idx = np.sort(idx[order])
    return [cols[i] for i in idx], dropped, transform


def _global_stat(pf: Any, cols: list[str], fn: Any) -> float | None:
    """Min or max over every column from the Parquet statistics (None if unavailable)."""
    md = pf.metadata
    position = {name: i for i, name in enumerate(pf.schema_arrow.names)}
    values = []
    for rg in range(md.num_row_groups):
        group = md.row_group(rg)
        for c in cols:
            st = group.column(position[c]).statistics
            if st is None or not st.has_min_max:
                return None
            values.append(float(st.min if fn is min else st.max))
    return fn(values) if values else None
