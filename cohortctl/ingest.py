"""``cohortctl ingest``: user tables -> one validated, versioned cohort store.

The store is written atomically (see :mod:`cohortctl.store`); input files are only read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cohortctl import __version__
from cohortctl.errors import InputDataError, InputMissingError, OutputError, UsageError
from cohortctl.io import readers
from cohortctl.io.readers import TableSpec
from cohortctl.store import (
    MANIFEST,
    STORE_FORMAT,
    atomic_directory,
    fsync_tree,
    is_store,
    sha256_file,
    write_json,
    write_parquet,
)
from cohortctl.vocabulary import event_code

log = logging.getLogger("cohortctl")

#: Clinical columns recognised by conventional name when no flag declares the role.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "time": ("os_time", "os_days", "os.time", "os_months", "overall_survival_days",
             "overall_survival_time", "survival_time", "time", "days_to_last_followup",
             "days_to_death_or_last_followup", "pfs_time"),
    "event": ("os_event", "os", "os_status", "overall_survival_status", "event", "status",
              "death", "dead", "pfs_event"),
    "treatment": ("treatment", "treatment_arm", "arm", "therapy", "regimen"),
    "response": ("response", "responder", "best_response", "response_status"),
}
ROLES = tuple(ROLE_NAMES)

#: Fewest patients a genetic/molecular table may have (a modality needs 3 to be scaled
#: and reduced), and fewest patients with any such data (``cohortctl cluster`` needs 6).
MIN_TABLE_PATIENTS = 3
MIN_COHORT_PATIENTS = 6

#: Streamed Parquet tables up to this many cells are sorted by patient in memory; larger
#: ones keep input order, except in a pseudonymised store (sorted in passes instead).
STREAM_SORT_MAX_CELLS = 400_000_000



@dataclass
class IngestOptions:
    """Everything ``ingest`` needs, independent of the CLI."""

    out: Path
    clinical: Path | None = None
    genetic: list[TableSpec] = field(default_factory=list)
    molecular: list[TableSpec] = field(default_factory=list)
    outcome: list[TableSpec] = field(default_factory=list)
    id_column: str | None = None
    roles: dict[str, str | None] = field(default_factory=dict)
    reference: list[str] = field(default_factory=list)
    fmt: str | None = None
    layout: str = "auto"  # auto | wide | long
    tcga_barcodes: bool | None = None
    maf_classes: list[str] | None = None
    maf_covers_clinical: bool = False
    pseudonym_key: bytes | None = None
    force: bool = False
    #: Columns forced to ``identifier`` (dropped) / ``analysable`` (kept), any table.
    identifier_columns: list[str] = field(default_factory=list)
    allow_columns: list[str] = field(default_factory=list)


@dataclass
class _Table:
    name: str
    kind: str
    source: Path
    frame: pl.DataFrame | None  # None: streamed parquet (written later)
    info: dict[str, Any]
    stream: dict[str, Any] | None = None
    #: Column -> {"sensitivity", "reason"} (see :func:`classify_columns`).
    sensitivity: dict[str, dict[str, str]] | None = None
    #: The input's patient-ID column, when known (stored as ``patient_id``).
    id_source: str | None = None

    @property
    def ids(self) -> pl.Series:
        """The table's patient IDs (of the frame, or of the streamed table's plan)."""
        return self.frame["patient_id"] if self.frame is not None else self.stream["ids"]  # type: ignore[index]

    @property
    def columns(self) -> list[str]:
        """Stored columns besides ``patient_id``."""
        if self.frame is not None:
            return [c for c in self.frame.columns if c != "patient_id"]
        return list(self.stream["features"])  # type: ignore[index]


def ingest(opts: IngestOptions) -> dict[str, Any]:
    """Read, validate and store every table; returns the manifest."""
    if not opts.genetic and not opts.molecular:
        raise UsageError("at least one --genetic or --molecular table is required")
    if opts.clinical is None:
        flags = [f"--{r}" for r in ROLES if opts.roles.get(r)]
        flags += ["--reference"] if opts.reference else []
        if flags:
            raise UsageError(f"{', '.join(flags)} name clinical columns but no --clinical is given")
    _check_distinct_names(opts)
    if os.path.lexists(opts.out) and not opts.force:
        # Before reading anything: re-running a command used to print the inputs' warnings
        # and only then fail on the existing output.
        raise OutputError(f"{opts.out}: already exists (use --force to replace it)")
    tables: list[_Table] = []
    clinical_roles: dict[str, Any] = {}
    if opts.clinical is not None:
        clin, clinical_roles = _read_clinical(opts)
        tables.append(clin)
    for spec in opts.genetic:
        tables.append(_read_genetic(spec, opts, tables))
    for spec in opts.molecular:
        tables.append(_read_molecular(spec, opts))
    for spec in opts.outcome:
        tables.append(_read_outcome(spec, opts))
    _check_lookalike_ids(tables)
    _drop_identifiers(tables, clinical_roles, opts)  # before pseudonymising: needs raw IDs
    if opts.pseudonym_key is not None:
        _pseudonymise(tables, opts.pseudonym_key)
    overlap = _overlap(tables)
    _check_cohort_size(tables)
    with atomic_directory(opts.out, force=opts.force, replace_only=is_store) as tmp:
        entries = [_write_table(t, tmp, opts.pseudonym_key is not None) for t in tables]
        manifest = {
            "format": "cohortctl-store",
            "format_version": STORE_FORMAT,
            "cohortctl_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tables": entries,
            "roles": clinical_roles,
            "patients": overlap,
            "pseudonymized": opts.pseudonym_key is not None,
            "columns": {t.name: t.sensitivity for t in tables if t.sensitivity},
            "id_normalisation": "tcga-patient" if opts.tcga_barcodes else (
                "auto" if opts.tcga_barcodes is None else "none"),
        }
        (tmp / "runs").mkdir()
        write_json(manifest, tmp / MANIFEST)
        fsync_tree(tmp)
    return manifest


def _check_distinct_names(opts: IngestOptions) -> None:
    seen: set[str] = set()
    for spec in [*opts.genetic, *opts.molecular, *opts.outcome]:
        if spec.name in seen or spec.name == "clinical":
            raise UsageError(f"table name {spec.name!r} is used twice; name tables with NAME=PATH")
        seen.add(spec.name)


# -- clinical --------------------------------------------------------------------------
def _read_clinical(opts: IngestOptions) -> tuple[_Table, dict[str, Any]]:
    path = opts.clinical
    assert path is not None
    df, id_col = readers.read_id_table(path, _text_fmt(opts.fmt), opts.id_column)
    ids = readers.normalise_ids(df[id_col], path, id_col, opts.tcga_barcodes)
    readers.check_unique_ids(ids, path, id_col)
    _check_no_second_id(df, path, id_col)
    df = df.drop(id_col).insert_column(0, ids)
    df, dropped = _drop_empty_columns(df, path)
    roles = _resolve_roles(df, path, opts, dropped)
    df, nonfinite_times = _canonical_roles(df, path, roles)
    for ref in opts.reference:
        if ref not in df.columns:
            raise InputDataError(f"{path}: reference column {ref!r} not found (--reference)"
                                 f"{_did_you_mean(ref, df.columns)}")
    info = {
        "columns_dropped_all_missing": dropped,
        "column_types": {c: str(df[c].dtype) for c in df.columns if c != "patient_id"},
    }
    survival_missing = None
    if roles.get("time") and roles.get("event"):
        miss = df[roles["time"]].is_null() | df[roles["event"]].is_null()
        survival_missing = int(miss.sum())
    role_info = {
        **{r: roles.get(r) for r in ROLES},
        "reference": list(opts.reference),
        "survival_missing": survival_missing,
        "survival_time_nonfinite_as_missing": nonfinite_times,
    }
    return _Table("clinical", "clinical", path, df, info, id_source=id_col), role_info


def _did_you_mean(name: str, columns: Sequence[str]) -> str:
    """``"; did you mean 'OS_days'? (columns: ...)"`` for a column name that is not there."""
    import difflib

    others = [c for c in columns if c != "patient_id"]
    close = difflib.get_close_matches(name, others, n=1, cutoff=0.6) or difflib.get_close_matches(
        name.lower(), [c.lower() for c in others], n=1, cutoff=0.6)
    hint = ""
    if close:
        match = next((c for c in others if c.lower() == close[0].lower()), close[0])
        hint = f"; did you mean {match!r}?"
    shown = ", ".join(others[:12]) + (f", ... ({len(others)} in all)" if len(others) > 12 else "")
    return f"{hint} (columns: {shown})"


def _text_fmt(fmt: str | None) -> str | None:
    return None if fmt == "maf" else fmt


def _drop_empty_columns(df: pl.DataFrame, path: Path) -> tuple[pl.DataFrame, list[str]]:
    empty = [c for c in df.columns if c != "patient_id" and df[c].null_count() == df.height]
    for c in empty:
        log.warning("%s: column %r is entirely missing; dropped", path, c)
    return df.drop(empty), empty


def _resolve_roles(df: pl.DataFrame, path: Path, opts: IngestOptions, dropped: list[str]
                   ) -> dict[str, str | None]:
    roles: dict[str, str | None] = {}
    lower = {c.lower(): c for c in df.columns}
    for role in ROLES:
        declared = opts.roles.get(role)
        if declared:
            if declared in dropped:
                raise InputDataError(f"{path}: --{role} column {declared!r} is entirely missing")
            if declared not in df.columns:
                raise InputDataError(f"{path}: --{role} column {declared!r} not found"
                                     f"{_did_you_mean(declared, df.columns)}")
            roles[role] = declared
            continue
        roles[role] = next((lower[n] for n in ROLE_NAMES[role] if n in lower), None)
    if bool(roles.get("time")) != bool(roles.get("event")):
        have = "time" if roles.get("time") else "event"
        log.warning("%s: survival %s column found without its pair; survival not used", path, have)
        roles["time"] = roles["event"] = None
    for ref in opts.reference:
        for role, col in roles.items():
            if col == ref:
                raise UsageError(f"column {ref!r} cannot be both --reference and the {role}")
    return roles


def _canonical_roles(df: pl.DataFrame, path: Path, roles: dict[str, str | None]
                     ) -> tuple[pl.DataFrame, int]:
    """Survival time -> Float64 (>= 0), event -> Int8 0/1; returns the frame and the number
    of non-finite times read as missing.

    ``-Inf``/``Inf``/``NaN`` survival times are read as missing with a warning: R writes
    ``-Inf`` for ``max()`` over no follow-up (e.g. the maftools TCGA-LAML annotation).
    Finite negative times are refused.
    """
    time_col, event_col = roles.get("time"), roles.get("event")
    nonfinite_count = 0
    if time_col:
        col = df[time_col]
        if not col.dtype.is_numeric():
            bad = col.cast(pl.Float64, strict=False).is_null() & col.is_not_null()
            row = int(bad.arg_true()[0]) if bad.any() else 0
            raise InputDataError(
                f"{path}: survival time {col[row]!r} in column {time_col!r}, row {row + 1}, "
                "is not a number"
            )
        col = col.cast(pl.Float64)
        nonfinite = (col.is_infinite() | col.is_nan()).fill_null(False)
        nonfinite_count = int(nonfinite.sum())
        if nonfinite_count:
            row = int(nonfinite.arg_true()[0])
            log.warning("%s: %d non-finite survival time(s) in column %r (first: row %d, %s) "
                        "read as missing", path, nonfinite_count, time_col, row + 1, col[row])
            col = col.set(nonfinite, None)  # type: ignore[arg-type]
        neg = (col < 0).fill_null(False)
        if neg.any():
            row = int(neg.arg_true()[0])
            raise InputDataError(
                f"{path}: negative survival time {col[row]} in column {time_col!r}, row {row + 1}"
            )
        df = df.with_columns(col.alias(time_col))
    if event_col:
        col = df[event_col]
        codes = []
        for row, raw in enumerate(col.cast(pl.String).to_list()):
            try:
                codes.append(event_code(raw))
            except ValueError:
                raise InputDataError(
                    f"{path}: event value {raw!r} in column {event_col!r}, row {row + 1}, "
                    "is not 0/1, true/false, dead/alive or a coded label such as 1:DECEASED"
                ) from None
        df = df.with_columns(pl.Series(event_col, codes, dtype=pl.Int8))
    return df, nonfinite_count


# -- genetic ---------------------------------------------------------------------------
def _is_maf(path: Path, fmt: str | None) -> bool:
    if fmt == "maf":
        return True
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".maf"):
        return True
    try:
        kind = readers.detect_format(path, fmt)
    except InputDataError:
        return False
    if kind == "parquet":
        cols = readers.open_parquet(path).schema_arrow.names
    else:
        first = next((ln for ln in readers._text_lines(path) if not ln.startswith("#")), "")
        cols = first.rstrip("\r\n").split("\t")
    return all(c in cols for c in readers.MAF_REQUIRED)


def _read_genetic(spec: TableSpec, opts: IngestOptions, tables: list[_Table]) -> _Table:
    path = spec.path
    readers._check_readable(path)
    if _is_maf(path, opts.fmt):
        calls, meta = readers.read_maf(path, opts.maf_classes)
        covered = readers.normalise_ids(meta["covered"], path, "Tumor_Sample_Barcode",
                                        opts.tcga_barcodes)
        calls = calls.with_columns(
            readers.normalise_ids(calls["patient_id"], path, "Tumor_Sample_Barcode",
                                  opts.tcga_barcodes)
        )
        rule = "patients with any MAF row (any variant class)"
        clin = next((t for t in tables if t.kind == "clinical"), None)
        if opts.maf_covers_clinical and clin is not None and clin.frame is not None:
            covered = pl.concat([covered, clin.frame["patient_id"]]).unique()
            rule += " + every clinical patient (--maf-covers-clinical)"
        if calls.height == 0:
            kept = ", ".join(meta["summary"]["classes_kept"])
            raise InputDataError(
                f"{path}: no mutation of the kept variant classes ({kept}); see --maf-classes"
            )
        matrix = readers.maf_to_matrix(calls, covered)
        info = {"source_format": "maf", "maf": meta["summary"], "coverage_rule": rule,
                "binary": True}
        return _Table(spec.name, "genetic", path, matrix, info,
                      id_source="Tumor_Sample_Barcode")
    df = _read_wide_or_long(spec, opts)
    values = df.drop("patient_id")
    binary = all(
        set(values[c].drop_nulls().unique().to_list()) <= {0.0, 1.0}  # bools/ints are 0/1
        for c in values.columns
    )
    df, dropped = _drop_empty_columns(df, path)
    if df.width < 2:
        raise InputDataError(f"{path}: no gene columns besides the patient ID")
    info = {"source_format": readers.detect_format(path, _text_fmt(opts.fmt)), "binary": binary,
            "columns_dropped_all_missing": dropped}
    return _Table(spec.name, "genetic", path, df, info)


# -- molecular -------------------------------------------------------------------------
def _read_molecular(spec: TableSpec, opts: IngestOptions) -> _Table:
    path = spec.path
    readers._check_readable(path)
    fmt = readers.detect_format(path, _text_fmt(opts.fmt))
    if fmt == "parquet" and opts.layout != "long":
        plan = _plan_parquet_stream(path, opts)
        if plan is not None:
            info = {"source_format": "parquet", "layout": "wide",
                    "columns_dropped_all_missing": plan["dropped"]}
            return _Table(spec.name, "molecular", path, None, info, stream=plan,
                          id_source=plan["id_col"])
    df = _read_wide_or_long(spec, opts)
    df, dropped = _drop_empty_columns(df, path)
    if df.width < 2:
        raise InputDataError(f"{path}: no feature columns besides the patient ID")
    return _Table(spec.name, "molecular", path, df,
                  {"source_format": fmt, "columns_dropped_all_missing": dropped})


def _read_wide_or_long(spec: TableSpec, opts: IngestOptions) -> pl.DataFrame:
    path = spec.path
    df, id_col = readers.read_id_table(path, _text_fmt(opts.fmt), opts.id_column)
    _check_no_second_id(df, path, id_col)
    long = opts.layout == "long" or (opts.layout == "auto" and readers.is_long_layout(df, id_col))
    if long:
        df = df.with_columns(
            readers.normalise_ids(df[id_col], path, id_col, opts.tcga_barcodes).alias(id_col)
        )
        df = readers.pivot_long(df, path, id_col)
    ids = readers.normalise_ids(df[id_col], path, id_col, opts.tcga_barcodes)
    readers.check_unique_ids(ids, path, id_col)
    df = readers.check_finite_numeric(df, path, id_col)
    return df.drop(id_col).insert_column(0, ids)


def _check_no_second_id(df: pl.DataFrame, path: Path, id_col: str) -> None:
    if "patient_id" in df.columns and id_col != "patient_id":
        raise InputDataError(f"{path}: has both {id_col!r} and a 'patient_id' column")


def _plan_parquet_stream(path: Path, opts: IngestOptions) -> dict[str, Any] | None:
    """Validate a wide Parquet table from its schema and metadata, without loading it.

    Values are checked batch by batch while they are copied into the store.
    """
    pf = readers.open_parquet(path)
    schema = pf.schema_arrow
    names = schema.names
    readers.check_header(path, names)
    if pf.metadata.num_rows == 0:
        raise InputDataError(f"{path}: empty table (no rows)")
    id_col = readers.find_id_column(pl.DataFrame(schema=dict.fromkeys(names, pl.String)), path,
                                    opts.id_column)
    features = [n for n in names if n != id_col]
    if not features:
        raise InputDataError(f"{path}: no feature columns besides the patient ID")
    if "patient_id" in features:
        raise InputDataError(f"{path}: has both {id_col!r} and a 'patient_id' column")
    nulls = _null_counts_from_metadata(pf, features)
    dropped = [f for f in features if nulls.get(f) == pf.metadata.num_rows]
    if any(not _arrow_numeric(schema.field(n).type) for n in features if n not in dropped):
        return None  # text columns (long layout, numbers stored as text, or an error):
        # the in-memory reader converts them or names the first offending cell
    ids = readers.normalise_ids(
        readers.read_parquet_table(path, [id_col])[id_col], path, id_col, opts.tcga_barcodes
    )
    readers.check_unique_ids(ids, path, id_col)
    for c in dropped:
        log.warning("%s: column %r is entirely missing; dropped", path, c)
    keep = [f for f in features if f not in dropped]
    if not keep:
        raise InputDataError(f"{path}: every feature column is entirely missing")
    return {"id_col": id_col, "features": keep, "dropped": dropped, "ids": ids}


def _arrow_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
        or pa.types.is_null(t)


def _null_counts_from_metadata(pf: pq.ParquetFile, features: list[str]) -> dict[str, int | None]:
    md = pf.metadata
    index = {md.schema.column(i).name: i for i in range(md.num_columns)}
    out: dict[str, int | None] = {}
    for f in features:
        total = 0
        for rg in range(md.num_row_groups):
            stats = md.row_group(rg).column(index[f]).statistics if f in index else None
            if stats is None or not stats.has_null_count:
                total = -1
                break
            total += stats.null_count
        out[f] = None if total < 0 else total
    return out


# -- outcome ---------------------------------------------------------------------------
def _read_outcome(spec: TableSpec, opts: IngestOptions) -> _Table:
    path = spec.path
    df, id_col = readers.read_id_table(path, _text_fmt(opts.fmt), opts.id_column)
    ids = readers.normalise_ids(df[id_col], path, id_col, opts.tcga_barcodes)
    readers.check_unique_ids(ids, path, id_col)
    _check_no_second_id(df, path, id_col)
    df = df.drop(id_col).insert_column(0, ids)
    df, dropped = _drop_empty_columns(df, path)
    return _Table(spec.name, "outcome", path, df, {"columns_dropped_all_missing": dropped},
                  id_source=id_col)


# -- column sensitivity ----------------------------------------------------------------
#: Sensitivity classes of a stored table's columns (``manifest["columns"]``).
IDENTIFIER, QUASI_IDENTIFIER, ANALYSABLE = "identifier", "quasi_identifier", "analysable"

#: Name tokens of direct identifiers (a column name is split at non-letters/digits and at
#: camelCase boundaries, lower-cased). ``birth`` is refined in :func:`_name_rule`.
_ID_TOKENS = frozenset({
    "id", "ids", "identifier", "uuid", "guid", "mrn", "ssn", "nhs", "nino", "passport", "barcode",
    "email", "mail", "phone", "telephone", "mobile", "fax", "address", "street", "addr",
    "name", "names", "surname", "forename", "firstname", "lastname", "fullname", "initials",
    "dob", "birth", "birthdate", "birthday", "dateofbirth",
    "notes", "note", "comment", "comments", "remark", "remarks", "narrative", "freetext",
})
#: Run-together names (``PatientID`` written ``patientid``) and pairs that identify.
_ID_JOINED = re.compile(
    r"^(sample|patient|subject|case|participant|specimen|aliquot|donor|record|person|visit|"
    r"encounter|study|biospecimen|hospital|medical|chart|nhs|insurance|phone|account)"
    r"_?(id|ids|no|nr|num|number|barcode)$"
    r"|^(sample|patient|subject|case|participant|specimen|aliquot|donor|person)_?names?$")
_NUMBER_TOKENS = frozenset({"number", "no", "nr", "num"})
_NUMBER_OWNERS = frozenset({"hospital", "record", "patient", "case", "nhs", "insurance", "phone",
                            "social", "security", "chart", "account", "sample", "subject",
                            "participant", "passport", "medical", "mrn"})
#: Qualifiers that make ``id``/``name``/``barcode`` name a thing, not a person
#: (``drug_name``, ``batch_id``).
_NOT_PERSON = frozenset({
    "batch", "plate", "drug", "gene", "compound", "regimen", "treatment", "therapy", "agent",
    "platform", "assay", "panel", "cohort", "project", "cell", "line", "tissue", "disease",
    "cancer", "tumor", "tumour", "histology", "protocol", "arm", "pathway", "probe", "kit",
})
_NOT_PERSON_NAME = _NOT_PERSON | {"study", "trial", "site", "center", "centre", "hospital",
                                  "institution", "clinic", "type", "subtype", "diagnosis"}
#: Name tokens of quasi-identifiers (demographics, places, dates).
_QUASI_TOKENS = frozenset({
    "age", "sex", "gender", "ethnicity", "ethnic", "race", "ancestry", "nationality",
    "citizenship", "postcode", "postal", "zip", "zipcode", "county", "city", "town",
    "residence", "country", "marital", "occupation", "religion", "education", "income",
    "date", "year", "hospital", "institution", "centre", "center", "clinic",
})
_PLACE_TOKENS = frozenset({"country", "place", "city", "region", "nation", "state", "town"})
#: Feature tables (numeric matrices whose columns are genes, probes, compounds) are only
#: screened by whole name: tokens would hit gene symbols (``NHS``, ``HLA-DOB``).
_FEATURE_ID_NAMES = frozenset({
    "id", "uuid", "guid", "mrn", "ssn", "dob", "barcode", "name", "email", "phone", "address",
    "notes", "comments", "sample", "patient", "date_of_birth", "birth_date", "birthdate",
    "first_name", "last_name", "full_name", "surname", "nhs_number", "hospital_number",
    "medical_record_number", "tumor_sample_barcode", "bcr_patient_barcode", "submitter_id",
})
_DATE_TEXT = re.compile(r"^\s*(\d{4}[-/.]\d{1,2}([-/.]\d{1,2})?([ T]\d{1,2}:\d{2}.*)?"
                        r"|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})\s*$")
#: Text columns: unique-value and free-text rules (see :func:`classify_columns`).
UNIQUE_MIN_VALUES, UNIQUE_MIN_FRACTION = 20, 0.9
FREE_TEXT_MIN_VALUES, FREE_TEXT_MEDIAN_CHARS, FREE_TEXT_MEDIAN_SPACES = 5, 40, 4


def name_tokens(name: str) -> list[str]:
    """``"PatientName"``/``"patient_name"``/``"Patient.Name"`` -> ``["patient", "name"]``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def _name_rule(name: str, *, feature_table: bool = False) -> tuple[str, str] | None:
    """(sensitivity, reason) suggested by a column's name alone, or None."""
    tokens = name_tokens(name)
    joined = "_".join(tokens)
    if feature_table:
        if joined in _FEATURE_ID_NAMES or joined.endswith(("_id", "_uuid", "_barcode")) \
                or _ID_JOINED.match(joined):
            return IDENTIFIER, f"name: {name}"
        return None
    tset = set(tokens)
    if "birth" in tset or "dob" in tset or "birthdate" in tset or "dateofbirth" in tset:
        if tset & _PLACE_TOKENS:
            return QUASI_IDENTIFIER, "name: place of birth"
        if "year" in tset:
            return QUASI_IDENTIFIER, "name: year of birth"
        return IDENTIFIER, "name: date of birth" if tset & {"dob", "date", "dateofbirth"} \
            else "name: birth"
    if _ID_JOINED.match(joined) or any(_ID_JOINED.match(t) for t in tokens):
        return IDENTIFIER, f"name: {name}"
    if tset & _NUMBER_TOKENS and tset & _NUMBER_OWNERS:
        return IDENTIFIER, f"name: {name}"
    if {"free", "text"} <= tset or joined == "text" or ({"medical", "record"} <= tset):
        return IDENTIFIER, "name: free text" if "text" in tset else f"name: {name}"
    for tok in tokens:
        if tok not in _ID_TOKENS:
            continue
        if tok in ("id", "ids", "identifier", "barcode") and tset & _NOT_PERSON:
            continue
        if tok in ("name", "names") and tset & _NOT_PERSON_NAME:
            continue
        return IDENTIFIER, f"name: {tok}"
    quasi = [t for t in tokens if t in _QUASI_TOKENS]
    if quasi:
        return QUASI_IDENTIFIER, f"name: {quasi[0]}"
    return None


