"""Datasets for cross-dataset validation of cohortctl's clustering model selection.

Each dataset is ingested once, through the library (``cohortctl.ingest.ingest``), into
``workdir/<name>.cohort`` and reused while its inputs and ingest options are unchanged.
Real datasets are read from the repository's ``sample_data/`` only; simulated ones are
generated with numpy (a fixed seed per dataset) as wide Parquet in ``workdir/<name>/``.

Reference labels (``truth``) and outcomes are read back from the built store, so their
patient IDs are normalised exactly as cohortctl normalises them, and aligned to
``patient_ids``: the patients with genetic or molecular data (those ``cluster`` groups).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cohortctl.errors import CohortError
from cohortctl.ingest import IngestOptions, ingest
from cohortctl.io.readers import TableSpec
from cohortctl.store import Store, sha256_file

log = logging.getLogger("cohortctl.bench")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"

#: Bump to force every store to be rebuilt (changes to generators or options).
BUILD_VERSION = 1


@dataclass
class Dataset:
    """One validation dataset: a built cohort store plus its reference labels and outcomes."""

    name: str
    kind: str  # "real" | "sim"
    shape: str
    store: Path
    truth: np.ndarray | None
    patient_ids: list[str]
    outcomes: dict[str, np.ndarray] = field(default_factory=dict)
    structure: bool = True


@dataclass
class _Recipe:
    """How to build one dataset: files to (generate and) ingest and what to read back."""

    name: str
    kind: str
    shape: str
    opts: Callable[[Path], IngestOptions]  # store path -> ingest options
    truth_column: str | None
    generate: Callable[[Path], None] | None = None  # writes the inputs into workdir/<name>/
    survival: bool = False  # outcomes os_time/os_event from the clinical roles
    outcome_prefix: str = "drug:"
    structure: bool = True


# -- building and reuse ----------------------------------------------------------------
def _spec_files(opts: IngestOptions) -> list[tuple[str, Path]]:
    files = [("clinical", opts.clinical)] if opts.clinical else []
    for kind, specs in (("genetic", opts.genetic), ("molecular", opts.molecular),
                        ("outcome", opts.outcome)):
        files += [(f"{kind}:{s.name}", s.path) for s in specs]
    return files  # type: ignore[return-value]


def _fingerprint(opts: IngestOptions) -> str:
    """Hash of the ingest options and the contents of every input file."""
    doc = {
        "build_version": BUILD_VERSION,
        "files": {k: sha256_file(p) for k, p in _spec_files(opts)},
        "reference": opts.reference,
        "roles": opts.roles,
        "maf_covers_clinical": opts.maf_covers_clinical,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _store_is_valid(store: Path, stamp: Path, fingerprint: str) -> bool:
    """True when ``store`` opens, every table checksum verifies and the inputs are unchanged."""
    try:
        if not stamp.is_file() or json.loads(stamp.read_text()).get("fingerprint") != fingerprint:
            return False
        st = Store.open(store)
        for entry in st.tables:
            st.verify(entry)
        return True
    except (CohortError, OSError, ValueError):
        return False


def _build_store(recipe: _Recipe, workdir: Path) -> Path:
    if recipe.generate is not None:
        (workdir / recipe.name).mkdir(parents=True, exist_ok=True)
        recipe.generate(workdir / recipe.name)
    store = workdir / f"{recipe.name}.cohort"
    stamp = workdir / f"{recipe.name}.cohort.stamp.json"
    opts = recipe.opts(store)
    fingerprint = _fingerprint(opts)
    if _store_is_valid(store, stamp, fingerprint):
        log.info("%s: reusing %s", recipe.name, store)
        return store
    opts.force = True
    ingest(opts)
    stamp.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return store


def _read_back(recipe: _Recipe, store_path: Path) -> Dataset:
    """Patients, truth and outcomes from the built store."""
    st = Store.open(store_path)
    ids: set[str] = set()
    for entry in st.feature_tables():
        ids.update(st.read(entry, ["patient_id"])["patient_id"].to_list())
    patient_ids = sorted(ids)
    index = pl.DataFrame({"patient_id": patient_ids})
    clin = st.clinical()
    truth: np.ndarray | None = None
    outcomes: dict[str, np.ndarray] = {}
    if clin is not None:
        aligned = index.join(clin, on="patient_id", how="left", maintain_order="left")
        if recipe.truth_column:
            truth = np.array(aligned[recipe.truth_column].to_list(), dtype=object)
            if all(isinstance(v, int) for v in truth):
                truth = truth.astype(int)
        if recipe.survival:
            roles = st.roles
            if roles.get("time") and roles.get("event"):
                outcomes["os_time"] = _floats(aligned[roles["time"]])
                outcomes["os_event"] = _floats(aligned[roles["event"]])
    for entry in st.tables:
        if entry["kind"] != "outcome":
            continue
        table = index.join(st.read(entry), on="patient_id", how="left", maintain_order="left")
        for col in table.columns[1:]:
            outcomes[f"{recipe.outcome_prefix}{col}"] = _floats(table[col])
    return Dataset(recipe.name, recipe.kind, recipe.shape, store_path, truth, patient_ids,
                   outcomes, recipe.structure)


def _floats(col: pl.Series) -> np.ndarray:
    """A column as float64 with missing values as NaN."""
    return col.cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy().astype(float)


# -- real datasets ---------------------------------------------------------------------
def _breast(store: Path) -> IngestOptions:
    d = SAMPLE / "breast_tcga"
    # As `make demo`: the whole clinical table (train + test patients) with the train-split
    # molecular tables; only the 150 train patients have features, so only they are clustered.
    return IngestOptions(
        out=store, clinical=d / "clinical.parquet",
        molecular=[TableSpec(m, d / f"{m}_train.parquet") for m in ("mrna", "mirna", "protein")],
        reference=["subtype"],
    )


def _srbct(store: Path) -> IngestOptions:
    d = SAMPLE / "srbct"
    return IngestOptions(out=store, clinical=d / "clinical.parquet",
                         molecular=[TableSpec("expression", d / "expression.parquet")],
                         reference=["diagnosis"])


def _nci60(store: Path) -> IngestOptions:
    d = SAMPLE / "nci60"
    return IngestOptions(out=store, clinical=d / "clinical.parquet",
                         molecular=[TableSpec("abc", d / "abc_transporters.parquet")],
                         outcome=[TableSpec("compounds", d / "compound_activity.parquet")],
                         reference=["tissue"])


def _aml(store: Path) -> IngestOptions:
    d = SAMPLE / "laml_tcga"
    # README tour flags (--clinical, --genetic MAF); time/event are found by column name.
    return IngestOptions(out=store, clinical=d / "clinical.tsv",
                         genetic=[TableSpec("mutations", d / "mutations.maf.gz")],
                         reference=["FAB_classification"])


def _cbio(store: Path) -> IngestOptions:
    d = SAMPLE / "cbioportal_es_0"
    return IngestOptions(
        out=store, clinical=d / "clinical.parquet",
        molecular=[TableSpec(n, d / f"{n}.parquet")
                   for n in ("cna_log2", "methylation", "expression_z")],
        reference=["SUBTYPE"],
    )


# -- simulated datasets ----------------------------------------------------------------
def _labels(rng: np.random.Generator, sizes: list[int]) -> np.ndarray:
    """Group labels 0..k-1 with the given sizes, in random patient order."""
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes))


def _ids(n: int) -> list[str]:
    return [f"S{i + 1:04d}" for i in range(n)]


def _group_shifts(rng: np.random.Generator, labels: np.ndarray, genes: int, signal: int,
                  effect: tuple[float, float]) -> np.ndarray:
    """Patients x genes mean shifts: each group is up or down by ``effect`` SD (uniform in
    the range, random sign) in its own share of ``signal`` randomly placed genes."""
    k = int(labels.max()) + 1
    mu = np.zeros((k, genes))
    chosen = rng.permutation(genes)[:signal]
    for g, block in enumerate(np.array_split(chosen, k)):
        sign = rng.choice([-1.0, 1.0], size=block.size)
        mu[g, block] = sign * rng.uniform(*effect, size=block.size)
    return mu[labels]


def _write_wide(path: Path, ids: list[str], X: np.ndarray, prefix: str,
                dtype: type[pl.DataType] = pl.Float64) -> None:
    cols = {f"{prefix}{j + 1}": X[:, j] for j in range(X.shape[1])}
    df = pl.DataFrame({"patient_id": ids, **cols}).with_columns(pl.exclude("patient_id")
                                                                .cast(dtype))
    df.write_parquet(path, statistics=True)


def _write_clinical(path: Path, ids: list[str], labels: np.ndarray) -> None:
    pl.DataFrame({"patient_id": ids, "truth": labels.astype(np.int64)}).write_parquet(path)


def _sim_gaussian(seed: int, sizes: list[int], genes: int, signal: int,
                  effect: tuple[float, float], programme: tuple[int, float] | None = None
                  ) -> Callable[[Path], None]:
    """Generator: standard-normal genes + group shifts (+ an optional continuous
    programme: a latent factor with loadings of about ``scale`` SD on ``n`` genes)."""

    def generate(d: Path) -> None:
        rng = np.random.default_rng(seed)
        labels = _labels(rng, sizes)
        n = labels.size
        X = rng.standard_normal((n, genes))
        if signal:
            X += _group_shifts(rng, labels, genes, signal, effect)
        if programme is not None:
            width, scale = programme
            factor = rng.standard_normal(n)
            genes_p = rng.permutation(genes)[:width]
            loadings = rng.choice([-1.0, 1.0], width) * rng.uniform(0.5 * scale, 1.5 * scale,
                                                                      width)
            X[:, genes_p] += np.outer(factor, loadings)
        ids = _ids(n)
        _write_wide(d / "expression.parquet", ids, X, "g")
        _write_clinical(d / "clinical.parquet", ids, labels)

    return generate


def _sim_binary(d: Path) -> None:
    """250 patients, 70 binary genes: 4 groups from driver combinations, passengers at
    2-10 %; 10 drug responses, 6 of them with group-dependent means."""
    rng = np.random.default_rng(8)
    labels = _labels(rng, [63, 63, 62, 62])
    n, genes = labels.size, 70
    drivers = {0: [0, 1], 1: [2], 2: [3, 4], 3: [1, 5]}  # group -> driver gene indices
    p = np.tile(rng.uniform(0.02, 0.10, genes), (4, 1))  # group x gene rates
    p[:, :6] = 0.05
    for g, genes_g in drivers.items():
        p[g, genes_g] = rng.uniform(0.6, 0.8, len(genes_g))
    X = (rng.random((n, genes)) < p[labels]).astype(np.int8)
    ids = _ids(n)
    names = [f"DRV{j + 1}" for j in range(6)] + [f"PAS{j + 1}" for j in range(genes - 6)]
    pl.DataFrame({"patient_id": ids, **{nm: X[:, j] for j, nm in enumerate(names)}}
                 ).write_parquet(d / "mutations.parquet", statistics=True)
    _write_clinical(d / "clinical.parquet", ids, labels)
    mu = np.zeros((4, 10))
    mu[:, :6] = rng.choice([-1.0, 1.0], (4, 6)) * rng.uniform(0.5, 1.0, (4, 6))
    response = mu[labels] + rng.standard_normal((n, 10))
    _write_wide(d / "response.parquet", ids, response, "drug")


def _sim_binary_noise(d: Path) -> None:
    """300 patients, 80 binary genes mutated independently at 2-30 %: no structure; 10 drug
    responses unrelated to the mutations."""
    rng = np.random.default_rng(12)
    n, genes = 300, 80
    X = (rng.random((n, genes)) < rng.uniform(0.02, 0.30, genes)).astype(np.int8)
    ids = _ids(n)
    pl.DataFrame({"patient_id": ids, **{f"GENE{j + 1}": X[:, j] for j in range(genes)}}
                 ).write_parquet(d / "mutations.parquet", statistics=True)
    _write_clinical(d / "clinical.parquet", ids, np.zeros(n, dtype=int))
    _write_wide(d / "response.parquet", ids, rng.standard_normal((n, 10)), "drug")


def _sim_opts(genetic: bool = False) -> Callable[[Path], IngestOptions]:
    """Ingest options for a simulated dataset's files in ``workdir/<name>/``."""

    def opts(store: Path) -> IngestOptions:
        d = _sim_dir(store)
        o = IngestOptions(out=store, clinical=d / "clinical.parquet", reference=["truth"])
        if genetic:
            o.genetic = [TableSpec("mutations", d / "mutations.parquet")]
            o.outcome = [TableSpec("response", d / "response.parquet")]
        else:
            o.molecular = [TableSpec("expression", d / "expression.parquet")]
        return o

    return opts


