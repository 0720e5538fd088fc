"""Simulate realistic multi-omic patient cohorts with planted, recorded truth.

Why: demos, tests and benchmarks need cohorts whose answer is known. The simulator plants
molecular subtypes (expression + methylation signatures, subtype-specific driver mutations),
a subtype x treatment interaction on response and subtype/arm effects on survival, and writes
the truth next to the data (``truth.parquet`` + ``truth.json``) -- the pipeline never reads it.

Design notes:

* Determinism: every random quantity comes from its own ``numpy.random.SeedSequence`` stream
  keyed by ``(seed, domain, block)``; per-patient molecular data are generated in fixed blocks
  of ``_BLOCK`` patients.  Values therefore depend only on the seed and the model parameters,
  never on ``chunk_rows`` (which only sets the rows per parquet row group / write, and so the
  memory used).  Same seed + parameters -> byte-identical files (same library versions).
* Streaming: the small patient-level design (subtype, modality presence, clinical) is built
  first; expression and methylation are generated and written chunk by chunk.  Memory is about
  ``(chunk_rows + 2 * _BLOCK) x features`` float32 values plus the parquet footer metadata the
  writer keeps until close (~1 KB per row group per column, i.e. ``patients / chunk_rows x
  features`` KB -- inherent to wide parquet; CSV has no such term).  100,000 x 20,000 with
  the default chunk_rows=5000 peaks at ~1.4 GB RSS for ~7.4 GB written.
* Atomic files: each file is written to a hidden temporary name in ``out_dir`` and moved into
  place with ``os.replace``; ``truth.json`` is written last, so its presence marks a complete run.
* Missing values in expression/methylation are written as nulls (empty fields in CSV), which
  read back as NaN in numpy/pandas.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cohortctl.errors import raise_if_interrupted

__all__ = ["SimulationResult", "simulate_cohort"]

FORMATS = ("parquet", "csv")
_BLOCK = 1000  # patients per RNG block; fixed so output never depends on chunk_rows
_ZSTD_LEVEL = 1
_NAN_RATE = 0.005
_WILDTYPE_RATE = 0.02
_HYPERMUTATOR_RATE = 0.02
_CENSORING_TARGET = 0.30
_WEIBULL_SHAPE = 1.3
_WEIBULL_SCALE_DAYS = 1500.0
_STAGES = ("I", "II", "III", "IV")
_STAGE_BASE = np.array([0.25, 0.35, 0.25, 0.15])

# RNG stream domains (never reuse a number for a different purpose: that would couple streams).
_D_PATIENTS = 1
_D_DESIGN = 2
_D_CLINICAL = 3
_D_EXPR_FEATURES = 4
_D_METH_FEATURES = 5
_D_MUT_GENES = 6
_D_EXPR_BLOCK = 10
_D_METH_BLOCK = 11
_D_MAF_BLOCK = 12

# Variant classes: (name, passenger proportion, driver proportion, coding?)
_CLASSES: tuple[tuple[str, float, float, bool], ...] = (
    ("Missense_Mutation", 0.52, 0.70, True),
    ("Silent", 0.25, 0.0, True),
    ("Nonsense_Mutation", 0.05, 0.12, True),
    ("Frame_Shift_Del", 0.03, 0.07, True),
    ("Frame_Shift_Ins", 0.015, 0.04, True),
    ("Splice_Site", 0.025, 0.04, True),
    ("In_Frame_Del", 0.015, 0.02, True),
    ("In_Frame_Ins", 0.005, 0.01, True),
    ("Intron", 0.04, 0.0, False),
    ("3'UTR", 0.03, 0.0, False),
    ("5'UTR", 0.01, 0.0, False),
    ("IGR", 0.01, 0.0, False),
)
_CLASS_NAMES = tuple(c[0] for c in _CLASSES)
_MAF_COLUMNS = (
    "Hugo_Symbol", "Entrez_Gene_Id", "Center", "NCBI_Build", "Chromosome", "Start_Position",
    "End_Position", "Strand", "Variant_Classification", "Variant_Type", "Reference_Allele",
    "Tumor_Seq_Allele1", "Tumor_Seq_Allele2", "Tumor_Sample_Barcode", "Protein_Change",
    "t_ref_count", "t_alt_count",
)
_AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
_BASES = np.array(list("ACGT"))
_CHROMS = tuple([str(i) for i in range(1, 23)] + ["X"])
# Approximate GRCh38 chromosome lengths in Mb (used only to spread genes realistically).
_CHROM_MB = np.array([248, 242, 198, 190, 181, 171, 159, 145, 138, 134, 135, 133, 114, 107,
                      102, 90, 83, 80, 59, 64, 47, 51, 156], dtype=float)


@dataclass
class SimulationResult:
    """Paths written by :func:`simulate_cohort` and summary counts (JSON-able via to_dict)."""

    out_dir: Path
    paths: dict[str, Path]
    patients: int
    subtypes: int
    genes: int
    methylation_features: int
    mutation_genes: int
    treatments: int
    seed: int
    fmt: str
    subtype_counts: list[int] = field(default_factory=list)
    n_expression: int = 0
    n_methylation: int = 0
    n_mutations: int = 0
    n_wildtype: int = 0
    n_events: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON summary (paths as strings)."""
        return {
            "out_dir": str(self.out_dir),
            "paths": {k: str(v) for k, v in self.paths.items()},
            "patients": self.patients,
            "subtypes": self.subtypes,
            "genes": self.genes,
            "methylation_features": self.methylation_features,
            "mutation_genes": self.mutation_genes,
            "treatments": self.treatments,
            "seed": self.seed,
            "format": self.fmt,
            "subtype_counts": list(self.subtype_counts),
            "n_expression": self.n_expression,
            "n_methylation": self.n_methylation,
            "n_mutations": self.n_mutations,
            "n_wildtype": self.n_wildtype,
            "n_events": self.n_events,
        }