def _holds_ids(values: pl.Series, ids: set[str]) -> bool:
    """True when most distinct values are patient IDs, or IDs extended (``ID-01A``)."""
    if not ids:
        return False
    lengths = sorted({len(i) for i in ids})
    hits = 0
    for v in values.unique().to_list():
        if v in ids or any(k < len(v) and not v[k].isalnum() and v[:k] in ids
                           for k in lengths):
            hits += 1
    return hits > 0.5 * values.len()


def _content_rule(col: pl.Series, ids: set[str], *, quasi_name: bool = False
                  ) -> tuple[str, str] | None:
    """(sensitivity, reason) from a column's type and values, or None.

    A column already named as a quasi-identifier (``postcode``, ``age``) is only made an
    identifier when its values are patient IDs: many distinct postcodes stay quasi.
    """
    if col.dtype == pl.Date or isinstance(col.dtype, pl.Datetime):
        return QUASI_IDENTIFIER, "date"
    if not (col.dtype == pl.String or isinstance(col.dtype, pl.Categorical | pl.Enum)):
        return None  # numbers (age, weight, expression) are never identifiers by content
    values = col.cast(pl.String).drop_nulls()
    n = values.len()
    if n == 0:
        return None
    if values.head(1000).str.contains(_DATE_TEXT.pattern).mean() >= 0.9:  # type: ignore[operator]
        return QUASI_IDENTIFIER, "date values"
    if n >= FREE_TEXT_MIN_VALUES and _holds_ids(values, ids):
        return IDENTIFIER, "holds patient IDs"
    if quasi_name:
        return None
    distinct = values.n_unique() / n
    if n >= UNIQUE_MIN_VALUES and distinct > UNIQUE_MIN_FRACTION:
        return IDENTIFIER, f"unique values: {distinct:.0%} distinct"
    if n >= FREE_TEXT_MIN_VALUES and distinct >= 0.5:
        chars = float(values.str.len_chars().median())  # type: ignore[arg-type]
        spaces = float(values.str.count_matches(" ").median())  # type: ignore[arg-type]
        if chars > FREE_TEXT_MEDIAN_CHARS or spaces >= FREE_TEXT_MEDIAN_SPACES:
            return IDENTIFIER, f"free text: median {chars:.0f} characters"
    return None