def _sim_dir(store: Path) -> Path:
    return store.parent / store.name.removesuffix(".cohort")


def _recipes() -> list[_Recipe]:
    gauss = _sim_opts()
    return [
        _Recipe("breast", "real", "150 x 3 omics (mRNA 200, miRNA 184, protein 142)",
                _breast, "subtype"),
        _Recipe("srbct", "real", "63 x 2,308 genes, one modality", _srbct, "diagnosis"),
        _Recipe("nci60", "real", "60 cell lines x 48 ABC transporters; 1,429 drug outcomes",
                _nci60, "tissue"),
        _Recipe("aml", "real", "mutation-only 193 x genes (MAF); survival", _aml,
                "FAB_classification", survival=True),
        _Recipe("cbio_es0", "real", "cBioPortal es_0: CNA 7 / methylation 8 / z-expr 5 genes, "
                "partial overlap", _cbio, "SUBTYPE"),
        _Recipe("sim_strong", "sim", "300 x 1,000 genes, 4 equal groups, 100 signal genes",
                gauss, "truth", _sim_gaussian(6, [75] * 4, 1000, 100, (1.2, 1.8))),
        _Recipe("sim_programme", "sim", "400 x 2,000 genes, 3 weak groups (60 genes) + strong "
                "continuous programme (500 genes)", gauss, "truth",
                _sim_gaussian(7, [134, 133, 133], 2000, 60, (0.8, 1.2), programme=(500, 2.0))),
        _Recipe("sim_binary", "sim", "mutation-only 250 x 70 binary genes, 4 groups; "
                "10 drug outcomes", _sim_opts(genetic=True), "truth", _sim_binary),
        _Recipe("sim_binary_noise", "sim", "mutation-only 300 x 80 independent binary genes "
                "(2-30 %), no structure", _sim_opts(genetic=True), "truth", _sim_binary_noise,
                structure=False),
        _Recipe("sim_small", "sim", "60 x 3,000 genes, 3 groups, 150 signal genes", gauss,
                "truth", _sim_gaussian(9, [20] * 3, 3000, 150, (0.8, 1.4))),
        _Recipe("sim_unbalanced", "sim", "400 x 1,500 genes, groups 240/100/40/20", gauss,
                "truth", _sim_gaussian(10, [240, 100, 40, 20], 1500, 160, (0.8, 1.4))),
        _Recipe("sim_noise", "sim", "500 x 2,000 independent N(0,1) genes, no structure",
                gauss, "truth", _sim_gaussian(11, [500], 2000, 0, (0.0, 0.0)),
                structure=False),
    ]


