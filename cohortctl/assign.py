"""``cohortctl assign``: place new patients into the groups of an existing run.

New tables are read with the same readers and validation as ``ingest``; the run's stored
preprocessing (feature lists, transforms, imputation values, scaling, PCA loadings and
block weights -- JSON + Parquet only, never pickle) is re-applied, and each patient is
placed in the run's integrated space and assigned by the run's placement rule
(:mod:`cohortctl.cluster.placement`, the vote ``cluster`` itself places patients by) among
its nearest training patients. Every rule and constant is documented in :func:`assign`.

The run is verified first (every file's SHA-256 against ``run.json``, run format version,
model shapes); a tampered, truncated or incompatible artefact is refused (exit 65).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from cohortctl.cluster.placement import PlacementRule, reference_floor
from cohortctl.cluster.placement import place as place_by_vote
from cohortctl.errors import InputDataError, OutputError, UsageError
from cohortctl.features import BlockModel, impute_missing_blocks
from cohortctl.io.readers import TableSpec
from cohortctl.store import Store, atomic_file, valid_name, verify_run

log = logging.getLogger("cohortctl")

#: Members of a cluster whose mean distance measures "how far from that cluster".
K_NOVEL = 5
#: A patient is novel beyond this percentile of the training patients' own distances.
NOVEL_PERCENTILE = 99.0
#: Refuse a table lacking more than this fraction of a block's features (warn below it).
MAX_ABSENT_FEATURES = 0.5
#: A patient uses a block only when at least this fraction of its features is observed.
MIN_PATIENT_COVERAGE = 0.5
#: Complete training patients averaged to fill a missing block, for a run whose
#: ``model/integration.json`` does not record its own ``k_impute``.
DEFAULT_K_IMPUTE = 10

OUTPUT_COLUMNS = ("patient_id", "cluster", "confidence", "nearest_cluster", "novel",
                  "distance", "modalities_used", "modalities_missing")


# -- the run's model ---------------------------------------------------------------------
@dataclass
class RunModel:
    """A verified run: block models, the training integrated space and its clusters."""

    store: Store
    run_dir: Path
    name: str
    blocks: dict[str, BlockModel]  # integration order
    slices: dict[str, tuple[int, int]]
    patient_ids: list[str]
    matrix: np.ndarray  # (n training patients, dims)
    clusters: np.ndarray  # -1 = unassigned (noise)
    nearest: np.ndarray
    complete: np.ndarray  # training patient had every block (imputation reference)
    imputed: dict[str, list[str]]
    params: dict[str, Any]
    #: the run's per-patient confidence (weights the vote's confidence, like ``cluster``)
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: complete patients averaged to fill a missing block, as recorded by the run
    k_impute: int = DEFAULT_K_IMPUTE
    #: the placement rule the run recorded (``params.json``: ``resolved.placement_rule``)
    rule: PlacementRule = field(default_factory=PlacementRule)

    @property
    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.patient_ids)}


def open_store(store: Store | str | Path) -> Store:
    """Accept an opened store or a path."""
    return store if isinstance(store, Store) else Store.open(store)


def load_run(store: Store | str | Path, run: str = "latest") -> RunModel:
    """Resolve, verify (checksums, format) and load a run's model; refuse anything odd."""
    st = open_store(store)
    run_dir = st.resolve_run(run)
    verify_run(run_dir)
    model_dir = run_dir / "model"
    where = f"{run_dir}: incompatible or corrupt run artefact"
    try:
        integ = json.loads((model_dir / "integration.json").read_text())
        params = json.loads((run_dir / "params.json").read_text())
        names = [str(b) for b in integ["blocks"]]
        unsafe = [b for b in names if not valid_name(b)]
        if unsafe:  # block names become file names: never a path (x/../../outside/evil)
            raise InputDataError(f"{where} (block name {unsafe[0]!r} is not a plain name)")
        slices = {b: (int(integ["block_slices"][b][0]), int(integ["block_slices"][b][1]))
                  for b in names}
        imputed = {b: [str(p) for p in integ.get("imputed_patients", {}).get(b, [])]
                   for b in names}
        blocks = {b: BlockModel.load(model_dir, b) for b in names}
        space = pl.read_parquet(model_dir / "integrated.parquet")
        assigned = pl.read_parquet(run_dir / "assignments.parquet")
        if "confidence" not in assigned.columns:
            assigned = assigned.with_columns(pl.lit(1.0).alias("confidence"))
        assigned = assigned.select("patient_id", "cluster", "nearest_cluster", "confidence")
        k_impute = int(integ.get("k_impute", DEFAULT_K_IMPUTE))
        if k_impute < 1:
            raise ValueError(f"k_impute {k_impute} < 1")
        resolved = params.get("resolved") or {}
        rule = PlacementRule.from_dict(resolved.get("placement_rule")
                                       if isinstance(resolved, dict) else None)
    except InputDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decode/shape failure is an incompatibility
        raise InputDataError(f"{where} ({type(exc).__name__}: {_short(exc)})") from None
    ids = space["patient_id"].cast(pl.String).to_list()
    matrix = space.drop("patient_id").to_numpy().astype(np.float64)
    _check_shapes(where, blocks, slices, matrix)
    joined = pl.DataFrame({"patient_id": ids}).join(assigned, on="patient_id", how="left")
    if joined["cluster"].null_count() or assigned.height != len(ids):
        raise InputDataError(f"{where} (assignments do not match the integrated space)")
    if not np.all(np.isfinite(matrix)):
        raise InputDataError(f"{where} (non-finite values in the integrated space)")
    lacking = set().union(*(set(v) for v in imputed.values())) if imputed else set()
    complete = np.array([p not in lacking for p in ids], dtype=bool)
    if complete.sum() < 1:
        raise InputDataError(f"{where} (no training patient has every modality)")
    return RunModel(
        store=st, run_dir=run_dir, name=run_dir.name, blocks=blocks, slices=slices,
        patient_ids=ids, matrix=matrix, clusters=joined["cluster"].to_numpy().astype(np.int64),
        nearest=joined["nearest_cluster"].fill_null(-1).to_numpy().astype(np.int64),
        complete=complete, imputed=imputed, params=params,
        confidence=joined["confidence"].fill_null(0.0).fill_nan(0.0).to_numpy()
        .astype(np.float64),
        k_impute=k_impute, rule=rule,
    )