def classify_columns(df: pl.DataFrame, roles: Sequence[str] = (),
                     forced_identifiers: Sequence[str] = (), allowed: Sequence[str] = (),
                     *, feature_table: bool = False) -> dict[str, dict[str, str]]:
    """Class every column but ``patient_id`` as identifier, quasi-identifier or analysable.

    Why: direct identifiers must never reach a store (they are dropped), and the report
    needs to know the quasi-identifiers. In order: ``allowed`` (the user takes
    responsibility) -> analysable; ``forced_identifiers`` -> identifier; then the name
    (:func:`_name_rule`), then type and values (:func:`_content_rule`: dates; text whose
    values are patient IDs, nearly all distinct, or long free text). ``roles`` (survival,
    treatment, response, reference columns) are never identifiers: a role that a rule would
    drop is kept as analysable, the reason saying so. With ``feature_table`` only whole
    identifier names are looked for (gene symbols would match tokens).
    Returns ``{column: {"sensitivity": ..., "reason": ...}}``; reason is "" when no rule
    matched.
    """
    ids = set(df["patient_id"].cast(pl.String).to_list()) if "patient_id" in df.columns else set()
    out: dict[str, dict[str, str]] = {}
    for name in df.columns:
        if name == "patient_id":
            continue
        if name in allowed:
            verdict: tuple[str, str] | None = (ANALYSABLE, "--allow-columns")
        elif name in forced_identifiers:
            verdict = (IDENTIFIER, "--identifier-columns")
        elif feature_table:
            verdict = _name_rule(name, feature_table=True)
        else:
            by_name = _name_rule(name)
            verdict = by_name if by_name and by_name[0] == IDENTIFIER else (
                _content_rule(df[name], ids, quasi_name=by_name is not None) or by_name)
        if name in roles and name not in forced_identifiers:
            if verdict is None or verdict[0] == ANALYSABLE:
                verdict = (ANALYSABLE, "role")
            elif verdict[0] == IDENTIFIER:
                verdict = (ANALYSABLE, f"role, kept although identifier by {verdict[1]}")
            else:
                verdict = (verdict[0], f"role; {verdict[1]}")
        sensitivity, reason = verdict or (ANALYSABLE, "")
        out[name] = {"sensitivity": sensitivity, "reason": reason}
    return out


