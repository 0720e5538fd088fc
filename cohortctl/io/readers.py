"""Read the tables users actually have (Parquet, CSV, TSV, gzip text, MAF) into polars.

Every failure is raised as a one-line :class:`~cohortctl.errors.CohortError` naming the
file and, where it applies, the column or row. Nothing here writes to disk.

Exit statuses: a file that is absent, a directory, not readable, or whose container
cannot be decoded (corrupt/truncated Parquet or gzip, wrong Parquet magic bytes) is
:class:`~cohortctl.errors.InputMissingError` (66, "input missing or unreadable"); a file
that decodes but whose content is wrong (not UTF-8 text, ragged rows, bad values,
missing columns, duplicate IDs, ...) is :class:`~cohortctl.errors.InputDataError` (65).

``row N`` in messages is the N-th data row (1-based; the header, blank lines and ``#``
comment lines are not counted), so it is the same for a CSV and the Parquet it became.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from polars.exceptions import PanicException

from cohortctl.errors import InputDataError, InputMissingError, UsageError

log = logging.getLogger("cohortctl")

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
        except (OSError, EOFError, zlib.error) as exc:
            raise InputMissingError(f"{path}: corrupt gzip file ({exc})") from None
    return head


def _is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its name)."""
    _check_readable(path)
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


#: A gzip input may expand to GZIP_MAX_RATIO times its size, or at least GZIP_FLOOR bytes,
#: before it is refused as a possible gzip bomb: text tables are held in memory as Python
#: strings (about 6x their size), so a 670 KB file expanding to 200 MB took 1.3 GB.
#: Real tables expand 3-10x (sparse 0/1 matrices up to ~100x).
GZIP_MAX_RATIO = 200
GZIP_FLOOR = 128 * 2**20


class _LimitedReader(io.RawIOBase):
    """A decompressing stream that stops at ``limit`` bytes, *before* handing them on: a
    single 400 MB line in a 400 KB file would otherwise be decompressed whole first."""

    def __init__(self, inner: Any, limit: int, path: Path) -> None:
        self.inner, self.limit, self.path, self.read_bytes = inner, limit, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.inner.readinto(buffer)
        self.read_bytes += n or 0
        if self.read_bytes > self.limit:
            raise InputDataError(
                f"{self.path}: expands to more than {self.read_bytes / 2**20:.0f} MB, over "
                f"{GZIP_MAX_RATIO}x its compressed size: refused as a possible gzip bomb "
                "(decompress it yourself to read it anyway)")
        return n

    def close(self) -> None:
        self.inner.close()
        super().close()


def _text_lines(path: Path) -> Iterator[str]:
    """Decoded lines of a (possibly gzip-compressed) text file; a gzip file that expands
    beyond :data:`GZIP_MAX_RATIO` x its size (and :data:`GZIP_FLOOR`) is refused."""
    gz = _is_gzip(path)
    try:
        if gz:
            limit = max(GZIP_FLOOR, GZIP_MAX_RATIO * path.stat().st_size)
            raw = _LimitedReader(gzip.open(path, "rb"), limit, path)  # noqa: SIM115 - closed with fh
            fh = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", newline="")
        else:
            fh = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
        with fh:
            yield from fh
    except UnicodeDecodeError as exc:
        hint = "; it is a Parquet file: use --format parquet" if _head_bytes(path, 4) == b"PAR1" \
            else ""
        raise InputDataError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}){hint}"
        ) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise InputMissingError(f"{path}: cannot read ({exc})") from None