def _check_shapes(where: str, blocks: dict[str, BlockModel],
                  slices: dict[str, tuple[int, int]], matrix: np.ndarray) -> None:
    start = 0
    for b, m in blocks.items():
        s0, s1 = slices[b]
        comp = m.components
        ok = (comp is not None and s0 == start and s1 - s0 == comp.shape[0]
              and comp.shape[1] == len(m.features) == len(m.impute) == len(m.center)
              == len(m.scale) and m.first_singular_value > 0
              and len(m.component_weights) in (0, comp.shape[0]))
        if not ok:
            raise InputDataError(f"{where} (block {b!r} does not match the integrated space)")
        start = s1
    if matrix.ndim != 2 or matrix.shape[1] != start:
        raise InputDataError(f"{where} (integrated space has {matrix.shape[1]} dimensions, "
                             f"the blocks give {start})")


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]


# -- reading new tables (thin adapter over ingest's readers) -----------------------------
def _specs(items: Sequence[TableSpec | str] | None) -> list[TableSpec]:
    return [s if isinstance(s, TableSpec) else TableSpec.parse(str(s)) for s in items or []]


def _tcga_setting(st: Store, tcga_barcodes: bool | None) -> bool | None:
    if tcga_barcodes is not None:
        return tcga_barcodes
    mode = st.manifest.get("id_normalisation")
    return True if mode == "tcga-patient" else False if mode == "none" else None