# --------------------------------------------------------------------------- helpers


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent generator for one (seed, domain, block...) stream."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _as_float(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _names(prefix: str, n: int, width: int) -> list[str]:
    w = max(width, len(str(n)))
    return [f"{prefix}{i:0{w}d}" for i in range(1, n + 1)]


def _r(x: float) -> float:
    """Round floats written to truth.json so its text is stable and readable."""
    return round(float(x), 6)


@contextmanager
def _atomic(final: Path) -> Iterator[Path]:
    """Yield a temp path in the same directory; move it to ``final`` only on success."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        raise_if_interrupted()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


class _TableWriter:
    """Streaming parquet (zstd, no timestamps) or CSV writer with a fixed schema."""

    def __init__(self, path: Path, schema: pa.Schema, fmt: str, *, wide: bool) -> None:
        self.schema = schema
        self.rows = 0
        if fmt == "parquet":
            self._w: Any = pq.ParquetWriter(
                str(path), schema, compression="zstd", compression_level=_ZSTD_LEVEL,
                use_dictionary=not wide,
                # Float columns of wide tables: byte-stream-split makes zstd effective (~-25%).
                use_byte_stream_split=[f.name for f in schema if f.type == pa.float32()]
                if wide else False,
                # Statistics on thousands of float columns bloat the footer for no benefit.
                write_statistics=["patient_id"] if wide else True,
            )
        else:
            opts = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
            self._w = pacsv.CSVWriter(str(path), schema, write_options=opts)

    def write(self, table: pa.Table) -> None:
        self._w.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.rows == 0:  # still produce a valid, header-only file
            self._w.write_table(self.schema.empty_table())
        self._w.close()

    def abort(self) -> None:
        """Release the file handle after a failure (the temp file is deleted by _atomic)."""
        with suppress(Exception):  # best effort on an already failing path
            self._w.close()


def _write_table(path: Path, table: pa.Table, fmt: str) -> None:
    with _atomic(path) as tmp:
        w = _TableWriter(tmp, table.schema, fmt, wide=False)
        try:
            w.write(table)
        except BaseException:
            w.abort()
            raise
        w.close()


# --------------------------------------------------------------------------- design


@dataclass
class _Design:
    """Patient-level latent variables (small: a few arrays of length ``patients``)."""

    ids: list[str]
    subtype: np.ndarray
    proportions: np.ndarray
    strength: np.ndarray  # per-patient signature strength (purity-like), in (0, 1)
    has_expr: np.ndarray
    has_meth: np.ndarray
    batch: np.ndarray | None  # 0/1 per patient, or None without batch effect
    wildtype: np.ndarray
    hypermutator: np.ndarray


def _subtype_counts(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unequal but not tiny proportions (each >= min(10%, 50%/k)); exact counts, each >= 2."""
    floor = min(0.10, 0.5 / k)
    props = floor + (1.0 - k * floor) * rng.dirichlet(np.full(k, 2.0))
    raw = props * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    while counts.min() < 2:
        counts[int(np.argmax(counts))] -= 1
        counts[int(np.argmin(counts))] += 1
    return props, counts


def _make_design(seed: int, n: int, k: int, missing_rate: float, batch_effect: float,
                 with_mutations: bool) -> _Design:
    rng = _rng(seed, _D_PATIENTS)
    props, counts = _subtype_counts(rng, n, k)
    subtype = rng.permutation(np.repeat(np.arange(k, dtype=np.int64), counts))
    strength = rng.beta(6.0, 2.0, size=n).astype(np.float32)
    n_missing = int(math.floor(missing_rate * n + 0.5))
    missing = rng.choice(n, size=n_missing, replace=False)
    lacks_expr = rng.random(n_missing) < 0.5
    has_expr = np.ones(n, dtype=bool)
    has_meth = np.ones(n, dtype=bool)
    has_expr[missing[lacks_expr]] = False
    has_meth[missing[~lacks_expr]] = False
    batch_draw = rng.random(n) < 0.5
    batch = batch_draw.astype(np.int64) if batch_effect > 0 else None
    order = rng.permutation(n)
    n_wt = max(1, int(round(_WILDTYPE_RATE * n))) if with_mutations else 0
    n_hyper = int(round(_HYPERMUTATOR_RATE * n))
    wildtype = np.zeros(n, dtype=bool)
    hyper = np.zeros(n, dtype=bool)
    wildtype[order[:n_wt]] = True
    hyper[order[n_wt : n_wt + n_hyper]] = True
    return _Design(ids=_names("SIM-", n, 6), subtype=subtype, proportions=props,
                   strength=strength, has_expr=has_expr, has_meth=has_meth, batch=batch,
                   wildtype=wildtype, hypermutator=hyper)


# --------------------------------------------------------------------------- omics


@dataclass
class _OmicSpec:
    """Per-feature parameters of one wide molecular table."""

    domain: int
    names: list[str]
    mu: np.ndarray
    sd: np.ndarray
    signatures: list[tuple[np.ndarray, np.ndarray]]  # per subtype: (feature idx, shift)
    modules: list[tuple[np.ndarray, np.ndarray]]  # (feature idx, loading)
    batch_idx: np.ndarray
    batch_shift: np.ndarray
    beta: bool  # methylation: write logistic(M) in [0, 1]; expression: clip at 0


