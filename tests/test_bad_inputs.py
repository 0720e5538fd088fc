"""Bad inputs to ``cohortctl ingest``: a documented status, one line on stderr, no store.

The parametrised corpus (``tests/data/bad/corpus.py``) covers the malformed files; the
named tests below pin the requirements one by one, a few through the real console script.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from cohortctl.errors import EXIT_CANTCREAT, EXIT_DATA, EXIT_NOINPUT, EXIT_USAGE

_spec = importlib.util.spec_from_file_location(
    "bad_corpus", Path(__file__).parent / "data" / "bad" / "corpus.py"
)
assert _spec and _spec.loader
corpus = importlib.util.module_from_spec(_spec)
sys.modules["bad_corpus"] = corpus
_spec.loader.exec_module(corpus)

CASES = corpus.cases()
REFUSAL_CODES = {EXIT_USAGE, EXIT_DATA, EXIT_NOINPUT, EXIT_CANTCREAT}
GOOD = corpus.good_mrna_frame()


def test_corpus_size() -> None:
    """The issue asks for at least 40 malformed inputs."""
    accepted = sum(c.exit == 0 for c in CASES)
    print(f"bad-input corpus: {len(CASES)} cases ({len(CASES) - accepted} refused, "
          f"{accepted} accepted with a recovery)")
    assert len(CASES) >= 40
    assert all(c.exit in REFUSAL_CODES | {0} for c in CASES)
    assert all(bool(c.recovery) == (c.exit == 0) for c in CASES)
    assert all(c.match for c in CASES if c.exit)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-corpus")


def assert_refused(res, code: int, match: str, out: Path, names: str | None) -> None:
    """Documented status, exactly one stderr line naming the file, no traceback, no store."""
    assert res.code == code, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith("cohortctl: error: ")
    assert "Traceback" not in res.err and "internal error" not in res.err
    assert re.search(match, lines[0]), lines[0]
    if names:
        assert names in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case, corpus_root: Path, tmp_path: Path, cli, digest) -> None:
    d, args = corpus.write_case(case, corpus_root)
    before = digest(d)
    out = tmp_path / "store"
    res = cli("-q", "ingest", "-o", out, *args)
    assert digest(d) == before, "an input file was modified"
    if case.exit:
        names = case.names_file or next(iter(case.files), None)
        assert_refused(res, case.exit, case.match, out, names)
    else:
        assert res.code == 0, res.err
        assert res.err == "" and res.out.strip() == str(out)
        RECOVERIES[case.recovery](out)


# -- recoveries of accepted corpus inputs ----------------------------------------------
def manifest(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def stored(store: Path, name: str) -> pl.DataFrame:
    entry = next(t for t in manifest(store)["tables"] if t["name"] == name)
    return pl.read_parquet(store / entry["store_path"])


def entry(store: Path, name: str) -> dict:
    return next(t for t in manifest(store)["tables"] if t["name"] == name)


def _same_as_good(store: Path) -> None:
    got = stored(store, "mrna")
    assert got.columns == GOOD.columns
    assert got.sort("patient_id").equals(GOOD.sort("patient_id"))


def _numbers_as_text(store: Path) -> None:
    assert stored(store, "mrna").schema["G2"] == pl.Float64
    _same_as_good(store)


def _empty_column_dropped(store: Path) -> None:
    assert entry(store, "mrna")["columns_dropped_all_missing"] == ["G_EMPTY"]
    assert entry(store, "mrna")["columns"] == 3
    _same_as_good(store)


def _flag_column(store: Path) -> None:
    df = stored(store, "mrna")
    assert "--force" in df.columns and df["--force"].to_list() == [1.5] * 8


def _flag_id(store: Path) -> None:
    assert "--force" in stored(store, "mrna")["patient_id"].to_list()


def _ids_stripped(store: Path) -> None:
    assert sorted(stored(store, "mrna")["patient_id"].to_list()) == corpus.PATIENTS
    assert manifest(store)["patients"]["lacking"] == {"clinical:clinical": 0, "molecular:mrna": 0}
    _same_as_good(store)


def _booleans(store: Path) -> None:
    df = stored(store, "mrna").sort("patient_id")
    assert df.schema["FLAG"] == pl.Float64
    assert df["FLAG"].to_list() == [0.0, 1.0] * 4


def _leading_zeros(store: Path) -> None:
    ids = [f"{i:03d}" for i in range(1, 9)]
    assert stored(store, "clinical")["patient_id"].to_list() == ids
    assert manifest(store)["patients"]["in_all_feature_tables"] == 8
    assert manifest(store)["patients"]["lacking"]["clinical:clinical"] == 0


def _long_collapsed(store: Path) -> None:
    df = stored(store, "mrna").sort("patient_id")
    assert df.columns == ["patient_id", "A", "B", "C"] and df.height == 8
    assert df.row(0) == ("P01", 0.0, 1.0, 2.0)


def _maf_read(store: Path) -> None:
    df = stored(store, "mut").sort("patient_id")
    assert df.columns == ["patient_id", "DNMT3A", "FLT3", "IDH1", "NPM1", "TP53"]
    assert df["patient_id"].to_list() == corpus.PATIENTS  # P07/P08: covered, wild-type
    assert df.drop("patient_id").sum_horizontal().to_list() == [1] * 6 + [0, 0]


def _nonfinite_time(store: Path) -> None:
    assert manifest(store)["roles"]["survival_time_nonfinite_as_missing"] == 1
    assert manifest(store)["roles"]["survival_missing"] == 1
    clin = stored(store, "clinical").sort("patient_id")
    assert clin["os_time"].to_list()[2] is None and clin["os_time"].null_count() == 1


def _event_words(store: Path) -> None:
    clin = stored(store, "clinical").sort("patient_id")
    assert clin.schema["os_event"] == pl.Int8
    assert clin["os_event"].to_list() == [1, 0, 1, 0, 1, 0, 1, 0]


def _mixed_text(store: Path) -> None:
    assert entry(store, "clinical")["column_types"]["stage"] == "String"
    assert stored(store, "clinical").sort("patient_id")["stage"].to_list()[2] == "three"


def _crlf(store: Path) -> None:
    assert not any("\r" in i for i in stored(store, "mrna")["patient_id"].to_list())
    _same_as_good(store)


RECOVERIES: dict[str, Callable[[Path], None]] = {
    "numbers_as_text_converted": _numbers_as_text,
    "empty_column_dropped": _empty_column_dropped,
    "flag_column_is_data": _flag_column,
    "flag_id_is_data": _flag_id,
    "ids_stripped": _ids_stripped,
    "booleans_as_01": _booleans,
    "bom_ignored": _same_as_good,
    "crlf_ignored": _crlf,
    "trailing_separator_ignored": _same_as_good,
    "read_ok": _same_as_good,
    "long_duplicates_collapsed": _long_collapsed,
    "maf_read": _maf_read,
    "nonfinite_time_missing": _nonfinite_time,
    "event_words_01": _event_words,
    "mixed_kept_as_text": _mixed_text,
    "leading_zeros_kept": _leading_zeros,
}


def test_every_recovery_is_used() -> None:
    assert {c.recovery for c in CASES if c.recovery} == set(RECOVERIES)


# -- requirement B, one by one ---------------------------------------------------------
def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.fixture
def good_mrna(tmp_path: Path) -> Path:
    return _write(tmp_path / "mrna.csv", corpus.GOOD_MRNA)


def test_missing_file(cli, tmp_path: Path) -> None:
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", tmp_path / "absent.parquet")
    assert_refused(res, EXIT_NOINPUT, r"absent.parquet: no such file", tmp_path / "s", None)


def test_missing_clinical_file(cli, tmp_path: Path, good_mrna: Path) -> None:
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna,
              "--clinical", tmp_path / "clin.tsv")
    assert_refused(res, EXIT_NOINPUT, r"clin.tsv: no such file", tmp_path / "s", None)


@pytest.mark.parametrize("values", [[[1, 2]], [{"a": 1}], [b"\x00raw"]],
                         ids=["list", "struct", "binary"])
def test_nested_clinical_column_refused_at_ingest(cli, tmp_path: Path, good_mrna: Path,
                                                  values: list) -> None:
    """A list/struct/binary column used to ingest, and then crashed ``report`` (exit 1)."""
    ids = pl.read_csv(good_mrna)["patient_id"].to_list()
    pl.DataFrame({"patient_id": ids, "tags": values * len(ids)}).write_parquet(
        tmp_path / "clin.parquet")
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna,
              "--clinical", tmp_path / "clin.parquet")
    assert_refused(res, EXIT_DATA, r"clin.parquet: column 'tags' holds .* values",
                   tmp_path / "s", None)


def test_missing_role_column_suggests_the_closest(cli, tmp_path: Path, good_mrna: Path) -> None:
    ids = pl.read_csv(good_mrna)["patient_id"].to_list()
    pl.DataFrame({"patient_id": ids, "OS_days": [10.0] * len(ids),
                  "OS_event": [1] * len(ids)}).write_parquet(tmp_path / "clin.parquet")
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna,
              "--clinical", tmp_path / "clin.parquet", "--time", "OS_day", "--event", "OS_event")
    assert_refused(res, EXIT_DATA, r"--time column 'OS_day' not found; did you mean "
                   r"'OS_days'\? \(columns: OS_days, OS_event\)", tmp_path / "s", None)


def test_directory_as_input(cli, tmp_path: Path) -> None:
    (tmp_path / "mrna.csv").mkdir()
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", tmp_path / "mrna.csv")
    assert_refused(res, EXIT_NOINPUT, r"is a directory", tmp_path / "s", "mrna.csv")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(cli, tmp_path: Path, good_mrna: Path) -> None:
    good_mrna.chmod(0)
    try:
        res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna)
    finally:
        good_mrna.chmod(0o644)
    assert_refused(res, EXIT_NOINPUT, r"cannot read", tmp_path / "s", "mrna.csv")


@pytest.mark.parametrize("cut", [0.5, 0.9, -8])
def test_corrupt_parquet_is_unreadable_input(cli, tmp_path: Path, cut: float) -> None:
    """Per errors.py: a container that cannot be decoded is 'unreadable' (66), always."""
    b = corpus.GOOD_PARQUET
    n = int(len(b) * cut) if cut > 0 else len(b) + int(cut)
    bad = _write(tmp_path / "m.parquet", b[:n])
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", bad)
    assert_refused(res, EXIT_NOINPUT, r"m.parquet: unreadable or truncated Parquet",
                   tmp_path / "s", None)


@pytest.mark.parametrize("content", ["", "patient_id,G1\n"], ids=["empty", "header-only"])
def test_empty_table(cli, tmp_path: Path, content: str) -> None:
    bad = _write(tmp_path / "m.csv", content)
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", bad)
    assert_refused(res, EXIT_DATA, r"m.csv: empty table", tmp_path / "s", None)


def test_no_id_column(cli, tmp_path: Path) -> None:
    bad = _write(tmp_path / "m.csv", "gene_a,gene_b\n1,2\n3,4\n")
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", bad)
    assert_refused(res, EXIT_DATA, r"m.csv: no patient ID column .* --id-column",
                   tmp_path / "s", None)


def test_declared_id_column_missing(cli, tmp_path: Path, good_mrna: Path) -> None:
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna, "--id-column", "pid")
    assert_refused(res, EXIT_DATA, r"mrna.csv: ID column 'pid' not found \(--id-column\)",
                   tmp_path / "s", None)


def test_duplicate_patient_ids_wide(cli, tmp_path: Path) -> None:
    text = corpus.GOOD_MRNA.decode().replace("P05,", "P01,")
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", _write(tmp_path / "m.csv", text))
    assert_refused(res, EXIT_DATA, r"m.csv: duplicate patient ID 'P01' in column 'patient_id' "
                   r"\(rows \[1, 5\]\)", tmp_path / "s", None)


def test_duplicate_pairs_conflicting_long(cli, tmp_path: Path) -> None:
    rows = ["patient_id,feature,value"] + [f"P{i:02d},{g},{i}.5" for i in range(1, 9)
                                           for g in ("A", "B")]
    text = "\n".join([*rows, "P04,B,7.25"]) + "\n"
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", _write(tmp_path / "m.csv", text))
    assert_refused(res, EXIT_DATA, r"m.csv: patient 'P04' has conflicting values for feature "
                   r"'B'", tmp_path / "s", None)


def test_non_numeric_cell_names_row_and_column(cli, tmp_path: Path) -> None:
    text = corpus.GOOD_MRNA.decode().replace("P06,2.5,", "P06,2.5x,")
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", _write(tmp_path / "m.csv", text))
    assert_refused(res, EXIT_DATA, r"m.csv: non-numeric value '2.5x' in column 'G1', row 6",
                   tmp_path / "s", None)


def test_non_numeric_cell_in_parquet(cli, tmp_path: Path) -> None:
    g3 = GOOD["G3"].cast(pl.String).to_list()
    g3[6] = "n/a?"
    df = GOOD.with_columns(pl.Series("G3", g3))
    path = tmp_path / "m.parquet"
    df.write_parquet(path)
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", path)
    assert_refused(res, EXIT_DATA, r"m.parquet: non-numeric value 'n/a\?' in column 'G3', row 7",
                   tmp_path / "s", None)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_entirely_missing_column_warns_and_drops(cli, tmp_path: Path, fmt: str) -> None:
    df = GOOD.with_columns(pl.lit(None, dtype=pl.Float64).alias("EMPTY"))
    path = tmp_path / f"m.{fmt}"
    df.write_csv(path) if fmt == "csv" else df.write_parquet(path)
    out = tmp_path / "s"
    res = cli("ingest", "-o", out, "--molecular", path)
    assert res.code == 0, res.err
    assert "Traceback" not in res.err and not res.error_lines
    assert "column 'EMPTY' is entirely missing; dropped" in " ".join(res.err.split())
    assert entry(out, "m")["columns_dropped_all_missing"] == ["EMPTY"]
    assert stored(out, "m").columns == GOOD.columns


def test_tables_sharing_no_patient(cli, tmp_path: Path, good_mrna: Path) -> None:
    other = _write(tmp_path / "mirna.csv", corpus.csv_bytes(corpus.mrna_rows(
        [f"p{i:02d}" for i in range(1, 9)])))
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna, "--molecular", other)
    # Refused as look-alike IDs (p02 vs P02) before the tables are found disjoint.
    assert_refused(res, EXIT_DATA, r"mirna.csv: patient ID 'p0\d' looks like 'P0\d' in .*"
                   r"mrna.csv \(they differ only by case", tmp_path / "s", None)


def _clinical(tmp_path: Path, **cols: list[str]) -> Path:
    return _write(tmp_path / "clin.csv", corpus.csv_bytes(corpus.clinical_rows(**cols)))


TIMES = [str(10 * i) for i in range(1, 9)]
EVENTS = ["1", "0"] * 4


def test_declared_outcome_column_missing(cli, tmp_path: Path, good_mrna: Path) -> None:
    clin = _clinical(tmp_path, os_time=TIMES, os_event=EVENTS)
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna, "--clinical", clin,
              "--time", "nonexistent")
    assert_refused(res, EXIT_DATA, r"clin.csv: --time column 'nonexistent' not found",
                   tmp_path / "s", None)


def test_role_flag_without_clinical_is_usage_error(cli, tmp_path: Path, good_mrna: Path) -> None:
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna, "--event", "os_event")
    assert_refused(res, EXIT_USAGE, r"--event name clinical columns but no --clinical",
                   tmp_path / "s", None)


@pytest.mark.parametrize("value", ["2", "maybe", "0.5", "-1"])
def test_event_values_not_binary(cli, tmp_path: Path, good_mrna: Path, value: str) -> None:
    events = EVENTS[:]
    events[4] = value
    clin = _clinical(tmp_path, os_time=TIMES, os_event=events)
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna, "--clinical", clin)
    assert_refused(res, EXIT_DATA, r"clin.csv: event value .* in column 'os_event', row 5, "
                   r"is not 0/1, true/false", tmp_path / "s", None)


def test_negative_survival_time(cli, tmp_path: Path, good_mrna: Path) -> None:
    times = TIMES[:]
    times[6] = "-0.5"
    clin = _clinical(tmp_path, days=times, vital=EVENTS)
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna, "--clinical", clin,
              "--time", "days", "--event", "vital")
    assert_refused(res, EXIT_DATA, r"clin.csv: negative survival time -0.5 in column 'days', "
                   r"row 7", tmp_path / "s", None)


def test_existing_store_without_force(cli, tmp_path: Path, good_mrna: Path, digest) -> None:
    out = tmp_path / "s"
    assert cli("ingest", "-o", out, "--molecular", good_mrna).code == 0
    before = digest(out)
    res = cli("ingest", "-o", out, "--molecular", good_mrna)
    assert res.code == EXIT_CANTCREAT
    assert res.err.strip() == f"cohortctl: error: {out}: already exists (use --force to replace it)"
    assert digest(out) == before
    assert cli("ingest", "-o", out, "--molecular", good_mrna, "--force").code == 0


def test_output_under_a_file(cli, tmp_path: Path, good_mrna: Path) -> None:
    blocker = _write(tmp_path / "afile", "x")
    res = cli("ingest", "-o", blocker / "s", "--molecular", good_mrna)
    assert res.code == EXIT_CANTCREAT and len(res.err.strip().splitlines()) == 1
    assert "afile/s: cannot create output" in res.err and "Traceback" not in res.err


def test_failed_ingest_keeps_previous_store(cli, tmp_path: Path, good_mrna: Path,
                                            digest) -> None:
    """--force with a bad input: the old store stays whole, no temp dir is left."""
    out = tmp_path / "s"
    assert cli("ingest", "-o", out, "--molecular", good_mrna).code == 0
    before = digest(out)
    bad = _write(tmp_path / "bad.csv", "patient_id,G1\nP01,x\n")
    res = cli("ingest", "-o", out, "--molecular", bad, "--force")
    assert res.code == EXIT_DATA
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "mrna.csv", "s"]


def test_debug_does_not_change_data_errors(cli, tmp_path: Path) -> None:
    bad = _write(tmp_path / "m.csv", "patient_id,G1\nP01,x\n")
    res = cli("--debug", "ingest", "-o", tmp_path / "s", "--molecular", bad)
    assert res.code == EXIT_DATA and "Traceback" not in res.err


# -- through the real console script ---------------------------------------------------
SUBPROCESS_CASES = ["parquet_truncated_half", "csv_mixed_types", "binary_garbage",
                    "missing_file", "clinical_event_not_binary"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_corpus_exit_status_via_console_script(name: str, corpus_root: Path, tmp_path: Path,
                                               cli_process) -> None:
    case = next(c for c in CASES if c.name == name)
    _, args = corpus.write_case(case, corpus_root)
    out = tmp_path / "store"
    res = cli_process("ingest", "-o", out, *args)
    assert_refused(res, case.exit, case.match, out, None)


def test_existing_store_via_console_script(tmp_path: Path, good_mrna: Path, cli_process) -> None:
    out = tmp_path / "s"
    out.mkdir()
    res = cli_process("ingest", "-o", out, "--molecular", good_mrna)
    assert res.code == EXIT_CANTCREAT and res.err.count("\n") == 1
    assert "already exists" in res.err and "Traceback" not in res.err


@pytest.mark.parametrize("labels", [("1:DECEASED", "0:LIVING"),
                                    ("1:Recurred/Progressed", "0:DiseaseFree"),
                                    ("dead", "alive")])
def test_coded_event_labels_ingest(cli, tmp_path: Path, good_mrna: Path,
                                   labels: tuple[str, str]) -> None:
    """cBioPortal's coded labels were refused at ingest while the survival code took them:
    one vocabulary (cohortctl/vocabulary.py) now serves both."""
    ids = pl.read_csv(good_mrna)["patient_id"].to_list()
    events = [labels[i % 2] for i in range(len(ids))]
    pl.DataFrame({"patient_id": ids, "os_months": [float(i + 1) for i in range(len(ids))],
                  "status": events}).write_parquet(tmp_path / "clin.parquet")
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna, "--clinical",
              tmp_path / "clin.parquet", "--time", "os_months", "--event", "status")
    assert res.code == 0, res.err
    stored = pl.read_parquet(tmp_path / "s" / "tables" / "clinical.parquet")
    assert stored["status"].to_list() == [1 - i % 2 for i in range(len(ids))]


def test_existing_output_refused_before_reading_inputs(cli, tmp_path: Path,
                                                       good_mrna: Path) -> None:
    """Re-running the tour: exit 73 at once, without the inputs' warnings first."""
    assert cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna).code == 0
    bad = tmp_path / "broken.csv"
    bad.write_text("patient_id,g1\nP1,1\n")
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", bad)
    assert res.code == EXIT_CANTCREAT and "already exists" in res.err
    assert len(res.err.strip().splitlines()) == 1