def _read_inputs(rm: RunModel, molecular: list[TableSpec], genetic: list[TableSpec],
                 clinical: Path | None, *, id_column: str | None, fmt: str | None,
                 layout: str, tcga_barcodes: bool | None, maf_classes: list[str] | None,
                 maf_covers_clinical: bool) -> tuple[dict[str, pl.DataFrame], set[str]]:
    """Block name -> frame (``patient_id`` + features) read exactly as ``ingest`` would.

    Also returns the blocks read from a MAF (genes absent from a MAF are wild-type).
    """
    from cohortctl import ingest as ing

    given = [("molecular", s) for s in molecular] + [("genetic", s) for s in genetic]
    names = [s.name for _k, s in given]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise UsageError(f"table name {dup!r} is given twice")
    for kind, spec in given:
        model = rm.blocks.get(spec.name)
        if model is None or spec.name == "clinical":
            raise UsageError(
                f"--{kind} {spec.name}: run {rm.name} has no {kind} block named {spec.name!r} "
                f"(its blocks: {', '.join(b for b in rm.blocks if b != 'clinical')}; "
                "name tables with NAME=PATH)"
            )
        if model.kind != kind:
            raise UsageError(f"--{kind} {spec.name}: block {spec.name!r} of run {rm.name} is "
                             f"{model.kind}, give it with --{model.kind}")
    opts = ing.IngestOptions(
        out=rm.run_dir, clinical=clinical, id_column=id_column, fmt=fmt, layout=layout,
        tcga_barcodes=_tcga_setting(rm.store, tcga_barcodes), maf_classes=maf_classes,
        maf_covers_clinical=maf_covers_clinical,
    )
    frames: dict[str, pl.DataFrame] = {}
    from_maf: set[str] = set()
    tables: list[Any] = []
    if clinical is not None:
        clin_table, _roles = ing._read_clinical(opts)
        assert clin_table.frame is not None
        tables.append(clin_table)
        if "clinical" in rm.blocks:
            cols = [c for c in rm.params.get("with_clinical", []) if c in clin_table.frame.columns]
            frames["clinical"] = clin_table.frame.select("patient_id", *cols)
        else:
            log.warning("%s: run %s does not use clinical columns; the table is only read "
                        "to check it", clinical, rm.name)
    for kind, spec in given:
        if kind == "molecular":
            df = ing._read_wide_or_long(spec, opts)
            df, _dropped = ing._drop_empty_columns(df, spec.path)
        else:
            if maf_classes is None:
                entry = rm.store.table_entry("genetic", spec.name) or {}
                opts.maf_classes = (entry.get("maf") or {}).get("classes_kept")
            table = ing._read_genetic(spec, opts, tables)
            opts.maf_classes = maf_classes
            df = table.frame
            if table.info.get("source_format") == "maf":
                from_maf.add(spec.name)
        frames[spec.name] = df
    return frames, from_maf


# -- placing -------------------------------------------------------------------------------
@dataclass
class Placement:
    """New patients in the run's integrated space."""

    patient_ids: list[str]
    matrix: np.ndarray  # (n, dims); rows of unplaced patients are zeros
    present: dict[str, np.ndarray]  # block -> bool mask
    absent_features: dict[str, int]

    @property
    def placed(self) -> np.ndarray:
        return np.any(np.column_stack(list(self.present.values())), axis=1)