def read_text_table(path: Path, separator: str) -> pl.DataFrame:
    """Read CSV/TSV (gzip or not) with all columns as text.

    Lines starting with ``#`` before the header (MAF ``#version``, cBioPortal metadata)
    and blank lines (only spaces/line breaks) are skipped; after the header a ``#`` line
    is data (a patient ``#12`` is not silently lost) and a line holding only separators
    is a row of empty cells. Cells are stripped of
    surrounding whitespace; the :data:`NULL_VALUES` spellings are missing.

    Columns are read as strings first and typed afterwards by :func:`infer_types`,
    so that a mixed column is reported by name instead of failing deep in a parser.
    """
    blank = " \t\r\n\x0b\x0c".replace(separator, "")  # a line of separators is a row
    lines: list[str] = []
    for ln in _text_lines(path):
        if ln.strip(blank) and (lines or not ln.startswith("#")):
            lines.append(ln)
    if not lines:
        raise InputDataError(f"{path}: empty table (no header row)")
    decimal_comma = False
    if separator == "," and ";" in lines[0] and "," not in lines[0]:
        # Excel in many locales exports "CSV" with ';' between fields and ',' as the
        # decimal mark (it used to fail as "row 1 has 2 fields, the header has 1").
        separator, decimal_comma = ";", True
        log.info("%s: read as semicolon-separated values with decimal commas "
                 "(a spreadsheet's CSV export)", path)
    import csv

    reader = csv.reader(lines, delimiter=separator)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise InputDataError(f"{path}: malformed {_sep_name(separator)} ({exc})") from None
    header = [h.strip() for h in rows[0]]
    other = "\t" if separator == "," else ","
    if len(header) == 1 and other in header[0]:
        raise InputDataError(
            f"{path}: the header has one column but contains {_sep_name(other)} separators; "
            f"use --format {_sep_name(other).lower()}"
        )
    body = rows[1:]
    if len(header) > 1 and header[-1] == "" and all(len(r) < len(header) or r[-1].strip() == ""
                                                    for r in body):
        # Trailing separator on every line: an unnamed, empty last column. Drop it.
        header = header[:-1]
        body = [r[: len(header)] if len(r) > len(header) else r for r in body]
    check_header(path, header)
    width = len(header)
    for i, row in enumerate(body):
        if len(row) != width:
            # Allow a trailing empty cell produced by a trailing separator.
            if len(row) == width + 1 and row[-1].strip() == "":
                body[i] = row[:-1]
                continue
            hint = " (unterminated quote?)" if any("\n" in cell for cell in row) else ""
            raise InputDataError(
                f"{path}: row {i + 1} has {len(row)} fields, the header has {width} "
                f"(ragged rows){hint}"
            )
    columns = {
        name: [_null_or(r[j].strip()) for r in body] for j, name in enumerate(header)
    }
    df = pl.DataFrame(columns, schema={h: pl.String for h in header})
    if decimal_comma:
        df = df.with_columns(pl.col(pl.String).str.replace(r"^([+-]?\d+),(\d+)$", "$1.$2"))
    return df


def _sep_name(sep: str) -> str:
    return {"\t": "TSV", ";": "semicolon-separated file"}.get(sep, "CSV")


def _null_or(cell: str) -> str | None:
    return None if cell in NULL_VALUES else cell


def check_header(path: Path, header: Sequence[str]) -> None:
    """Refuse empty and duplicated column names, naming their positions."""
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name == "":
            raise InputDataError(f"{path}: column {i} has an empty name")
        if name in seen:
            raise InputDataError(
                f"{path}: duplicated column {name!r} (columns {seen[name]} and {i})"
            )
        seen[name] = i


def infer_types(df: pl.DataFrame, keep_text: Sequence[str] = ()) -> pl.DataFrame:
    """Type string columns: integer, float, boolean, else keep as text.

    A column is an integer or float column only if every non-missing cell parses;
    boolean only if its values are true/false-like with both present. An all-missing
    column becomes Float64. Columns in ``keep_text`` are left as they are.
    """
    schema = df.schema  # once: each df.schema builds the whole schema again
    keep = set(keep_text)
    text = [c for c, dtype in schema.items() if dtype == pl.String and c not in keep]
    if not text:
        return df
    # Frame-wide casts first (a 100,000-column table took 21 s column by column); only
    # the columns that are not all-integer or all-float go through _infer_column.
    wide = len(text) >= WIDE_COLUMNS and df.height > 0 and len(text) > 4 * df.height
    present, n_int, n_float, as_int, as_float = (_casts_on_transpose if wide else _casts)(df, text)
    ints = [c for c, n, ni in zip(text, present, n_int, strict=True) if n and ni == n]
    floats = [c for c, n, ni, nf in zip(text, present, n_int, n_float, strict=True)
              if n == 0 or (ni != n and nf == n)]
    done = set(ints) | set(floats)
    rest = [_infer_column(df[c]) for c in text if c not in done]
    parts = [df.drop(text), as_int.select(ints), as_float.select(floats)]
    return pl.concat([*parts, pl.DataFrame(rest)] if rest else parts,
                     how="horizontal").select(df.columns)


