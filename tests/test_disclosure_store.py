"""Disclosure control at ingest: attacks on the store (issue 15).

Every test ingests a small synthetic cohort through the real CLI or library and tries to
recover what the store must not give away: raw identifiers in any cell, the pairing of
pseudonyms with raw IDs through row order, identifier columns in plain stores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import cohortctl.ingest as ing
from cohortctl.errors import EXIT_DATA, EXIT_USAGE
from cohortctl.ingest import (
    ANALYSABLE,
    IDENTIFIER,
    QUASI_IDENTIFIER,
    IngestOptions,
    classify_columns,
    ingest,
    pseudonym,
)
from cohortctl.io.readers import TableSpec

KEY = "disclosure-test key 0123456789abcdef"
N = 40
TREATMENTS = ["carboplatin then paclitaxel weekly for twelve weeks",
              "doxorubicin and cyclophosphamide every three weeks"]
# Raw identifiers, sorted: the order an export from a hospital system typically has.
RAW_IDS = [f"PAT{i:04d}" for i in range(1, N + 1)]
SAMPLE_IDS = [f"SMP-{9000 + i}-T1" for i in range(N)]
MRNS = [f"MRN{7_000_100 + 7 * i}" for i in range(N)]
NAMES = [f"Firstname{i} Lastname{i}" for i in range(N)]
DOBS = [f"19{50 + i % 40:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(N)]
NOTES = [f"seen in clinic {i}, tolerating cycle {i % 6} well, daughter attends visits"
         for i in range(N)]
SECRETS = {"patient ID": RAW_IDS, "sample ID": SAMPLE_IDS, "MRN": MRNS, "name": NAMES,
           "date of birth": DOBS, "note": NOTES}


def _cohort(root: Path) -> dict[str, Path]:
    """Clinical TSV with identifiers, a streamable molecular Parquet, a 0/1 genetic TSV
    and an outcome TSV; every table's rows sorted by raw patient ID."""
    rng = np.random.default_rng(15)
    root.mkdir(parents=True, exist_ok=True)
    clinical = pl.DataFrame({
        "patient_id": RAW_IDS,
        "sample_id": SAMPLE_IDS,
        "MRN": MRNS,
        "patient_name": NAMES,
        "date_of_birth": DOBS,
        "clinician_notes": NOTES,
        "history": [NOTES[i % 30] for i in range(N)],     # free text under a plain name
        "linked_specimen": [f"{p}-01A" for p in RAW_IDS],  # raw IDs under a plain name
        "age": rng.permutation(np.arange(30, 30 + N)),    # all distinct, numeric
        "weight_kg": rng.normal(70, 10, N).round(3),      # all distinct, numeric
        "sex": rng.choice(["F", "M"], N),
        "subtype": rng.choice(["LumA", "LumB", "Basal"], N),
        "ward": rng.choice(["W1", "W2"], N),
        "regimen": [TREATMENTS[i % 2] + f" (course {i})" for i in range(N)],
        "os_time": rng.uniform(10, 2000, N).round(1),
        "os_event": rng.integers(0, 2, N),
    })
    clinical.write_csv(root / "clinical.tsv", separator="\t")
    mol = pl.DataFrame({"patient_id": RAW_IDS,
                        **{f"g{j}": rng.normal(size=N) for j in range(6)}})
    mol.write_parquet(root / "mrna.parquet")
    gen = pl.DataFrame({"patient_id": RAW_IDS,
                        **{f"GENE{j}": rng.integers(0, 2, N) for j in range(5)}})
    gen.write_csv(root / "mut.tsv", separator="\t")
    out = pl.DataFrame({"patient_id": RAW_IDS, "mrn": MRNS,
                        "drug_a_ic50": rng.lognormal(size=N)})
    out.write_csv(root / "drugs.tsv", separator="\t")
    return {"clinical": root / "clinical.tsv", "mrna": root / "mrna.parquet",
            "mut": root / "mut.tsv", "drugs": root / "drugs.tsv"}