def _drop_identifiers(tables: list[_Table], roles: dict[str, Any], opts: IngestOptions) -> None:
    """Classify every table's columns and drop the identifiers, logging one line per table.

    Clinical and outcome tables get every rule; genetic/molecular tables are numeric
    matrices (MAF-derived ones too) and are screened by whole name only. Records
    ``t.sensitivity`` (every column of the clinical table, only the non-analysable ones
    of other tables: an outcome table may have thousands of drug columns) and
    ``columns_dropped_identifier`` in the table's manifest entry.
    """
    _check_forced_columns(tables, roles, opts)
    protected = [c for r in ROLES if (c := roles.get(r))] + list(roles.get("reference") or [])
    for t in tables:
        feature = t.kind in ("genetic", "molecular")
        if t.frame is not None:
            frame = t.frame
        else:
            frame = pl.DataFrame(schema=dict.fromkeys(t.columns, pl.Float64))
        classes = classify_columns(frame, protected if t.kind == "clinical" else (),
                                   opts.identifier_columns, opts.allow_columns,
                                   feature_table=feature)
        dropped = {c: v["reason"] for c, v in classes.items() if v["sensitivity"] == IDENTIFIER}
        t.sensitivity = {c: v for c, v in classes.items()
                         if t.kind == "clinical" or v["sensitivity"] != ANALYSABLE}
        t.info["columns_dropped_identifier"] = list(dropped)
        if not dropped:
            continue
        log.warning("%s: dropped identifier columns: %s", t.source,
                    ", ".join(f"{c} ({r.split(':')[0]})" for c, r in dropped.items()))
        if t.frame is not None:
            t.frame = t.frame.drop(list(dropped))
            types = t.info.get("column_types")
            if types is not None:
                t.info["column_types"] = {c: v for c, v in types.items() if c not in dropped}
        else:
            t.stream["features"] = [c for c in t.columns if c not in dropped]  # type: ignore[index]
        if feature and not t.columns:
            raise InputDataError(f"{t.source}: no feature columns left after dropping "
                                 "identifier columns")