Casts = tuple[list[int], list[int], list[int], pl.DataFrame, pl.DataFrame]


def _casts(df: pl.DataFrame, text: list[str]) -> Casts:
    """Per ``text`` column the non-missing cells, and how many of them parse as Int64 and
    as Float64; with the columns so cast."""
    as_int = df.select(pl.col(text).cast(pl.Int64, strict=False))
    as_float = df.select(pl.col(text).str.strip_chars().cast(pl.Float64, strict=False))

    def counts(frame: pl.DataFrame) -> list[int]:
        return list(frame.select(pl.all().is_not_null().sum()).row(0))

    return counts(df.select(text)), counts(as_int), counts(as_float), as_int, as_float


WIDE_COLUMNS = 1000  # from this many text columns (and 4 x more than rows): on the transpose


def _casts_on_transpose(df: pl.DataFrame, text: list[str]) -> Casts:
    """:func:`_casts` for a short, wide table: on the transpose, where every original
    column is a row, so each cast or count is a handful of column operations instead of
    one per column (100,000 columns x 10 rows: 4 s -> 0.4 s). Same result."""
    wide = df.select(text).transpose()
    ints = wide.select(pl.all().cast(pl.Int64, strict=False))
    floats = wide.select(pl.all().str.strip_chars().cast(pl.Float64, strict=False))

    def counts(frame: pl.DataFrame) -> list[int]:
        return frame.select(pl.sum_horizontal(pl.all().is_not_null())).to_series().to_list()

    return (counts(wide), counts(ints), counts(floats),
            ints.transpose(column_names=text), floats.transpose(column_names=text))


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
    check_header(path, table.column_names)
    return arrow_to_polars(table, path)