def _args(paths: dict[str, Path], *extra: str) -> list[str | Path]:
    return ["--clinical", paths["clinical"], "--molecular", f"mrna={paths['mrna']}",
            "--genetic", f"mut={paths['mut']}", "--outcome", f"drugs={paths['drugs']}",
            "--treatment", "regimen", *extra]


def _manifest(store: Path) -> dict[str, Any]:
    return json.loads((store / "manifest.json").read_text())


def _tables(store: Path) -> dict[str, pl.DataFrame]:
    return {t["name"]: pl.read_parquet(store / t["store_path"])
            for t in _manifest(store)["tables"]}


@pytest.fixture
def cohort(tmp_path: Path) -> dict[str, Path]:
    return _cohort(tmp_path / "in")


# -- attack 1: raw identifiers in any cell --------------------------------------------
def test_pseudonymised_store_holds_no_raw_identifier(cli, cohort, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHORTCTL_PSEUDONYM_KEY", KEY)
    store = tmp_path / "p"
    res = cli("ingest", "-o", store, *_args(cohort), "--pseudonymize")
    assert res.code == 0, res.err
    tables = _tables(store)
    assert set(tables) == {"clinical", "mrna", "mut", "drugs"}
    cells = [str(v) for df in tables.values() for c in df.columns for v in df[c].to_list()]
    cells += [c for df in tables.values() for c in df.columns]
    cells.append((store / "manifest.json").read_text())
    for what, values in SECRETS.items():
        leaked = [v for v in values if any(v in cell for cell in cells)]
        assert leaked == [], f"raw {what} found in the store"
    # control: the same scan finds them in the inputs
    raw = (cohort["clinical"].read_text())
    assert all(v in raw for values in SECRETS.values() for v in values)
    # what stays: the analysable and quasi-identifying columns, under pseudonyms
    clin = tables["clinical"]
    assert set(clin.columns) == {"patient_id", "age", "weight_kg", "sex", "subtype", "ward",
                                 "regimen", "os_time", "os_event"}
    assert set(clin["patient_id"]) == {pseudonym(KEY.encode(), p) for p in RAW_IDS}
    assert tables["drugs"].columns == ["patient_id", "drug_a_ic50"]


# -- attack 2: row order pairs pseudonyms with sorted raw IDs ----------------------------
@pytest.mark.parametrize("streamed_in_passes", [False, True])
def test_row_order_does_not_follow_raw_ids(cohort, tmp_path: Path, streamed_in_passes: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    if streamed_in_passes:  # every streamed table counts as "too large to sort in memory"
        monkeypatch.setattr(ing, "STREAM_SORT_MAX_CELLS", 20)
        real = ing._write_in_passes
        monkeypatch.setattr(ing, "_write_in_passes",
                            lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = IngestOptions(
        out=tmp_path / "s", clinical=cohort["clinical"],
        molecular=[TableSpec.parse(f"mrna={cohort['mrna']}")],
        genetic=[TableSpec.parse(f"mut={cohort['mut']}")],
        outcome=[TableSpec.parse(f"drugs={cohort['drugs']}")],
        roles={"treatment": "regimen"}, pseudonym_key=KEY.encode())
    ingest(opts)
    assert calls == ([1] if streamed_in_passes else [])
    raw_of = {pseudonym(KEY.encode(), p): p for p in RAW_IDS}
    for name, df in _tables(tmp_path / "s").items():
        stored = df["patient_id"].to_list()
        assert stored == sorted(stored), name  # pseudonym order ...
        recovered = [raw_of[p] for p in stored]
        assert recovered != RAW_IDS, name      # ... which is not the raw order
        # the attack: pair the stored rows with the sorted raw IDs
        hits = sum(a == b for a, b in zip(recovered, RAW_IDS, strict=True))
        assert hits <= 4, name
    # sorting in passes stores exactly what the in-memory sort stores
    mrna = _tables(tmp_path / "s")["mrna"]
    src = pl.read_parquet(cohort["mrna"]).with_columns(
        pl.col("patient_id").replace_strict({v: k for k, v in raw_of.items()}))
    assert mrna.equals(src.sort("patient_id"))


def test_passes_sort_large_streamed_table_with_bounded_windows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several passes, several row groups, missing values and a dropped empty column."""
    rng = np.random.default_rng(3)
    n = 300
    ids = [f"ID{i:05d}" for i in range(n)]
    x = rng.normal(size=(n, 4))
    x[rng.random((n, 4)) < 0.1] = np.nan
    df = pl.DataFrame({"patient_id": ids, **{f"f{j}": x[:, j] for j in range(4)},
                       "empty": [float("nan")] * n})
    src = tmp_path / "big.parquet"
    df.write_parquet(src, row_group_size=64)
    monkeypatch.setattr(ing, "STREAM_SORT_MAX_CELLS", 500)  # 100-row windows: 3 passes
    ingest(IngestOptions(out=tmp_path / "s", molecular=[TableSpec.parse(f"m={src}")],
                         pseudonym_key=KEY.encode()))
    got = _tables(tmp_path / "s")["m"]
    want = df.drop("empty").with_columns(
        pl.col("patient_id").map_elements(lambda p: pseudonym(KEY.encode(), p),
                                          return_dtype=pl.String)).fill_nan(None)
    assert got.equals(want.sort("patient_id"))
    entry = _manifest(tmp_path / "s")["tables"][0]
    assert entry["columns_dropped_all_missing"] == ["empty"] and entry["rows"] == n


def test_plain_store_large_streamed_table_keeps_input_order(
        cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pseudonyms the raw IDs are in the store anyway: no extra passes."""
    monkeypatch.setattr(ing, "STREAM_SORT_MAX_CELLS", 20)
    shuffled = pl.read_parquet(cohort["mrna"]).sample(fraction=1.0, shuffle=True, seed=1)
    shuffled.write_parquet(tmp_path / "shuffled.parquet")
    ingest(IngestOptions(out=tmp_path / "s",
                         molecular=[TableSpec.parse(f"mrna={tmp_path / 'shuffled.parquet'}")]))
    assert _tables(tmp_path / "s")["mrna"].equals(shuffled)


# -- identifier columns: dropped in every store; flags and roles ------------------------
def test_plain_store_drops_identifier_columns(cli, cohort, tmp_path: Path) -> None:
    store = tmp_path / "plain"
    res = cli("ingest", "-o", store, *_args(cohort), "--json")
    assert res.code == 0, res.err
    tables = _tables(store)
    dropped_clinical = {"sample_id", "MRN", "patient_name", "date_of_birth", "clinician_notes",
                        "history", "linked_specimen"}
    assert not dropped_clinical & set(tables["clinical"].columns)
    assert "mrn" not in tables["drugs"].columns
    cells = " ".join(str(v) for df in tables.values() for c in df.columns[1:]
                     for v in df[c].to_list())
    for what in ("sample ID", "MRN", "name", "date of birth", "note"):
        assert not any(v in cells for v in SECRETS[what]), what
    # one log record per table naming the columns and why (rich wraps long records)
    err = "".join(res.err.split())
    assert err.count("droppedidentifiercolumns") == 2
    clin_line = err.split("clinical.tsv:droppedidentifiercolumns:")[1].split("WARNING")[0]
    for col, why in [("MRN", "name"), ("history", "freetext"),
                     ("linked_specimen", "holdspatientIDs")]:
        assert f"{col}({why})" in clin_line
    # the --json summary and the manifest say the same
    summary = json.loads(res.out)
    assert {(d["table"], d["column"]) for d in summary["identifier_columns_dropped"]} == {
        *(("clinical", c) for c in dropped_clinical), ("drugs", "mrn")}
    m = _manifest(store)
    classes = m["columns"]["clinical"]
    assert {c for c, v in classes.items() if v["sensitivity"] == IDENTIFIER} == dropped_clinical
    assert {c for c, v in classes.items() if v["sensitivity"] == QUASI_IDENTIFIER} == {
        "age", "sex"}
    assert classes["weight_kg"] == {"sensitivity": ANALYSABLE, "reason": ""}
    assert classes["history"]["reason"].startswith("free text")
    # other tables list only what is not analysable; feature tables here have nothing
    assert m["columns"]["drugs"] == {"mrn": {"sensitivity": IDENTIFIER, "reason": "name: mrn"}}
    assert set(m["columns"]) == {"clinical", "drugs"}
    entry = next(t for t in m["tables"] if t["name"] == "clinical")
    assert set(entry["columns_dropped_identifier"]) == dropped_clinical
    assert "MRN" not in entry["column_types"]


def test_allow_and_identifier_columns_flags(cli, cohort, tmp_path: Path) -> None:
    store = tmp_path / "s"
    res = cli("-q", "ingest", "-o", store, *_args(cohort),
              "--allow-columns", "history", "--identifier-columns", "ward,drug_a_ic50")
    assert res.code == 0, res.err
    tables = _tables(store)
    assert "history" in tables["clinical"].columns  # kept: the user takes responsibility
    assert "ward" not in tables["clinical"].columns
    assert tables["drugs"].columns == ["patient_id"]
    classes = _manifest(store)["columns"]
    assert classes["clinical"]["history"] == {"sensitivity": ANALYSABLE,
                                              "reason": "--allow-columns"}
    assert classes["clinical"]["ward"] == {"sensitivity": IDENTIFIER,
                                           "reason": "--identifier-columns"}


def test_declared_roles_and_numeric_columns_are_never_dropped(cli, cohort,
                                                              tmp_path: Path) -> None:
    store = tmp_path / "s"
    # regimen (treatment) is long, all-distinct text; clinician_notes is the reference
    res = cli("-q", "ingest", "-o", store, *_args(cohort), "--reference", "clinician_notes")
    assert res.code == 0, res.err
    clin = _tables(store)["clinical"]
    for col in ("regimen", "clinician_notes", "os_time", "os_event", "age", "weight_kg"):
        assert col in clin.columns, col
    assert clin["age"].n_unique() == clin["weight_kg"].n_unique() == N
    classes = _manifest(store)["columns"]["clinical"]
    assert classes["regimen"]["sensitivity"] == ANALYSABLE
    assert classes["regimen"]["reason"] == (
        "role, kept although identifier by unique values: 100% distinct")
    assert classes["clinician_notes"]["sensitivity"] == ANALYSABLE
    assert classes["age"]["sensitivity"] == QUASI_IDENTIFIER


def test_feature_table_identifier_columns_dropped_on_the_streamed_path(
        tmp_path: Path) -> None:
    """A numeric ID-like column in a molecular matrix never becomes a stored feature."""
    rng = np.random.default_rng(0)
    df = pl.DataFrame({"patient_id": RAW_IDS, "record_id": np.arange(N) + 10_000,
                       "NHS": rng.normal(size=N), "HLA-DOB": rng.normal(size=N)})
    df.write_parquet(tmp_path / "m.parquet")
    m = ingest(IngestOptions(out=tmp_path / "s",
                             molecular=[TableSpec.parse(f"m={tmp_path / 'm.parquet'}")]))
    stored = _tables(tmp_path / "s")["m"]
    assert stored.columns == ["patient_id", "NHS", "HLA-DOB"]  # gene symbols stay
    assert m["columns"]["m"] == {"record_id": {"sensitivity": IDENTIFIER,
                                               "reason": "name: record_id"}}


def test_sample_data_loses_no_column(cli, sample_data: Path, tmp_path: Path) -> None:
    b = sample_data / "breast_tcga"
    res = cli("-q", "ingest", "-o", tmp_path / "b", "--clinical", b / "clinical.parquet",
              "--molecular", f"mrna={b / 'mrna_train.parquet'}", "--reference", "subtype",
              "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["identifier_columns_dropped"] == []
    assert _manifest(tmp_path / "b")["columns"]["clinical"] == {
        "split": {"sensitivity": ANALYSABLE, "reason": ""},
        "subtype": {"sensitivity": ANALYSABLE, "reason": "role"}}


# -- bad flags: one line, documented status ---------------------------------------------
@pytest.mark.parametrize(("flags", "code", "message"), [
    (["--identifier-columns", "no_such_column"], EXIT_DATA, "'no_such_column' not found"),
    (["--allow-columns", "nope"], EXIT_DATA, "'nope' not found"),
    (["--identifier-columns", "ward", "--allow-columns", "ward"], EXIT_USAGE, "both"),
    (["--identifier-columns", "regimen"], EXIT_USAGE, "treatment column"),
    (["--identifier-columns", "patient_id"], EXIT_USAGE, "patient ID column"),
])
def test_bad_column_flags(cli, cohort, tmp_path: Path, flags: list[str], code: int,
                          message: str) -> None:
    res = cli("ingest", "-o", tmp_path / "s", *_args(cohort), *flags)
    assert res.code == code
    assert res.error_lines == [ln for ln in res.err.splitlines() if ln.strip()
                               and "dropped identifier" not in ln]
    assert len(res.error_lines) == 1 and message in res.error_lines[0]
    assert "Traceback" not in res.err and not (tmp_path / "s").exists()


def test_input_id_column_cannot_be_dropped(cli, sample_data: Path, tmp_path: Path) -> None:
    """The MAF's and clinical TSV's ID column (stored as patient_id) is the key."""
    laml = sample_data / "laml_tcga"
    res = cli("ingest", "-o", tmp_path / "s", "--clinical", laml / "clinical.tsv",
              "--genetic", laml / "mutations.maf.gz",
              "--identifier-columns", "Tumor_Sample_Barcode")
    assert res.code == EXIT_USAGE and len(res.error_lines) == 1
    assert "patient ID column" in res.error_lines[0] and "Traceback" not in res.err


# -- classify_columns, the pure function ---------------------------------------------------
def test_classify_columns_rules() -> None:
    n = 25
    df = pl.DataFrame({
        "patient_id": [f"X{i:03d}" for i in range(n)],
        "PatientName": [f"N{i}" for i in range(n)],
        "drug_name": ["aspirin"] * n,
        "batch_id": ["b1", "b2"] * 12 + ["b1"],
        "postcode": [f"AB{i} 1CD" for i in range(n)],       # unique but quasi by name
        "diagnosed": [f"2020-01-{1 + i:02d}" for i in range(n)],  # date values
        "label": [f"L{i}" for i in range(n)],               # unique text
        "score": np.arange(n, dtype=float),                  # unique numbers
        "stage": ["I", "II", "III", "IV", "II"] * 5,
        "year_of_birth": [1950 + i for i in range(n)],
    })
    got = {c: v["sensitivity"] for c, v in classify_columns(df).items()}
    assert got == {"PatientName": IDENTIFIER, "drug_name": ANALYSABLE, "batch_id": ANALYSABLE,
                   "postcode": QUASI_IDENTIFIER, "diagnosed": QUASI_IDENTIFIER,
                   "label": IDENTIFIER, "score": ANALYSABLE, "stage": ANALYSABLE,
                   "year_of_birth": QUASI_IDENTIFIER}
    forced = classify_columns(df, roles=["label"], forced_identifiers=["stage"],
                              allowed=["PatientName"])
    assert forced["PatientName"]["sensitivity"] == ANALYSABLE
    assert forced["stage"]["sensitivity"] == IDENTIFIER
    assert forced["label"]["sensitivity"] == ANALYSABLE  # a role is never an identifier
    # few values: neither the unique-value nor the free-text rule applies
    small = pl.DataFrame({"patient_id": ["a", "b", "c"], "label": ["x", "y", "z"]})
    assert classify_columns(small)["label"]["sensitivity"] == ANALYSABLE