NAMES: tuple[str, ...] = tuple(r.name for r in _recipes())


def build_all(workdir: Path, only: list[str] | None = None) -> list[Dataset]:
    """Build (or reuse) every dataset's store under ``workdir``; ``only`` selects by name."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recipes = _recipes()
    if only is not None:
        unknown = sorted(set(only) - set(NAMES))
        if unknown:
            raise ValueError(f"unknown dataset(s) {unknown}; known: {', '.join(NAMES)}")
        recipes = [r for r in recipes if r.name in only]
    out: list[Dataset] = []
    for recipe in recipes:
        store = _build_store(recipe, workdir)
        out.append(_read_back(recipe, store))
    return out


def summary(ds: Dataset) -> dict[str, Any]:
    """Patients, features per table and truth counts of one dataset (for logs)."""
    st = Store.open(ds.store)
    feats = {f"{e['kind']}:{e['name']}": (e["rows"], e["columns"]) for e in st.feature_tables()}
    counts: dict[str, int] = {}
    if ds.truth is not None:
        for v in ds.truth:
            counts[str(v)] = counts.get(str(v), 0) + 1
    return {"name": ds.name, "kind": ds.kind, "patients": len(ds.patient_ids),
            "tables": feats, "truth": counts, "outcomes": len(ds.outcomes),
            "structure": ds.structure}


if __name__ == "__main__":
    import sys
    import tempfile

    logging.basicConfig(level=logging.WARNING)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    for dataset in build_all(target, sys.argv[2:] or None):
        print(json.dumps(summary(dataset)))