def place(rm: RunModel, frames: dict[str, pl.DataFrame], from_maf: set[str] | None = None,
          source: dict[str, str] | None = None) -> Placement:
    """Apply each block's stored preprocessing and fill missing blocks like training did."""
    from_maf = from_maf or set()
    ids = sorted(set().union(*(set(f["patient_id"].to_list()) for f in frames.values())))
    index = {p: i for i, p in enumerate(ids)}
    n, dims = len(ids), rm.matrix.shape[1]
    M = np.zeros((n, dims))
    present = {b: np.zeros(n, dtype=bool) for b in rm.blocks}
    absent_features: dict[str, int] = {}
    for b, df in frames.items():
        model = rm.blocks[b]
        what = (source or {}).get(b, b)
        if b in from_maf:
            wild = [pl.lit(0.0).alias(f) for f in model.features if f not in df.columns]
            df = df.with_columns(wild) if wild else df
        absent = _absent_features(rm, b, df)
        absent_features[b] = len(absent)
        _check_absent(rm, b, what, absent)
        scores, observed = model.transform_frame(df)
        rows = np.fromiter((index[p] for p in df["patient_id"].to_list()), np.int64, df.height)
        ok = observed >= MIN_PATIENT_COVERAGE
        if not ok.all():
            log.warning("%s: %d patient(s) have fewer than %d%% of block %r's features; "
                        "the block is treated as missing for them", what, int((~ok).sum()),
                        int(MIN_PATIENT_COVERAGE * 100), b)
        s0, s1 = rm.slices[b]
        M[rows[ok], s0:s1] = scores[ok]
        present[b][rows[ok]] = True
    placement = Placement(ids, M, present, absent_features)
    placed = placement.placed
    masks = np.column_stack([present[b] for b in rm.blocks])
    need = placed & ~masks.all(axis=1)
    if need.any():
        sub = {b: m[placed] for b, m in present.items()}
        filled = impute_missing_blocks(M[placed], sub, rm.slices, np.zeros(int(placed.sum()), bool),
                                       rm.k_impute, reference=rm.matrix[rm.complete])
        M[placed] = filled
    return placement


def _absent_features(rm: RunModel, block: str, df: pl.DataFrame) -> list[str]:
    model = rm.blocks[block]
    if model.kind == "clinical":
        return [c for c in rm.params.get("with_clinical", []) if c not in df.columns]
    return [f for f in model.features if f not in df.columns]


def _check_absent(rm: RunModel, block: str, what: str, absent: list[str]) -> None:
    model = rm.blocks[block]
    total = len(rm.params.get("with_clinical", [])) if model.kind == "clinical" else len(
        model.features)
    if not absent or total == 0:
        return
    frac = len(absent) / total
    shown = ", ".join(absent[:3]) + (", ..." if len(absent) > 3 else "")
    if frac > MAX_ABSENT_FEATURES:
        raise InputDataError(
            f"{what}: {len(absent)} of the {total} features of block {block!r} used by run "
            f"{rm.name} are absent ({frac:.0%} > {MAX_ABSENT_FEATURES:.0%}; e.g. {shown}); "
            "is this the right table?"
        )
    log.warning("%s: %d of %d features of block %r are absent (%s); imputed with the "
                "training values", what, len(absent), total, block, shown)