def _check_forced_columns(tables: list[_Table], roles: dict[str, Any],
                          opts: IngestOptions) -> None:
    """Refuse --identifier-columns/--allow-columns naming no column, or a role or the ID."""
    both = sorted(set(opts.identifier_columns) & set(opts.allow_columns))
    if both:
        raise UsageError(f"column {both[0]!r} is given to both --identifier-columns and "
                         "--allow-columns")
    known: set[str] = set()
    id_columns = {"patient_id", *([opts.id_column] if opts.id_column else [])}
    for t in tables:
        known.update(t.columns)
        known.update(t.info.get("columns_dropped_all_missing") or [])
        id_columns.update([t.id_source] if t.id_source else [])
    for flag, names in (("--identifier-columns", opts.identifier_columns),
                        ("--allow-columns", opts.allow_columns)):
        for name in names:
            if name in known:
                continue
            if name in id_columns:
                raise UsageError(f"{flag}: {name!r} is the patient ID column, which is always "
                                 "kept as the key (use --pseudonymize to replace it)")
            raise InputDataError(f"{flag}: column {name!r} not found in any input table")
    role_of = {c: r for r in ROLES if (c := roles.get(r))}
    role_of.update({c: "reference" for c in roles.get("reference") or []})
    for name in opts.identifier_columns:
        if name in role_of:
            raise UsageError(f"--identifier-columns: {name!r} is the {role_of[name]} column; "
                             "a declared role is never dropped")


