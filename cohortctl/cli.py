"""The ``cohortctl`` command line: a thin layer over the library.

Data (paths, JSON summaries) go to stdout; logs and progress go to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cohortctl import __version__
from cohortctl.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TABLE,
    CohortError,
    InputMissingError,
    UsageError,
    install_interrupt_handler,
    interrupted,
    raise_if_interrupted,
)

EXIT_HELP = "Exit statuses: " + "; ".join(f"{k} {v}" for k, v in sorted(EXIT_TABLE.items()))

app = typer.Typer(
    name="cohortctl",
    help=(
        "Stratify patient cohorts: ingest tables into a store, cluster patients into "
        "groups, report what distinguishes them and how they fared.\n\n"
        "Example: cohortctl ingest --molecular mrna=mrna.parquet --clinical clin.tsv -o cohort"
        " | cohortctl cluster | cohortctl report -o report.html\n\n" + EXIT_HELP
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

log = logging.getLogger("cohortctl")
_STATE: dict[str, Any] = {"debug": False}


def _setup_logging(verbose: bool, quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    console = Console(stderr=True, soft_wrap=True)  # one log record = one line
    handler = RichHandler(console=console, show_time=False, show_path=False,
                          markup=False, rich_tracebacks=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("numba").setLevel(logging.WARNING)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cohortctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="More log output.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
) -> None:
    _STATE["debug"] = debug
    _setup_logging(verbose, quiet)
    _STATE["quiet"] = quiet


def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """Map every failure inside a command to one stderr line and a documented status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
            raise_if_interrupted()  # a Ctrl-C that a library's finaliser swallowed
        except (typer.Exit, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # includes polars' PanicException (not an Exception)
            if isinstance(exc, KeyboardInterrupt) or interrupted():
                # Whatever failed after a Ctrl-C (a worker pool whose processes got the
                # same signal, say) failed because of it.
                _error("interrupted")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            if isinstance(exc, CohortError):
                _error(str(exc))
                raise typer.Exit(exc.exit_code) from None
            if isinstance(exc, BrokenPipeError):
                raise typer.Exit(0) from None
            if isinstance(exc, MemoryError):
                _error("out of memory (try fewer features: --top-features, or fewer --bootstrap)")
                raise typer.Exit(EXIT_INTERNAL) from None
            if _STATE["debug"]:
                raise
            _error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _emit(path: Path, summary: dict[str, Any], as_json: bool) -> None:
    """The one line on stdout that lets commands chain in a pipe."""
    if as_json:
        typer.echo(json.dumps({"path": str(path), **summary}, sort_keys=True, default=str))
    else:
        typer.echo(str(path))


def _store_arg(store: str | None) -> Path:
    """STORE argument, or read from stdin when '-' or omitted and stdin is a pipe."""
    if store not in (None, "-"):
        return Path(store)  # type: ignore[arg-type]
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("missing STORE (give a path, or pipe one in from the previous command)")
    lines = [ln.strip() for ln in sys.stdin.read().splitlines() if ln.strip()]
    if not lines:
        raise InputMissingError("no store path on stdin (did the previous command fail?)")
    last = lines[-1]
    if last.startswith("{"):
        try:
            last = json.loads(last)["path"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError("stdin: JSON line without a 'path' field") from None
    return Path(last)


class _Progress:
    """Stage messages of a long command on stderr: a live status line on a terminal (rich;
    honours NO_COLOR), otherwise one log line per stage ("bootstrap", not every
    "bootstrap 7/30"), nothing with -q. Used as ``with _Progress() as progress:``."""

    _COUNTER = re.compile(r"\s*(?:\d+\s*/\s*\d+|=\s*\d+)$")

    def __init__(self) -> None:
        self.quiet = bool(_STATE.get("quiet"))
        self._status: Any = None
        self._stage: str | None = None

    def __enter__(self) -> _Progress:
        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console

            self._status = Console(stderr=True).status("starting")
            self._status.start()
        return self

    def __call__(self, msg: str) -> None:
        log.debug(msg)
        if self.quiet:
            return
        if self._status is not None:
            self._status.update(msg)
            return
        stage = self._COUNTER.sub("", msg)
        if stage != self._stage:
            self._stage = stage
            log.info("%s", stage)

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()


# -- ingest ---------------------------------------------------------------------------
@app.command(epilog="Examples:\n\n  cohortctl ingest -o cohort --clinical clinical.tsv "
             "--genetic mutations.maf.gz --molecular mrna=mrna.parquet\n\n"
             "  cohortctl ingest -o cohort --clinical clinical.tsv --molecular mrna.parquet "
             "--identifier-columns site_code --allow-columns tumour_description "
             "--pseudonymize\n\n"
             "Direct identifiers (other ID columns, names, MRN, dates of birth, addresses, "
             "phone/email, free text) are dropped from every store; the classification is "
             "in manifest.json under \"columns\".\n\n" + EXIT_HELP)
@_guarded
def ingest(
    out: Annotated[Path, typer.Option("-o", "--out", help="Store directory to create.")],
    clinical: Annotated[Path | None, typer.Option(help="Clinical table (one row per patient).")] = None,
    genetic: Annotated[list[str] | None, typer.Option(help="[NAME=]PATH: MAF or 0/1 matrix; repeatable.")] = None,
    molecular: Annotated[list[str] | None, typer.Option(help="[NAME=]PATH: continuous matrix; repeatable.")] = None,
    outcome: Annotated[list[str] | None, typer.Option(help="[NAME=]PATH: e.g. drug sensitivity; never clustered.")] = None,
    id_column: Annotated[str | None, typer.Option(help="Patient ID column (default: patient_id or a conventional name).")] = None,
    time: Annotated[str | None, typer.Option("--time", help="Survival time column.")] = None,
    event: Annotated[str | None, typer.Option("--event", help="Survival event column (0/1/true/false).")] = None,
    treatment: Annotated[str | None, typer.Option(help="Treatment column.")] = None,
    response: Annotated[str | None, typer.Option(help="Response column.")] = None,
    reference: Annotated[list[str] | None, typer.Option(help="Reference labelling column (only for judging; never clustered).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="parquet|csv|tsv|maf (default: from the extension).")] = None,
    layout: Annotated[str, typer.Option(help="auto|wide|long.")] = "auto",
    tcga_barcodes: Annotated[bool | None, typer.Option("--tcga-barcodes/--no-tcga-barcodes", help="Cut TCGA barcodes to the patient (default: detect).")] = None,
    maf_classes: Annotated[str | None, typer.Option(help="Comma-separated Variant_Classification values to keep (default: protein-altering).")] = None,
    maf_covers_clinical: Annotated[bool, typer.Option(help="Every clinical patient was sequenced: absent from the MAF = wild-type.")] = False,
    pseudonymize: Annotated[bool, typer.Option(help="Replace IDs by HMAC-SHA-256 pseudonyms (key: COHORTCTL_PSEUDONYM_KEY or --key-file).")] = False,
    key_file: Annotated[Path | None, typer.Option(help="File holding the pseudonymisation key.")] = None,
    identifier_columns: Annotated[str | None, typer.Option(help="COL,...: also drop these columns as direct identifiers (e.g. --identifier-columns site_code,visit_label).")] = None,
    allow_columns: Annotated[str | None, typer.Option(help="COL,...: keep these columns although detected as identifiers (you take responsibility; e.g. --allow-columns tumour_description).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the path.")] = False,
) -> None:
    """Validate genetic, molecular, clinical and outcome tables into a cohort store.

    Columns that directly identify a patient are dropped (see --identifier-columns,
    --allow-columns); with --pseudonymize patient IDs become keyed pseudonyms.
    """
    from cohortctl.ingest import IngestOptions, read_key
    from cohortctl.ingest import ingest as run_ingest
    from cohortctl.io.readers import TableSpec

    if layout not in ("auto", "wide", "long"):
        raise UsageError("--layout must be auto, wide or long")
    opts = IngestOptions(
        out=out, clinical=clinical,
        genetic=[TableSpec.parse(g) for g in genetic or []],
        molecular=[TableSpec.parse(m) for m in molecular or []],
        outcome=[TableSpec.parse(o) for o in outcome or []],
        id_column=id_column,
        roles={"time": time, "event": event, "treatment": treatment, "response": response},
        reference=list(reference or []), fmt=fmt, layout=layout, tcga_barcodes=tcga_barcodes,
        maf_classes=[c.strip() for c in maf_classes.split(",")] if maf_classes else None,
        maf_covers_clinical=maf_covers_clinical,
        pseudonym_key=read_key(key_file) if pseudonymize else None, force=force,
        identifier_columns=_split(identifier_columns) or [],
        allow_columns=_split(allow_columns) or [],
    )
    manifest = run_ingest(opts)
    log.info("ingested %d tables, %d patients into %s", len(manifest["tables"]),
             manifest["patients"]["total"], out)
    dropped = [{"table": name, "column": col, "reason": v["reason"]}
               for name, cols in manifest.get("columns", {}).items()
               for col, v in cols.items() if v["sensitivity"] == "identifier"]
    _emit(out, {"patients": manifest["patients"], "roles": manifest["roles"],
                "pseudonymized": manifest["pseudonymized"],
                "identifier_columns_dropped": dropped,
                "tables": [{k: t[k] for k in ("name", "kind", "rows", "columns")}
                           for t in manifest["tables"]]}, as_json)


# -- cluster --------------------------------------------------------------------------
@app.command(epilog="Examples:\n\n  cohortctl cluster cohort --seed 0\n\n"
             "  cohortctl cluster cohort --method kmeans --k-range 2..6 --json\n\n"
             "  cohortctl cluster cohort --modalities mrna --component-weight equal\n\n"
             "  cohortctl cluster cohort --max-groups 5 --min-group-fraction 0.05\n\n"
             "  cohortctl ingest ... -o cohort | cohortctl cluster | cohortctl report -o r.html"
             "\n\n" + EXIT_HELP)
@_guarded
def cluster(
    store: Annotated[str | None, typer.Argument(help="Store path, or '-'/omitted to read it from stdin.")] = None,
    modalities: Annotated[str | None, typer.Option(help="Comma-separated tables to cluster on (default: all genetic+molecular).")] = None,
    with_clinical: Annotated[str | None, typer.Option(help="Comma-separated clinical columns to add as inputs.")] = None,
    method: Annotated[str, typer.Option(help="auto|hdbscan|kmeans|ward|spectral|snf.")] = "auto",
    k: Annotated[int | None, typer.Option("--k", help="Fixed number of clusters (K-based methods).")] = None,
    k_range: Annotated[str, typer.Option(help="K values to try, e.g. 2..8.")] = "2..8",
    k_criterion: Annotated[str, typer.Option(help="silhouette|pac: how K is chosen.")] = "silhouette",
    min_cluster_size: Annotated[int | None, typer.Option(help="HDBSCAN minimum cluster size (default: scanned from cohort size).")] = None,
    max_groups: Annotated[int, typer.Option(help="auto/hdbscan: most groups a chosen partition may have.")] = 8,
    min_group_fraction: Annotated[float, typer.Option(help="auto/hdbscan: smallest group allowed, as a fraction of the cohort (never below 5 patients).")] = 0.03,
    n_neighbors: Annotated[int, typer.Option(help="UMAP neighbours.")] = 15,
    top_features: Annotated[int, typer.Option(help="Most variable features kept per molecular table.")] = 2000,
    max_missing: Annotated[float, typer.Option(help="Drop features missing in more than this fraction.")] = 0.2,
    min_mutated: Annotated[int | None, typer.Option(help="Genes mutated in fewer patients are dropped (default max(3, 1%)).")] = None,
    components: Annotated[str, typer.Option(help="PCA components per table: 'noise' (those above a permutation noise floor) or 'variance' (up to 80% of the variance; keeps structure carried by single features).")] = "noise",
    component_weight: Annotated[str, typer.Option(help="How PCA components are weighted within a table: 'variance' (as PCA gives them), 'equal' (every kept component the same variance: groups that differ along weaker axes than a dominant continuous programme are not drowned) or 'auto' (auto/hdbscan methods: both compete, the more bootstrap-stable wins; K methods: variance).")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed: same inputs + seed = same output.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Subsample re-clusterings for stability.")] = 30,
    assign_noise: Annotated[bool, typer.Option(help="Attach unassigned patients to their nearest cluster.")] = False,
    run: Annotated[str | None, typer.Option(help="Run name (default: timestamp-method-seed).")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads for numeric libraries (results do not depend on it).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the path.")] = False,
) -> None:
    """Build feature matrices, integrate modalities and find patient groups."""
    from cohortctl.cluster.run import ClusterOptions, parse_k_range
    from cohortctl.cluster.run import cluster as run_cluster
    from cohortctl.features import FeatureSettings
    from cohortctl.store import Store

    if k_criterion not in ("silhouette", "pac"):
        raise UsageError("--k-criterion must be silhouette or pac")
    if not 0.0 <= max_missing < 1.0:
        raise UsageError("--max-missing must be in [0, 1)")
    if top_features < 1 or n_neighbors < 2:
        raise UsageError("--top-features must be >= 1 and --n-neighbors >= 2")
    if components not in ("noise", "variance"):
        raise UsageError("--components must be noise or variance")
    if component_weight not in ("auto", "variance", "equal"):
        raise UsageError("--component-weight must be auto, variance or equal")
    opts = ClusterOptions(
        modalities=_split(modalities), with_clinical=_split(with_clinical) or [],
        method=method, k=k, k_range=parse_k_range(k_range), k_criterion=k_criterion,
        min_cluster_size=min_cluster_size, max_groups=max_groups,
        min_group_fraction=min_group_fraction, n_neighbors=n_neighbors, seed=seed,
        bootstrap=bootstrap, assign_noise=assign_noise, run=run, threads=threads,
        features=FeatureSettings(max_missing=max_missing, top_features=top_features,
                                 min_mutated=min_mutated, components=components,
                                 component_weight=component_weight),
    )
    st = Store.open(_store_arg(store))
    with _Progress() as progress:
        path = run_cluster(st, opts, progress=progress)
    metrics = json.loads((path / "metrics.json").read_text())
    log.info("%d clusters (%s), %d unassigned -> %s", metrics["n_clusters"],
             metrics["cluster_sizes"], metrics["unassigned"], path)
    selection = (metrics.get("selected") or {}).get("selection") or {}
    if selection and not selection.get("structure", True):
        log.warning("no stable structure: %s; every patient is in one group",
                    selection.get("reason"))
    elif selection and not selection.get("decisive", True):
        log.warning("the choice of %s groups is not decisive (margin %s in %s over the "
                    "runner-up); compare seeds before relying on it", metrics["n_clusters"],
                    selection.get("margin"), selection.get("ranked_by", "score"))
    _emit(st.root, {"run": path.name, "run_path": str(path),
                    **{k: metrics[k] for k in ("n_patients", "n_clusters", "unassigned",
                                               "silhouette", "stability")},
                    "structure": selection.get("structure", True),
                    "selection_margin": selection.get("margin")}, as_json)


def _split(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


# -- report ---------------------------------------------------------------------------
@app.command(epilog="Examples:\n\n  cohortctl report cohort -o report.html\n\n"
             "  cohortctl report cohort --format md -o - \n\n"
             "  cohortctl report cohort --format json -o report.json --tables tables/\n\n"
             "  cohortctl report cohort --disclosure strict -o release.html\n\n" + EXIT_HELP)
@_guarded
def report(
    store: Annotated[str | None, typer.Argument(help="Store path, or '-'/omitted to read it from stdin.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Report file ('-' for stdout with md/json).")] = Path("report.html"),
    run: Annotated[str, typer.Option(help="Run name or 'latest'.")] = "latest",
    fmt: Annotated[str | None, typer.Option("--format", help="html|json|md (default: from the extension of -o).")] = None,
    tables: Annotated[Path | None, typer.Option(help="Also write every table as TSV+Parquet into this new directory.")] = None,
    min_cell: Annotated[int, typer.Option(help="Small-cell threshold: counts below it are suppressed.")] = 5,
    disclosure: Annotated[str, typer.Option(help="Disclosure profile: 'standard' (exact counts) or 'strict' (every published count rounded to a multiple of 5; blunts differencing of two releases).")] = "standard",
    include_ids: Annotated[bool, typer.Option(help="Include patient identifiers (off by default).")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing report file and a --tables directory cohortctl wrote (never any other directory).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the path.")] = False,
) -> None:
    """Characterise the groups of a run and write an HTML, JSON or Markdown report."""
    from cohortctl.report.build import resolve_format, write_report
    from cohortctl.store import Store

    resolve_format(out, fmt)  # a usage error before reading anything
    if min_cell < 1:
        raise UsageError("--min-cell must be >= 1")
    if disclosure not in ("standard", "strict"):
        raise UsageError(f"--disclosure must be 'standard' or 'strict', got {disclosure!r}")
    st = Store.open(_store_arg(store))
    with _Progress() as progress:
        summary = write_report(st, run=run, out=out, fmt=fmt, tables_dir=tables,
                               min_cell=min_cell, include_ids=include_ids, force=force,
                               profile=disclosure, progress=progress)
    if str(out) != "-":
        _emit(out, summary, as_json)


# -- assign / twins -----------------------------------------------------------------------
@app.command(epilog="Examples:\n\n  cohortctl assign cohort --molecular mrna=new_mrna.parquet "
             "--molecular mirna=new_mirna.parquet -o new_assignments.parquet\n\n"
             "  cohortctl assign cohort --run 20261128-101500-auto-s0 --genetic mutations=new.maf "
             "-o placed.parquet --json\n\n"
             "NAME must be the name of a block of the run (see its params.json).\n\n" + EXIT_HELP)
@_guarded
def assign(
    store: Annotated[str | None, typer.Argument(help="Store path, or '-'/omitted to read it from stdin.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output Parquet file.")] = Path("assignments.parquet"),
    run: Annotated[str, typer.Option(help="Run name or 'latest'.")] = "latest",
    molecular: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a molecular block; repeatable.")] = None,
    genetic: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a genetic block (MAF or 0/1); repeatable.")] = None,
    clinical: Annotated[Path | None, typer.Option(help="Clinical table (needed when the run used --with-clinical).")] = None,
    id_column: Annotated[str | None, typer.Option(help="Patient ID column.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="parquet|csv|tsv|maf.")] = None,
    layout: Annotated[str, typer.Option(help="auto|wide|long.")] = "auto",
    tcga_barcodes: Annotated[bool | None, typer.Option("--tcga-barcodes/--no-tcga-barcodes", help="Cut TCGA barcodes (default: as at ingest).")] = None,
    maf_classes: Annotated[str | None, typer.Option(help="Variant classes to keep (default: as at ingest).")] = None,
    maf_covers_clinical: Annotated[bool, typer.Option(help="Clinical patients absent from the MAF are wild-type.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the path.")] = False,
) -> None:
    """Place new patients into an existing run's groups without refitting."""
    from cohortctl.assign import assign as assign_patients

    if not molecular and not genetic:
        raise UsageError("give at least one --molecular or --genetic table")
    summary = assign_patients(
        _store_arg(store), run=run, molecular=molecular or [], genetic=genetic or [],
        clinical=clinical, out=out, force=force, id_column=id_column, fmt=fmt, layout=layout,
        tcga_barcodes=tcga_barcodes, maf_classes=_split(maf_classes),
        maf_covers_clinical=maf_covers_clinical)
    log.info("%s patients placed, %s novel -> %s", summary.get("placed"), summary.get("novel"), out)
    _emit(out, summary, as_json)


@app.command(epilog="Examples (after make demo):\n\n"
             "  cohortctl twins out/demo/breast.cohort TCGA-A0FJ -k 10\n\n"
             "  cohortctl twins out/demo/breast.cohort TCGA-A0FJ -k 5 --include-ids --json\n\n"
             "Without --include-ids only ranks, distances, clusters and outcome summaries over "
             "the k twins are shown, and k must be a multiple of --min-cell.\n\n" + EXIT_HELP)
@_guarded
def twins(
    store: Annotated[str, typer.Argument(help="Store path.")],
    patient_id: Annotated[str, typer.Argument(help="A patient of the store.")],
    run: Annotated[str, typer.Option(help="Run name or 'latest'.")] = "latest",
    k: Annotated[int, typer.Option("-k", "--k", help="Number of twins.")] = 10,
    min_cell: Annotated[int, typer.Option(help="Small-cell threshold.")] = 5,
    include_ids: Annotated[bool, typer.Option(help="Show identifiers and per-twin rows.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every number as JSON instead of the summary.")] = False,
) -> None:
    """The most similar patients of the cohort and how they fared (privacy rules apply)."""
    from cohortctl.twins import twins as find_twins

    result = find_twins(Path(store), patient_id, run=run, k=k, include_ids=include_ids,
                        min_cell=min_cell)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True, default=str))
    else:
        typer.echo(twins_summary(patient_id, result))


def twins_summary(patient_id: str, result: dict[str, Any]) -> str:
    """A few lines a person reads: who the twins are (by cluster) and how they fared."""
    q = result.get("query") or {}
    dist = result.get("distance") or {}
    lines = [f"{patient_id} ({q.get('cluster_name', '?')}, run {result.get('run')}): "
             f"{result.get('k')} nearest patients, distance "
             f"{dist.get('min', 0):.2f}-{dist.get('max', 0):.2f}."]
    by = ", ".join(f"{c['name']}: {c['n'] if c.get('n') is not None else '*'}"
                   for c in result.get("clusters") or [])
    lines.append(f"By cluster: {by}.")
    if result.get("treatment"):
        lines.append("Treatment: " + ", ".join(
            f"{t['treatment']}: {'*' if t.get('n_suppressed') else t['n']}"
            for t in result["treatment"]) + ".")
    resp = result.get("response")
    if resp:
        rate = resp.get("response_rate")
        lines.append("Response: " + (f"{100 * rate:.0f}% of {resp['n_evaluated']} evaluated"
                                     if rate is not None else "withheld (small counts)") + ".")
    surv = result.get("survival")
    if surv:
        median = ("withheld" if surv.get("median_withheld") else
                  "not reached" if not surv.get("median_reached") else f"{surv['median']:g}")
        lines.append(f"Survival: median {median}.")
    lines += list(result.get("notes") or [])
    if result.get("twins") and result.get("include_ids"):
        lines.append("Twins (rank, id, cluster, distance): " + "; ".join(
            f"{t['rank']} {t.get('patient_id', '')} {t['cluster_name']} {t['distance']:.2f}"
            for t in result["twins"]))
    return "\n".join(lines)


# -- simulate ---------------------------------------------------------------------------
@app.command(epilog="Examples:\n\n  cohortctl simulate -o sim --patients 500 --subtypes 4\n\n"
             "  cohortctl simulate -o big --patients 100000 --genes 20000 --seed 1\n\n" + EXIT_HELP)
@_guarded
def simulate(
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory.")],
    patients: Annotated[int, typer.Option(help="Number of patients.")] = 500,
    subtypes: Annotated[int, typer.Option(help="Planted subtypes.")] = 4,
    genes: Annotated[int, typer.Option(help="Expression genes.")] = 2000,
    mutation_genes: Annotated[int, typer.Option(help="Genes in the mutation table.")] = 200,
    treatments: Annotated[int, typer.Option(help="Treatment arms.")] = 2,
    missing_modality_rate: Annotated[float, typer.Option(help="Fraction lacking a modality.")] = 0.1,
    noise: Annotated[float, typer.Option(help="Noise scale (1 = default difficulty).")] = 1.0,
    batch_effect: Annotated[float, typer.Option(help="Batch effect size (0 = none).")] = 0.0,
    no_interaction: Annotated[bool, typer.Option(help="Additive response (negative control).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed (same seed -> identical files).")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="parquet|csv.")] = "parquet",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the path.")] = False,
) -> None:
    """Write a synthetic cohort with planted subtypes, treatment interaction and survival."""
    from cohortctl.simulate import simulate_cohort

    try:
        res = simulate_cohort(out, patients=patients, subtypes=subtypes, genes=genes,
                              mutation_genes=mutation_genes, treatments=treatments,
                              missing_modality_rate=missing_modality_rate, noise=noise, seed=seed,
                              fmt=fmt, batch_effect=batch_effect,
                              interaction=not no_interaction)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        from cohortctl.errors import OutputError

        raise OutputError(f"{out}: cannot write ({exc.strerror or exc})") from None
    _emit(out, res.to_dict(), as_json)


# -- entry point ------------------------------------------------------------------------
GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose", "--debug")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """``cohortctl report STORE -q`` as ``cohortctl -q report STORE``: the global flags are
    accepted anywhere (click refused them after the subcommand with a multi-line error).
    Nothing after ``--`` moves."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in argv[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + argv[end:]


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (usage errors: 2, from typer)."""
    restore = install_interrupt_handler()
    argv = hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=argv, prog_name="cohortctl")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    finally:
        restore()
    return 0


def run() -> None:
    """Console-script entry: run, then exit without tearing down every imported module.

    Interpreter finalisation of the scientific stack (numba, scipy, sklearn, umap) costs
    0.6-0.7 s per invocation; exit handlers still run and streams are flushed first.
    """
    code = main()
    import atexit

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def _error(message: str) -> None:
    text = " ".join(str(message).split())
    sys.stderr.write(f"cohortctl: error: {text}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
