"""One-time conversion of cBioPortal's importer test study (``study_es_0``) into wide Parquet.

Run by hand, never by cohortctl or the tests::

    python bench/convert_cbioportal.py /path/to/cbioportal_study_es_0 [sample_data/cbioportal_es_0]

Writes, one row per patient with ``patient_id`` first:

- ``cna_log2.parquet``      from ``data_cna_log2.txt`` (genes x samples, transposed)
- ``methylation.parquet``   from ``data_methylation_hm27.txt``
- ``expression_z.parquet``  from ``data_expression_median_Zscores.txt``
- ``clinical.parquet``      ``patient_id``, ``SUBTYPE`` from ``data_clinical_samples.txt``

Rules: sample IDs are mapped to patient IDs with the SAMPLE_ID -> PATIENT_ID columns of the
samples file; a patient with several samples keeps its first ``-01`` (primary) sample, else
its first sample. Gene symbols are cut at ``|`` (cBioPortal's ``SYMBOL|suffix``); genes with
a missing or duplicated symbol are dropped. Empty cells and ``NA``-like spellings are missing.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import polars as pl

MISSING = {"", "NA", "NaN", "nan", "N/A", "NULL", "null", "[Not Available]", "[Not Applicable]"}

MATRICES = {
    "cna_log2.parquet": "data_cna_log2.txt",
    "methylation.parquet": "data_methylation_hm27.txt",
    "expression_z.parquet": "data_expression_median_Zscores.txt",
}


def _rows(path: Path) -> list[list[str]]:
    """Tab-separated rows, skipping ``#`` metadata lines and blank lines."""
    with path.open(encoding="utf-8", newline="") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.startswith("#")]
    return [[c.strip() for c in r] for r in csv.reader(lines, delimiter="\t")]


def read_samples(study: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str | None]]:
    """(sample -> patient, patient -> chosen sample, patient -> SUBTYPE of that sample)."""
    rows = _rows(study / "data_clinical_samples.txt")
    header = rows[0]
    ip, isam, isub = (header.index(c) for c in ("PATIENT_ID", "SAMPLE_ID", "SUBTYPE"))
    sample_to_patient: dict[str, str] = {}
    by_patient: dict[str, list[tuple[str, str | None]]] = {}
    for r in rows[1:]:
        if len(r) <= max(ip, isam) or not r[ip] or not r[isam]:
            continue
        sub = r[isub] if len(r) > isub and r[isub] not in MISSING else None
        sample_to_patient[r[isam]] = r[ip]
        by_patient.setdefault(r[ip], []).append((r[isam], sub))
    chosen: dict[str, str] = {}
    subtype: dict[str, str | None] = {}
    for patient, samples in by_patient.items():
        pick = next((s for s in samples if s[0].endswith("-01")), samples[0])
        chosen[patient] = pick[0]
        subtype[patient] = pick[1]
    return sample_to_patient, chosen, subtype


def _value(cell: str) -> float | None:
    if cell in MISSING:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def convert_matrix(path: Path, sample_to_patient: dict[str, str], chosen: dict[str, str]
                   ) -> pl.DataFrame:
    """A cBioPortal genes x samples matrix -> patients x genes (wide, ``patient_id`` first)."""
    rows = _rows(path)
    header = rows[0]
    first_sample = 2 if len(header) > 1 and header[1] == "Entrez_Gene_Id" else 1
    samples = header[first_sample:]
    symbols = [r[0].split("|")[0].strip() if r else "" for r in rows[1:]]
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    keep_rows = [i for i, s in enumerate(symbols) if s and s not in MISSING and counts[s] == 1]
    dropped = sorted({s for s in symbols if not s or s in MISSING or counts[s] > 1})
    if dropped:
        print(f"{path.name}: dropped genes with missing/duplicate symbols: {dropped}",
              file=sys.stderr)
    cols: list[int] = []
    patients: list[str] = []
    for j, sample in enumerate(samples):
        patient = sample_to_patient.get(sample)
        if patient is None or chosen.get(patient) != sample:
            continue  # unknown sample, or not the patient's chosen sample
        cols.append(first_sample + j)
        patients.append(patient)
    data: dict[str, list] = {"patient_id": patients}
    for i in keep_rows:
        row = rows[i + 1]
        data[symbols[i]] = [_value(row[c]) if c < len(row) else None for c in cols]
    schema = {"patient_id": pl.String, **{symbols[i]: pl.Float64 for i in keep_rows}}
    df = pl.DataFrame(data, schema=schema)
    return df.sort("patient_id")


def convert(study: Path, out: Path) -> None:
    """Write the four Parquet files of ``study`` into ``out``."""
    sample_to_patient, chosen, subtype = read_samples(study)
    out.mkdir(parents=True, exist_ok=True)
    for target, source in MATRICES.items():
        df = convert_matrix(study / source, sample_to_patient, chosen)
        df.write_parquet(out / target, statistics=True)
        print(f"{target}: {df.height} patients x {df.width - 1} genes", file=sys.stderr)
    clin = pl.DataFrame(
        {"patient_id": list(subtype), "SUBTYPE": list(subtype.values())},
        schema={"patient_id": pl.String, "SUBTYPE": pl.String},
    ).sort("patient_id")
    clin.write_parquet(out / "clinical.parquet", statistics=True)
    print(f"clinical.parquet: {clin.height} patients, "
          f"{clin['SUBTYPE'].is_not_null().sum()} with SUBTYPE", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="cBioPortal study folder (study_es_0)")
    ap.add_argument("out", type=Path, nargs="?",
                    default=Path(__file__).resolve().parent.parent / "sample_data"
                    / "cbioportal_es_0")
    args = ap.parse_args(argv)
    convert(args.study, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
