"""Whole-report disclosure oracle (issue 15): counts published by *different* sections about
the same patients must not give a withheld count back between them.

The report's JSON is read as an attacker would: every published count (cluster sizes, Table
1's treatment levels, survival n/events/censored per cluster and per cluster x treatment,
response n/responders, the excluded totals) becomes a linear equality over the unknown
numbers of patients in each combination of (cluster, treatment, survival state, response
state). A withheld count is safe when ``scipy.optimize.linprog`` (non-negative unknowns)
finds different minimum and maximum values for it. The oracle is independent of the
suppression code; it is shown to catch the leak that sections protected one by one had.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from scipy.optimize import linprog

from cohortctl.characterise import (
    response_by_cluster,
    survival_by_cluster,
    survival_by_treatment_within_cluster,
)
from cohortctl.cli import main
from cohortctl.cluster.run import ClusterOptions, cluster
from cohortctl.features import FeatureSettings
from cohortctl.report.build import gather, rep_to_json
from cohortctl.store import Store

MIN_CELL = 5
SURV = ("E", "C", "X")  # event, censored, no valid follow-up
RESP = ("R", "N", "X")  # responder, non-responder, no response


def _cohort(tmp: Path, seed: int, sizes: list[int], small_arm: dict[int, int], *,
            missing: bool = True) -> Path:
    """Well separated groups of ``sizes``; arms A/B/C at random except cluster g, which has
    exactly ``small_arm[g]`` patients on arm C; with ``missing``, a few patients lack the
    treatment, follow-up or response."""
    rng = np.random.default_rng(seed)
    ids, rows, grp = [], [], []
    for g, size in enumerate(sizes):
        centre = np.zeros(6)
        centre[g] = 14.0
        for i in range(size):
            ids.append(f"MRN{seed}{g}{i:04d}")
            rows.append(centre + rng.normal(0, 0.5, 6))
            grp.append(g)
    cl = np.array(grp)
    n = cl.size
    arm = rng.choice(["A", "B", "C"], n).astype(object)
    for g, c_count in small_arm.items():
        idx = np.flatnonzero(cl == g)
        arm[idx] = rng.choice(["A", "B"], idx.size)
        arm[idx[:c_count]] = "C"
    time = np.round(rng.exponential(600, n), 1) + 1
    event = rng.integers(0, 2, n)
    resp = rng.choice(["CR", "PD"], n).astype(object)
    if missing:
        arm[rng.choice(n, 3, replace=False)] = None
        time[rng.choice(n, 6, replace=False)] = np.nan
        resp[rng.choice(n, 7, replace=False)] = None
    pl.DataFrame({"patient_id": ids, **{f"g{j}": [r[j] for r in rows] for j in range(6)}}
                 ).write_parquet(tmp / "mol.parquet")
    # Copies of roles under other names: a regimen column repeating the arm, a vital status
    # repeating the event (missing without follow-up).
    vital = [None if not np.isfinite(t) else ("dead" if e else "alive")
             for t, e in zip(time, event, strict=True)]
    pl.DataFrame({"patient_id": ids, "arm": arm.tolist(), "regimen": arm.tolist(),
                  "best_response": resp.tolist(), "os_days": time, "os_event": event,
                  "vital": vital, "age": rng.integers(30, 85, n)}
                 ).write_parquet(tmp / "clin.parquet")
    store = tmp / "store"
    assert main(["-q", "ingest", "-o", str(store), "--molecular", f"expr={tmp / 'mol.parquet'}",
                 "--clinical", str(tmp / "clin.parquet"), "--treatment", "arm",
                 "--response", "best_response", "--time", "os_days",
                 "--event", "os_event"]) == 0
    cluster(Store.open(store), ClusterOptions(
        method="ward", k=len(sizes), bootstrap=3, features=FeatureSettings(components="variance")))
    return store


def _truth(store: Path) -> pl.DataFrame:
    """Per patient: cluster, arm and the survival / response state the report analyses."""
    st = Store.open(store)
    run = st.resolve_run("latest")
    lab = pl.read_parquet(run / "assignments.parquet").select("patient_id", "cluster")
    clin = st.clinical()
    assert clin is not None
    df = lab.join(clin, on="patient_id", how="left")
    surv = ["X" if not np.isfinite(t) else ("E" if e else "C")
            for t, e in zip(df["os_days"].fill_null(np.nan).to_list(), df["os_event"].to_list(),
                            strict=True)]
    resp = ["X" if r is None else ("R" if r == "CR" else "N") for r in df["best_response"]]
    return df.select("patient_id", "cluster", "arm").with_columns(
        pl.Series("surv", surv), pl.Series("resp", resp))


class _System:
    """Unknowns: patients per (cluster, arm, survival state, response state)."""

    def __init__(self, truth: pl.DataFrame) -> None:
        self.clusters = sorted(set(truth["cluster"].to_list()))
        self.arms = sorted({a for a in truth["arm"].to_list() if a is not None})
        self.atoms = list(itertools.product(self.clusters, [*self.arms, None], SURV, RESP))
        self.eq: list[tuple[np.ndarray, float]] = []
        #: Withheld counts a reader knows are >= 1 (zeros are shown).
        self.ge: list[np.ndarray] = []
        self.truth = truth

    def mask(self, **where: Any) -> np.ndarray:
        def ok(atom: tuple[Any, ...]) -> bool:
            k, a, s, r = atom
            return ((where.get("k") is None or k in where["k"])
                    and ("a" not in where or a in where["a"])
                    and ("s" not in where or s in where["s"])
                    and ("r" not in where or r in where["r"]))
        return np.array([ok(t) for t in self.atoms], dtype=float)

    def true_value(self, m: np.ndarray) -> int:
        t = self.truth
        total = 0
        for row in t.iter_rows(named=True):
            atom = (row["cluster"], row["arm"], row["surv"], row["resp"])
            total += int(m[self.atoms.index(atom)])
        return total

    def publish(self, m: np.ndarray, value: int | None, name: str = "") -> None:
        if value is not None:
            assert self.true_value(m) == value, f"oracle model does not match the report: {name}"
            self.eq.append((m, float(value)))

    def pinned(self, m: np.ndarray) -> bool:
        """Whether the count ``m`` selects is one integer given everything published, the
        non-negative unknowns and the withheld counts known to be >= 1."""
        kw: dict[str, Any] = {"A_eq": np.array([e[0] for e in self.eq]),
                              "b_eq": np.array([e[1] for e in self.eq]),
                              "bounds": [(0, None)] * len(self.atoms), "method": "highs"}
        if self.ge:
            kw.update(A_ub=-np.array(self.ge), b_ub=-np.ones(len(self.ge)))
        lo = linprog(m, **kw)
        hi = linprog(-m, **kw)
        assert lo.status == 0 and hi.status == 0
        return np.floor(-hi.fun + 1e-7) <= np.ceil(lo.fun - 1e-7)


def _read_report(system: _System, data: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Publish every count of the report into ``system``; return the withheld ones."""
    withheld: list[tuple[str, np.ndarray]] = []
    shown = [c["cluster"] for c in data["groups"]["clusters"] if not c["suppressed"]]
    for c in data["groups"]["clusters"]:
        system.publish(system.mask(k={c["cluster"]}), c["n"])

    def count(name: str, m: np.ndarray, value: int | None, suppressed: bool,
              at_least_one: bool = True) -> None:
        if suppressed:
            withheld.append((name, m))
            if at_least_one:
                system.ge.append(m)
        else:
            system.publish(m, value, name)

    sizes = {c["cluster"]: c["n"] for c in data["groups"]["clusters"]}
    vital = {"dead": {"E"}, "alive": {"C"}}

    def big(n: int | None) -> bool:
        """Events/responders of a group below min-cell are withheld even when 0: a reader
        knows a withheld one is >= 1 only in a group whose n is published and large."""
        return n is not None and n >= MIN_CELL
    for var in data.get("clinical", {}).get("variables", []):
        if var["variable"] not in ("arm", "regimen", "vital"):
            continue
        named = {lev["level"] for lev in var["levels"]}
        missing = {c["cluster"]: c["n"] for lev in var["levels"] if lev["is_missing"]
                   for c in lev["cells"]}
        for lev in var["levels"]:
            if var["variable"] == "vital":
                where = {"s": {"X"} if lev["is_missing"] else vital[lev["level"]]}
            else:
                a = {None} if lev["is_missing"] else {lev["level"]}
                if lev["level"] == "other (rare levels)" or lev["level"].endswith(" or other"):
                    # Pooled rare levels: every arm not shown on its own line.
                    host = lev["level"].removesuffix(" or other")
                    a = {host} | (set(system.arms) - named)
                where = {"a": a}
            for cell in lev["cells"]:
                k = cell["cluster"]
                # Where fewer than min-cell patients of a cluster have a value, zeros are
                # withheld too: a withheld cell there may be 0.
                thin = missing.get(k) is not None and sizes[k] - missing[k] < MIN_CELL
                count(f"table1 {var['variable']} {lev['level']} c{k}",
                      system.mask(k={k}, **where), cell["n"], cell["n_suppressed"],
                      at_least_one=not thin)
            if "overall" in lev:
                o = lev["overall"]
                count(f"table1 {lev['level']} overall", system.mask(k=set(shown), a=a),
                      o["n"], o["n_suppressed"])
    surv = data.get("survival", {})
    for c in surv.get("clusters", []):
        k = {c["cluster"]}
        count(f"surv n c{c['cluster']}", system.mask(k=k, s={"E", "C"}), c["n"],
              c["n_suppressed"])
        count(f"surv events c{c['cluster']}", system.mask(k=k, s={"E"}), c["events"],
              c["events_suppressed"], at_least_one=big(c["n"]))
        count(f"surv censored c{c['cluster']}", system.mask(k=k, s={"C"}), c["censored"],
              c["censored_suppressed"])
    if surv:
        ex = surv["excluded"]
        count("surv excluded", system.mask(k=set(shown), s={"X"}), ex["n_excluded"],
              ex["n_excluded_suppressed"])
    bt = data.get("survival_by_treatment", {})
    for c in bt.get("clusters", []):
        k = {c["cluster"]}
        for g in c["groups"]:
            a = {g["treatment"]}
            count(f"surv-trt n c{c['cluster']} {g['treatment']}",
                  system.mask(k=k, a=a, s={"E", "C"}), g["n"], g["n_suppressed"])
            count(f"surv-trt events c{c['cluster']} {g['treatment']}",
                  system.mask(k=k, a=a, s={"E"}), g["events"], g["events_suppressed"],
                  at_least_one=big(g["n"]))
    if bt:
        ex = bt["excluded"]
        count("surv-trt excluded", system.mask(k=set(shown), s={"X"}), ex["n_excluded"],
              ex["n_excluded_suppressed"])
        count("surv-trt no treatment", system.mask(k=set(shown), a={None}, s={"E", "C"}),
              ex["n_missing_treatment"], ex["n_missing_treatment_suppressed"])
    resp = data.get("response", {})
    for c in resp.get("cells", []):
        k, a = {c["cluster"]}, {c["treatment"]}
        count(f"resp n c{c['cluster']} {c['treatment']}", system.mask(k=k, a=a, r={"R", "N"}),
              c["n"], c["n_suppressed"])
        count(f"resp responders c{c['cluster']} {c['treatment']}",
              system.mask(k=k, a=a, r={"R"}), c["responders"], c["responders_suppressed"],
              at_least_one=big(c["n"]))
    if resp:
        ex = resp["excluded"]
        m = np.maximum(system.mask(k=set(shown), r={"X"}), system.mask(k=set(shown), a={None}))
        # A cluster with too few analysed patients is not broken down: all excluded.
        thin = {k for k in shown if not any(c["cluster"] == k for c in resp["cells"])}
        if thin:
            m = np.maximum(m, system.mask(k=thin))
        count("resp excluded", m, ex["n_excluded"], ex["n_excluded_suppressed"])
    return withheld