# -- privacy ---------------------------------------------------------------------------
def pseudonym(key: bytes, patient_id: str) -> str:
    """Keyed, stable pseudonym: HMAC-SHA-256 of the ID, 80 bits as hex with a prefix."""
    return "P" + hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:20]


def _pseudonymise(tables: list[_Table], key: bytes) -> None:
    mapping: dict[str, str] = {}
    for t in tables:
        for pid in t.ids.to_list():
            mapping.setdefault(pid, pseudonym(key, pid))
    if len(set(mapping.values())) != len(mapping):
        raise InputDataError("pseudonym collision; use a different key")
    for t in tables:
        if t.frame is not None:
            t.frame = t.frame.with_columns(pl.col("patient_id").replace_strict(mapping))
        else:
            t.stream["ids"] = t.stream["ids"].replace_strict(mapping)  # type: ignore[index]


def _check_lookalike_ids(tables: list[_Table]) -> None:
    """Refuse two different IDs that look the same across tables (``P01`` in one table,
    ``p01`` or Cyrillic ``Р01`` in another): joined as they are, one patient would become
    two. Within a table :func:`readers.check_unique_ids` does the same."""
    seen: dict[str, tuple[str, Path]] = {}
    for t in tables:
        for pid in t.ids.unique().to_list():
            key = readers.id_skeleton(pid)
            other = seen.setdefault(key, (pid, t.source))
            if other[0] != pid:
                raise InputDataError(
                    f"{t.source}: patient ID {pid!r} looks like {other[0]!r} in {other[1]} "
                    "(they differ only by case or by look-alike letters); make them identical "
                    "or clearly different")


