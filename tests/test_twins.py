"""Tests for cohortctl.twins: nearest cohort patients under the report's privacy rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cohortctl.assign import load_run
from cohortctl.cli import main
from cohortctl.errors import EXIT_DATA, EXIT_NOINPUT, EXIT_USAGE, CohortError
from cohortctl.twins import twins

EXTRA = "SIM-NODATA"  # a clinical-only patient: in the store, not in any run


@pytest.fixture(scope="session")
def sim_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated cohort with treatment, response and survival; K-means K=3, no bootstrap."""
    from cohortctl.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("twins")
    data = root / "data"
    simulate_cohort(data, patients=150, subtypes=3, genes=100, methylation_features=50,
                    mutation_genes=20, seed=5)
    clin = pl.read_parquet(data / "clinical.parquet")
    extra = clin.head(1).with_columns(pl.lit(EXTRA).alias("patient_id"))
    pl.concat([clin, extra]).write_parquet(data / "clinical_plus.parquet")
    store = root / "sim.cohort"
    for args in (
        ["ingest", "-o", str(store), "--clinical", str(data / "clinical_plus.parquet"),
         "--molecular", f"expr={data / 'expression.parquet'}",
         "--molecular", f"meth={data / 'methylation.parquet'}"],
        ["cluster", str(store), "--method", "kmeans", "--k", "3", "--bootstrap", "0"],
    ):
        assert main(["-q", *args]) == 0
    return store


@pytest.fixture(scope="session")
def query(sim_store: Path) -> str:
    return load_run(sim_store).patient_ids[7]


def test_default_output_has_no_identifiers_and_aggregates_outcomes(sim_store: Path,
                                                                   query: str) -> None:
    res = twins(sim_store, query)
    text = json.dumps(res)  # JSON-serialisable as is
    ids = load_run(sim_store).patient_ids
    assert not any(p in text for p in ids), "a patient identifier leaked"
    assert "SIM-" not in text
    assert res["k"] == 10 and len(res["twins"]) == 10
    assert [t["rank"] for t in res["twins"]] == list(range(1, 11))
    forbidden = {"patient_id", "treatment", "response", "time", "event"}
    assert all(not forbidden & set(t) for t in res["twins"])
    dist = [t["distance"] for t in res["twins"]]
    assert dist == sorted(dist) and dist[0] > 0
    assert sum(c["n"] for c in res["clusters"]) == 10
    assert res["treatment"] is not None and res["response"] is not None
    assert res["survival"] is not None


def _shown_counts(res: dict) -> list[int]:
    out = [t["n"] for t in res["treatment"] if t["n"] is not None]
    r, s = res["response"], res["survival"]
    out += [v for v in (r["responders"], s["events"]) if v is not None]
    if r["responders"] is not None:
        out.append(r["n_evaluated"] - r["responders"])
    if s["events"] is not None:
        out.append(s["n"] - s["events"])
    return out


@pytest.mark.parametrize("k", [5, 10, 20, 40])
def test_small_cells_are_withheld(sim_store: Path, query: str, k: int) -> None:
    res = twins(sim_store, query, k=k)
    for n in _shown_counts(res):
        assert n == 0 or n >= 5, (k, res)
    full = twins(sim_store, query, k=k, include_ids=True)
    rows = pl.DataFrame(full["twins"])
    if res["response"]["response_rate"] is not None:
        y = rows["response"].drop_nulls()
        assert res["response"]["response_rate"] == pytest.approx(float(y.mean()), abs=1e-6)


def test_k_below_or_not_multiple_of_min_cell_is_refused(sim_store: Path, query: str) -> None:
    for k, min_cell in ((3, 5), (7, 5), (4, 3), (0, 5)):
        with pytest.raises(CohortError) as err:
            twins(sim_store, query, k=k, min_cell=min_cell)
        assert err.value.exit_code == EXIT_USAGE and "\n" not in str(err.value)
    assert len(twins(sim_store, query, k=6, min_cell=3)["twins"]) == 6


def test_include_ids_gives_rows_matching_the_store(sim_store: Path, query: str) -> None:
    res = twins(sim_store, query, k=3, include_ids=True)  # k < min_cell allowed with IDs
    assert res["query"]["patient_id"] == query
    rows = pl.DataFrame(res["twins"])
    assert rows.height == 3 and query not in rows["patient_id"].to_list()
    clin = pl.read_parquet(sim_store / "tables" / "clinical.parquet")
    joined = rows.join(clin, on="patient_id", suffix="_store")
    for col in ("treatment", "response", "os_time", "os_event"):
        mine = {"os_time": "time", "os_event": "event"}.get(col, col)
        store_col = f"{col}_store" if col in rows.columns else col
        assert joined[mine].to_list() == joined[store_col].to_list()


def test_twins_are_the_nearest_patients(sim_store: Path, query: str) -> None:
    rm = load_run(sim_store)
    q = rm.patient_ids.index(query)
    d = np.linalg.norm(rm.matrix - rm.matrix[q], axis=1)
    d[q] = np.inf
    expected = [rm.patient_ids[i] for i in np.argsort(d, kind="stable")[:10]]
    res = twins(sim_store, query, include_ids=True)
    assert [t["patient_id"] for t in res["twins"]] == expected
    assert [t["distance"] for t in res["twins"]] == pytest.approx(np.sort(d)[:10], abs=1e-6)
    clusters = {p: int(c) for p, c in zip(rm.patient_ids, rm.clusters, strict=True)}
    assert [t["cluster"] for t in res["twins"]] == [clusters[p] for p in expected]
    assert res["query"]["cluster"] == clusters[query]


def test_unknown_and_dataless_patients(sim_store: Path) -> None:
    with pytest.raises(CohortError) as err:
        twins(sim_store, "NO-SUCH-PATIENT")
    assert err.value.exit_code == EXIT_NOINPUT and "NO-SUCH-PATIENT" in str(err.value)
    with pytest.raises(CohortError) as err:
        twins(sim_store, EXTRA)
    assert err.value.exit_code == EXIT_DATA and "not in run" in str(err.value)


def test_k_larger_than_cohort_is_refused(sim_store: Path, query: str) -> None:
    with pytest.raises(CohortError) as err:
        twins(sim_store, query, k=1000, include_ids=True)
    assert err.value.exit_code == EXIT_USAGE


def test_tampered_run_is_refused(sim_store: Path, query: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy.cohort"
    shutil.copytree(sim_store, copy)
    path = load_run(copy).run_dir / "model" / "integrated.parquet"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CohortError) as err:
        twins(copy, query)
    assert err.value.exit_code == EXIT_DATA and "checksum" in str(err.value)


def test_cli_prints_a_summary_and_json_on_request(sim_store, capsys) -> None:
    """The default is a few readable lines (it printed 100+ lines of JSON); --json is JSON."""
    import json as _json

    from cohortctl.cli import main

    query = pl.read_parquet(next(sim_store.glob("runs/*/assignments.parquet")))["patient_id"][0]
    capsys.readouterr()
    assert main(["-q", "twins", str(sim_store), query, "-k", "10"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{query} (cluster") and "By cluster:" in text
    assert len(text.strip().splitlines()) < 15
    assert main(["-q", "twins", str(sim_store), query, "-k", "10", "--json"]) == 0
    data = _json.loads(capsys.readouterr().out)
    assert data["k"] == 10 and len(data["twins"]) == 10