def arrow_to_polars(data: pa.Table | pa.RecordBatch, path: Path) -> pl.DataFrame:
    """Arrow data read from ``path`` as polars, without its (possibly corrupt) metadata.

    Schema and field metadata are dropped first: polars panics on metadata that is not
    UTF-8, which a damaged footer can produce. A panic is reported as corrupt data (66);
    Arrow types polars cannot take as invalid data (65).
    """
    try:
        clean = pa.Table.from_arrays(
            list(data.columns),
            schema=pa.schema([f.remove_metadata() for f in data.schema]),
        )
    except (pa.ArrowException, ValueError) as exc:
        raise InputMissingError(f"{path}: corrupt Parquet schema ({_short(exc)})") from None
    nested = [f for f in clean.schema if pa.types.is_nested(f.type)
              or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if nested:
        f = nested[0]
        raise InputDataError(f"{path}: column {f.name!r} holds {f.type} values; cohortctl "
                             "reads flat tables of numbers and text only")
    try:
        return pl.from_arrow(clean)  # type: ignore[return-value]
    except PanicException as exc:
        raise InputMissingError(f"{path}: corrupt Parquet data ({_short(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - arrow types polars cannot take
        raise InputDataError(f"{path}: unsupported column types ({_short(exc)})") from None


def open_parquet(path: Path) -> pq.ParquetFile:
    """Open a Parquet file lazily (metadata only)."""
    if _is_gzip(path):
        raise InputMissingError(
            f"{path}: gzip-compressed Parquet cannot be read; decompress it first "
            "(Parquet is compressed internally)"
        )
    if _head_bytes(path, 4) != b"PAR1":
        raise InputMissingError(f"{path}: not a Parquet file (wrong magic bytes)")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputMissingError(
            f"{path}: unreadable or truncated Parquet ({_short(exc)})"
        ) from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200]


def read_table(path: Path, fmt: str | None = None) -> pl.DataFrame:
    """Read any supported table into a typed polars DataFrame."""
    return read_id_table(path, fmt, id_column=None, find_id=False)[0]


def read_id_table(path: Path, fmt: str | None = None, id_column: str | None = None,
                  *, find_id: bool = True) -> tuple[pl.DataFrame, str]:
    """Read a table and find its patient-ID column (see :func:`find_id_column`).

    In CSV/TSV the ID column is kept as text, never typed, so ``007`` stays ``"007"``.
    Returns the frame and the ID column's name (``""`` when ``find_id`` is false).
    """
    path = Path(path)
    _check_readable(path)
    kind = detect_format(path, fmt)
    if kind == "parquet":
        df = read_parquet_table(path)
    else:
        df = read_text_table(path, "," if kind == "csv" else "\t")
    if df.width == 0:
        raise InputDataError(f"{path}: empty table (no columns)")
    if df.height == 0:
        raise InputDataError(f"{path}: empty table (header only, no rows)")
    id_col = find_id_column(df, path, id_column) if find_id else ""
    if kind != "parquet":
        df = infer_types(df, keep_text=(id_col,) if id_col else ())
    return df, id_col


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


#: Characters stripped from both ends of an ID besides Unicode whitespace (which includes
#: the no-break space): zero-width space/joiners, word joiner and the byte-order mark.
_ID_EDGE_CHARS = "\u200b\u200c\u200d\u2060\ufeff"


def normalise_ids(ids: pl.Series, path: Path, column: str, tcga: bool | None) -> pl.Series:
    """Clean patient IDs so that the same patient matches across tables.

    Rules, in order:

    1. IDs are text; numeric ID columns are written in decimal (``7`` -> ``"7"``). In
       CSV/TSV the ID column is never type-converted, so ``"007"`` keeps its zeros.
    2. Unicode NFKC normalisation: a composed and a decomposed ``é`` are the same ID, and
       so are full-width and ASCII forms (``Ｐ1`` -> ``P1``).
    3. Leading/trailing whitespace (Unicode, incl. no-break space) is stripped, and
       invisible format characters (zero-width spaces and joiners, soft hyphens, byte-order
       marks, bidi controls) are removed wherever they are: ``P\u200b1`` is ``P1``.
    4. Empty IDs and IDs with control or line-break characters inside (C0/C1 controls
       such as tab, newline or NUL; U+2028/U+2029) are refused.
    5. TCGA barcodes are cut to the patient (``TCGA-AB-2802-03A-01W`` -> ``TCGA-AB-2802``)
       and upper-cased, with ``tcga=True``, or with ``tcga=None`` when every ID is one.

    Case is kept; :func:`check_unique_ids` refuses IDs that differ only by case.
    """
    if ids.dtype != pl.String:
        ids = ids.cast(pl.String)
    stripped = (
        ids.str.normalize("NFKC")
        .str.replace_all(_ID_FORMAT_CHARS, "")
        .str.strip_chars()
        .str.strip_chars(_ID_EDGE_CHARS)
        .str.strip_chars()
    )
    missing = stripped.is_null() | (stripped == "")
    if missing.any():
        row = int(missing.arg_max()) + 1  # type: ignore[operator]
        raise InputDataError(f"{path}: row {row}: empty patient ID in column {column!r}")
    control = stripped.str.contains(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
    if control.any():
        row = int(control.arg_max()) + 1  # type: ignore[operator]
        raise InputDataError(
            f"{path}: row {row}: patient ID {stripped[row - 1]!r} in column {column!r} "
            "contains a control character"
        )
    if tcga is None:
        tcga = bool(stripped.str.contains("(?i)" + TCGA_BARCODE.pattern).all())
    if tcga:
        bad = ~stripped.str.contains(r"^(?i)TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}")
        if bad.any():
            value = stripped.filter(bad)[0]
            raise InputDataError(f"{path}: {value!r} in column {column!r} is not a TCGA barcode")
        stripped = stripped.str.extract(r"^(?i)(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", 1)
        stripped = stripped.str.to_uppercase()
    return stripped.alias("patient_id")


#: Invisible format characters removed from IDs (Unicode category Cf in common use).
_ID_FORMAT_CHARS = r"[\p{Cf}\x{034f}\x{fe00}-\x{fe0f}]"  # format chars (bidi isolates and
# tags too), the grapheme joiner and variation selectors: invisible, so never part of an ID
#: Cyrillic and Greek letters drawn like Latin ones (Unicode confusables, the common set).
_CONFUSABLE = str.maketrans(
    "АВЕКМНОРСТХаеорсухіјѕԁԛԝΑΒΕΖΗΙΚΜΝΟΡΤΥΧαιοκνρτυχ",
    "ABEKMHOPCTXaeopcyxijsdqwABEZHIKMNOPTYXaiokvptux")


def id_skeleton(patient_id: str) -> str:
    """What an ID looks like: case-folded, look-alike Cyrillic/Greek letters read as Latin.
    Two different IDs with one skeleton (``P1``, Cyrillic ``Р1``, ``p1``) are refused."""
    return patient_id.translate(_CONFUSABLE).casefold()


def check_unique_ids(ids: pl.Series, path: Path, column: str) -> None:
    """Refuse duplicated patient IDs in a wide table, naming the first one and its rows.

    IDs that differ only by case (``P01``/``p01``) are refused too: they are almost
    always one patient typed twice, and silently keeping both would split it.
    """
    dup = ids.is_duplicated()
    if dup.any():
        value = ids.filter(dup)[0]
        rows = [i + 1 for i in (ids == value).arg_true().to_list()[:3]]
        raise InputDataError(
            f"{path}: duplicate patient ID {value!r} in column {column!r} (rows {rows})"
        )
    folded = ids.map_elements(id_skeleton, return_dtype=pl.String)
    fdup = folded.is_duplicated()
    if fdup.any():
        first = folded.filter(fdup)[0]
        hits = (folded == first).arg_true().to_list()[:2]
        raise InputDataError(
            f"{path}: patient IDs {ids[hits[0]]!r} (row {hits[0] + 1}) and {ids[hits[1]]!r} "
            f"(row {hits[1] + 1}) in column {column!r} differ only by case or by look-alike "
            "letters"
        )


#: Largest magnitude accepted in a molecular table: squares and sums of squares
#: (variances, distances) of such values stay finite in float64.
MAX_ABS_VALUE = 1e150


def numeric_column(col: pl.Series, path: Path, offset: int = 0) -> pl.Series:
    """One molecular column as finite floats (missing allowed), else a one-line error.

    Text holding only numbers is converted; booleans become 0/1; NaN becomes missing;
    an all-missing column of any type becomes Float64. Refused, naming the first
    offending cell (row = data row, 1-based, ``offset`` rows before this chunk):
    non-numeric text, infinite values and values beyond :data:`MAX_ABS_VALUE`.
    """
    name = col.name
    if col.null_count() == col.len():
        dtype = col.dtype if col.dtype in (pl.Float32, pl.Float64) else pl.Float64
        return pl.Series(name, [None] * col.len(), dtype=dtype)
    if col.dtype == pl.String:
        as_float = col.str.strip_chars().cast(pl.Float64, strict=False)
        bad = as_float.is_null() & col.is_not_null()
        if bad.any():
            row = int(bad.arg_true()[0])
            raise InputDataError(
                f"{path}: non-numeric value {col[row]!r} in column {name!r}, "
                f"row {row + 1 + offset}"
            )
        col = as_float
    elif col.dtype == pl.Boolean:
        col = col.cast(pl.Float64)
    elif not col.dtype.is_numeric():
        raise InputDataError(f"{path}: column {name!r} has non-numeric type {col.dtype}")
    elif col.dtype not in (pl.Float32, pl.Float64):
        col = col.cast(pl.Float64)
    col = col.fill_nan(None)  # before comparisons: polars orders NaN above every number
    inf = col.is_infinite().fill_null(False)
    if inf.any():
        row = int(inf.arg_true()[0])
        raise InputDataError(
            f"{path}: infinite value {col[row]} in column {name!r}, row {row + 1 + offset}"
        )
    big = (col.abs() > MAX_ABS_VALUE).fill_null(False)
    if big.any():
        row = int(big.arg_true()[0])
        raise InputDataError(
            f"{path}: value {col[row]:g} in column {name!r}, row {row + 1 + offset}, "
            f"is too large (limit {MAX_ABS_VALUE:g})"
        )
    return col.alias(name)


CHECK_BLOCK_CELLS = 20_000_000  # values checked per numpy block (160 MB)


def check_finite_numeric(df: pl.DataFrame, path: Path, id_col: str) -> pl.DataFrame:
    """Molecular tables: every value column as :func:`numeric_column` would make it.

    Frame-wide: text columns are parsed in one select, the numbers checked as one numpy
    block (the per-column path cost ~0.5 ms a column, 48 s for a 100,000-column table).
    A column that breaks a rule goes through :func:`numeric_column` itself, for its
    exact one-line error.
    """
    values = [c for c in df.columns if c != id_col]
    if not values:
        return df.select(id_col)
    schema = df.schema
    for c in values:
        dtype = schema[c]
        if not (dtype in (pl.String, pl.Boolean, pl.Null) or dtype.is_numeric()):
            numeric_column(df[c], path)  # raises (non-numeric type), unless all missing
    text = [c for c in values if schema[c] == pl.String]
    if text:
        parsed = df.select(pl.col(text).str.strip_chars().cast(pl.Float64, strict=False))
        before = df.select(pl.col(text).is_not_null().sum()).row(0)
        after = parsed.select(pl.all().is_not_null().sum()).row(0)
        for c, b, a in zip(text, before, after, strict=True):
            if b != a:
                numeric_column(df[c], path)  # raises naming the first non-numeric cell
        df = df.with_columns(parsed)
    schema = df.schema
    to_float = [c for c in values if schema[c] not in (pl.Float64, pl.Float32)]
    if to_float:
        df = df.with_columns(pl.col(to_float).cast(pl.Float64))
    nan_cols = []
    step = max(1, CHECK_BLOCK_CELLS // max(1, df.height))  # bounded memory per block
    for start in range(0, len(values), step):
        names = values[start:start + step]
        block = df.select(names).to_numpy().astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            bad = np.isinf(block).any(axis=0) | (np.abs(block) > MAX_ABS_VALUE).any(axis=0)
        for j in np.flatnonzero(bad):
            numeric_column(df[names[j]], path)  # raises naming the cell
        nan_cols += [names[j] for j in np.flatnonzero(np.isnan(block).any(axis=0))]
    if nan_cols:  # NaN and missing are one thing downstream: make them nulls
        df = df.with_columns(pl.col(nan_cols).fill_nan(None))
    return df.select(id_col, *values)


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
    empty = df[feat].is_null() | (df[feat] == "")
    if empty.any():
        row = int(empty.arg_true()[0]) + 1
        raise InputDataError(f"{path}: row {row}: empty feature name in column {feat!r}")
    clash = df[feat] == id_col
    if clash.any():
        row = int(clash.arg_true()[0]) + 1
        raise InputDataError(
            f"{path}: row {row}: feature name {id_col!r} in column {feat!r} clashes with the "
            "ID column"
        )
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
            row = int(nulls.arg_true()[0]) + 1
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