def _assert_nothing_recoverable(system: _System, withheld: list[tuple[str, np.ndarray]]) -> None:
    pinned = [(name, system.true_value(m)) for name, m in withheld
              if system.true_value(m) > 0 and system.pinned(m)]
    assert not pinned, f"withheld counts recoverable from the whole report: {pinned}"


@pytest.mark.parametrize(("seed", "sizes", "small_arm"), [
    (1, [60, 45, 30], {2: 3}),
    (2, [50, 40, 35, 28], {1: 2, 3: 4}),
    (3, [70, 26], {0: 1, 1: 3}),
])
def test_no_withheld_count_recoverable_across_sections(tmp_path: Path, seed: int,
                                                       sizes: list[int],
                                                       small_arm: dict[int, int]) -> None:
    store = _cohort(tmp_path, seed, sizes, small_arm)
    data = json.loads(json.dumps(rep_to_json(gather(Store.open(store), min_cell=MIN_CELL))))
    system = _System(_truth(store))
    withheld = _read_report(system, data)
    assert {"arm", "regimen", "vital"} <= {v["variable"] for v in data["clinical"]["variables"]}
    # The planted small arms are withheld somewhere (the oracle is not vacuous) ...
    for section in ("surv-trt n", "resp n"):
        assert any(name.startswith(section) and name.endswith(" C") for name, _ in withheld)
    # ... and no withheld count is pinned by everything the report publishes together.
    _assert_nothing_recoverable(system, withheld)
    # No group of >= min_cell is hidden to protect a cell.
    true_sizes = system.truth["cluster"].value_counts()
    assert sorted(c["n"] for c in data["groups"]["clusters"]) == sorted(true_sizes["count"])