# -- assigning -----------------------------------------------------------------------------
@dataclass
class Reference:
    """Training patients that vote (all of them; unassigned ones vote as -1), the run's
    placement rule and the novelty threshold (from the assigned patients)."""

    matrix: np.ndarray
    clusters: np.ndarray  # -1 = unassigned training patient
    confidence: np.ndarray
    labels: list[int]  # the run's clusters (-1 excluded)
    rule: PlacementRule
    floor: float
    threshold: float
    k_novel: dict[int, int]

    @property
    def k_vote(self) -> int:
        """Training patients that vote for each new patient (``rule.k``, capped)."""
        return max(1, min(self.rule.k, self.matrix.shape[0]))

    @classmethod
    def from_run(cls, rm: RunModel) -> Reference:
        """Build the voting reference and the novelty threshold from the training run."""
        from sklearn.neighbors import NearestNeighbors

        keep = rm.clusters >= 0
        X, y = rm.matrix[keep], rm.clusters[keep]
        if X.shape[0] < 2:
            raise InputDataError(f"{rm.run_dir}: fewer than 2 assigned training patients; "
                                 "nothing to assign new patients to")
        labels = sorted(int(c) for c in np.unique(y))
        k_novel, own = {}, []
        for c in labels:
            members = X[y == c]
            k = min(K_NOVEL, members.shape[0] - 1)
            k_novel[c] = max(1, k)
            if k < 1:
                continue
            d = NearestNeighbors(n_neighbors=k + 1).fit(members).kneighbors(members)[0]
            own.append(d[:, 1:].mean(axis=1))
        threshold = float(np.percentile(np.concatenate(own), NOVEL_PERCENTILE)) if own else 0.0
        conf = rm.confidence if rm.confidence.shape == rm.clusters.shape else np.ones(
            rm.clusters.shape)
        return cls(rm.matrix, rm.clusters, conf, labels, rm.rule,
                   reference_floor(rm.matrix, rm.rule), threshold, k_novel)

    def classify(self, Z: np.ndarray) -> dict[str, np.ndarray]:
        """The run's placement vote, distance to the nearest cluster's members, novelty."""
        from sklearn.neighbors import NearestNeighbors

        n = Z.shape[0]
        cluster, conf, share = place_by_vote(self.matrix, self.clusters, self.confidence, Z,
                                             self.rule, floor=self.floor)
        per_cluster = np.column_stack([
            NearestNeighbors(n_neighbors=min(self.k_novel[c], int((self.clusters == c).sum())))
            .fit(self.matrix[self.clusters == c]).kneighbors(Z)[0].mean(axis=1)
            for c in self.labels
        ])
        near = np.argmin(per_cluster, axis=1)
        dist = per_cluster[np.arange(n), near]
        labels = np.asarray(self.labels, dtype=np.int64)
        return {"cluster": cluster, "confidence": np.round(conf, 6),
                "share": np.round(share, 6), "nearest_cluster": labels[near],
                "distance": dist, "novel": dist > self.threshold}