def test_lookalike_ids_normalised_or_refused(cli, tmp_path: Path, good_mrna: Path) -> None:
    """Full-width and zero-width variants are the same patient after normalisation; a
    Cyrillic look-alike in another table is refused instead of becoming a second patient."""
    ids = pl.read_csv(good_mrna)["patient_id"].to_list()
    first = ids[0]
    full_width = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in first)
    variants = [full_width, ids[1][:1] + "\u200b\u2066\ufe0f" + ids[1][1:], *ids[2:]]
    pl.DataFrame({"patient_id": variants, "age": list(range(len(ids)))}).write_parquet(
        tmp_path / "clin.parquet")
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", good_mrna,
              "--clinical", tmp_path / "clin.parquet")
    assert res.code == 0, res.err
    stored = set(pl.read_parquet(tmp_path / "s" / "tables" / "clinical.parquet")["patient_id"])
    assert stored == set(ids)  # joined with the expression table, no extra patients
    cyrillic = {"P": "\u0420", "A": "\u0410", "C": "\u0421", "E": "\u0415", "O": "\u041e"}
    assert any(ch in cyrillic for ch in first), first
    fake = "".join(cyrillic.get(ch, ch) for ch in first)
    pl.DataFrame({"patient_id": [fake, *ids[1:]], "age": list(range(len(ids)))}).write_parquet(
        tmp_path / "clin2.parquet")
    res = cli("ingest", "-o", tmp_path / "s2", "--molecular", good_mrna,
              "--clinical", tmp_path / "clin2.parquet")
    assert_refused(res, EXIT_DATA, r"looks like .* look-alike letters", tmp_path / "s2", None)