def test_oracle_catches_sections_protected_one_by_one(tmp_path: Path) -> None:
    """Without the shared release, the survival section's events per cluster minus the
    by-treatment section's events of the other arms give a withheld arm's events back."""
    store = _cohort(tmp_path, 5, [60, 45, 30], {2: 3}, missing=False)
    truth = _truth(store)
    clin = Store.open(store).clinical()
    assert clin is not None
    df = truth.select("patient_id", "cluster").join(
        clin.select("patient_id", pl.col("arm").alias("treatment"),
                    pl.col("os_days").alias("time"), pl.col("os_event").alias("event"),
                    pl.col("best_response").alias("response")), on="patient_id")
    kw = {"protect_missing": False}
    sizes = df["cluster"].value_counts()
    data = {
        "groups": {"clusters": [{"cluster": k, "n": n, "suppressed": False}
                                for k, n in sizes.iter_rows()]},
        "survival": survival_by_cluster(df, MIN_CELL, **kw).to_dict(),
        "survival_by_treatment": survival_by_treatment_within_cluster(df, MIN_CELL,
                                                                      **kw).to_dict(),
        "response": response_by_cluster(df, MIN_CELL, **kw).to_dict(),
    }
    system = _System(truth)
    withheld = _read_report(system, json.loads(json.dumps(data)))
    with pytest.raises(AssertionError, match="recoverable"):
        _assert_nothing_recoverable(system, withheld)


