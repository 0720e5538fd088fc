"""Unit tests of :mod:`cohortctl.io.readers`: formats, ID rules, typing, MAF handling."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import polars as pl
import pytest

from cohortctl import errors
from cohortctl.errors import InputDataError, InputMissingError, UsageError
from cohortctl.io import readers
from cohortctl.io.readers import TableSpec

P = Path("t.csv")


def test_error_classes_carry_documented_statuses() -> None:
    assert (errors.UsageError.exit_code, errors.InputDataError.exit_code,
            errors.InputMissingError.exit_code, errors.OutputError.exit_code) == (2, 65, 66, 73)
    assert str(InputDataError("a\nb   c")) == "a b c"  # always one line


# -- table specs and formats ------------------------------------------------------------
@pytest.mark.parametrize(("text", "name", "path"), [
    ("mrna=data/x.parquet", "mrna", "data/x.parquet"),
    ("data/mutations.maf.gz", "mutations", "data/mutations.maf.gz"),
    ("expr matrix.csv", "expr_matrix", "expr matrix.csv"),
    ("a.b-c_1=x.tsv", "a.b-c_1", "x.tsv"),
])
def test_table_spec_parse(text: str, name: str, path: str) -> None:
    spec = TableSpec.parse(text)
    assert (spec.name, spec.path) == (name, Path(path))


def test_table_spec_existing_file_with_equals_sign(tmp_path: Path) -> None:
    f = tmp_path / "k=v.csv"
    f.write_text("x")
    assert TableSpec.parse(str(f)) == TableSpec("k_v", f)


@pytest.mark.parametrize("bad", ["=x.csv", "bad name=x.csv", "-o=x.csv", "a/b=x.csv"])
def test_table_spec_bad_name(bad: str) -> None:
    with pytest.raises(UsageError):
        TableSpec.parse(bad)


@pytest.mark.parametrize(("name", "fmt"), [
    ("a.parquet", "parquet"), ("a.PQ", "parquet"), ("a.csv.gz", "csv"), ("a.tsv", "tsv"),
    ("a.txt", "tsv"), ("a.tab", "tsv"), ("a.maf", "maf"), ("a.MAF.GZ", "maf"),
])
def test_detect_format_by_extension(tmp_path: Path, name: str, fmt: str) -> None:
    assert readers.detect_format(tmp_path / name) == fmt


def test_detect_format_by_magic_and_declared(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    pl.DataFrame({"a": [1]}).write_parquet(f)
    assert readers.detect_format(f) == "parquet"
    assert readers.detect_format(f, "csv") == "csv"
    with pytest.raises(UsageError, match="--format must be one of"):
        readers.detect_format(f, "xlsx")
    g = tmp_path / "blob2"
    g.write_text("a,b\n")
    with pytest.raises(InputDataError, match="cannot tell the format"):
        readers.detect_format(g)


def test_unreadable_file_is_exit_66(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "m.csv"
    f.write_text("patient_id,a\nP1,1\n")
    real_open = Path.open

    def deny(self: Path, *a, **k):  # noqa: ANN002, ANN003, ANN202
        if self == f:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *a, **k)

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(InputMissingError, match=r"m.csv: cannot read \(Permission denied\)"):
        readers.read_table(f)


# -- text tables ------------------------------------------------------------------------
def _text(tmp_path: Path, content: bytes | str, name: str = "t.csv") -> Path:
    f = tmp_path / name
    f.write_bytes(content.encode() if isinstance(content, str) else content)
    return f


def test_text_table_bom_crlf_comments_trailing_separator(tmp_path: Path) -> None:
    raw = "\ufeff# exported by X\r\npatient_id,a,b,\r\n\r\nP1, 1 ,x,\r\nP2,NA,\"y, z\",\r\n"
    df = readers.read_text_table(_text(tmp_path, raw), ",")
    assert df.columns == ["patient_id", "a", "b"]
    assert df.rows() == [("P1", "1", "x"), ("P2", None, "y, z")]


def test_text_table_quoted_newline_and_tsv_gzip(tmp_path: Path) -> None:
    f = _text(tmp_path, gzip.compress(b'id\tnote\nP1\t"two\nlines"\n'), "t.tsv.gz")
    assert readers.read_text_table(f, "\t").rows() == [("P1", "two\nlines")]


def test_hash_lines_after_the_header_are_data(tmp_path: Path) -> None:
    f = _text(tmp_path, "#meta\n#more\npatient_id\tg\n#12\t1\n\t\nP2\t2\n", "t.tsv")
    df = readers.read_text_table(f, "\t")
    assert df.rows() == [("#12", "1"), (None, None), ("P2", "2")]  # separators-only = a row


@pytest.mark.parametrize("null", readers.NULL_VALUES)
def test_null_spellings(tmp_path: Path, null: str) -> None:
    df = readers.read_text_table(_text(tmp_path, f"patient_id,a\nP1,{null}\nP2,2\n"), ",")
    assert df["a"].to_list() == [None, "2"]


def test_ragged_row_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"t.csv: row 2 has 3 fields, the header has 2"):
        readers.read_text_table(_text(tmp_path, "patient_id,a\nP1,1\nP2,2,3\n"), ",")


def test_id_column_stays_text_in_csv(tmp_path: Path) -> None:
    f = _text(tmp_path, "patient_id,n\n007,1\n7,2\n")
    df, id_col = readers.read_id_table(f)
    assert id_col == "patient_id" and df["patient_id"].to_list() == ["007", "7"]
    assert df.schema["n"] == pl.Int64
    assert readers.read_table(f)["patient_id"].to_list() == [7, 7]  # plain read_table types it


def test_find_id_column_order_and_case() -> None:
    df = pl.DataFrame(schema=["Sample_ID", "PATIENT", "x"])
    assert readers.find_id_column(df, P) == "PATIENT"
    assert readers.find_id_column(df, P, "x") == "x"
    with pytest.raises(InputDataError, match="ID column 'y' not found"):
        readers.find_id_column(df, P, "y")


@pytest.mark.parametrize(("values", "dtype", "out"), [
    (["1", "2", None], pl.Int64, [1, 2, None]),
    (["1", "2.5", "1e3"], pl.Float64, [1.0, 2.5, 1000.0]),
    (["yes", "No", None], pl.Boolean, [True, False, None]),
    (["1", "two", "3"], pl.String, ["1", "two", "3"]),
    (["yes", "yes"], pl.String, ["yes", "yes"]),
    ([None, None], pl.Float64, [None, None]),
])
def test_infer_types(values: list, dtype: pl.DataType, out: list) -> None:
    df = readers.infer_types(pl.DataFrame({"c": values}, schema={"c": pl.String}))
    assert df.schema["c"] == dtype and df["c"].to_list() == out


# -- IDs --------------------------------------------------------------------------------
def _ids(*values: object, tcga: bool | None = None) -> list[str]:
    return readers.normalise_ids(pl.Series("id", list(values)), P, "id", tcga).to_list()


def test_id_normalisation_rules() -> None:
    assert _ids(" a", "b\u00a0", "\u200bc\ufeff", "\u2060 d \t") == ["a", "b", "c", "d"]
    assert _ids("Jose\u0301") == ["Jos\u00e9"]  # NFC
    assert _ids("a b") == ["a b"]  # inner space kept
    assert _ids("MiXeD") == ["MiXeD"]  # case kept
    assert readers.normalise_ids(pl.Series([7, 12]), P, "id", None).to_list() == ["7", "12"]


def test_tcga_barcodes_cut_only_when_all_are_barcodes() -> None:
    assert _ids("TCGA-AB-2802-03A-01W", "tcga-ab-2803") == ["TCGA-AB-2802", "TCGA-AB-2803"]
    assert _ids("TCGA-AB-2802-03A", "P7") == ["TCGA-AB-2802-03A", "P7"]
    assert _ids("TCGA-AB-2802-03A", tcga=False) == ["TCGA-AB-2802-03A"]
    with pytest.raises(InputDataError, match="'P7' in column 'id' is not a TCGA barcode"):
        _ids("TCGA-AB-2802", "P7", tcga=True)


@pytest.mark.parametrize(("values", "match"), [
    (["a", " "], r"row 2: empty patient ID"),
    (["a", None], r"row 2: empty patient ID"),
    (["a\tb"], r"row 1: patient ID 'a\\tb' .* control character"),
    (["a\x00"], r"control character"),
])
def test_bad_ids_refused(values: list, match: str) -> None:
    with pytest.raises(InputDataError, match=match):
        _ids(*values)


def test_check_unique_ids() -> None:
    readers.check_unique_ids(pl.Series(["a", "b"]), P, "id")
    with pytest.raises(InputDataError, match=r"duplicate patient ID 'a' .* \(rows \[1, 3\]\)"):
        readers.check_unique_ids(pl.Series(["a", "b", "a"]), P, "id")
    with pytest.raises(InputDataError, match=r"'Ab' \(row 1\) and 'aB' \(row 3\) .* by case"):
        readers.check_unique_ids(pl.Series(["Ab", "c", "aB"]), P, "id")


# -- molecular values -------------------------------------------------------------------
def test_numeric_column_conversions() -> None:
    f = readers.numeric_column
    assert f(pl.Series("g", ["1", " 2.5", None]), P).to_list() == [1.0, 2.5, None]
    assert f(pl.Series("g", [True, False]), P).to_list() == [1.0, 0.0]
    assert f(pl.Series("g", [1.0, math.nan]), P).to_list() == [1.0, None]
    assert f(pl.Series("g", [None, None]), P).dtype == pl.Float64
    assert f(pl.Series("g", [1.5], dtype=pl.Float32), P).dtype == pl.Float32
    assert f(pl.Series("g", [-1e150, 1e150]), P).to_list() == [-1e150, 1e150]


@pytest.mark.parametrize(("values", "match"), [
    (["1", "x"], r"non-numeric value 'x' in column 'g', row 12"),
    ([1.0, math.inf], r"infinite value inf in column 'g', row 12"),
    ([-math.inf], r"infinite value -inf in column 'g', row 11"),
    ([0.0, -2e150], r"value -2e\+150 in column 'g', row 12, is too large"),
])
def test_numeric_column_refusals(values: list, match: str) -> None:
    with pytest.raises(InputDataError, match=match):
        readers.numeric_column(pl.Series("g", values), P, offset=10)


def test_numeric_column_refuses_nested_types() -> None:
    with pytest.raises(InputDataError, match="non-numeric type"):
        readers.numeric_column(pl.Series("g", [[1], [2]]), P)


# -- long layout ------------------------------------------------------------------------
def test_pivot_long() -> None:
    df = pl.DataFrame({"pid": ["a", "a", "b", "a"], "f": ["x", "y", "x", "x"],
                       "v": [1.0, 2.0, 3.0, 1.0]})
    assert readers.is_long_layout(df, "pid")
    wide = readers.pivot_long(df, P, "pid").sort("pid")
    assert wide.rows() == [("a", 1.0, 2.0), ("b", 3.0, None)]
    with pytest.raises(InputDataError, match="patient 'a' has conflicting values for feature 'x'"):
        readers.pivot_long(df.vstack(pl.DataFrame({"pid": ["a"], "f": ["x"], "v": [9.0]})), P,
                           "pid")


# -- MAF --------------------------------------------------------------------------------
MAF = ("#version 2.4\nHugo_Symbol\tVariant_Classification\tTumor_Sample_Barcode\n"
       "TP53\tMissense_Mutation\tS1\nTP53\tNonsense_Mutation\tS1\nKIT\tSilent\tS2\n"
       "FLT3\tIn_Frame_Ins\tS3\n")


def test_read_maf_default_filter_and_coverage(tmp_path: Path) -> None:
    calls, meta = readers.read_maf(_text(tmp_path, MAF, "m.maf"))
    assert calls["gene"].to_list() == ["TP53", "TP53", "FLT3"]
    assert meta["summary"]["removed_by_class"] == {"Silent": 1}
    assert meta["covered"].to_list() == ["S1", "S2", "S3"]
    matrix = readers.maf_to_matrix(calls, meta["covered"])
    assert matrix.columns == ["patient_id", "FLT3", "TP53"]
    assert matrix.rows() == [("S1", 0, 1), ("S2", 0, 0), ("S3", 1, 0)]
    assert matrix.schema["TP53"] == pl.Int8


def test_read_maf_custom_classes_and_parquet(tmp_path: Path) -> None:
    text = _text(tmp_path, MAF, "m.maf")
    pq_path = tmp_path / "m.parquet"
    readers.read_text_table(text, "\t").write_parquet(pq_path)
    for path in (text, pq_path):
        calls, _ = readers.read_maf(path, ["Silent"])
        assert calls["gene"].to_list() == ["KIT"]


def test_read_maf_missing_columns(tmp_path: Path) -> None:
    f = _text(tmp_path, "Hugo_Symbol\tTumor_Sample_Barcode\nTP53\tS1\n", "m.maf")
    with pytest.raises(InputDataError, match=r"missing required column\(s\) Variant_Class"):
        readers.read_maf(f)


def test_finite_or_none() -> None:
    assert [readers.finite_or_none(x) for x in (None, math.nan, math.inf, 2)] == [
        None, None, None, 2.0]


def test_wide_typing_equals_column_by_column() -> None:
    """The transposed path for short, wide tables gives exactly the per-column result,
    for integer, float, boolean-like, text, partly and wholly missing columns."""
    import numpy as np
    import polars as pl

    from cohortctl.io import readers

    rng = np.random.default_rng(4)
    rows = 6
    kinds = ["int", "float", "bool", "text", "missing", "mixed", "sci"]
    cols: dict[str, list[str | None]] = {"patient_id": [f"P{i}" for i in range(rows)]}
    for j in range(1400):
        kind = kinds[j % len(kinds)]
        if kind == "int":
            vals = [str(v) for v in rng.integers(-50, 50, rows)]
        elif kind == "float":
            vals = [f"{v:.3f}" for v in rng.normal(size=rows)]
        elif kind == "bool":
            vals = [["yes", "no"][k] for k in rng.integers(0, 2, rows)]
            vals[0], vals[1] = "yes", "no"
        elif kind == "text":
            vals = [f"t{k}" for k in rng.integers(0, 3, rows)]
        elif kind == "missing":
            vals = [None] * rows
        elif kind == "mixed":
            vals = ["1", "2.5", " 3 ", None, "4", "x"]
        else:
            vals = ["1e3", "2E-2", None, "7", "-0.5", "3"]
        if kind in ("int", "float") and j % 3 == 0:
            vals[2] = None
        cols[f"c{j}"] = vals
    df = pl.DataFrame(cols, schema={c: pl.String for c in cols})
    wide = readers.infer_types(df, keep_text=("patient_id",))
    per_column = pl.DataFrame([df["patient_id"],
                               *[readers._infer_column(df[c]) for c in df.columns[1:]]])
    assert wide.columns == per_column.columns
    assert wide.dtypes == per_column.dtypes
    assert wide.equals(per_column)


def test_spreadsheet_csv_export_with_semicolons_and_decimal_commas(tmp_path) -> None:
    """Excel in many locales writes ';' between fields and ',' as the decimal mark, with a
    byte-order mark: read as such, not refused as ragged rows."""
    from cohortctl.io import readers

    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffpatient_id;g1;note\nP1;1,5;a,b\nP2;-0,25;c\n".encode())
    df = readers.read_text_table(path, ",")
    assert df.columns == ["patient_id", "g1", "note"]
    assert df["g1"].to_list() == ["1.5", "-0.25"]
    assert df["note"].to_list() == ["a,b", "c"]  # only numbers change their decimal mark
    typed = readers.infer_types(df, keep_text=("patient_id",))
    assert typed["g1"].to_list() == [1.5, -0.25]
    plain = tmp_path / "plain.csv"
    plain.write_text("patient_id,g1\nP1,1.5\n")
    assert readers.read_text_table(plain, ",")["g1"].to_list() == ["1.5"]
