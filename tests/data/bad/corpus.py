"""The malformed-input corpus for ``cohortctl ingest``, generated at test time.

Every case is a set of small input files plus the ``ingest`` arguments that use them and
the documented outcome: refused with an exit status (65 invalid data, 66 missing or
unreadable, 73 cannot write, 2 usage) and a message matching ``match``; or accepted
(exit 0) with a named ``recovery`` that ``tests/test_bad_inputs.py`` checks.

Arguments use ``{d}`` for the case's directory. Write the corpus to look at it::

    python tests/data/bad/corpus.py /tmp/bad-corpus
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

PATIENTS = [f"P{i:02d}" for i in range(1, 9)]


@dataclass(frozen=True)
class Case:
    """One malformed input and what ``cohortctl ingest`` must do with it."""

    name: str
    about: str
    files: dict[str, bytes]
    args: tuple[str, ...]
    exit: int
    match: str = ""  # regex the one-line error message must match (refusals)
    recovery: str = ""  # name of the check of an accepted input
    names_file: str | None = field(default=None)  # file the message must name (default: first)


# -- building blocks ---------------------------------------------------------------------
def csv_bytes(rows: list[list[object]], sep: str = ",", newline: str = "\n") -> bytes:
    """Rows (header first) as delimited text; cells are written with ``str``."""
    return "".join(sep.join(str(c) for c in r) + newline for r in rows).encode()


def mrna_rows(ids: list[str] | None = None) -> list[list[object]]:
    """A valid 3-gene molecular table for ``ids`` (default: P01..P08)."""
    ids = ids or PATIENTS
    return [["patient_id", "G1", "G2", "G3"]] + [
        [pid, f"{i * 0.5:.1f}", f"{(i * 7) % 5 - 2.0:.1f}", f"{i % 3 + 0.25}"]
        for i, pid in enumerate(ids)
    ]


def parquet_bytes(table: pa.Table | pl.DataFrame) -> bytes:
    """A table as Parquet bytes (uncompressed, so corruption hits the intended bytes)."""
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none")
    return buf.getvalue()


def good_mrna_frame(ids: list[str] | None = None) -> pl.DataFrame:
    rows = mrna_rows(ids)
    return pl.DataFrame(
        {h: [r[j] for r in rows[1:]] for j, h in enumerate(rows[0])}
    ).with_columns(pl.col("G1", "G2", "G3").cast(pl.Float64))


def clinical_rows(ids: list[str] | None = None, **cols: list[object]) -> list[list[object]]:
    ids = ids or PATIENTS
    names = list(cols)
    return [["patient_id", *names]] + [
        [pid, *(cols[n][i] for n in names)] for i, pid in enumerate(ids)
    ]


GOOD_MRNA = csv_bytes(mrna_rows())
GOOD_PARQUET = parquet_bytes(good_mrna_frame())
MAF_HEADER = ["Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode"]
MAF_ROWS = [
    ["TP53", "Missense_Mutation", "P01"], ["TP53", "Nonsense_Mutation", "P02"],
    ["FLT3", "In_Frame_Ins", "P03"], ["NPM1", "Frame_Shift_Ins", "P04"],
    ["DNMT3A", "Missense_Mutation", "P05"], ["IDH1", "Missense_Mutation", "P06"],
    ["KIT", "Silent", "P07"], ["TTN", "Intron", "P08"],
]
GOOD_MAF = csv_bytes([MAF_HEADER, *MAF_ROWS], sep="\t")


def mol(name: str, content: bytes, *extra: str) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """Files and args for a lone molecular table ``name``."""
    return {name: content}, ("--molecular", f"mrna={{d}}/{name}", *extra)


def with_clinical(clin_name: str, clin: bytes, *extra: str
                  ) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """A good molecular table plus the clinical table under test."""
    return ({"mrna.csv": GOOD_MRNA, clin_name: clin},
            ("--molecular", "mrna={d}/mrna.csv", "--clinical", f"{{d}}/{clin_name}", *extra))


def _case(name: str, about: str, fa: tuple[dict[str, bytes], tuple[str, ...]], exit: int,
          match: str = "", recovery: str = "", names_file: str | None = None) -> Case:
    files, args = fa
    return Case(name, about, files, args, exit, match, recovery, names_file)


def _parquet_variants() -> list[Case]:
    b = GOOD_PARQUET
    nan = float("nan")
    one_empty = good_mrna_frame().with_columns(pl.lit(nan).alias("G_EMPTY"))
    dup_cols = pa.table([pa.array(PATIENTS), pa.array([1.0] * 8), pa.array([2.0] * 8)],
                        names=["patient_id", "G1", "G1"])
    text_numbers = good_mrna_frame().with_columns(pl.col("G2").cast(pl.String))
    hdr_flip = b[:4] + bytes(x ^ 0xFF for x in b[4:40]) + b[40:]
    return [
        _case("parquet_truncated_half", "first half of a Parquet file",
              mol("mrna.parquet", b[: len(b) // 2]), 66, r"truncated Parquet"),
        _case("parquet_truncated_tail", "Parquet missing its last 10 bytes",
              mol("mrna.parquet", b[:-10]), 66, r"truncated Parquet"),
        _case("parquet_wrong_magic", "PAR0 instead of PAR1 at the start",
              mol("mrna.parquet", b"PAR0" + b[4:]), 66, r"wrong magic bytes"),
        _case("parquet_bad_footer_magic", "footer magic overwritten",
              mol("mrna.parquet", b[:-4] + b"XXXX"), 66, r"truncated Parquet"),
        _case("parquet_bad_footer_length", "footer length larger than the file",
              mol("mrna.parquet", b[:-8] + (10**8).to_bytes(4, "little") + b"PAR1"), 66,
              r"truncated Parquet"),
        _case("parquet_corrupt_page_header", "bytes of the first page header flipped",
              mol("mrna.parquet", hdr_flip), 66, r"corrupt Parquet data"),
        _case("parquet_zero_rows", "schema but no rows",
              mol("mrna.parquet", parquet_bytes(good_mrna_frame().head(0))), 65, r"empty table"),
        _case("parquet_no_columns", "no columns at all",
              mol("mrna.parquet", parquet_bytes(pa.table({}))), 65, r"empty table"),
        _case("parquet_duplicate_columns", "two columns named G1",
              mol("mrna.parquet", parquet_bytes(dup_cols)), 65, r"duplicated column 'G1'"),
        _case("parquet_all_nan", "every value NaN",
              mol("mrna.parquet", parquet_bytes(good_mrna_frame().with_columns(
                  pl.col("G1", "G2", "G3") * nan))), 65, r"every feature column is entirely"),
        _case("parquet_infinite", "an infinite value",
              mol("mrna.parquet", parquet_bytes(good_mrna_frame().with_columns(
                  pl.when(pl.col("patient_id") == "P03").then(float("inf"))
                  .otherwise(pl.col("G2")).alias("G2")))),
              65, r"infinite value inf in column 'G2', row 3"),
        _case("parquet_huge_1e308", "1e308 (its square overflows)",
              mol("mrna.parquet", parquet_bytes(good_mrna_frame().with_columns(
                  pl.when(pl.col("patient_id") == "P05").then(1e308)
                  .otherwise(pl.col("G3")).alias("G3")))),
              65, r"value 1e\+308 in column 'G3', row 5, is too large"),
        _case("parquet_null_id", "a missing patient ID",
              mol("mrna.parquet", parquet_bytes(good_mrna_frame().with_columns(
                  pl.when(pl.col("G1") == 1.0).then(None).otherwise(pl.col("patient_id"))
                  .alias("patient_id")))),
              65, r"row 3: empty patient ID"),
        _case("parquet_numbers_as_text", "a numeric column stored as text",
              mol("mrna.parquet", parquet_bytes(text_numbers)), 0,
              recovery="numbers_as_text_converted"),
        _case("parquet_one_nan_column", "one feature column entirely NaN",
              mol("mrna.parquet", parquet_bytes(one_empty)), 0, recovery="empty_column_dropped"),
        _case("parquet_gzipped", "a gzip-compressed Parquet file",
              mol("mrna.parquet.gz", gzip.compress(b, mtime=0)), 66,
              r"gzip-compressed Parquet cannot be read"),
        _case("parquet_named_csv", "a Parquet file with a .csv name",
              mol("mrna.csv", b), 65, r"not UTF-8 text .*use --format parquet"),
    ]


def _text_variants() -> list[Case]:
    rows = mrna_rows()
    ragged = [r[:] for r in rows]
    ragged[3] = ragged[3][:3]
    mixed = [r[:] for r in rows]
    mixed[4][2] = "high"
    dec_comma = [r[:] for r in rows]
    dec_comma[2][1] = '"1,5"'
    inf = [r[:] for r in rows]
    inf[6][3] = "-inf"
    huge = [r[:] for r in rows]
    huge[2][2] = "1e308"
    nan_all = [rows[0]] + [[r[0], "NA", "NaN", ""] for r in rows[1:]]
    one_missing = [[*r, v] for r, v in zip(rows, ["G_EMPTY"] + ["NA"] * 8, strict=True)]
    dup_cols = [["patient_id", "G1", "G2", "G1"]] + [r[:4] for r in rows[1:]]
    flag_col = [[*r, v] for r, v in zip(rows, ["--force"] + ["1.5"] * 8, strict=True)]
    flag_id = [r[:] for r in rows]
    flag_id[1][0] = "--force"
    empty_name = [["patient_id", "G1", "", "G3"]] + rows[1:]
    dup_ids = [r[:] for r in rows]
    dup_ids[6][0] = "P02"
    bools = [["patient_id", "G1", "FLAG"]] + [
        [pid, f"{i}.5", "true" if i % 2 else "false"] for i, pid in enumerate(PATIENTS)
    ]
    long_ok = [["patient_id", "feature", "value"]] + [
        [pid, g, f"{i + j}.0"] for i, pid in enumerate(PATIENTS) for j, g in enumerate("ABC")
    ]
    long_dup = [*long_ok, long_ok[1]]
    long_conflict = [*long_ok, [long_ok[1][0], long_ok[1][1], "99.0"]]
    long_idname = [*long_ok, ["P01", "patient_id", "1.0"]]
    id_only = [["patient_id"]] + [[p] for p in PATIENTS]
    bom = "\ufeff".encode() + GOOD_MRNA
    unicode_ids = [" P01", "P02\u00a0", "\u200bP03", "P04\t", "P05 ", "\ufeffP06", "P07", "P08"]
    ws_rows = mrna_rows(unicode_ids)
    ws_rows[4][0] = '"P04\t"'
    return [
        _case("csv_ragged_rows", "row 3 has a field missing",
              mol("mrna.csv", csv_bytes(ragged)), 65, r"row 3 has 3 fields, the header has 4"),
        _case("csv_unterminated_quote", "a quote that never closes",
              mol("mrna.csv", GOOD_MRNA.replace(b"P03,", b'"P03,')), 65,
              r"ragged rows\) \(unterminated quote\?\)"),
        _case("csv_mixed_types", "text in a numeric molecular column",
              mol("mrna.csv", csv_bytes(mixed)), 65,
              r"non-numeric value 'high' in column 'G2', row 4"),
        _case("csv_decimal_comma", "a European decimal comma",
              mol("mrna.csv", csv_bytes(dec_comma)), 65,
              r"non-numeric value '1,5' in column 'G1', row 2"),
        _case("csv_infinite", "-inf in a molecular table",
              mol("mrna.csv", csv_bytes(inf)), 65, r"infinite value -inf in column 'G3', row 6"),
        _case("csv_huge_1e308", "1e308 in a molecular table",
              mol("mrna.csv", csv_bytes(huge)), 65, r"value 1e\+308 in column 'G2', row 2"),
        _case("csv_all_nan", "every value NA/NaN/empty",
              mol("mrna.csv", csv_bytes(nan_all)), 65, r"no feature columns"),
        _case("csv_one_missing_column", "one column entirely NA",
              mol("mrna.csv", csv_bytes(one_missing)), 0, recovery="empty_column_dropped"),
        _case("csv_duplicate_columns", "two columns named G1",
              mol("mrna.csv", csv_bytes(dup_cols)), 65,
              r"duplicated column 'G1' \(columns 2 and 4\)"),
        _case("csv_empty_column_name", "a header cell left empty",
              mol("mrna.csv", csv_bytes(empty_name)), 65, r"column 3 has an empty name"),
        _case("csv_column_named_like_flag", "a feature column named --force",
              mol("mrna.csv", csv_bytes(flag_col)), 0, recovery="flag_column_is_data"),
        _case("csv_id_named_like_flag", "a patient ID --force",
              mol("mrna.csv", csv_bytes(flag_id)), 0, recovery="flag_id_is_data"),
        _case("csv_duplicate_ids", "P02 twice in a wide table",
              mol("mrna.csv", csv_bytes(dup_ids)), 65,
              r"duplicate patient ID 'P02' in column 'patient_id' \(rows \[2, 6\]\)"),
        _case("csv_ids_case_only", "P03 and p03",
              mol("mrna.csv", GOOD_MRNA.replace(b"P05,", b"p03,")), 65,
              r"'P03' \(row 3\) and 'p03' \(row 5\) .* differ only by case"),
        _case("csv_ids_padding", "P04 and ' P04 ' (same after stripping)",
              mol("mrna.csv", GOOD_MRNA.replace(b"P06,", b" P04 ,")), 65,
              r"duplicate patient ID 'P04'"),
        _case("csv_ids_unicode_whitespace", "IDs padded with spaces, NBSP, ZWSP, tab, BOM",
              ({"mrna.csv": csv_bytes(ws_rows),
                "clinical.csv": csv_bytes(clinical_rows(age=list(range(50, 58))))},
               ("--molecular", "mrna={d}/mrna.csv", "--clinical", "{d}/clinical.csv")),
              0, recovery="ids_stripped"),
        _case("csv_ids_control_char", "an ID with a control character inside",
              mol("mrna.csv", GOOD_MRNA.replace(b"P02,", b"P\x0102,")), 65,
              r"row 2: patient ID .* contains a control character"),
        _case("csv_ids_empty", "an empty patient ID",
              mol("mrna.csv", GOOD_MRNA.replace(b"P07,", b",")), 65, r"row 7: empty patient ID"),
        _case("csv_no_id_column", "no column that names patients",
              mol("mrna.csv", GOOD_MRNA.replace(b"patient_id,", b"gene_x,")), 65,
              r"no patient ID column"),
        _case("csv_id_column_only", "only the ID column",
              mol("mrna.csv", csv_bytes(id_only)), 65, r"no feature columns"),
        _case("csv_booleans", "a true/false molecular column",
              mol("mrna.csv", csv_bytes(bools)), 0, recovery="booleans_as_01"),
        _case("csv_bom", "UTF-8 byte-order mark before the header",
              mol("mrna.csv", bom), 0, recovery="bom_ignored"),
        _case("csv_crlf", "Windows CRLF line endings",
              mol("mrna.csv", csv_bytes(rows, newline="\r\n")), 0, recovery="crlf_ignored"),
        _case("csv_trailing_separator", "every line ends with a comma",
              mol("mrna.csv", csv_bytes([[*r, ""] for r in rows])), 0,
              recovery="trailing_separator_ignored"),
        _case("csv_gzip_without_gz_name", "gzip content in a file named .csv",
              mol("mrna.csv", gzip.compress(GOOD_MRNA, mtime=0)), 0, recovery="read_ok"),
        _case("tsv_named_csv", "tab-separated content in a .csv file",
              mol("mrna.csv", csv_bytes(rows, sep="\t")), 65, r"use --format tsv"),
        _case("unknown_extension", "no extension to tell the format",
              mol("mrna.dat", GOOD_MRNA), 65, r"cannot tell the format"),
        _case("unknown_extension_with_format", "same, with --format csv",
              mol("mrna.dat", GOOD_MRNA, "--format", "csv"), 0, recovery="read_ok"),
        _case("empty_file", "zero bytes", mol("mrna.csv", b""), 65, r"empty table"),
        _case("whitespace_only", "blank lines only",
              mol("mrna.csv", b"\n  \n\r\n\t\n"), 65, r"empty table"),
        _case("header_only", "a header and no rows (0-row table)",
              mol("mrna.csv", csv_bytes(rows[:1])), 65, r"header only, no rows"),
        _case("binary_garbage", "random bytes named .csv",
              mol("mrna.csv", bytes((i * 151 + 7) % 256 for i in range(600))), 65,
              r"not UTF-8 text"),
        _case("non_utf8_latin1", "an ID with a Latin-1 e-acute",
              mol("mrna.csv", GOOD_MRNA.replace(b"P03", b"Jos\xe9")), 65,
              r"not UTF-8 text \(invalid continuation byte at byte \d+\)"),
        _case("nul_bytes", "a NUL byte in an ID",
              mol("mrna.csv", GOOD_MRNA.replace(b"P05", b"P\x005")), 65, r"control character"),
        _case("zip_named_csv", "an xlsx/zip archive named .csv",
              mol("mrna.csv", b"PK\x03\x04" + bytes(range(256)) * 2), 65, r"not UTF-8 text"),
        _case("html_named_csv", "an HTML error page saved as .csv",
              mol("mrna.csv", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n"),
              65, r"header only|no patient ID column"),
        _case("json_named_csv", "JSON records saved as .csv",
              mol("mrna.csv", b'[{"patient_id": "P01", "G1": 1.0}]\n'), 65,
              r"empty table|no patient ID column|ragged"),
        _case("gzip_not_gzip", "a .csv.gz that is plain text",
              mol("mrna.csv.gz", GOOD_MRNA), 0, recovery="read_ok"),
        _case("gzip_corrupt", "gzip magic bytes, then garbage",
              mol("mrna.csv.gz", b"\x1f\x8b\x08\x00" + bytes(range(200))), 66, r"gzip|cannot read"),
        _case("gzip_truncated", "a gzip stream cut in the middle",
              mol("mrna.csv.gz", gzip.compress(GOOD_MRNA * 20, mtime=0)[:120]), 66,
              r"cannot read|corrupt gzip"),
        _case("long_consistent_duplicates", "long layout, one row repeated",
              mol("mrna.csv", csv_bytes(long_dup)), 0, recovery="long_duplicates_collapsed"),
        _case("long_conflicting_duplicates", "long layout, one pair with two values",
              mol("mrna.csv", csv_bytes(long_conflict)), 65,
              r"patient 'P01' has conflicting values for feature 'A'"),
        _case("long_feature_named_like_id", "long layout, a feature called patient_id",
              mol("mrna.csv", csv_bytes(long_idname)), 65, r"clashes with the ID column"),
        _case("tcga_samples_same_patient", "two sample barcodes of one patient",
              mol("mrna.csv", csv_bytes(mrna_rows([
                  "TCGA-AB-2801-03A", "TCGA-AB-2802-03A", "TCGA-AB-2803-03A",
                  "TCGA-AB-2802-11A", "TCGA-AB-2805-03A", "TCGA-AB-2806-03A",
                  "TCGA-AB-2807-03A", "TCGA-AB-2808-03A"]))), 65,
              r"duplicate patient ID 'TCGA-AB-2802' .* \(rows \[2, 4\]\)"),
        _case("missing_file", "a path that does not exist",
              ({}, ("--molecular", "mrna={d}/nope.csv")), 66, r"nope.csv: no such file"),
    ]


def _maf_variants() -> list[Case]:
    no_vc = csv_bytes([[h for h in MAF_HEADER if h != "Variant_Classification"]]
                      + [[r[0], r[2]] for r in MAF_ROWS], sep="\t")
    silent = csv_bytes([MAF_HEADER] + [[r[0], "Silent", r[2]] for r in MAF_ROWS], sep="\t")
    empty_bc = csv_bytes([MAF_HEADER, *MAF_ROWS[:4], ["KRAS", "Missense_Mutation", ""],
                          *MAF_ROWS[4:]], sep="\t")

    def gen(name: str, content: bytes) -> tuple[dict[str, bytes], tuple[str, ...]]:
        return {name: content}, ("--genetic", f"{{d}}/{name}")

    return [
        _case("maf_missing_columns", "no Variant_Classification column",
              gen("mut.maf", no_vc), 65,
              r"MAF is missing required column\(s\) Variant_Classification"),
        _case("maf_header_only", "a MAF with no mutation rows",
              gen("mut.maf", csv_bytes([MAF_HEADER], sep="\t")), 65, r"no mutation rows"),
        _case("maf_only_silent", "only Silent calls (none kept by the default filter)",
              gen("mut.maf", silent), 65, r"no mutation of the kept variant classes"),
        _case("maf_empty_barcode", "a call without a sample barcode",
              gen("mut.maf", empty_bc), 65, r"row 5: empty Tumor_Sample_Barcode"),
        _case("maf_gz_not_gzip", "a .maf.gz that is plain text",
              gen("mut.maf.gz", GOOD_MAF), 0, recovery="maf_read"),
        _case("maf_gz_corrupt", "a .maf.gz with a broken gzip stream",
              gen("mut.maf.gz", gzip.compress(GOOD_MAF * 30, mtime=0)[:90]), 66,
              r"cannot read|corrupt gzip"),
        _case("maf_version_comment_crlf", "#version line and CRLF endings",
              gen("mut.maf", b"#version 2.4\r\n" + csv_bytes([MAF_HEADER, *MAF_ROWS], sep="\t",
                                                             newline="\r\n")),
              0, recovery="maf_read"),
    ]


def _clinical_and_cohort_variants() -> list[Case]:
    n = len(PATIENTS)
    times = [str(30 * (i + 1)) for i in range(n)]
    events = ["1", "0"] * (n // 2)

    def clin(**cols: list[object]) -> bytes:
        return csv_bytes(clinical_rows(**cols))

    bad_event = events[:]
    bad_event[3] = "maybe"
    neg = times[:]
    neg[5] = "-3"
    inf_t = times[:]
    inf_t[2] = "-Inf"
    text_t = times[:]
    text_t[1] = "12 days"
    words = ["Dead", "Alive", "dead", "ALIVE", "yes", "no", "TRUE", "false"]
    dup_clin = csv_bytes(clinical_rows(age=list(range(n))) + [["P03", 99]])
    mixed = ["1", "2", "three", "4", "5.5", "NA", "7", "8"]
    disjoint = ["Q01", "Q02", "Q03", "Q04", "Q05", "Q06", "Q07", "Q08"]
    return [
        _case("clinical_event_not_binary", "event value 'maybe'",
              with_clinical("clinical.csv", clin(os_time=times, os_event=bad_event)), 65,
              r"event value 'maybe' in column 'os_event', row 4, is not 0/1, true/false",
              names_file="clinical.csv"),
        _case("clinical_negative_time", "a negative survival time",
              with_clinical("clinical.csv", clin(os_time=neg, os_event=events)), 65,
              r"negative survival time -3.0 in column 'os_time', row 6",
              names_file="clinical.csv"),
        _case("clinical_time_text", "a survival time '12 days'",
              with_clinical("clinical.csv", clin(os_time=text_t, os_event=events)), 65,
              r"survival time '12 days' in column 'os_time', row 2, is not a number",
              names_file="clinical.csv"),
        _case("clinical_time_minus_inf", "R's -Inf for no follow-up",
              with_clinical("clinical.csv", clin(os_time=inf_t, os_event=events)), 0,
              recovery="nonfinite_time_missing"),
        _case("clinical_event_words", "Dead/Alive/yes/no/TRUE/false events",
              with_clinical("clinical.csv", clin(os_time=times, os_event=words)), 0,
              recovery="event_words_01"),
        _case("clinical_declared_time_missing", "--time names a column that is not there",
              with_clinical("clinical.csv", clin(os_time=times, os_event=events), "--time",
                            "nonexistent"), 65, r"--time column 'nonexistent' not found",
              names_file="clinical.csv"),
        _case("clinical_duplicate_ids", "P03 twice in the clinical table",
              with_clinical("clinical.csv", dup_clin), 65, r"duplicate patient ID 'P03'",
              names_file="clinical.csv"),
        _case("clinical_mixed_types", "numbers and text in one clinical column",
              with_clinical("clinical.csv", clin(stage=mixed)), 0, recovery="mixed_kept_as_text"),
        _case("clinical_leading_zero_ids", "IDs 001..008 in CSV, matching a Parquet table",
              ({"clinical.csv": csv_bytes(clinical_rows([f"{i:03d}" for i in range(1, 9)],
                                                        age=list(range(8)))),
                "mrna.parquet": parquet_bytes(good_mrna_frame([f"{i:03d}" for i in range(1, 9)]))},
               ("--molecular", "mrna={d}/mrna.parquet", "--clinical", "{d}/clinical.csv")),
              0, recovery="leading_zeros_kept"),
        _case("tables_share_no_patient", "mRNA and miRNA tables with disjoint patients",
              ({"mrna.csv": GOOD_MRNA, "mirna.csv": csv_bytes(mrna_rows(disjoint))},
               ("--molecular", "mrna={d}/mrna.csv", "--molecular", "mirna={d}/mirna.csv")),
              65, r"mrna.csv: table molecular:mrna shares no patient with molecular:mirna"),
        _case("one_patient_table", "a molecular table with a single patient",
              ({"mrna.csv": GOOD_MRNA, "mirna.csv": csv_bytes(mrna_rows(["P01"]))},
               ("--molecular", "mrna={d}/mrna.csv", "--molecular", "mirna={d}/mirna.csv")),
              65, r"only 1 patient\(s\); a molecular table needs at least 3",
              names_file="mirna.csv"),
        _case("cohort_too_small", "4 patients: smaller than any clustering could use",
              mol("mrna.csv", csv_bytes(mrna_rows(PATIENTS[:4]))), 65,
              r"only 4 patients have genetic or molecular data"),
    ]


def cases() -> list[Case]:
    """Every corpus case, names unique."""
    out = [*_parquet_variants(), *_text_variants(), *_maf_variants(),
           *_clinical_and_cohort_variants()]
    names = [c.name for c in out]
    assert len(names) == len(set(names)), "duplicate case names"
    return out


def write_case(case: Case, root: Path) -> tuple[Path, list[str]]:
    """Write a case's files under ``root/<name>``; returns the directory and its args."""
    d = root / case.name
    d.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        (d / name).write_bytes(content)
    return d, [a.replace("{d}", str(d)) for a in case.args]


def main(argv: list[str]) -> int:
    """Write the corpus to ``argv[0]`` with a ``cases.json`` index."""
    root = Path(argv[0] if argv else "bad-corpus")
    index = []
    for case in cases():
        _, args = write_case(case, root)
        index.append({"name": case.name, "about": case.about, "args": args, "exit": case.exit,
                      "match": case.match, "recovery": case.recovery})
    (root / "cases.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"{len(index)} cases in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