def test_curves_and_medians_only_with_published_events(tmp_path: Path) -> None:
    """A drawn curve bounds its events (each step holds at least min-cell of them) and the
    numbers at risk along it rebuild the events between steps: no curve, median or number
    at risk where the events are withheld, and never numbers at risk inside a curve."""
    store = _cohort(tmp_path, 4, [60, 45, 30], {2: 3})
    data = json.loads(json.dumps(rep_to_json(gather(Store.open(store), min_cell=MIN_CELL))))
    groups = [*data["survival"]["clusters"],
              *(g for c in data["survival_by_treatment"]["clusters"] for g in c["groups"])]
    assert any(g["events_suppressed"] for g in groups)
    for g in groups:
        assert "at_risk" not in g["curve"]
        if g["events_suppressed"] or g["n_suppressed"]:
            assert g["curve"]["withheld"] and not g["curve"]["times"]
            assert g["median"] is None


def _relabel(store: Path, labels: dict[str, int]) -> None:
    """Force some of the run's labels (a test artefact; the run's checksum follows)."""
    import hashlib

    run = Store.open(store).resolve_run("latest")
    a = pl.read_parquet(run / "assignments.parquet")
    a = a.with_columns(pl.Series("cluster", [labels.get(p, k) for p, k in a.select(
        "patient_id", "cluster").iter_rows()], dtype=a["cluster"].dtype))
    a.write_parquet(run / "assignments.parquet")
    meta = json.loads((run / "run.json").read_text())
    meta["files"]["assignments.parquet"] = hashlib.sha256(
        (run / "assignments.parquet").read_bytes()).hexdigest()
    (run / "run.json").write_text(json.dumps(meta))


def test_folded_groups_are_not_split_by_other_totals(tmp_path: Path) -> None:
    """3 unassigned patients and a 2-patient cluster share the folded line (5): neither the
    unassigned count nor the assigned total (which gives it back) is published."""
    store = _cohort(tmp_path, 6, [60, 45, 30], {})
    ids = pl.read_parquet(Store.open(store).resolve_run("latest") / "assignments.parquet")
    by_cluster = ids.group_by("cluster").agg("patient_id").sort("cluster")
    first, second = by_cluster["patient_id"][0].to_list(), by_cluster["patient_id"][1].to_list()
    _relabel(store, {**{p: -1 for p in first[:3]}, **{p: 7 for p in second[:2]}})
    data = json.loads(json.dumps(rep_to_json(gather(Store.open(store), min_cell=MIN_CELL))))
    groups = data["groups"]
    assert groups["not_clustered_or_withheld"] == 5
    assert groups["unassigned"] is None and groups["n_assigned"] is None
    text = json.dumps(data)
    assert "3 patients unassigned" not in text and "2 patients" not in text
