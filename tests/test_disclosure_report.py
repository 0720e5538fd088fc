"""Attacks on the report (issue 15), each run through the real report writers.

* per-patient records in the page (embedding points with clinical hover values);
* a whole cluster of >= min_cell hidden to protect a small unassigned count;
* a 1-event cluster's hazard ratio and log-rank statistic giving the event count back;
* a lone rare level pinned to its cluster in Table 1;
* patient identifiers or patient-level coordinates in the page or in --tables without
  --include-ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from cohortctl.cli import main
from cohortctl.cluster.run import ClusterOptions, cluster
from cohortctl.features import FeatureSettings
from cohortctl.report.build import gather, write_report
from cohortctl.store import Store

MIN_CELL = 5


def _figures(html: str) -> dict[str, Any]:
    """The JSON data the page embeds (everything its script draws)."""
    m = re.search(r"var FIGS = (\{.*?\});\n", html, re.S)
    assert m, "figure data not found in the page"
    return json.loads(m.group(1))


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _strings(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _strings(v)]
    return [obj] if isinstance(obj, str) else []


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """Three separated groups (60, 45, 30) plus 4 patients between them (unassigned by a
    HDBSCAN-free K-based run is impossible, so they form their own tiny cluster), with
    clinical values that are unique per patient (weight to 2 decimals)."""
    tmp = tmp_path_factory.mktemp("attack")
    rng = np.random.default_rng(5)
    sizes = [60, 45, 30, 4]
    ids, rows = [], []
    for g, size in enumerate(sizes):
        centre = np.zeros(8)
        centre[g] = 12.0
        for i in range(size):
            ids.append(f"MRN{g}{i:04d}")
            rows.append(centre + rng.normal(0, 0.5, 8))
    n = len(ids)
    mol = pl.DataFrame({"patient_id": ids, **{f"g{j}": [r[j] for r in rows] for j in range(8)}})
    mol.write_parquet(tmp / "mol.parquet")
    # Cluster 2 (30 patients) has exactly one event: its count is withheld, and so must be
    # everything computed from it.
    event = rng.integers(0, 2, n)
    start2 = sizes[0] + sizes[1]
    event[start2:start2 + sizes[2]] = 0
    event[start2] = 1
    clinical = pl.DataFrame({
        "patient_id": ids,
        "weight_kg": np.round(rng.uniform(45, 120, n), 2),
        "age": rng.integers(25, 90, n),
        "sex": rng.choice(["F", "M"], n),
        "ethnicity": ["Inuit"] + ["White"] * (n - 11) + ["Black"] * 10,
        "os_time": np.round(rng.exponential(700, n), 1) + 1,
        "os_event": event,
    })
    clinical.write_parquet(tmp / "clin.parquet")
    assert main(["-q", "ingest", "-o", str(tmp / "store"), "--molecular",
                 f"expr={tmp / 'mol.parquet'}", "--clinical", str(tmp / "clin.parquet")]) == 0
    store = tmp / "store"
    run = cluster(Store.open(store), ClusterOptions(
        method="ward", k=4, bootstrap=5, features=FeatureSettings(components="variance")))
    found = pl.read_parquet(run / "assignments.parquet")["cluster"].value_counts()
    assert sorted(found["count"].to_list()) == [4, 30, 45, 60]
    return store, clinical


def test_page_carries_no_patient_level_record(cohort: tuple[Path, pl.DataFrame],
                                              tmp_path: Path) -> None:
    store, clinical = cohort
    out = tmp_path / "r.html"
    write_report(Store.open(store), out=out, min_cell=MIN_CELL)
    html = out.read_text()
    figs = _figures(html)
    # No identifier anywhere in the page.
    assert not re.search(r"MRN\d{5}", html)
    # No exact per-patient clinical value in the drawn data (weights are unique to 2 dp).
    weights = {float(w) for w in clinical["weight_kg"].to_list()}
    assert not weights & set(_numbers(figs))
    # The embedding is areas of >= min_cell patients of one group, never points.
    views = figs["embedding"]["embedding"]["views"]
    # Numeric columns get a view (rounded area medians); categorical ones do not: level
    # totals per area would undo Table 1's complementary suppression.
    assert "weight_kg" in views and "sex" not in views and "ethnicity" not in views
    for name, view in views.items():
        counts = [int(m.group(1)) for t in view["data"] for s in t["text"]
                  if (m := re.search(r": (\d+) patients in this area", s))]
        assert counts and min(counts) >= MIN_CELL, name
        drawn = sum(counts) + view["left_out"]
        assert drawn == figs["embedding"]["embedding"]["drawn"], name
        for trace in view["data"]:
            assert len(trace["x"]) < drawn / MIN_CELL + 1  # no per-patient arrays
    # Numeric views show rounded medians of areas, not patients' values.
    medians = [float(m.group(1)) for t in views["weight_kg"]["data"] for s in t["text"]
               if (m := re.search(r"median ([\d.]+)", s))]
    assert medians and all(float(f"{v:.2g}") == v for v in medians)


def test_no_group_of_min_cell_hidden_and_small_group_folded(
        cohort: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    store, _ = cohort
    out = tmp_path / "r.json"
    write_report(Store.open(store), out=out, fmt="json", min_cell=MIN_CELL)
    rep = json.loads(out.read_text())
    shown = {c["n"] for c in rep["groups"]["clusters"] if not c["suppressed"]}
    assert shown == {60, 45, 30}
    assert rep["groups"]["not_clustered_or_withheld"] == 4
    # Every section shows the three groups with their true sizes.
    t1 = {c["name"]: c for c in rep["clinical"]["clusters"]["clusters"]}
    assert sorted(c["n"] for c in t1.values() if not c["n_suppressed"]) == [30, 45, 60]
    surv = {c["name"]: c["n"] for c in rep["survival"]["clusters"]}
    assert sorted(surv.values()) == [30, 45, 60]
    # The folded cluster appears nowhere but in the folded line.
    small = next(c for c in rep["groups"]["clusters"] if c["suppressed"])
    assert small["n"] is None
    assert small["name"] not in {c["name"] for c in rep["survival"]["clusters"]}


def test_one_event_cluster_gives_nothing_back(cohort: tuple[Path, pl.DataFrame]) -> None:
    store, _ = cohort
    rep = gather(Store.open(store), min_cell=MIN_CELL)
    surv = rep.data["survival"]
    one = next(c for c in surv["clusters"] if c["n"] == 30)
    assert one["events"] is None and one["events_suppressed"]
    hr = next(h for h in surv["cox"]["hazard_ratios"] if h["cluster"] == one["cluster"])
    assert hr["hr"] is None and hr["ci_lower"] is None and hr["ci_upper"] is None
    assert hr["p"] is None  # only a category
    assert surv["logrank"]["statistic"] is None and surv["logrank"]["p"] is None
    table = rep.tables["survival"].filter(pl.col("cluster") == one["name"])
    assert table["HR (95% CI)"].item() == "*" and table["events"].item() == "*"
    # No numbers-at-risk row for it: its drops would give the withheld events back; in the
    # other rows, two shown numbers differ by 0 or by at least min-cell patients.
    at_risk = rep.tables["km_at_risk"]
    assert one["name"] not in at_risk["group"].to_list()
    for row in at_risk.iter_rows():
        shown = [int(v) for v in row[1:] if v != "–"]
        drops = [a - b for a, b in zip(shown[:-1], shown[1:], strict=True)]
        assert all(d == 0 or d >= MIN_CELL for d in drops)
    # The forest plot draws only the published ratios.
    drawn = rep.figures["hazard_ratios"]["data"][0]["y"]
    assert one["name"] not in drawn and len(drawn) >= 1


def test_rare_level_never_named(cohort: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    store, _ = cohort
    for fmt in ("html", "md", "json"):
        out = tmp_path / f"r.{fmt}"
        write_report(Store.open(store), out=out, fmt=fmt, min_cell=MIN_CELL)
        text = out.read_text()
        if fmt == "html":
            text = re.sub(r"<script>.*?</script>", "", text, count=1, flags=re.S)  # plotly.js
            text += json.dumps(_figures(out.read_text()))
        assert "Inuit" not in text, fmt


def test_tables_hold_patient_coordinates_only_with_ids(cohort: tuple[Path, pl.DataFrame],
                                                       tmp_path: Path) -> None:
    store, _ = cohort
    st = Store.open(store)
    write_report(st, out=tmp_path / "r.json", fmt="json", tables_dir=tmp_path / "t")
    files = {p.name for p in (tmp_path / "t").iterdir()}
    assert not {"embedding.parquet", "assignments.parquet"} & files
    for p in (tmp_path / "t").iterdir():
        body = p.read_bytes()
        assert b"MRN0" not in body, p.name
    strings = _strings(json.loads((tmp_path / "r.json").read_text()))
    assert not any(re.search(r"MRN\d{5}", s) for s in strings)