def assign(
    store: Store | str | Path,
    run: str = "latest",
    molecular: Sequence[TableSpec | str] | None = None,
    genetic: Sequence[TableSpec | str] | None = None,
    clinical: Path | str | None = None,
    out: Path | str = Path("assignments.parquet"),
    force: bool = False,
    *,
    id_column: str | None = None,
    fmt: str | None = None,
    layout: str = "auto",
    tcga_barcodes: bool | None = None,
    maf_classes: list[str] | None = None,
    maf_covers_clinical: bool = False,
) -> dict[str, Any]:
    """Assign new patients to the clusters of ``run``; write ``out`` (Parquet); summary.

    Tables are named like the run's blocks (``NAME=PATH``; ``mrna=new_mrna.parquet``).

    Rules:

    * **Features**: a table lacking more than ``MAX_ABSENT_FEATURES`` (50%) of the block's
      features is refused (exit 65); fewer absent features are warned about and imputed
      with the stored training values (median / mode), as are missing cells. Genes absent
      from a MAF are wild-type (0), not absent. A patient uses a block only when at least
      ``MIN_PATIENT_COVERAGE`` (50%) of its features are observed for them.
    * **Missing modalities**: a patient lacking a block of the run is placed from the
      blocks it has, exactly like training patients were: the missing block's scores are
      the mean of its ``k_impute`` nearest complete training patients, measured on the
      blocks it has -- the ``k_impute`` the run recorded in ``model/integration.json``
      (``DEFAULT_K_IMPUTE`` = 10 for a run that does not record it).
      ``modalities_used`` / ``modalities_missing`` list them.
    * **Cluster**: the run's placement rule (``PlacementRule`` of
      :mod:`cohortctl.cluster.placement`, recorded in ``params.json`` as
      ``resolved.placement_rule``; its defaults for runs that do not record it) -- the
      same vote ``cluster`` places its non-landmark and unsure patients by. The ``k`` (15)
      nearest training patients in the integrated space (Euclidean) vote, each weighted
      ``1 / (d + floor)`` with ``floor = floor_fraction`` (0.1) ``x`` the training
      patients' median nearest-neighbour distance; ``confidence`` = the winner's share of
      the weights x the mean run confidence of the training patients that voted for it.
      Unassigned (noise, -1) training patients vote too, as "-1", exactly as on the
      ``cluster`` side: a new patient among the run's noise stays unassigned. A new patient
      whose winning share is below the rule's ``majority`` (50%), or whose vote is won by
      "-1", gets ``cluster`` -1 (unassigned; its ``confidence`` is still the winning
      vote's, and ``nearest_cluster`` / ``distance`` / ``novel`` are still reported). If
      the run attached its unassigned patients to their nearest cluster
      (``--assign-noise``), so does ``assign``: such a patient gets its
      ``nearest_cluster``. Ties go to the lowest label (-1 first).
    * **Novel**: for every assigned training patient, the mean distance to its
      ``K_NOVEL`` (5) nearest fellow members of its cluster; the threshold is the
      ``NOVEL_PERCENTILE`` (99th) percentile of these. A new patient's ``distance`` is
      the smallest, over clusters, of its mean distance to that cluster's ``K_NOVEL``
      nearest members (``nearest_cluster`` is that cluster); ``novel`` when it exceeds
      the threshold, i.e. it is farther from every cluster than 99% of training patients
      are from their own. Novel patients keep their voted cluster: filter on ``novel``.
    * Patients with no usable block are not placed: cluster -1 and nulls (also in
      ``nearest_cluster``, which tells them apart from placed but unassigned patients).

    The summary counts ``placed`` (in the integrated space: ``assigned`` + ``unassigned``)
    and ``not_placed`` patients; ``clusters`` and ``mean_confidence`` cover the assigned
    ones, ``novel`` all placed ones.

    ``out`` is written atomically and never replaced without ``force``; it may not be
    inside the store's ``runs/`` (that would break the run's checksums).
    """
    st = open_store(store)
    out = Path(out)
    _check_out(st, out, force)
    mol, gen = _specs(molecular), _specs(genetic)
    if not mol and not gen and clinical is None:
        raise UsageError("give at least one --molecular or --genetic table to assign")
    rm = load_run(st, run)
    if layout not in ("auto", "wide", "long"):
        raise UsageError("--layout must be auto, wide or long")
    clin_path = Path(clinical) if clinical is not None else None
    frames, from_maf = _read_inputs(
        rm, mol, gen, clin_path, id_column=id_column, fmt=fmt, layout=layout,
        tcga_barcodes=tcga_barcodes, maf_classes=maf_classes,
        maf_covers_clinical=maf_covers_clinical,
    )
    if not frames:
        raise UsageError(f"none of the given tables is a block of run {rm.name} "
                         f"(blocks: {', '.join(rm.blocks)})")
    source = {s.name: str(s.path) for s in [*mol, *gen]}
    if clin_path is not None:
        source["clinical"] = str(clin_path)
    placement = place(rm, frames, from_maf, source)
    ref = Reference.from_run(rm)
    table = _result_table(rm, placement, ref)
    summary = _summary(rm, placement, ref, table, out)
    _write_atomic(table, out, force, summary)
    return summary


