"""Read the tables users actually have (Parquet, CSV, TSV, gzip text, MAF) into polars.

Every failure is raised as a one-line :class:`~cohortctl.errors.CohortError` naming the
file and, where it applies, the column or row. Nothing here writes to disk.
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cohortctl.errors import InputDataError, InputMissingError, UsageError

#: Conventional patient-ID column names, tried in this order (case-insensitive)
#: when ``--id-column`` is not given.
ID_COLUMN_CANDIDATES: tuple[str, ...] = (
    "patient_id",
    "PATIENT_ID",
    "patient",
    "SAMPLE_ID",
    "sample_id",
    "Tumor_Sample_Barcode",
    "bcr_patient_barcode",
    "case_id",
    "submitter_id",
    "sample",
    "id",
)

#: Strings read as missing in text tables.
NULL_VALUES: list[str] = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", "None", ".", "-"]

FORMATS = ("parquet", "csv", "tsv", "maf")

TCGA_BARCODE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(-[0-9A-Z-]+)?$", re.IGNORECASE)

MAF_REQUIRED = ("Tumor_Sample_Barcode", "Hugo_Symbol", "Variant_Classification")

#: Variant classes kept by default: protein-altering (maftools' ``vc_nonSyn``).
MAF_DEFAULT_CLASSES: tuple[str, ...] = (
    "Frame_Shift_Del",
    "Frame_Shift_Ins",
    "Splice_Site",
    "Translation_Start_Site",
    "Nonsense_Mutation",
    "Nonstop_Mutation",
    "In_Frame_Del",
    "In_Frame_Ins",
    "Missense_Mutation",
)


@dataclass(frozen=True)
class TableSpec:
    """One input table as given on the command line: ``[NAME=]PATH``."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> TableSpec:
        """Parse ``NAME=PATH`` (NAME defaults to the file stem without extensions)."""
        if "=" in text and not Path(text).exists():
            name, _, path = text.partition("=")
            name = name.strip()
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
                raise UsageError(
                    f"table name {name!r} must be letters, digits, '_', '-', '.' (max 64)"
                )
            return cls(name, Path(path))
        path = Path(text)
        name = path.name
        for ext in (".gz", ".parquet", ".pq", ".csv", ".tsv", ".txt", ".maf"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "table"
        return cls(name, path)


def detect_format(path: Path, declared: str | None = None) -> str:
    """Format from ``declared``, else the extension, else the file's first bytes."""
    if declared:
        if declared not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {declared!r}")
        return declared
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".maf", "maf"),
                     (".csv", "csv"), (".tsv", "tsv"), (".txt", "tsv"), (".tab", "tsv")):
        if name.endswith(ext):
            return fmt
    head = _head_bytes(path, 4)
    if head == b"PAR1":
        return "parquet"
    raise InputDataError(
        f"{path}: cannot tell the format from the extension; use --format {'|'.join(FORMATS)}"
    )


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputMissingError(f"{path}: no such file")
    if path.is_dir():
        raise InputMissingError(f"{path}: is a directory, expected a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InputMissingError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _head_bytes(path: Path, n: int) -> bytes:
    _check_readable(path)
    with path.open("rb") as fh:
        head = fh.read(n)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        except (OSError, EOFError) as exc:
            raise InputMissingError(f"{path}: corrupt gzip file ({exc})") from None
    return head


def _text_lines(path: Path) -> Iterator[str]:
    """Decoded lines of a (possibly gzip-compressed) text file."""
    opener = gzip.open if _head_bytes(path, 2) == b"\x1f\x8b" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
            yield from fh
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:
        raise InputMissingError(f"{path}: cannot read ({exc})") from None


def read_text_table(path: Path, separator: str) -> pl.DataFrame:
    """Read CSV/TSV (gzip or not, ``#`` comment lines skipped) with all columns as text.

    Columns are read as strings first and typed afterwards by :func:`infer_types`,
    so that a mixed column is reported by name instead of failing deep in a parser.
    """
    lines = [ln for ln in _text_lines(path) if not ln.startswith("#") and ln.strip()]
    if not lines:
        raise InputDataError(f"{path}: empty table (no header row)")
    import csv

    reader = csv.reader(lines, delimiter=separator)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise InputDataError(f"{path}: malformed {_sep_name(separator)} ({exc})") from None
    header = [h.strip() for h in rows[0]]
    _check_header(path, header)
    width = len(header)
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            # Allow a trailing empty cell produced by a trailing separator.
            if len(row) == width + 1 and row[-1] == "":
                rows[i - 1] = row[:-1]
                continue
            raise InputDataError(
                f"{path}: line {i} has {len(row)} fields, the header has {width} (ragged rows)"
            )
    body = rows[1:]
    columns = {
        name: [_null_or(r[j].strip()) for r in body] for j, name in enumerate(header)
    }
    return pl.DataFrame(columns, schema={h: pl.String for h in header})


def _sep_name(sep: str) -> str:
    return "TSV" if sep == "\t" else "CSV"


def _null_or(cell: str) -> str | None:
    return None if cell in NULL_VALUES else cell


def _check_header(path: Path, header: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name == "":
            raise InputDataError(f"{path}: column {i} has an empty name")
        if name in seen:
            raise InputDataError(
                f"{path}: duplicated column {name!r} (columns {seen[name]} and {i})"
            )
        seen[name] = i


def infer_types(df: pl.DataFrame) -> pl.DataFrame:
    """Type string columns: integer, float, boolean, else keep as text."""
    out = []
    for name in df.columns:
        col = df[name]
        if col.dtype != pl.String:
            out.append(col)
            continue
        out.append(_infer_column(col))
    return pl.DataFrame(out)


_BOOL_TRUE = {"true", "t", "yes", "y"}
_BOOL_FALSE = {"false", "f", "no", "n"}


def _infer_column(col: pl.Series) -> pl.Series:
    values = col.drop_nulls()
    if values.len() == 0:
        return col.cast(pl.Float64)
    as_int = col.cast(pl.Int64, strict=False)
    if as_int.null_count() == col.null_count():
        return as_int
    as_float = col.str.strip_chars().cast(pl.Float64, strict=False)
    if as_float.null_count() == col.null_count():
        return as_float
    lowered = set(values.str.to_lowercase().unique().to_list())
    if lowered <= (_BOOL_TRUE | _BOOL_FALSE) and lowered & _BOOL_TRUE and lowered & _BOOL_FALSE:
        return col.str.to_lowercase().is_in(list(_BOOL_TRUE)).alias(col.name).set(
            col.is_null(), None
        )
    return col


def read_parquet_table(path: Path, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """Read a Parquet file, reporting corruption as a one-line error."""
    pf = open_parquet(path)
    try:
        table = pf.read(columns=list(columns) if columns is not None else None)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputMissingError(f"{path}: corrupt Parquet data ({_short(exc)})") from None
    _check_header(path, table.column_names)
    try:
        return pl.from_arrow(table)  # type: ignore[return-value]
    except Exception as exc:  # noqa: BLE001 - arrow types polars cannot take
        raise InputDataError(f"{path}: unsupported column types ({_short(exc)})") from None


def open_parquet(path: Path) -> pq.ParquetFile:
    """Open a Parquet file lazily (metadata only)."""
    _check_readable(path)
    if _head_bytes(path, 4) != b"PAR1":
        raise InputMissingError(f"{path}: not a Parquet file (wrong magic bytes)")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputMissingError(f"{path}: unreadable or truncated Parquet ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200]


def read_table(path: Path, fmt: str | None = None) -> pl.DataFrame:
    """Read any supported table into a typed polars DataFrame."""
    path = Path(path)
    _check_readable(path)
    kind = detect_format(path, fmt)
    if kind == "parquet":
        df = read_parquet_table(path)
    else:
        sep = "," if kind == "csv" else "\t"
        df = infer_types(read_text_table(path, sep))
    if df.width == 0:
        raise InputDataError(f"{path}: empty table (no columns)")
    if df.height == 0:
        raise InputDataError(f"{path}: empty table (header only, no rows)")
    return df


def find_id_column(df: pl.DataFrame, path: Path, declared: str | None = None) -> str:
    """The patient-ID column: ``declared``, else ``patient_id``, else a conventional name."""
    if declared:
        if declared in df.columns:
            return declared
        raise InputDataError(f"{path}: ID column {declared!r} not found (--id-column)")
    lower = {c.lower(): c for c in df.columns}
    for cand in ID_COLUMN_CANDIDATES:
        if cand in df.columns:
            return cand
        if cand.lower() in lower:
            return lower[cand.lower()]
    raise InputDataError(
        f"{path}: no patient ID column (tried {', '.join(ID_COLUMN_CANDIDATES[:8])}, ...);"
        " name it with --id-column"
    )


def normalise_ids(ids: pl.Series, path: Path, column: str, tcga: bool | None) -> pl.Series:
    """Clean patient IDs: strip whitespace, refuse empty ones, optionally cut TCGA barcodes.

    ``tcga=None`` detects: barcodes are cut to the patient (``TCGA-AB-2802``) when every
    ID is a TCGA barcode.
    """
    if ids.dtype != pl.String:
        ids = ids.cast(pl.String)
    stripped = ids.str.strip_chars()
    missing = stripped.is_null() | (stripped == "")
    if missing.any():
        row = int(missing.arg_max()) + 1  # type: ignore[operator]
        raise InputDataError(f"{path}: row {row}: empty patient ID in column {column!r}")
    if tcga is None:
        tcga = bool(stripped.str.contains(TCGA_BARCODE.pattern).all()) and bool(
            stripped.str.contains(r"^TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4}").all()
        )
    if tcga:
        bad = ~stripped.str.contains(r"^(?i)TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}")
        if bad.any():
            value = stripped.filter(bad)[0]
            raise InputDataError(f"{path}: {value!r} in column {column!r} is not a TCGA barcode")
        stripped = stripped.str.extract(r"^(?i)(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", 1).str.to_uppercase()
    return stripped.alias("patient_id")


def check_unique_ids(ids: pl.Series, path: Path, column: str) -> None:
    """Refuse duplicated patient IDs in a wide table, naming the first one and its rows."""
    dup = ids.is_duplicated()
    if dup.any():
        value = ids.filter(dup)[0]
        rows = [i + 1 for i in (ids == value).arg_true().to_list()[:3]]
        raise InputDataError(
            f"{path}: duplicate patient ID {value!r} in column {column!r} (rows {rows})"
        )


def check_finite_numeric(df: pl.DataFrame, path: Path, id_col: str) -> pl.DataFrame:
    """Molecular tables: every value column numeric and finite (missing allowed).

    Names the first offending cell. Returns the frame with value columns as Float64/32.
    """
    cols = []
    for name in df.columns:
        if name == id_col:
            continue
        col = df[name]
        if col.dtype == pl.String:
            as_float = col.str.strip_chars().cast(pl.Float64, strict=False)
            bad = as_float.is_null() & col.is_not_null()
            row = int(bad.arg_true()[0])
            raise InputDataError(
                f"{path}: non-numeric value {col[row]!r} in column {name!r}, row {row + 1}"
            )
        if col.dtype == pl.Boolean:
            col = col.cast(pl.Float64)
        elif not col.dtype.is_numeric():
            raise InputDataError(f"{path}: column {name!r} has non-numeric type {col.dtype}")
        elif col.dtype not in (pl.Float32, pl.Float64):
            col = col.cast(pl.Float64)
        inf = col.is_infinite()
        if inf.any():
            row = int(inf.arg_true()[0])
            raise InputDataError(
                f"{path}: infinite value in column {name!r}, row {row + 1}"
            )
        if col.dtype == pl.Float64:
            big = col.abs() > 1e300
            if big.any():
                row = int(big.arg_true()[0])
                raise InputDataError(
                    f"{path}: value {col[row]} too large in column {name!r}, row {row + 1}"
                )
        cols.append(col.fill_nan(None))
    return pl.DataFrame([df[id_col], *cols])


def is_long_layout(df: pl.DataFrame, id_col: str) -> bool:
    """Long layout: exactly patient, feature (text) and value columns, patients repeated."""
    if df.width != 3:
        return False
    others = [c for c in df.columns if c != id_col]
    text = [c for c in others if df[c].dtype == pl.String]
    return len(text) == 1 and df[id_col].is_duplicated().any()


def pivot_long(df: pl.DataFrame, path: Path, id_col: str) -> pl.DataFrame:
    """(patient, feature, value) -> wide; conflicting duplicates are refused."""
    others = [c for c in df.columns if c != id_col]
    if len(others) != 2:
        raise InputDataError(f"{path}: long layout needs 3 columns (patient, feature, value)")
    feat = next((c for c in others if df[c].dtype == pl.String), others[0])
    val = next(c for c in others if c != feat)
    df = df.with_columns(pl.col(feat).cast(pl.String).str.strip_chars())
    if df[feat].is_null().any():
        row = int(df[feat].is_null().arg_true()[0]) + 1
        raise InputDataError(f"{path}: row {row}: empty feature name in column {feat!r}")
    counts = df.group_by([id_col, feat]).agg(
        pl.col(val).n_unique().alias("n_values"), pl.len().alias("n")
    )
    conflict = counts.filter(pl.col("n_values") > 1)
    if conflict.height:
        first = conflict.sort([id_col, feat]).row(0, named=True)
        raise InputDataError(
            f"{path}: patient {first[id_col]!r} has conflicting values for feature "
            f"{first[feat]!r} (duplicate (patient, feature) pair)"
        )
    dedup = df.unique(subset=[id_col, feat], keep="first", maintain_order=True)
    wide = dedup.pivot(on=feat, index=id_col, values=val, aggregate_function=None)
    return wide


def read_maf(path: Path, classes: Sequence[str] | None = None) -> tuple[pl.DataFrame, dict]:
    """MAF -> (long calls kept after the class filter, summary).

    Returns a frame with ``patient_id`` (raw barcode), ``gene``, ``variant_class`` for
    the retained calls, and a summary with the covered barcodes (every barcode in the
    MAF, whatever its classes) and the counts removed per class.
    """
    fmt = "parquet" if _head_bytes(path, 4) == b"PAR1" else "maf"
    raw = read_parquet_table(path) if fmt == "parquet" else read_text_table(path, "\t")
    if raw.height == 0:
        raise InputDataError(f"{path}: MAF has no mutation rows")
    missing = [c for c in MAF_REQUIRED if c not in raw.columns]
    if missing:
        raise InputDataError(f"{path}: MAF is missing required column(s) {', '.join(missing)}")
    df = raw.select(
        pl.col("Tumor_Sample_Barcode").cast(pl.String).str.strip_chars().alias("patient_id"),
        pl.col("Hugo_Symbol").cast(pl.String).str.strip_chars().alias("gene"),
        pl.col("Variant_Classification").cast(pl.String).str.strip_chars().alias("variant_class"),
    )
    for col in ("patient_id", "gene", "variant_class"):
        nulls = df[col].is_null() | (df[col] == "")
        if nulls.any():
            row = int(nulls.arg_true()[0]) + 2
            src = {"patient_id": "Tumor_Sample_Barcode", "gene": "Hugo_Symbol",
                   "variant_class": "Variant_Classification"}[col]
            raise InputDataError(f"{path}: row {row}: empty {src}")
    keep = set(classes) if classes is not None else set(MAF_DEFAULT_CLASSES)
    kept = df.filter(pl.col("variant_class").is_in(list(keep)))
    removed = (
        df.filter(~pl.col("variant_class").is_in(list(keep)))
        .group_by("variant_class").len().sort("variant_class")
    )
    summary = {
        "calls": df.height,
        "calls_kept": kept.height,
        "removed_by_class": dict(zip(removed["variant_class"], removed["len"], strict=True)),
        "classes_kept": sorted(keep),
    }
    return kept, {"summary": summary, "covered": df["patient_id"].unique().sort()}


def maf_to_matrix(calls: pl.DataFrame, covered: pl.Series) -> pl.DataFrame:
    """Patient x gene 0/1 matrix (Int8) for every covered patient; covered but
    without a retained call = wild-type (all zeros)."""
    genes = sorted(calls["gene"].unique().to_list())
    base = pl.DataFrame({"patient_id": covered.unique().sort()})
    if not genes:
        return base
    hits = (
        calls.select("patient_id", "gene").unique()
        .with_columns(pl.lit(1, dtype=pl.Int8).alias("hit"))
        .pivot(on="gene", index="patient_id", values="hit")
    )
    wide = base.join(hits, on="patient_id", how="left").with_columns(
        [pl.col(g).fill_null(0).cast(pl.Int8) for g in genes]
    )
    return wide.select("patient_id", *genes)


def finite_or_none(x: float | None) -> float | None:
    """JSON-safe float."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return float(x)
