"""Property-based tests of the readers and of ingest on generated tables.

Whatever the table: either it is accepted and the stored result has unique, clean IDs
and finite numeric values, or it is refused with a :class:`CohortError` carrying a
documented exit status and a one-line message naming the file -- never anything else.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import tempfile
import unicodedata
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cohortctl.errors import CohortError
from cohortctl.ingest import IngestOptions, ingest
from cohortctl.io import readers
from cohortctl.io.readers import TableSpec

DATA_CODES = {65, 66}
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies -----------------------------------------------------------------------
_PAD = st.text(alphabet=" \u00a0\t\u200b\ufeff", max_size=2)


@st.composite
def patient_ids(draw: st.DrawFn, n: int) -> list[str | None]:
    """Mostly distinct IDs, sometimes padded, re-cased, duplicated, empty or arbitrary."""
    base = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n, unique=True))
    out: list[str | None] = []
    for b in base:
        pid = f"P{b:02d}"
        kind = draw(st.sampled_from(["plain"] * 6 + ["pad", "case", "dup", "text", "none"]))
        if kind == "pad":
            pid = draw(_PAD) + pid + draw(_PAD)
        elif kind == "case":
            pid = pid.lower()
        elif kind == "dup" and out:
            pid = draw(st.sampled_from([o for o in out if o is not None] or [pid]))
        elif kind == "text":
            pid = draw(st.text(max_size=5))
        elif kind == "none":
            pid = None
        out.append(pid)
    return out


_FINITE = st.floats(-1e6, 1e6, allow_nan=False)
_WEIRD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.none(),
    st.sampled_from(["NA", "", "nan", "1e308", "-inf", "x", "1,5", " 3 ", "true", "0x10"]),
    st.text(max_size=3),
)
CELL = st.one_of(_FINITE, _FINITE, _FINITE, _FINITE, _WEIRD)
NAME = st.one_of(st.sampled_from([f"g{i}" for i in range(6)]), st.text(max_size=4))


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str | None], list[str], list[list[object]]]:
    n = draw(st.integers(1, 10) if draw(st.booleans()) else st.just(8))
    ids = draw(patient_ids(n))
    names = draw(st.lists(NAME, min_size=1, max_size=4))
    cell = CELL if draw(st.booleans()) else st.one_of(_FINITE, _FINITE, st.none())
    cols = [draw(st.lists(cell, min_size=n, max_size=n)) for _ in names]
    return ids, names, cols


def _cell_text(v: object) -> str:
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else str(v)


def write_table(dest: Path, fmt: str, ids: list, names: list[str], cols: list[list]) -> Path:
    """Write the generated table as CSV, TSV, gzip CSV or Parquet."""
    if fmt == "parquet":
        arrays, fields = [pa.array(ids, type=pa.string())], ["patient_id"]
        for name, col in zip(names, cols, strict=True):
            if all(isinstance(v, float) or v is None for v in col):
                arrays.append(pa.array(col, type=pa.float64()))
            else:
                arrays.append(pa.array([None if v is None else _cell_text(v) for v in col]))
            fields.append(name)
        path = dest / "mrna.parquet"
        pq.write_table(pa.Table.from_arrays(arrays, names=fields), path)
        return path
    sep = "\t" if fmt == "tsv" else ","
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep, lineterminator="\n")
    w.writerow(["patient_id", *names])
    for i, pid in enumerate(ids):
        w.writerow(["" if pid is None else pid, *(_cell_text(c[i]) for c in cols)])
    data = buf.getvalue().encode()
    if fmt == "csv.gz":
        path = dest / "mrna.csv.gz"
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path = dest / f"mrna.{fmt}"
        path.write_bytes(data)
    return path


def assert_refusal(exc: CohortError, path: Path) -> None:
    event(f"refused {type(exc).exit_code}")
    assert type(exc).exit_code in DATA_CODES, (type(exc), exc)
    msg = str(exc)
    assert "\n" not in msg and msg
    assert path.name in msg, msg


# -- properties -------------------------------------------------------------------------
@SETTINGS
@given(table=tables(), fmt=st.sampled_from(["csv", "tsv", "csv.gz", "parquet"]))
def test_molecular_ingest_accepts_clean_or_refuses_cleanly(table, fmt: str) -> None:
    ids, names, cols = table
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        try:
            path = write_table(d, fmt, ids, names, cols)
        except (pa.ArrowException, ValueError):
            assume(False)  # e.g. column names pyarrow cannot hold
        out = d / "store"
        try:
            manifest = ingest(IngestOptions(out=out, molecular=[TableSpec("mrna", path)]))
        except CohortError as exc:
            assert_refusal(exc, path)
            assert not out.exists()
            assert [p.name for p in d.iterdir()] == [path.name]  # no temp dir left
            return
        event("accepted")
        entry = next(t for t in manifest["tables"] if t["name"] == "mrna")
        df = pl.read_parquet(out / entry["store_path"])
        pids = df["patient_id"]
        assert pids.dtype == pl.String and pids.null_count() == 0
        assert pids.n_unique() == df.height
        assert pids.str.to_lowercase().n_unique() == df.height
        for pid in pids:
            assert pid and pid == pid.strip() and unicodedata.is_normalized("NFC", pid)
            assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in pid)
        assert df.height <= len(ids) and df.width >= 2
        assert json.loads((out / "manifest.json").read_text())["tables"] == manifest["tables"]
        for name in df.columns[1:]:
            col = df[name]
            assert col.dtype in (pl.Float32, pl.Float64), (name, col.dtype)
            assert col.null_count() < df.height
            assert all(math.isfinite(v) and abs(v) <= readers.MAX_ABS_VALUE
                       for v in col.drop_nulls())


@SETTINGS
@given(table=tables(), fmt=st.sampled_from(["csv", "tsv", "parquet"]))
def test_read_id_table_types_every_column(table, fmt: str) -> None:
    """Accepted tables come back with concrete column types and the ID column as text."""
    ids, names, cols = table
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = write_table(Path(tmp), fmt, ids, names, cols)
        except (pa.ArrowException, ValueError):
            assume(False)
        try:
            df, id_col = readers.read_id_table(path)
        except CohortError as exc:
            assert_refusal(exc, path)
            return
    event("accepted")
    assert id_col == "patient_id" and df.schema["patient_id"] == pl.String
    assert len(set(df.columns)) == df.width and df.height == len(ids)
    for dtype in df.schema.values():
        assert dtype in (pl.String, pl.Int64, pl.Float64, pl.Boolean), dtype


@st.composite
def mangled_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """Valid Parquet/CSV/gzip bytes, truncated, with flipped bytes, or plain garbage."""
    good = io.BytesIO()
    pl.DataFrame({"patient_id": [f"P{i}" for i in range(8)],
                  "g": [float(i) for i in range(8)]}).write_parquet(good)
    text = b"patient_id,g\n" + b"".join(b"P%d,%d.5\n" % (i, i) for i in range(8))
    name, data = draw(st.sampled_from([
        ("t.parquet", good.getvalue()), ("t.csv", text),
        ("t.csv.gz", gzip.compress(text, mtime=0)), ("t.tsv", text.replace(b",", b"\t")),
    ]))
    how = draw(st.sampled_from(["truncate", "flip", "garbage", "splice"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    elif how == "garbage":
        data = draw(st.binary(max_size=300))
    else:
        data = data[:4] + draw(st.binary(max_size=60)) + data[-8:]
    return name, data


@settings(max_examples=150, deadline=None)
@given(mangled_files())
def test_readers_never_raise_anything_but_cohort_errors(case: tuple[str, bytes]) -> None:
    name, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        for reader in (readers.read_table, readers.read_maf):
            try:
                df = reader(path)
            except CohortError as exc:
                assert_refusal(exc, path)
                continue
            event(f"accepted by {reader.__name__}")
            frame = df if isinstance(df, pl.DataFrame) else df[0]
            assert all(dt != pl.Object for dt in frame.schema.values())


@SETTINGS
@given(times=st.lists(st.one_of(_FINITE, _WEIRD), min_size=8, max_size=8),
       events=st.lists(st.one_of(st.sampled_from(["0", "1", "dead", "alive", "TRUE", "no"]),
                                 _WEIRD), min_size=8, max_size=8))
def test_clinical_survival_roles(times: list, events: list) -> None:
    """Accepted survival columns: times >= 0 and finite (or missing), events 0/1."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ids = [f"P{i:02d}" for i in range(8)]
        mrna = d / "mrna.csv"
        mrna.write_text("patient_id,g\n" + "".join(f"{p},{i}.5\n" for i, p in enumerate(ids)))
        clin = d / "clin.csv"
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["patient_id", "os_time", "os_event"])
        for p, t, e in zip(ids, times, events, strict=True):
            w.writerow([p, _cell_text(t), _cell_text(e)])
        clin.write_text(buf.getvalue())
        try:
            m = ingest(IngestOptions(out=d / "s", clinical=clin,
                                     molecular=[TableSpec("mrna", mrna)]))
        except CohortError as exc:
            assert_refusal(exc, clin)
            return
        df = pl.read_parquet(d / "s" / "tables" / "clinical.parquet")
    if m["roles"]["time"] is None:  # a column dropped as entirely missing: no survival
        return
    event("accepted with survival")
    assert df.schema["os_time"] == pl.Float64 and df.schema["os_event"] == pl.Int8
    assert all(math.isfinite(t) and t >= 0 for t in df["os_time"].drop_nulls())
    assert set(df["os_event"].drop_nulls().to_list()) <= {0, 1}
