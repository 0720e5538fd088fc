"""``cohortctl ingest`` on the bundled cohorts: counts, roles, determinism, privacy."""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from cohortctl.ingest import IngestOptions, ingest
from cohortctl.io.readers import TableSpec

#: maftools' ``vc_nonSyn``: the classes the default filter keeps (written out independently).
NONSYN = {"Frame_Shift_Del", "Frame_Shift_Ins", "Splice_Site", "Translation_Start_Site",
          "Nonsense_Mutation", "Nonstop_Mutation", "In_Frame_Del", "In_Frame_Ins",
          "Missense_Mutation"}
KEY = "correct horse battery staple 0123456789"


def manifest(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def stored(store: Path, name: str) -> pl.DataFrame:
    entry = next(t for t in manifest(store)["tables"] if t["name"] == name)
    return pl.read_parquet(store / entry["store_path"])


def laml_args(sample_data: Path) -> list[str | Path]:
    return ["--clinical", sample_data / "laml_tcga" / "clinical.tsv",
            "--genetic", sample_data / "laml_tcga" / "mutations.maf.gz"]


def breast_args(sample_data: Path, split: str = "train") -> list[str | Path]:
    b = sample_data / "breast_tcga"
    mods = ["mrna", "mirna", "protein"] if split == "train" else ["mrna", "mirna"]
    args: list[str | Path] = ["--clinical", b / "clinical.parquet"]
    for m in mods:
        args += ["--molecular", f"{m}={b / f'{m}_{split}.parquet'}"]
    return args


def maf_records(path: Path) -> list[dict[str, str]]:
    """The MAF rows, read with the standard library only."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


# -- LAML: MAF + clinical TSV, no flags ------------------------------------------------
def test_laml_maf_ingests_without_id_flags(cli, sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "laml"
    res = cli("ingest", "-o", out, *laml_args(sample_data))
    assert res.code == 0, res.err
    assert res.out.strip() == str(out) and not res.error_lines

    records = maf_records(sample_data / "laml_tcga" / "mutations.maf.gz")
    patients = {r["Tumor_Sample_Barcode"].strip()[:12] for r in records}
    kept = [r for r in records if r["Variant_Classification"] in NONSYN]
    genes = {r["Hugo_Symbol"] for r in kept}
    pairs = {(r["Tumor_Sample_Barcode"][:12], r["Hugo_Symbol"]) for r in kept}
    assert len(patients) == 193
    assert len(genes) == 1241  # the exact default-filter gene count, also derived above

    m = manifest(out)
    mut = next(t for t in m["tables"] if t["kind"] == "genetic")
    assert (mut["rows"], mut["columns"]) == (193, len(genes))
    assert mut["maf"]["calls"] == len(records) and mut["maf"]["calls_kept"] == len(kept)
    assert sorted(mut["maf"]["classes_kept"]) == sorted(NONSYN)
    matrix = stored(out, "mutations")
    assert set(matrix.columns[1:]) == genes and matrix.height == 193
    assert set(matrix["patient_id"].to_list()) == patients
    ones = matrix.unpivot(index="patient_id").filter(pl.col("value") == 1)
    assert set(zip(ones["patient_id"], ones["variable"], strict=True)) == pairs

    assert m["patients"]["per_table"] == {"clinical:clinical": 200, "genetic:mutations": 193}
    assert m["patients"]["total"] == 200
    assert m["patients"]["lacking"] == {"clinical:clinical": 0, "genetic:mutations": 7}


def test_laml_survival_roles_recognised(cli, sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "laml"
    assert cli("-q", "ingest", "-o", out, *laml_args(sample_data)).code == 0
    roles = manifest(out)["roles"]
    assert roles["time"] == "days_to_last_followup"
    assert roles["event"] == "Overall_Survival_Status"
    with (sample_data / "laml_tcga" / "clinical.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    minus_inf = sum(r["days_to_last_followup"] == "-Inf" for r in rows)
    assert minus_inf == 12
    assert roles["survival_time_nonfinite_as_missing"] == minus_inf
    assert roles["survival_missing"] == minus_inf
    clin = stored(out, "clinical")
    assert clin.schema["days_to_last_followup"] == pl.Float64
    assert clin.schema["Overall_Survival_Status"] == pl.Int8
    assert set(clin["Overall_Survival_Status"].to_list()) == {0, 1}
    assert clin["days_to_last_followup"].min() >= 0


# -- breast: three Parquet tables; the test split lacks protein -------------------------
def test_breast_three_molecular_tables(cli, sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "breast"
    assert cli("-q", "ingest", "-o", out, *breast_args(sample_data), "--reference",
               "subtype").code == 0
    m = manifest(out)
    mol = {t["name"]: t for t in m["tables"] if t["kind"] == "molecular"}
    assert set(mol) == {"mrna", "mirna", "protein"}
    for name, t in mol.items():
        src = pq.ParquetFile(sample_data / "breast_tcga" / f"{name}_train.parquet")
        assert t["rows"] == src.metadata.num_rows == 150
        assert t["columns"] == len(src.schema_arrow.names) - 1
        assert stored(out, name).columns[0] == "patient_id"
    assert m["patients"]["in_all_feature_tables"] == 150
    assert m["roles"]["reference"] == ["subtype"]


def test_breast_test_split_reports_missing_modality(cli, sample_data: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "breast_test"
    res = cli("-q", "ingest", "-o", out, *breast_args(sample_data, "test"))
    assert res.code == 0, res.err
    m = manifest(out)
    assert {t["name"] for t in m["tables"]} == {"clinical", "mrna", "mirna"}
    clin = set(pl.read_parquet(sample_data / "breast_tcga" / "clinical.parquet")["patient_id"])
    mrna = set(pl.read_parquet(sample_data / "breast_tcga" / "mrna_test.parquet")["patient_id"])
    assert len(mrna) == 70 and len(clin) == 220
    p = m["patients"]
    assert p["per_table"]["molecular:mrna"] == p["per_table"]["molecular:mirna"] == 70
    assert p["lacking"]["molecular:mrna"] == len(clin - mrna) == 150
    assert p["lacking"]["molecular:mirna"] == 150
    assert p["lacking_any_feature_table"] == 150


# -- determinism and read-only inputs ---------------------------------------------------
@pytest.mark.parametrize("which", ["laml", "breast"])
def test_ingest_twice_is_byte_identical(cli, sample_data: Path, tmp_path: Path, digest,
                                        which: str) -> None:
    args = laml_args(sample_data) if which == "laml" else breast_args(sample_data)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("-q", "ingest", "-o", a, *args).code == 0
    assert cli("-q", "ingest", "-o", b, *args).code == 0
    da, db = digest(a), digest(b)
    assert set(da) == set(db)
    assert {k: v for k, v in da.items() if k != "manifest.json"} == {
        k: v for k, v in db.items() if k != "manifest.json"}
    ma, mb = manifest(a), manifest(b)
    ma.pop("created"), mb.pop("created")
    assert ma == mb
    lines = [ln for ln in (a / "manifest.json").read_text().splitlines() if '"created"' not in ln]
    assert lines == [ln for ln in (b / "manifest.json").read_text().splitlines()
                     if '"created"' not in ln]
    # and again over the first store with --force: same bytes in place
    assert cli("-q", "ingest", "-o", a, *args, "--force").code == 0
    assert {k: v for k, v in digest(a).items() if k != "manifest.json"} == {
        k: v for k, v in db.items() if k != "manifest.json"}


def test_inputs_are_never_modified(cli, sample_data: Path, tmp_path: Path, digest,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    before = digest(sample_data)
    mtimes = {p: p.stat().st_mtime_ns for p in sample_data.rglob("*") if p.is_file()}
    monkeypatch.setenv("COHORTCTL_PSEUDONYM_KEY", KEY)
    for i, args in enumerate([laml_args(sample_data), breast_args(sample_data),
                              breast_args(sample_data, "test")]):
        assert cli("-q", "ingest", "-o", tmp_path / f"s{i}", *args).code == 0
        assert cli("-q", "ingest", "-o", tmp_path / f"p{i}", *args, "--pseudonymize").code == 0
    assert digest(sample_data) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


# -- pseudonymisation -------------------------------------------------------------------
def _store_text(store: Path) -> bytes:
    """Every byte of the store plus every decoded Parquet value and column name."""
    chunks = []
    for p in sorted(store.rglob("*")):
        if not p.is_file():
            continue
        chunks.append(p.read_bytes())
        if p.suffix == ".parquet":
            df = pl.read_parquet(p)
            chunks.append("\n".join(df.columns).encode())
            for c in df.columns:
                chunks.append("\n".join(map(str, df[c].to_list())).encode())
    return b"\n".join(chunks)


def _expected_pseudonym(key: str, pid: str) -> str:
    return "P" + hmac.new(key.encode(), pid.encode(), hashlib.sha256).hexdigest()[:20]


@pytest.mark.parametrize("cohort", ["breast", "laml"])
def test_pseudonymize(cli, sample_data: Path, tmp_path: Path, digest,
                      monkeypatch: pytest.MonkeyPatch, cohort: str) -> None:
    args = breast_args(sample_data) if cohort == "breast" else laml_args(sample_data)
    if cohort == "breast":
        originals = pl.read_parquet(sample_data / "breast_tcga" / "clinical.parquet")[
            "patient_id"].to_list()
    else:
        originals = [r["Tumor_Sample_Barcode"] for r in maf_records(
            sample_data / "laml_tcga" / "mutations.maf.gz")]
        originals += pl.read_csv(sample_data / "laml_tcga" / "clinical.tsv",
                                 separator="\t")["Tumor_Sample_Barcode"].to_list()
    monkeypatch.setenv("COHORTCTL_PSEUDONYM_KEY", KEY)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("-q", "ingest", "-o", a, *args, "--pseudonymize").code == 0
    assert cli("-q", "ingest", "-o", b, *args, "--pseudonymize").code == 0

    # stable across runs
    da, db = digest(a), digest(b)
    assert {k: v for k, v in da.items() if k != "manifest.json"} == {
        k: v for k, v in db.items() if k != "manifest.json"}
    assert manifest(a)["pseudonymized"] is True

    # consistent across tables, and exactly the keyed HMAC of the cleaned original ID
    tables = {t["name"]: stored(a, t["name"]) for t in manifest(a)["tables"]}
    clin_ids = set(tables["clinical"]["patient_id"])
    expected = {_expected_pseudonym(KEY, pid) for pid in originals}
    assert clin_ids <= expected
    for name, df in tables.items():
        assert set(df["patient_id"]) <= clin_ids, name
        assert all(len(p) == 21 and p.startswith("P") for p in df["patient_id"])
    if cohort == "breast":
        assert set(tables["mrna"]["patient_id"]) == set(tables["protein"]["patient_id"])

    # neither the original IDs nor the key (nor a mapping) anywhere in the store
    blob = _store_text(a)
    assert KEY.encode() not in blob
    leaked = [pid for pid in set(originals) if pid.encode() in blob]
    assert leaked == []
    assert cli("-q", "ingest", "-o", tmp_path / "plain", *args).code == 0
    plain = _store_text(tmp_path / "plain")  # control: the search does find plain IDs
    assert sum(pid.encode() in plain for pid in set(originals)) >= len(clin_ids)

    # another key, other pseudonyms; same key from --key-file, same pseudonyms
    monkeypatch.setenv("COHORTCTL_PSEUDONYM_KEY", KEY + "-other")
    assert cli("-q", "ingest", "-o", tmp_path / "c", *args, "--pseudonymize").code == 0
    assert not set(stored(tmp_path / "c", "clinical")["patient_id"]) & clin_ids
    monkeypatch.delenv("COHORTCTL_PSEUDONYM_KEY")
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert cli("-q", "ingest", "-o", tmp_path / "d", *args, "--pseudonymize",
               "--key-file", key_file).code == 0
    assert set(stored(tmp_path / "d", "clinical")["patient_id"]) == clin_ids


def test_pseudonymize_needs_a_key(cli, sample_data: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTCTL_PSEUDONYM_KEY", raising=False)
    res = cli("ingest", "-o", tmp_path / "s", *laml_args(sample_data), "--pseudonymize")
    assert res.code == 2 and res.error_lines == [res.err.strip()]
    assert "at least 16 bytes" in res.err and not (tmp_path / "s").exists()
    monkeypatch.setenv("COHORTCTL_PSEUDONYM_KEY", "short")
    assert cli("ingest", "-o", tmp_path / "s", *laml_args(sample_data),
               "--pseudonymize").code == 2


# -- library API ------------------------------------------------------------------------
def test_library_ingest_matches_cli(sample_data: Path, tmp_path: Path, cli, digest) -> None:
    b = sample_data / "breast_tcga"
    opts = IngestOptions(out=tmp_path / "lib", clinical=b / "clinical.parquet",
                         molecular=[TableSpec.parse(f"mrna={b / 'mrna_test.parquet'}"),
                                    TableSpec.parse(str(b / "mirna_test.parquet"))])
    m = ingest(opts)
    assert [t["name"] for t in m["tables"]] == ["clinical", "mrna", "mirna_test"]
    res = cli("-q", "ingest", "-o", tmp_path / "cli", "--clinical", b / "clinical.parquet",
              "--molecular", f"mrna={b / 'mrna_test.parquet'}",
              "--molecular", b / "mirna_test.parquet")
    assert res.code == 0
    lib, cl = digest(tmp_path / "lib"), digest(tmp_path / "cli")
    assert {k: v for k, v in lib.items() if k != "manifest.json"} == {
        k: v for k, v in cl.items() if k != "manifest.json"}


def test_json_summary(cli, sample_data: Path, tmp_path: Path) -> None:
    res = cli("-q", "ingest", "-o", tmp_path / "s", *laml_args(sample_data), "--json")
    summary = json.loads(res.out)
    assert summary["path"] == str(tmp_path / "s")
    assert {t["name"]: (t["rows"], t["columns"]) for t in summary["tables"]} == {
        "clinical": (200, 3), "mutations": (193, 1241)}
    assert io.StringIO(res.out).read().count("\n") == 1