def _result_table(rm: RunModel, placement: Placement, ref: Reference) -> pl.DataFrame:
    n = len(placement.patient_ids)
    placed = placement.placed
    cluster = np.full(n, -1, dtype=np.int64)
    nearest = np.full(n, -1, dtype=np.int64)
    conf = np.full(n, np.nan)
    dist = np.full(n, np.nan)
    novel = np.zeros(n, dtype=bool)
    if placed.any():
        res = ref.classify(placement.matrix[placed])
        voted = res["cluster"]
        if rm.params.get("assign_noise"):  # the run attached its unassigned patients
            voted = np.where(voted >= 0, voted, res["nearest_cluster"])
        cluster[placed], nearest[placed] = voted, res["nearest_cluster"]
        conf[placed], dist[placed], novel[placed] = (res["confidence"], res["distance"],
                                                     res["novel"])
    used = [",".join(b for b in rm.blocks if placement.present[b][i]) for i in range(n)]
    missing = [",".join(b for b in rm.blocks if not placement.present[b][i]) for i in range(n)]
    return pl.DataFrame({
        "patient_id": placement.patient_ids,
        "cluster": cluster,
        "confidence": pl.Series(conf).fill_nan(None),
        "nearest_cluster": pl.Series(nearest).set(pl.Series(~placed), None),
        "novel": pl.Series(novel).set(pl.Series(~placed), None),
        "distance": pl.Series(np.round(dist, 6)).fill_nan(None),
        "modalities_used": used,
        "modalities_missing": missing,
    }, schema={"patient_id": pl.String, "cluster": pl.Int64, "confidence": pl.Float64,
               "nearest_cluster": pl.Int64, "novel": pl.Boolean, "distance": pl.Float64,
               "modalities_used": pl.String, "modalities_missing": pl.String})


def _summary(rm: RunModel, placement: Placement, ref: Reference, table: pl.DataFrame,
             out: Path) -> dict[str, Any]:
    placed = table.filter(pl.col("nearest_cluster").is_not_null())
    assigned = placed.filter(pl.col("cluster") >= 0)
    sizes = assigned.group_by("cluster").len().sort("cluster")
    training = set(rm.patient_ids)
    return {
        "out": str(out),
        "run": rm.name,
        "patients": table.height,
        "placed": placed.height,
        "assigned": assigned.height,
        "unassigned": placed.height - assigned.height,
        "not_placed": table.height - placed.height,
        "clusters": {str(c): int(k) for c, k in sizes.iter_rows()},
        "novel": int(placed["novel"].sum()),
        "mean_confidence": None if assigned.is_empty() else round(
            float(assigned["confidence"].mean()), 6),
        "patients_missing_block": {b: int((~m).sum()) for b, m in placement.present.items()},
        "absent_features": placement.absent_features,
        "patients_also_in_run": sum(1 for p in placement.patient_ids if p in training),
        "rules": {
            "placement_rule": ref.rule.to_dict(), "k_vote": ref.k_vote,
            "weight_floor": round(ref.floor, 6), "k_novel": K_NOVEL,
            "novel_percentile": NOVEL_PERCENTILE, "novel_threshold": round(ref.threshold, 6),
            "max_absent_features": MAX_ABSENT_FEATURES,
            "min_patient_coverage": MIN_PATIENT_COVERAGE, "k_impute": rm.k_impute,
            "noise_training_patients": "vote as unassigned (-1)",
            "unassigned_attached_to_nearest": bool(rm.params.get("assign_noise")),
        },
    }


# -- output --------------------------------------------------------------------------------
def _check_out(st: Store, out: Path, force: bool) -> None:
    if str(out) in ("", "-") or out.is_dir():
        raise UsageError(f"--out {str(out)!r}: give a Parquet file path")
    runs = st.runs_dir.resolve()
    target = out.resolve()
    if target == runs or runs in target.parents:
        raise UsageError(f"--out {out}: may not be inside the store's runs/ (it would break the "
                         "run's checksums)")
    if out.exists() and not force:
        raise OutputError(f"{out}: already exists (use --force to replace it)")


def _write_atomic(table: pl.DataFrame, out: Path, force: bool, summary: dict[str, Any]) -> None:
    """Write the Parquet through the store's atomic file publication (no clobber without
    ``force``; a killed run leaves only a hidden temporary that later writers remove)."""
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create output ({exc.strerror or exc})") from None
    arrow = table.to_arrow()
    meta = {b"cohortctl": json.dumps(summary, sort_keys=True).encode()}
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **meta})
    with atomic_file(out, force=force) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")