def _overlap(tables: list[_Table]) -> dict[str, Any]:
    """Patient counts per table and how the tables overlap; disjoint tables are refused.

    ``lacking`` counts, per table, the cohort patients (union of every table) without a
    row in it, so a missing modality is visible; ``lacking_any_feature_table`` counts
    patients missing from at least one genetic/molecular table.
    """
    sets: dict[str, set[str]] = {}
    sources: dict[str, Path] = {}
    for t in tables:
        key = f"{t.kind}:{t.name}"
        sets[key] = set(t.ids.to_list())
        sources[key] = t.source
    feature_keys = [k for k in sets if k.split(":")[0] in ("genetic", "molecular")]
    feature_sets = [sets[k] for k in feature_keys]
    union: set[str] = set().union(*sets.values())
    shared_features = set.intersection(*feature_sets) if feature_sets else set()
    names = list(sets)
    pairwise = {a: {b: len(sets[a] & sets[b]) for b in names} for a in names}
    for a in names:
        others = [b for b in names if b != a]
        if others and not sets[a] & set().union(*(sets[b] for b in others)):
            _disjoint(a, others, sets, sources)
    for i, a in enumerate(feature_keys):
        for b in feature_keys[i + 1:]:
            if not sets[a] & sets[b]:
                _disjoint(a, [b], sets, sources)
    return {
        "total": len(union),
        "per_table": {k: len(v) for k, v in sets.items()},
        "in_all_feature_tables": len(shared_features),
        "lacking": {k: len(union - v) for k, v in sets.items()},
        "lacking_any_feature_table": len(union - shared_features) if feature_sets else 0,
        "pairwise_shared": pairwise,
    }


def _check_cohort_size(tables: list[_Table]) -> None:
    """Refuse feature tables and cohorts too small for any grouping."""
    with_data: set[str] = set()
    for t in tables:
        if t.kind not in ("genetic", "molecular"):
            continue
        ids = t.ids
        if ids.len() < MIN_TABLE_PATIENTS:
            raise InputDataError(
                f"{t.source}: only {ids.len()} patient(s); a {t.kind} table needs at least "
                f"{MIN_TABLE_PATIENTS}"
            )
        with_data.update(ids.to_list())
    if len(with_data) < MIN_COHORT_PATIENTS:
        files = ", ".join(str(t.source) for t in tables if t.kind in ("genetic", "molecular"))
        raise InputDataError(
            f"{files}: only {len(with_data)} patients have genetic or molecular data, too few "
            f"to find groups (need at least {MIN_COHORT_PATIENTS})"
        )


def _disjoint(a: str, others: list[str], sets: dict[str, set[str]], sources: dict[str, Path]
              ) -> None:
    """Refuse table ``a`` for sharing no patient with ``others`` (IDs differing only by
    case or look-alike letters were refused before, by :func:`_check_lookalike_ids`)."""
    names = ", ".join(f"{b} ({sources[b]})" for b in others)
    raise InputDataError(f"{sources[a]}: table {a} shares no patient with {names}")


# -- writing ---------------------------------------------------------------------------
def _write_table(t: _Table, tmp: Path, pseudonymised: bool) -> dict[str, Any]:
    """Write one table sorted by ``patient_id`` and return its manifest entry.

    In a pseudonymised store rows are always in pseudonym order: input order (often
    sorted by the raw ID) would pair each pseudonym with its raw ID by rank.
    """
    sub = {"clinical": "", "genetic": "genetic/", "molecular": "molecular/",
           "outcome": "outcome/"}[t.kind]
    rel = f"tables/{sub}{t.name}.parquet"
    target = tmp / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if t.frame is not None:
        frame = t.frame.sort("patient_id")
        write_parquet(frame, target)
        rows, columns = frame.height, frame.width - 1
    else:
        rows, columns = _stream_parquet(t, target, pseudonymised)
    entry = {
        "name": t.name,
        "kind": t.kind,
        "source_path": str(t.source),
        "source_sha256": sha256_file(t.source),
        "store_path": rel,
        "store_sha256": sha256_file(target),
        "rows": rows,
        "columns": columns,
        **t.info,
    }
    return entry


