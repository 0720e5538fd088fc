"""The ``strict`` disclosure profile (issue 15): every published count of patients is rounded
to a multiple of 5, percentages and rates come from the rounded counts, and two releases
that differ by one withdrawn patient give that patient's attributes back far less often
than exact counts do (they always do)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from cohortctl.characterise import (
    response_by_cluster,
    survival_by_cluster,
    survival_by_treatment_within_cluster,
    table_one,
)
from cohortctl.characterise.privacy import (
    CharacteriseInputError,
    DisclosurePolicy,
    Release,
    published,
)
from cohortctl.cli import main
from cohortctl.store import Store
from tests.test_disclosure_whole_report import _cohort

#: JSON keys holding counts of patients.
COUNT_KEYS = {"n", "events", "censored", "responders", "missing", "n_excluded",
              "n_missing_treatment", "at_risk", "n_assigned", "unassigned", "clustered",
              "patients_total", "patients", "not_clustered_or_withheld", "smallest",
              "n_mutated", "n_patients", "n_without_data", "left_out",
              "patients_missing_any_block", "patients_without_any_modality"}


def _counts(obj: Any, path: str = "") -> dict[str, int]:
    """Every integer under a count key, by a path naming its cluster/treatment/level."""
    out: dict[str, int] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in COUNT_KEYS:
                for i, x in enumerate(v if isinstance(v, list) else [v]):
                    if isinstance(x, int) and not isinstance(x, bool):
                        out[f"{path}/{k}#{i}"] = x
            if isinstance(v, (dict, list)):
                out.update(_counts(v, f"{path}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            tag = ("|".join(str(v[x]) for x in ("variable", "level", "cluster", "treatment")
                            if x in v) if isinstance(v, dict) else "") or str(i)
            out.update(_counts(v, f"{path}[{tag}]"))
    return out


def test_rounding_rule_and_scope() -> None:
    assert [published(n) for n in (0, 1, 7, 12)] == [0, 1, 7, 12]  # standard: exact
    with DisclosurePolicy(5, profile="strict").in_force():
        assert [published(n) for n in (0, 1, 2, 5, 7, 8, 12, 13, 22, 23)] == \
            [0, 5, 5, 5, 5, 10, 10, 15, 20, 25]
    assert published(7) == 7  # the profile is in force only while a report is computed
    with pytest.raises(CharacteriseInputError, match="profile"):
        DisclosurePolicy(5, profile="lenient")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cohort(tmp_path_factory.mktemp("strict"), 7, [62, 44, 31], {2: 3})


def test_strict_report_publishes_only_rounded_counts(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["-q", "report", str(store), "-o", str(out), "--disclosure", "strict"]) == 0
    data = json.loads(out.read_text())
    assert data["disclosure_profile"] == "strict"
    counts = _counts(data)
    assert len(counts) > 50
    assert {k: v for k, v in counts.items() if v % 5} == {}
    # Percentages and rates are those of the rounded counts (exact ones give them back).
    for var in data["clinical"]["variables"]:
        for lev in var.get("levels", []):
            for cell, size in zip(lev["cells"], data["clinical"]["clusters"]["clusters"],
                                  strict=True):
                if cell["n"] is not None:
                    assert cell["percent"] == pytest.approx(100 * cell["n"] / size["n"])
    for cell in data["response"]["cells"]:
        if cell["rate"] is not None:
            assert cell["rate"] == pytest.approx(cell["responders"] / cell["n"])
    # Display tables (Markdown) carry the same rounded numbers.
    md = tmp_path / "r.md"
    assert main(["-q", "report", str(store), "-o", str(md), "--disclosure", "strict"]) == 0
    text = md.read_text()
    assert "Profile 'strict'" in text
    row = next(line for line in text.splitlines() if line.startswith("| N |"))
    assert all(int(x) % 5 == 0 for x in row.split("|")[4:-1] if x.strip().isdigit())


def test_unknown_profile_is_a_usage_error(store: Path, tmp_path: Path) -> None:
    assert main(["-q", "report", str(store), "-o", str(tmp_path / "r.json"),
                 "--disclosure", "lenient"]) == 2
    assert not (tmp_path / "r.json").exists()


def _release(df: pl.DataFrame, profile: str) -> dict[str, int]:
    """Table 1, survival, survival by treatment and response of ``df``, as the report
    computes them under ``profile``: their published counts."""
    with DisclosurePolicy(5, profile=profile).in_force():
        rel = Release(df["patient_id"].to_list(), 5, protect_missing=False)
        kw = {"protect_missing": False, "release": rel}
        return _counts({
            "t1": table_one(df.select("patient_id", "arm"), df.select("patient_id", "cluster"),
                            min_cell=5, release=rel, release_columns=["arm"]).to_dict(),
            "s": survival_by_cluster(df, 5, **kw).to_dict(),
            "bt": survival_by_treatment_within_cluster(df, 5, **kw).to_dict(),
            "r": response_by_cluster(df, 5, **kw).to_dict(),
        })


def _rules_out(a: int, b: int, withdrawn_had_it: bool, profile: str) -> bool:
    """Whether published counts ``a`` (release A) and ``b`` (B, one patient fewer) rule out
    a scenario: the withdrawn patient had the attribute (true count drops by 1) or not
    (unchanged). The attacker knows the rounding rule."""
    drop = 1 if withdrawn_had_it else 0
    with DisclosurePolicy(5, profile=profile).in_force():
        return not any(published(n) == a and published(n - drop) == b
                       for n in range(drop, a + 10))


def test_differencing_two_releases_rarely_reveals_the_withdrawn_patient(store: Path) -> None:
    """Release B = release A minus one patient. An attacker who even knows the patient's
    cluster and arm compares the events published for them: with exact counts this always
    tells whether the patient had an event; rounded, only when a count crosses a multiple
    of 5."""
    st = Store.open(store)
    lab = pl.read_parquet(st.resolve_run("latest") / "assignments.parquet")
    clin = st.clinical()
    assert clin is not None
    df = lab.select("patient_id", pl.col("cluster").cast(pl.Int64)).join(clin.select(
        "patient_id", "arm", pl.col("arm").alias("treatment"), pl.col("os_days").alias("time"),
        pl.col("os_event").alias("event"), pl.col("best_response").alias("response")),
        on="patient_id")
    rng = np.random.default_rng(0)
    analysed = df.filter(pl.col("time").is_not_null() & pl.col("arm").is_not_null())
    withdrawn = analysed[rng.choice(analysed.height, 15, replace=False).tolist()]
    revealed = {}
    for profile in ("standard", "strict"):
        a = _release(df, profile)
        hits = 0
        for p in withdrawn.iter_rows(named=True):
            b = _release(df.filter(pl.col("patient_id") != p["patient_id"]), profile)
            keys = [f"/s/clusters[{p['cluster']}]/events#0",
                    f"/bt/clusters[{p['cluster']}]/groups[{p['arm']}]/events#0"]
            hits += any(k in a and k in b and (_rules_out(a[k], b[k], True, profile)
                                               or _rules_out(a[k], b[k], False, profile))
                        for k in keys)
        revealed[profile] = hits
    assert revealed["standard"] == withdrawn.height
    print(f"event status revealed by differencing: {revealed} of {withdrawn.height}")
    assert revealed["strict"] <= withdrawn.height // 2, revealed