def test_gzip_bomb_refused_early(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 good_mrna: Path) -> None:
    """A gzip that expands hundreds of times is refused once it passes the floor, instead of
    being held in memory (a 670 KB file expanding to 200 MB took 1.3 GB). Measured on a
    592 KB -> 200 MB file: refused after 0.7 s at 254 MB peak RSS."""
    import gzip

    from cohortctl.io import readers

    monkeypatch.setattr(readers, "GZIP_FLOOR", 2**20)  # keep the test file small
    bomb = tmp_path / "bomb.csv.gz"
    with gzip.open(bomb, "wt", compresslevel=9) as fh:
        fh.write("patient_id," + ",".join(f"g{j}" for j in range(200)) + "\n")
        row = "," + ",".join(["0"] * 200) + "\n"
        for _ in range(20000):
            fh.write("P" + row)  # identical rows: refused before any row is parsed
    res = cli("ingest", "-o", tmp_path / "s", "--molecular", bomb)
    assert_refused(res, EXIT_DATA, r"bomb.csv.gz: expands to more than \d+ MB, over 200x",
                   tmp_path / "s", None)
    normal = tmp_path / "mrna.csv.gz"
    normal.write_bytes(gzip.compress(good_mrna.read_bytes()))
    assert cli("ingest", "-o", tmp_path / "ok", "--molecular", normal).code == 0
    # One endless line: counted while decompressing, not after the line is complete.
    line = tmp_path / "line.tsv.gz"
    with gzip.open(line, "wb", compresslevel=9) as fh:
        fh.write(b"patient_id\t" + b"0\t" * 4_000_000)
    res = cli("ingest", "-o", tmp_path / "s3", "--molecular", line)
    assert_refused(res, EXIT_DATA, r"line.tsv.gz: expands to more than", tmp_path / "s3", None)