def _stream_parquet(t: _Table, target: Path, pseudonymised: bool = False) -> tuple[int, int]:
    """Copy a wide Parquet table batch by batch, validating values as they pass.

    Rows are stored sorted by patient. A table above :data:`STREAM_SORT_MAX_CELLS` cells
    whose rows are not already in that order is kept in input order in a plain store
    (sorting it costs extra passes), but sorted in passes of bounded memory in a
    pseudonymised one (:func:`_write_in_passes`). Read failures are reported as
    unreadable input (66), write failures as output errors (73). Columns found entirely
    missing (e.g. all NaN) are dropped afterwards.
    """
    plan = t.stream
    assert plan is not None
    pf = readers.open_parquet(t.source)
    features: list[str] = plan["features"]
    ids: pl.Series = plan["ids"]
    order = ids.arg_sort()
    sorted_already = bool((order == pl.Series(range(len(ids)))).all())
    batch_rows = max(256, min(65536, 100_000_000 // max(1, len(features))))
    present = dict.fromkeys(features, 0)
    large = len(ids) * len(features) > STREAM_SORT_MAX_CELLS
    if not sorted_already and large and not pseudonymised:
        log.info("%s: rows not sorted by patient; stored in input order", t.source)
        sorted_already = True
    writer = None
    offset = 0
    try:
        if sorted_already:
            for batch in _batches(pf, t.source, batch_rows, features):
                frame = _check_batch(batch, t.source, features, offset)
                nulls = frame.null_count().row(0)
                for n, k in zip(features, nulls, strict=True):
                    present[n] += frame.height - k
                frame = frame.insert_column(0, ids.slice(offset, frame.height))
                # No dictionary encoding: float columns rarely repeat, and trying it
                # makes writing ~2.5x slower and the file larger.
                writer = writer or pq.ParquetWriter(target, frame.to_arrow().schema,
                                                    compression="zstd", use_dictionary=False)
                writer.write_table(frame.to_arrow())
                offset += frame.height
        elif large:
            present = _write_in_passes(pf, t.source, target, features, ids, order, batch_rows)
            offset = len(ids)
        else:
            whole = next(_batches(pf, t.source, None, features))
            frame = _check_batch(whole, t.source, features, 0)
            present = {n: frame.height - frame[n].null_count() for n in features}
            frame = frame.insert_column(0, ids).sort("patient_id")
            write_parquet(frame, target)
            offset = frame.height
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"{target}: cannot write ({readers._short(exc)})") from None
    finally:
        if writer is not None:
            writer.close()
    empty = [n for n in features if present[n] == 0]
    if empty:
        _drop_stored_columns(t, target, empty)
    return offset, len(features) - len(empty)


def _write_in_passes(pf: pq.ParquetFile, source: Path, target: Path, features: list[str],
                     ids: pl.Series, order: pl.Series, batch_rows: int) -> dict[str, int]:
    """Write a table too large to sort in memory in ``patient_id`` order.

    Each pass reads the whole input batch by batch and keeps only the rows whose sorted
    position falls in its window of at most :data:`STREAM_SORT_MAX_CELLS` cells, so
    memory stays bounded and the output never follows input order. Returns the number
    of present values per feature.
    """
    n = len(ids)
    rank = np.empty(n, dtype=np.int64)
    rank[order.to_numpy()] = np.arange(n)
    sorted_ids = ids.gather(order)
    window_rows = max(1, STREAM_SORT_MAX_CELLS // max(1, len(features)))
    passes = -(-n // window_rows)
    log.info("%s: sorting %d rows by patient in %d passes", source, n, passes)
    present = dict.fromkeys(features, 0)
    writer = None
    try:
        for lo in range(0, n, window_rows):
            hi = min(n, lo + window_rows)
            parts: list[pl.DataFrame] = []
            positions: list[np.ndarray] = []
            offset = 0
            for batch in _batches(pf, source, batch_rows, features):
                frame = _check_batch(batch, source, features, offset)
                r = rank[offset:offset + frame.height]
                keep = (r >= lo) & (r < hi)
                if keep.any():
                    parts.append(frame.filter(pl.Series(keep)))
                    positions.append(r[keep])
                offset += frame.height
            window = pl.concat(parts, how="vertical_relaxed")
            window = window[np.argsort(np.concatenate(positions), kind="stable")]
            for name, k in zip(features, window.null_count().row(0), strict=True):
                present[name] += window.height - k
            table = window.insert_column(0, sorted_ids.slice(lo, hi - lo)).to_arrow()
            writer = writer or pq.ParquetWriter(target, table.schema, compression="zstd",
                                                use_dictionary=False)
            writer.write_table(table, row_group_size=batch_rows)
    finally:
        if writer is not None:
            writer.close()
    return present


def _batches(pf: pq.ParquetFile, source: Path, batch_rows: int | None, features: list[str]
             ) -> Iterator[pl.DataFrame]:
    """Record batches as polars frames (the whole table when ``batch_rows`` is None)."""
    try:
        if batch_rows is None:
            yield readers.arrow_to_polars(pf.read(columns=features), source)
            return
        md = pf.metadata
        groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        if groups and max(groups) <= 2 * batch_rows:
            # Row group by row group: pyarrow's iter_batches keeps decoded buffers alive
            # across batches on wide tables (measured: +300 MB per batch at 20,000 columns).
            for i in range(md.num_row_groups):
                yield readers.arrow_to_polars(pf.read_row_group(i, columns=features), source)
            return
        for batch in pf.iter_batches(batch_size=batch_rows, columns=features):
            yield readers.arrow_to_polars(batch, source)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise InputMissingError(f"{source}: corrupt Parquet data ({readers._short(exc)})") from None


def _drop_stored_columns(t: _Table, target: Path, empty: list[str]) -> None:
    """Rewrite a streamed table without the columns found entirely missing."""
    for c in empty:
        log.warning("%s: column %r is entirely missing; dropped", t.source, c)
    if len(empty) == len(t.stream["features"]):  # type: ignore[index]
        raise InputDataError(f"{t.source}: every feature column is entirely missing")
    t.info["columns_dropped_all_missing"] = [*t.info.get("columns_dropped_all_missing", []),
                                             *empty]
    table = pq.read_table(target).drop_columns(empty)
    pq.write_table(table, target, compression="zstd", write_statistics=True,
                   use_dictionary=False, row_group_size=max(1, min(65536, table.num_rows or 1)))


def _check_batch(frame: pl.DataFrame, path: Path, features: list[str], offset: int) -> pl.DataFrame:
    """Validate one streamed batch with the same rules as in-memory tables.

    All-float batches (the usual case) are checked in one vectorised pass; only a batch
    that fails it, or holds other types, goes column by column, which also finds the
    first offending cell for the message.
    """
    if frame.width and all(dt in (pl.Float32, pl.Float64) for dt in frame.dtypes):
        X = frame.to_numpy()
        with np.errstate(invalid="ignore"):
            bad = bool(np.isinf(X).any())
            if not bad and X.dtype == np.float64:  # float32 cannot exceed the limit
                bad = bool((np.abs(X) > readers.MAX_ABS_VALUE).any())
        if not bad:
            return frame.fill_nan(None)
    return pl.DataFrame([readers.numeric_column(frame[n], path, offset) for n in features])


def read_key(key_file: Path | None) -> bytes:
    """The pseudonymisation key: ``--key-file`` or ``COHORTCTL_PSEUDONYM_KEY``."""
    if key_file is not None:
        try:
            key = key_file.read_bytes().strip()
        except OSError as exc:
            raise InputMissingError(f"{key_file}: cannot read key file ({exc.strerror})") from None
    else:
        key = os.environ.get("COHORTCTL_PSEUDONYM_KEY", "").encode()
    if len(key) < 16:
        raise UsageError(
            "--pseudonymize needs a key of at least 16 bytes in COHORTCTL_PSEUDONYM_KEY "
            "or --key-file"
        )
    return key


def table_names(specs: Sequence[TableSpec]) -> list[str]:
    return [s.name for s in specs]