def _signatures(rng: np.random.Generator, g: int, k: int, sd: np.ndarray,
                p_up: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """5-10% of features per subtype shifted by 1.0-1.5 noise SDs (direction up w.p. p_up)."""
    out = []
    for _ in range(k):
        size = max(1, int(round(rng.uniform(0.05, 0.10) * g)))
        idx = np.sort(rng.choice(g, size=size, replace=False))
        sign = np.where(rng.random(size) < p_up, 1.0, -1.0)
        shift = (sign * rng.uniform(1.0, 1.5, size) * sd[idx]).astype(np.float32)
        out.append((idx, shift))
    return out


def _modules(rng: np.random.Generator, g: int, count: int,
             sd: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Co-expression modules: random gene sets sharing one latent factor (subtype-free)."""
    out = []
    for _ in range(count):
        size = min(g, max(3, int(round(rng.uniform(0.01, 0.03) * g))))
        idx = np.sort(rng.choice(g, size=size, replace=False))
        sign = np.where(rng.random(size) < 0.8, 1.0, -1.0)
        out.append((idx, (sign * rng.uniform(0.5, 1.0, size) * sd[idx]).astype(np.float32)))
    return out


def _batch(rng: np.random.Generator, g: int, sd: np.ndarray,
           size: float) -> tuple[np.ndarray, np.ndarray]:
    """Additive shift of ~``size`` noise SDs on half of the features for batch 2."""
    idx = np.sort(rng.choice(g, size=g // 2, replace=False))
    sign = np.where(rng.random(idx.size) < 0.5, 1.0, -1.0)
    shift = sign * size * rng.uniform(0.5, 1.5, idx.size) * sd[idx]
    return idx, shift.astype(np.float32)


def _expression_spec(seed: int, genes: int, k: int, batch_effect: float) -> _OmicSpec:
    rng = _rng(seed, _D_EXPR_FEATURES)
    mu = np.clip(rng.normal(6.0, 1.5, genes), 0.5, 14.0).astype(np.float32)
    sd = rng.uniform(0.5, 1.0, genes).astype(np.float32)
    sigs = _signatures(rng, genes, k, sd, p_up=0.5)
    n_mod = min(15, genes // 50) if genes >= 50 else 0
    mods = _modules(rng, genes, n_mod, sd)
    bidx, bshift = _batch(rng, genes, sd, batch_effect)
    return _OmicSpec(_D_EXPR_BLOCK, _names("GENE", genes, 5), mu, sd, sigs, mods, bidx, bshift,
                     beta=False)


def _methylation_spec(seed: int, feats: int, k: int, batch_effect: float) -> _OmicSpec:
    rng = _rng(seed, _D_METH_FEATURES)
    state = rng.choice(3, size=feats, p=[0.40, 0.45, 0.15])  # un-, fully, partly methylated
    centre = np.array([-3.5, 3.0, 0.0])[state]
    spread = np.array([0.8, 0.8, 1.0])[state]
    mu = rng.normal(centre, spread).astype(np.float32)  # M-value scale (log2 beta/(1-beta))
    sd = rng.uniform(0.4, 0.9, feats).astype(np.float32)
    sigs = _signatures(rng, feats, k, sd, p_up=0.7)  # mostly CIMP-like hypermethylation
    n_mod = min(8, feats // 100) if feats >= 100 else 0
    mods = _modules(rng, feats, n_mod, sd)
    bidx, bshift = _batch(rng, feats, sd, batch_effect)
    return _OmicSpec(_D_METH_BLOCK, _names("CPG", feats, 6), mu, sd, sigs, mods, bidx, bshift,
                     beta=True)


def _omic_block(spec: _OmicSpec, design: _Design, present: np.ndarray, block: int, seed: int,
                noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Generate one fixed block of patients -> (kept columns, features x patients float32).

    All patients of the block are drawn (so values never depend on who lacks the modality);
    the caller keeps only the returned columns (patients having the modality).
    """
    n = len(design.ids)
    lo, hi = block * _BLOCK, min((block + 1) * _BLOCK, n)
    m, g = hi - lo, len(spec.names)
    rng = _rng(seed, spec.domain, block)
    x = rng.standard_normal((g, m), dtype=np.float32)
    x *= (np.float32(noise) * spec.sd)[:, None]
    x += spec.mu[:, None]
    factors = rng.standard_normal((len(spec.modules), m), dtype=np.float32)
    for f, (idx, load) in zip(factors, spec.modules, strict=True):
        x[idx] += load[:, None] * f[None, :]
    sub = design.subtype[lo:hi]
    strength = design.strength[lo:hi]
    for s, (idx, shift) in enumerate(spec.signatures):
        cols = np.flatnonzero(sub == s)
        if cols.size:
            x[np.ix_(idx, cols)] += shift[:, None] * strength[cols][None, :]
    if design.batch is not None:
        cols = np.flatnonzero(design.batch[lo:hi] == 1)
        if cols.size and spec.batch_idx.size:
            x[np.ix_(spec.batch_idx, cols)] += spec.batch_shift[:, None]
    if spec.beta:
        np.negative(x, out=x)
        np.exp2(x, out=x)
        x += np.float32(1.0)
        np.reciprocal(x, out=x)
        np.clip(x, np.float32(0.001), np.float32(0.999), out=x)
    else:
        np.maximum(x, np.float32(0.0), out=x)
    n_nan = rng.binomial(g * m, _NAN_RATE)
    x.reshape(-1)[rng.integers(0, g * m, n_nan)] = np.nan
    return np.flatnonzero(present[lo:hi]), x


def _to_arrow_columns(buf: np.ndarray, rows: int) -> list[pa.Array]:
    """Zero-copy float32 columns ``buf[j, :rows]``; NaN becomes null via a validity bitmap."""
    g, cap = buf.shape
    flat = buf.reshape(-1)
    valid = np.empty((flat.size + 7) // 8, dtype=np.uint8)
    step = 1 << 23  # multiple of 8: slices pack into whole bytes; bounds the temporaries
    for lo in range(0, flat.size, step):
        ok = np.isnan(flat[lo : lo + step])
        np.logical_not(ok, out=ok)
        packed = np.packbits(ok, bitorder="little")
        valid[lo // 8 : lo // 8 + packed.size] = packed
    arr = pa.Array.from_buffers(pa.float32(), flat.size, [pa.py_buffer(valid),
                                                          pa.py_buffer(flat)])
    return [arr.slice(j * cap, rows) for j in range(g)]


def _runs(cols: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers in sorted ``cols`` as (first, stop) pairs."""
    if cols.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(cols) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [cols.size]])
    return [(int(cols[a]), int(cols[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def _write_omic(path: Path, spec: _OmicSpec, design: _Design, present: np.ndarray, seed: int,
                noise: float, fmt: str, chunk_rows: int) -> int:
    """Stream one wide table: fixed RNG blocks, re-cut into writes of ``chunk_rows`` rows.

    Kept columns of each block are copied (as slices, no temporaries) into one reused
    ``features x chunk_rows`` buffer, so memory is about one chunk plus two blocks.  The next
    block is generated in a worker thread while the current one is copied/encoded/written
    (numpy and Arrow release the GIL); blocks are independent RNG streams, so this cannot
    change the values.
    """
    names = spec.names
    g = len(names)
    schema = pa.schema([pa.field("patient_id", pa.string(), nullable=False)]
                       + [pa.field(nm, pa.float32()) for nm in names])
    n = len(design.ids)
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    cap = max(1, min(chunk_rows, int(present.sum())))

    def emit(writer: _TableWriter, buf: np.ndarray, idx: np.ndarray, rows: int) -> None:
        ids = pa.array([design.ids[i] for i in idx[:rows]], type=pa.string())
        cols = _to_arrow_columns(buf, rows)
        writer.write(pa.Table.from_arrays([ids, *cols], schema=schema))

    with _atomic(path) as tmp, ThreadPoolExecutor(max_workers=1) as pool:
        writer = _TableWriter(tmp, schema, fmt, wide=True)
        try:
            buf: np.ndarray | None = None
            buf_idx = np.empty(cap, dtype=np.int64)
            fill = 0
            nxt = pool.submit(_omic_block, spec, design, present, 0, seed, noise)
            for b in range(n_blocks):
                keep, x = nxt.result()
                if b + 1 < n_blocks:
                    nxt = pool.submit(_omic_block, spec, design, present, b + 1, seed, noise)
                for first, stop in _runs(keep):
                    while first < stop:
                        if buf is None:
                            buf = np.empty((g, cap), dtype=np.float32)
                        take = min(stop - first, cap - fill)
                        buf[:, fill : fill + take] = x[:, first : first + take]
                        buf_idx[fill : fill + take] = np.arange(first, first + take) + b * _BLOCK
                        fill += take
                        first += take
                        if fill == cap:
                            emit(writer, buf, buf_idx, cap)  # buffer is reused once written
                            fill = 0
                del x
            if fill and buf is not None:
                emit(writer, buf, buf_idx, fill)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return writer.rows


# --------------------------------------------------------------------------- mutations


@dataclass
class _MutSpec:
    names: list[str]
    chrom: np.ndarray
    start: np.ndarray
    length: np.ndarray
    aa_len: np.ndarray
    rate: np.ndarray
    drivers: list[list[int]]  # per subtype
    driver_in: dict[int, float]
    driver_out: dict[int, float]
    driver_owner: dict[int, int]
    hotspot: dict[int, tuple[int, str, str]]  # gene -> (aa position, ref aa, alt aa)


def _mutation_spec(seed: int, n_genes: int, k: int) -> _MutSpec:
    rng = _rng(seed, _D_MUT_GENES)
    chrom_p = _CHROM_MB / _CHROM_MB.sum()
    counts = rng.multinomial(n_genes, chrom_p)
    chrom = np.repeat(np.arange(len(_CHROMS)), counts)
    start = np.concatenate([
        np.sort(rng.integers(100_000, int(mb * 1e6) - 3_000_000, c)) for mb, c in
        zip(_CHROM_MB, counts, strict=True)
    ]).astype(np.int64) if n_genes else np.zeros(0, dtype=np.int64)
    length = np.clip(rng.lognormal(math.log(30_000), 1.0, n_genes), 1_000, 2_000_000)
    aa_len = np.clip(rng.lognormal(math.log(450), 0.6, n_genes), 50, 5_000).astype(np.int64)
    rate = np.clip(0.01 * aa_len / 450.0, 0.005, 0.03)  # length-like passenger heterogeneity
    per = rng.integers(3, 6, size=k)
    cap = (n_genes // 2) // k
    per = np.minimum(per, cap)
    pool = rng.permutation(n_genes)
    drivers: list[list[int]] = []
    pos = 0
    for s in range(k):
        drivers.append(sorted(int(x) for x in pool[pos : pos + per[s]]))
        pos += int(per[s])
    driver_in, driver_out, owner, hotspot = {}, {}, {}, {}
    for s, genes in enumerate(drivers):
        for gi in genes:
            driver_in[gi] = float(rng.uniform(0.40, 0.70))
            driver_out[gi] = float(rng.uniform(0.02, 0.05))
            owner[gi] = s
            ref = int(rng.integers(0, 20))
            alt = (ref + 1 + int(rng.integers(0, 19))) % 20
            hotspot[gi] = (int(rng.integers(1, aa_len[gi] + 1)), str(_AMINO[ref]),
                           str(_AMINO[alt]))
    return _MutSpec(_names("MUTG", n_genes, 4), chrom, start, length, aa_len, rate, drivers,
                    driver_in, driver_out, owner, hotspot)


def _maf_block(spec: _MutSpec, design: _Design, block: int, seed: int) -> list[str]:
    """MAF lines for one fixed block of patients (sorted by patient, gene, position)."""
    n = len(design.ids)
    lo, hi = block * _BLOCK, min((block + 1) * _BLOCK, n)
    m, g = hi - lo, len(spec.names)
    rng = _rng(seed, _D_MAF_BLOCK, block)
    prob = np.broadcast_to(spec.rate.astype(np.float32), (m, g)).copy()
    prob[design.hypermutator[lo:hi]] *= np.float32(10.0)
    sub = design.subtype[lo:hi]
    for gi, s in spec.driver_owner.items():
        prob[:, gi] = np.where(sub == s, spec.driver_in[gi], spec.driver_out[gi])
    prob[design.wildtype[lo:hi]] = 0.0
    hit = rng.random((m, g), dtype=np.float32) < prob
    pi, gi = np.nonzero(hit)
    second = rng.random(pi.size) < 0.05  # occasional second hit in the same gene
    pi = np.concatenate([pi, pi[second]])
    gi = np.concatenate([gi, gi[second]])
    nm = pi.size
    # Functional class mix (and hotspots) only for drivers mutated in their own subtype;
    # driver genes hit elsewhere behave like passengers.
    owner = np.full(g, -1, dtype=np.int64)
    for gene, s in spec.driver_owner.items():
        owner[gene] = s
    is_driver = owner[gi] == sub[pi]
    u_cls = rng.random(nm)
    u_pos = rng.random(nm)
    u_nc = rng.random(nm)
    u_hot = rng.random(nm)
    u_vt = rng.random(nm)
    aa_ref = rng.integers(0, 20, nm)
    aa_alt = (aa_ref + 1 + rng.integers(0, 19, nm)) % 20
    bases = rng.integers(0, 4, (nm, 6))
    alt_shift = rng.integers(1, 4, nm)
    fs_len = rng.choice(np.array([1, 1, 1, 2, 4, 5]), nm)
    if_len = rng.choice(np.array([3, 3, 6]), nm)
    nc_len = rng.integers(1, 4, nm)
    depth = 30 + rng.poisson(70, nm)
    vaf = rng.beta(4.0, 6.0, nm)
    alt_count = np.maximum(3, rng.binomial(depth, vaf))
    alt_count = np.minimum(alt_count, depth)

    cum_p = np.cumsum([c[1] for c in _CLASSES])
    cum_d = np.cumsum([c[2] for c in _CLASSES])
    cls = np.where(is_driver, np.searchsorted(cum_d / cum_d[-1], u_cls, side="right"),
                   np.searchsorted(cum_p / cum_p[-1], u_cls, side="right"))
    aa_len = spec.aa_len[gi]
    aa_pos = 1 + np.floor(u_pos * aa_len).astype(np.int64)
    start = spec.start[gi]
    length = spec.length[gi].astype(np.int64)
    coding_pos = start + ((aa_pos - 1) * (length - 1)) // np.maximum(aa_len, 1)
    names = _CLASS_NAMES
    pos = coding_pos.copy()
    for ci, name in enumerate(names):
        sel = cls == ci
        if name == "Intron":
            pos[sel] = start[sel] + np.floor(u_nc[sel] * length[sel]).astype(np.int64)
        elif name == "5'UTR":
            pos[sel] = start[sel] + np.floor(u_nc[sel] * np.minimum(500, length[sel])).astype(
                np.int64)
        elif name == "3'UTR":
            pos[sel] = start[sel] + length[sel] - 1 - np.floor(
                u_nc[sel] * np.minimum(2000, length[sel])).astype(np.int64)
        elif name == "IGR":
            pos[sel] = np.maximum(1, start[sel] - 5000 - np.floor(u_nc[sel] * 50_000)).astype(
                np.int64)
    order = np.lexsort((pos, gi, pi))
    lines = []
    for j in order:
        name = names[cls[j]]
        gene = int(gi[j])
        ap = int(aa_pos[j])
        ra, aa = str(_AMINO[aa_ref[j]]), str(_AMINO[aa_alt[j]])
        if name in ("Frame_Shift_Del", "In_Frame_Del"):
            vtype = "DEL"
            ln = int(fs_len[j] if name == "Frame_Shift_Del" else if_len[j])
        elif name in ("Frame_Shift_Ins", "In_Frame_Ins"):
            vtype = "INS"
            ln = int(fs_len[j] if name == "Frame_Shift_Ins" else if_len[j])
        elif not _CLASSES[cls[j]][3] and u_vt[j] < 0.10:
            vtype = "DEL" if u_vt[j] < 0.05 else "INS"
            ln = int(nc_len[j])
        else:
            vtype, ln = "SNP", 1
        p0 = int(pos[j])
        if vtype == "SNP":
            ref = str(_BASES[bases[j, 0]])
            alt = str(_BASES[(bases[j, 0] + alt_shift[j]) % 4])
            end = p0
        elif vtype == "DEL":
            ref, alt, end = "".join(_BASES[bases[j, :ln]]), "-", p0 + ln - 1
        else:
            ref, alt, end = "-", "".join(_BASES[bases[j, :ln]]), p0 + 1
        if name == "Missense_Mutation":
            hs = spec.hotspot.get(gene)
            if hs is not None and is_driver[j] and u_hot[j] < 0.5:
                ap, ra, aa = hs
            prot = f"p.{ra}{ap}{aa}"
        elif name == "Silent":
            prot = f"p.{ra}{ap}{ra}"
        elif name == "Nonsense_Mutation":
            prot = f"p.{ra}{ap}*"
        elif name.startswith("Frame_Shift"):
            prot = f"p.{ra}{ap}fs"
        elif name == "In_Frame_Del":
            prot = f"p.{ra}{ap}del"
        elif name == "In_Frame_Ins":
            prot = f"p.{ra}{ap}_{aa}{ap + 1}ins{'G' * (ln // 3)}"
        elif name == "Splice_Site":
            prot = f"p.X{ap}_splice"
        else:
            prot = ""
        lines.append("\t".join((
            spec.names[gene], "0", "SIM", "GRCh38", _CHROMS[spec.chrom[gene]], str(p0),
            str(end), "+", name, vtype, ref, ref, alt, design.ids[lo + int(pi[j])], prot,
            str(int(depth[j] - alt_count[j])), str(int(alt_count[j])),
        )))
    return lines


def _write_maf(path: Path, spec: _MutSpec, design: _Design,
               seed: int) -> tuple[int, dict[str, int]]:
    """Stream the MAF block by block; returns (row count, per-class counts)."""
    n = len(design.ids)
    total = 0
    class_counts = dict.fromkeys(_CLASS_NAMES, 0)
    with _atomic(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as fh:
        fh.write("\t".join(_MAF_COLUMNS) + "\n")
        if spec.names:
            for b in range((n + _BLOCK - 1) // _BLOCK):
                lines = _maf_block(spec, design, b, seed)
                for line in lines:
                    class_counts[line.split("\t", 9)[8]] += 1
                if lines:
                    fh.write("\n".join(lines) + "\n")
                total += len(lines)
    return total, class_counts


# --------------------------------------------------------------------------- clinical


@dataclass
class _ClinicalModel:
    """Planted response/survival/stage effects (recorded verbatim in truth.json)."""

    arms: list[str]
    preferred_arm: list[int | None]  # per subtype; None = refractory
    logit: np.ndarray  # subtypes x arms
    log_hr: np.ndarray  # subtypes x arms
    aggressiveness: np.ndarray  # per subtype, drives stage


def _clinical_model(seed: int, k: int, t: int, interaction: bool,
                    survival_effect: bool) -> _ClinicalModel:
    rng = _rng(seed, _D_DESIGN)
    arms = [_arm_name(i) for i in range(t)]
    order = rng.permutation(k)
    refractory = int(order[-1]) if k >= 3 else None
    preferred: list[int | None] = [None] * k
    responsive = [int(s) for s in order if int(s) != refractory]
    for r, s in enumerate(responsive):
        preferred[s] = r % t
    aggr = np.linspace(-0.6, 0.6, k)[rng.permutation(k)] if k > 1 else np.zeros(1)
    logit = np.zeros((k, t))
    if interaction:
        for s in range(k):
            if preferred[s] is None:
                logit[s, :] = -2.0
            else:
                logit[s, :] = -1.5
                logit[s, preferred[s]] = 1.5
    else:
        main_s = np.linspace(-1.0, 1.0, k)[rng.permutation(k)] if k > 1 else np.zeros(1)
        main_t = 0.4 * np.arange(t)
        logit = main_s[:, None] + main_t[None, :]
    arm_hr = -0.1 * np.arange(t)
    log_hr = np.tile(arm_hr, (k, 1))
    if survival_effect:
        log_hr += aggr[:, None]
        if interaction:
            for s in range(k):
                if preferred[s] is not None:
                    log_hr[s, preferred[s]] -= 0.5
    return _ClinicalModel(arms, preferred, logit, log_hr, aggr)


def _arm_name(i: int) -> str:
    letters = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        letters = chr(65 + rem) + letters
    return f"ARM_{letters}"


def _make_clinical(seed: int, design: _Design, model: _ClinicalModel,
                   with_batch: bool) -> tuple[pa.Table, dict[str, Any]]:
    rng = _rng(seed, _D_CLINICAL)
    n, t = len(design.ids), len(model.arms)
    s = design.subtype
    arm = rng.permutation(np.arange(n, dtype=np.int64) % t)  # balanced, random
    age = np.clip(np.rint(rng.normal(60.0, 10.0, n)), 18, 95).astype(np.int64)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    stage_logits = np.log(_STAGE_BASE)[None, :] + 0.6 * model.aggressiveness[:, None] * np.arange(
        4)[None, :]
    stage_p = np.exp(stage_logits)
    stage_p /= stage_p.sum(axis=1, keepdims=True)
    cum = np.cumsum(stage_p, axis=1)[s]
    stage_idx = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), 3)
    p_resp = 1.0 / (1.0 + np.exp(-model.logit[s, arm]))
    response = (rng.random(n) < p_resp).astype(np.int64)
    lp = model.log_hr[s, arm]
    e1 = rng.standard_exponential(n)
    e2 = rng.standard_exponential(n)
    event_time = _WEIBULL_SCALE_DAYS * (e1 / np.exp(lp)) ** (1.0 / _WEIBULL_SHAPE)
    # Exponential censoring whose rate gives an expected censored fraction of 30%.
    lo_r, hi_r = -20.0, 5.0
    for _ in range(80):
        mid = 0.5 * (lo_r + hi_r)
        frac = float(np.mean(-np.expm1(-math.exp(mid) * event_time)))
        lo_r, hi_r = (mid, hi_r) if frac < _CENSORING_TARGET else (lo_r, mid)
    c_rate = math.exp(0.5 * (lo_r + hi_r))
    censor_time = e2 / c_rate
    os_event = (event_time <= censor_time).astype(np.int64)
    os_time = np.maximum(np.round(np.minimum(event_time, censor_time), 1), 0.1)
    cols: dict[str, pa.Array] = {
        "patient_id": pa.array(design.ids, pa.string()),
        "age": pa.array(age, pa.int64()),
        "sex": pa.array(sex.tolist(), pa.string()),
        "stage": pa.array([_STAGES[i] for i in stage_idx], pa.string()),
        "treatment": pa.array([model.arms[i] for i in arm], pa.string()),
        "response": pa.array(response, pa.int64()),
        "os_time": pa.array(os_time, pa.float64()),
        "os_event": pa.array(os_event, pa.int64()),
    }
    if with_batch and design.batch is not None:
        cols["batch"] = pa.array(np.where(design.batch == 1, "B2", "B1").tolist(), pa.string())
    info = {
        "stage_probabilities": {str(i): [_r(v) for v in row] for i, row in enumerate(stage_p)},
        "censoring_rate_target": _CENSORING_TARGET,
        "censoring_exponential_rate_per_day": _r(c_rate),
        "censoring_rate_observed": _r(1.0 - os_event.mean()),
        "n_events": int(os_event.sum()),
    }
    return pa.table(cols), info


# --------------------------------------------------------------------------- public API


def _validate(patients: Any, subtypes: Any, genes: Any, mutation_genes: Any, treatments: Any,
              missing_modality_rate: Any, noise: Any, seed: Any, fmt: Any, batch_effect: Any,
              methylation_features: Any, chunk_rows: Any) -> dict[str, Any]:
    k = _as_int("subtypes", subtypes)
    if k < 1:
        raise ValueError(f"subtypes must be >= 1, got {k}")
    n = _as_int("patients", patients)
    if n < 2 * k:
        raise ValueError(f"patients must be >= 2 * subtypes ({2 * k}), got {n}")
    g = _as_int("genes", genes)
    if g < 1:
        raise ValueError(f"genes must be >= 1, got {g}")
    mg = _as_int("mutation_genes", mutation_genes)
    if mg < 0:
        raise ValueError(f"mutation_genes must be >= 0, got {mg}")
    t = _as_int("treatments", treatments)
    if t < 1:
        raise ValueError(f"treatments must be >= 1, got {t}")
    rate = _as_float("missing_modality_rate", missing_modality_rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"missing_modality_rate must be in [0, 1), got {rate}")
    nz = _as_float("noise", noise)
    if nz < 0:
        raise ValueError(f"noise must be >= 0, got {nz}")
    sd = _as_int("seed", seed)
    if sd < 0:
        raise ValueError(f"seed must be >= 0, got {sd}")
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    be = _as_float("batch_effect", batch_effect)
    if be < 0:
        raise ValueError(f"batch_effect must be >= 0, got {be}")
    mf = max(200, g // 4) if methylation_features is None else _as_int(
        "methylation_features", methylation_features)
    if mf < 1:
        raise ValueError(f"methylation_features must be >= 1, got {mf}")
    cr = _as_int("chunk_rows", chunk_rows)
    if cr < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {cr}")
    return dict(n=n, k=k, g=g, mg=mg, t=t, rate=rate, noise=nz, seed=sd, fmt=fmt.lower(),
                batch=be, mf=mf, chunk=cr)


def simulate_cohort(out_dir: Path, *, patients: int = 500, subtypes: int = 4, genes: int = 2000,
                    mutation_genes: int = 200, treatments: int = 2,
                    missing_modality_rate: float = 0.1, noise: float = 1.0, seed: int = 0,
                    fmt: str = "parquet", batch_effect: float = 0.0,
                    methylation_features: int | None = None, chunk_rows: int = 5000,
                    interaction: bool = True, survival_effect: bool = True) -> SimulationResult:
    """Write a simulated multi-omic cohort with planted truth into ``out_dir``.

    Files: ``mutations.maf`` (always tab-separated text), ``expression``, ``methylation``,
    ``clinical`` and ``truth`` tables (``.parquet`` or ``.csv`` per ``fmt``) and
    ``truth.json`` (planted effects; written last).  ``interaction=False`` makes response
    additive in subtype and arm (negative control); ``survival_effect=False`` removes every
    subtype effect on the hazard.  ``chunk_rows`` only bounds memory / row-group size: the
    values written depend on the seed and the model parameters alone.

    Raises ValueError for invalid parameters.
    """
    p = _validate(patients, subtypes, genes, mutation_genes, treatments, missing_modality_rate,
                  noise, seed, fmt, batch_effect, methylation_features, chunk_rows)
    n, k, t, sd, ext = p["n"], p["k"], p["t"], p["seed"], p["fmt"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "truth": out / f"truth.{ext}",
        "clinical": out / f"clinical.{ext}",
        "mutations": out / "mutations.maf",
        "expression": out / f"expression.{ext}",
        "methylation": out / f"methylation.{ext}",
        "truth_json": out / "truth.json",
    }

    # 1. Small patient-level latent design first.
    design = _make_design(sd, n, k, p["rate"], p["batch"], with_mutations=p["mg"] > 0)
    truth_tbl = pa.table({"patient_id": pa.array(design.ids, pa.string()),
                          "subtype": pa.array(design.subtype, pa.int64())})
    _write_table(paths["truth"], truth_tbl, ext)
    model = _clinical_model(sd, k, t, bool(interaction), bool(survival_effect))
    clinical, clin_info = _make_clinical(sd, design, model, with_batch=p["batch"] > 0)
    _write_table(paths["clinical"], clinical, ext)

    # 2. Mutations (all patients), then the two wide molecular tables, streamed.
    mspec = _mutation_spec(sd, p["mg"], k)
    n_mut, class_counts = _write_maf(paths["mutations"], mspec, design, sd)
    espec = _expression_spec(sd, p["g"], k, p["batch"])
    n_expr = _write_omic(paths["expression"], espec, design, design.has_expr, sd, p["noise"],
                         ext, p["chunk"])
    cspec = _methylation_spec(sd, p["mf"], k, p["batch"])
    n_meth = _write_omic(paths["methylation"], cspec, design, design.has_meth, sd, p["noise"],
                         ext, p["chunk"])

    # 3. truth.json last: its presence marks a complete run.
    truth = _truth_json(p, design, model, clin_info, mspec, espec, cspec, n_mut, class_counts,
                        bool(interaction), bool(survival_effect))
    with _atomic(paths["truth_json"]) as tmp:
        tmp.write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    return SimulationResult(
        out_dir=out, paths=paths, patients=n, subtypes=k, genes=p["g"],
        methylation_features=p["mf"], mutation_genes=p["mg"], treatments=t, seed=sd, fmt=ext,
        subtype_counts=np.bincount(design.subtype, minlength=k).tolist(), n_expression=n_expr,
        n_methylation=n_meth, n_mutations=n_mut, n_wildtype=int(design.wildtype.sum()),
        n_events=int(clin_info["n_events"]),
    )


def _sig_json(spec: _OmicSpec) -> dict[str, Any]:
    out = {}
    for s, (idx, shift) in enumerate(spec.signatures):
        out[str(s)] = {
            "up": [spec.names[i] for i, v in zip(idx, shift, strict=True) if v > 0],
            "down": [spec.names[i] for i, v in zip(idx, shift, strict=True) if v < 0],
        }
    return out


def _truth_json(p: dict[str, Any], design: _Design, model: _ClinicalModel,
                clin_info: dict[str, Any], mspec: _MutSpec, espec: _OmicSpec,
                cspec: _OmicSpec, n_mut: int, class_counts: dict[str, int], interaction: bool,
                survival_effect: bool) -> dict[str, Any]:
    k = p["k"]
    ids = design.ids
    prob = 1.0 / (1.0 + np.exp(-model.logit))
    return {
        "generator": "cohortctl.simulate",
        "truth_format": 1,
        "seed": p["seed"],
        "parameters": {
            "patients": p["n"], "subtypes": k, "genes": p["g"], "mutation_genes": p["mg"],
            "treatments": p["t"], "missing_modality_rate": p["rate"], "noise": p["noise"],
            "format": p["fmt"], "batch_effect": p["batch"], "methylation_features": p["mf"],
            "interaction": interaction, "survival_effect": survival_effect,
        },
        "subtypes": {
            "proportions_planned": [_r(v) for v in design.proportions],
            "counts": np.bincount(design.subtype, minlength=k).tolist(),
            "signature_strength": "per-patient Beta(6, 2) multiplier of all signatures",
        },
        "modalities": {
            "n_with_expression": int(design.has_expr.sum()),
            "n_with_methylation": int(design.has_meth.sum()),
            "n_lacking_expression": int((~design.has_expr).sum()),
            "n_lacking_methylation": int((~design.has_meth).sum()),
            "lacking_expression": [ids[i] for i in np.flatnonzero(~design.has_expr)],
            "lacking_methylation": [ids[i] for i in np.flatnonzero(~design.has_meth)],
            "missing_value_rate": _NAN_RATE,
        },
        "expression": {
            "signature_genes": _sig_json(espec),
            "signature_effect_sd": [1.0, 1.5],
            "n_modules": len(espec.modules),
            "module_genes": [[espec.names[i] for i in idx] for idx, _ in espec.modules],
            "n_batch_genes": int(espec.batch_idx.size) if p["batch"] > 0 else 0,
        },
        "methylation": {
            "signature_cpgs": _sig_json(cspec),
            "signature_effect_sd": [1.0, 1.5],
            "scale": "beta = 1 / (1 + 2**-M), clipped to [0.001, 0.999]",
            "n_batch_cpgs": int(cspec.batch_idx.size) if p["batch"] > 0 else 0,
        },
        "batches": {
            "B1": int((design.batch == 0).sum()), "B2": int((design.batch == 1).sum()),
        } if design.batch is not None else None,
        "mutations": {
            "driver_genes": {
                str(s): [{"gene": mspec.names[g], "freq_in_subtype": _r(mspec.driver_in[g]),
                          "freq_elsewhere": _r(mspec.driver_out[g]),
                          "hotspot": "p.{1}{0}{2}".format(*mspec.hotspot[g])}
                         for g in genes]
                for s, genes in enumerate(mspec.drivers)
            },
            "passenger_rate_range": [0.005, 0.03],
            "n_mutations": n_mut,
            "variant_classification_counts": class_counts,
            "wildtype_patients": [ids[i] for i in np.flatnonzero(design.wildtype)],
            "hypermutated_patients": [ids[i] for i in np.flatnonzero(design.hypermutator)],
        },
        "response": {
            "interaction": interaction,
            "arms": model.arms,
            "preferred_arm": {str(s): (None if a is None else model.arms[a])
                              for s, a in enumerate(model.preferred_arm)},
            "logit": {str(s): {a: _r(model.logit[s, j]) for j, a in enumerate(model.arms)}
                      for s in range(k)},
            "probability": {str(s): {a: _r(prob[s, j]) for j, a in enumerate(model.arms)}
                            for s in range(k)},
        },
        "survival": {
            "survival_effect": survival_effect,
            "model": "Weibull proportional hazards",
            "weibull_shape": _WEIBULL_SHAPE,
            "weibull_scale_days": _WEIBULL_SCALE_DAYS,
            "hazard_ratio": {str(s): {a: _r(math.exp(model.log_hr[s, j]))
                                      for j, a in enumerate(model.arms)} for s in range(k)},
            "censoring_rate_target": clin_info["censoring_rate_target"],
            "censoring_rate_observed": clin_info["censoring_rate_observed"],
            "censoring_exponential_rate_per_day": clin_info["censoring_exponential_rate_per_day"],
            "n_events": clin_info["n_events"],
        },
        "clinical": {
            "stage_aggressiveness": [_r(v) for v in model.aggressiveness],
            "stage_probabilities": clin_info["stage_probabilities"],
        },
    }
