"""End-to-end privacy: a cohort with a 3-patient cluster and other small cells.

Every function is run on the same cohort; the JSON output (``to_dict()``) and every display
table are scanned for counts 1..4 and for patient identifiers, and secondary suppression is
checked by trying to recover withheld counts from the displayed totals.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import polars as pl
import pytest

from cohortctl.characterise import (
    markers,
    mutation_enrichment,
    outcome_table_by_cluster,
    response_by_cluster,
    survival_by_cluster,
    survival_by_treatment_within_cluster,
    table_one,
)
from cohortctl.characterise.privacy import WITHHELD_MARK

MIN_CELL = 5
SIZES = {0: 45, 1: 38, 2: 3, -1: 7}
#: Integer fields that are not counts of patients.
NON_COUNT_KEYS = {"cluster", "df", "rank", "reference", "min_cell", "column_clusters", "matrix",
                  # structural, public by the disclosure policy (the total gives it back)
                  "not_clustered_or_withheld"}
#: Display columns holding names (features, genes, levels), not numbers.
NAME_COLUMNS = {"feature", "gene", "variable", "level", "treatment", "group"}


def _cohort() -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng(2024)
    cl = np.repeat(list(SIZES), list(SIZES.values()))
    n = cl.size
    ids = [f"PX-{i:04d}" for i in range(n)]
    age = rng.normal(60, 9, n).round(1) + 0.03
    age[[0, 1]] = np.nan  # 2 missing in cluster 0
    stage = rng.choice(["I", "II", "III", "IV"], n, p=[0.4, 0.35, 0.2, 0.05])
    sex = rng.random(n) < 0.5
    clinical = pl.DataFrame({"patient_id": ids, "age": age, "stage": stage, "female": sex})
    labels = pl.DataFrame({"patient_id": ids, "cluster": cl})
    time = rng.exponential(np.where(cl == 0, 300, 120)) + 5.37
    time[[2, 3]] = np.nan  # 2 patients of cluster 0 without survival time
    event = (rng.random(n) < 0.65).astype(int)
    trt = rng.choice(["A", "B"], n)
    resp = rng.choice(["CR", "PR", "SD", "PD"], n).astype(object)
    resp[[4, 50]] = None
    surv = pl.DataFrame(
        {
            "patient_id": ids,
            "cluster": cl,
            "time": time,
            "event": event,
            "treatment": trt,
            "response": list(resp),
        }
    ).with_columns(pl.col("time").fill_nan(None))
    expr = rng.normal(size=(n, 6)) + 0.01
    expr[cl == 2, 0] += 4  # the suppressed cluster is distinctive: must not show anywhere
    matrix = pl.DataFrame({"patient_id": ids, **{f"gene{j}": expr[:, j] for j in range(6)}})
    mprob = np.array([0.5, 0.2, 0.08, 0.04, 0.3, 0.6])
    mut = (rng.random((n, 6)) < mprob).astype(int)
    mut[cl == 2, 3] = 1
    mutations = pl.DataFrame({"patient_id": ids, **{f"MUT{j}": mut[:, j] for j in range(6)}})
    drugs = pl.DataFrame(
        {"patient_id": ids, **{f"drug{j}": rng.normal(j, 1.0, n) + 0.01 for j in range(3)}}
    )
    return {
        "clinical": clinical,
        "labels": labels,
        "surv": surv,
        "matrix": matrix,
        "mutations": mutations,
        "drugs": drugs,
    }


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    d = _cohort()
    lab = d["labels"]
    return {
        "data": d,
        "table1": table_one(d["clinical"], lab),
        "table1_overall": table_one(d["clinical"], lab, overall=True),
        "survival": survival_by_cluster(d["surv"]),
        "survival_trt": survival_by_treatment_within_cluster(d["surv"]),
        "response": response_by_cluster(d["surv"]),
        "response_overall": response_by_cluster(d["surv"], overall=True),
        "markers": markers(d["matrix"], lab),
        "mutations": mutation_enrichment(d["mutations"], lab),
        "mutations_overall": mutation_enrichment(d["mutations"], lab, overall=True),
        "outcome": outcome_table_by_cluster(d["drugs"], lab),
    }


def _small_ints(obj: Any, path: str = "") -> list[str]:
    """Paths of integer values 1..MIN_CELL-1 under count-like keys."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in NON_COUNT_KEYS:
                continue
            if k == "clusters" and isinstance(v, list) and all(isinstance(x, int) for x in v):
                continue  # a list of cluster ids (e.g. the clusters in a log-rank test)
            out += _small_ints(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _small_ints(v, f"{path}[{i}]")
    elif isinstance(obj, int) and not isinstance(obj, bool) and 0 < obj < MIN_CELL:
        out.append(f"{path}={obj}")
    return out


def _display_tables(res: Any) -> dict[str, pl.DataFrame]:
    return {
        name: getattr(res, name)
        for name in ("table", "tests", "cluster_tests", "summary", "top", "curves", "heatmap")
        if isinstance(getattr(res, name, None), pl.DataFrame)
    }


_CLUSTER_NAME = re.compile(r"cluster \d+")
_INT_TOKEN = re.compile(r"(?<![\d.,\-])(\d+)(?![\d.,%])")


def test_no_small_count_in_json(results) -> None:
    for name, res in results.items():
        if name == "data":
            continue
        d = res.to_dict(full=True) if name in ("markers", "mutations") else res.to_dict()
        text = json.dumps(d)  # JSON-serialisable
        assert _small_ints(json.loads(text)) == [], name


def test_no_small_count_in_display_tables(results) -> None:
    for name, res in results.items():
        if name == "data":
            continue
        for tname, df in _display_tables(res).items():
            for col in df.columns:
                s = df[col]
                if col in ("rank", "cluster") and tname in ("top", "curves"):
                    continue
                if col in NAME_COLUMNS:
                    continue
                if s.dtype.is_integer():
                    vals = s.drop_nulls().to_numpy()
                    assert not ((vals > 0) & (vals < MIN_CELL)).any(), (name, tname, col)
                if s.dtype != pl.String:
                    continue
                for cell in s.drop_nulls().to_list():
                    text = _CLUSTER_NAME.sub("", cell).replace("1 (reference)", "")
                    for tok in _INT_TOKEN.findall(text):
                        assert not 0 < int(tok) < MIN_CELL, (name, tname, col, cell)


def test_no_identifiers_and_suppressed_cluster_only_as_suppressed(results) -> None:
    for name, res in results.items():
        if name == "data":
            continue
        blob = json.dumps(res.to_dict()) + "".join(
            df.write_csv() for df in _display_tables(res).values()
        )
        assert "PX-" not in blob, name
        if "cluster 2" in blob:
            # Only named as suppressed, never with statistics.
            for tname, df in _display_tables(res).items():
                for col in df.columns:
                    if col == "cluster 2":
                        assert set(df[col].to_list()) <= {"suppressed", f"<{MIN_CELL}"}, (
                            name,
                            tname,
                        )
                if "cluster" in df.columns and df["cluster"].dtype == pl.String:
                    rows = df.filter(pl.col("cluster") == "cluster 2")
                    for row in rows.iter_rows(named=True):
                        vals = {v for k, v in row.items() if k != "cluster" and v not in ("", None)}
                        assert vals <= {"suppressed", f"<{MIN_CELL}"}, (name, tname, row)
    # Markers: the suppressed cluster's distinctive gene0 is in no comparison or heatmap row.
    mk = results["markers"]
    assert 2 not in mk.stats["cluster"].to_list()
    assert "cluster 2" not in mk.heatmap["cluster"].to_list()


def test_table1_secondary_suppression_cannot_be_undone(results) -> None:
    d = results["data"]
    cl = d["labels"]["cluster"].to_numpy()
    for res in (results["table1"], results["table1_overall"]):
        checked = 0
        for var in res.variables:
            if var["kind"] != "categorical":
                continue
            levels = var["levels"]
            n_cols = len(levels[0]["cells"])
            for j in range(n_cols):
                k = levels[0]["cells"][j]["cluster"]
                size = int((cl == k).sum())  # cluster sizes are public (N row)
                visible = [
                    lv["cells"][j]["n"] for lv in levels if not lv["cells"][j]["n_suppressed"]
                ]
                for lv in levels:
                    cell = lv["cells"][j]
                    if not cell["n_suppressed"]:
                        continue
                    checked += 1
                    # True value, computed independently from the data.
                    col = d["clinical"][var["variable"]].cast(pl.String).to_numpy()
                    true = int(((col == lv["level"]) & (cl == k)).sum())
                    assert size - sum(visible) != true, (var["variable"], k, lv["level"])
            if "overall" in levels[0]:
                for lv in levels:
                    if lv["overall"]["n_suppressed"]:
                        continue
                    hidden = [c for c in lv["cells"] if c["n_suppressed"]]
                    assert len(hidden) != 1, "row total minus the visible cells"
        assert checked > 0


def test_survival_and_response_exclusions_cannot_be_undone(results) -> None:
    surv = results["survival"]
    # 2 patients of cluster 0 lack a time: n for cluster 0 (45 - 2) must not be shown.
    c0 = next(c for c in surv.clusters if c["cluster"] == 0)
    assert c0["n"] is None and surv.excluded["n_excluded"] is None
    shown_n = [c["n"] for c in surv.clusters if c["n"] is not None]
    shown_sizes = [SIZES[c["cluster"]] for c in surv.clusters if c["n"] is not None]
    assert sum(shown_sizes) - sum(shown_n) == 0  # nothing to recover from the shown clusters
    row = surv.summary.filter(pl.col("cluster") == "cluster 0")
    assert row["n"].item() == WITHHELD_MARK
    resp = results["response"]
    for k in (0, 1, -1):
        cells = [c for c in resp.cells if c["cluster"] == k]
        n_shown = [c["n"] for c in cells if c["n"] is not None]
        excluded = SIZES[k] - sum(c["n"] for c in cells if c["n"] is not None)
        if len(n_shown) == len(cells) and excluded:
            assert excluded >= MIN_CELL, "a small number without response would be revealed"
    for c in resp.cells:
        if c["rate"] is not None:
            assert c["n"] is not None and c["responders"] is not None


def test_km_curves_never_show_small_risk_sets(results) -> None:
    for name in ("survival", "survival_trt"):
        curves = results[name].curves
        # Numbers at risk are not published with the curves (they would rebuild the
        # events between coarsened steps; test_characterise_survival checks that no step
        # is drawn on a small risk set).
        assert "at_risk" not in curves.columns
        assert "at_risk" not in json.dumps(results[name].to_dict()["clusters"])
        assert 2 not in curves["cluster"].to_list()
