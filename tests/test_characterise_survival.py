"""Survival by cluster / by treatment, checked against lifelines fitted independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test

from cohortctl.characterise import (
    km_curve,
    survival_by_cluster,
    survival_by_treatment_within_cluster,
)
from cohortctl.characterise.multiple_testing import bh_qvalues, p_bound
from cohortctl.characterise.privacy import WITHHELD_MARK
from cohortctl.characterise.survival import MAX_KM_STEPS


def _cohort(sizes: dict[int, int], scales: dict[int, float], seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cl = np.repeat(list(sizes), list(sizes.values()))
    t_event = rng.exponential([scales[int(k)] for k in cl])
    t_cens = rng.uniform(50, 600, cl.size)
    time = np.minimum(t_event, t_cens) + 0.25
    event = (t_event <= t_cens).astype(int)
    return pl.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(cl.size)],
            "cluster": cl,
            "time": time,
            "event": event,
        }
    )


def test_statistics_derived_from_a_withheld_count_are_withheld() -> None:
    """Cluster 1 has fewer than 5 censored patients, so its events are withheld: the
    log-rank statistic and the hazard ratio (whose SE gives the events back) are withheld,
    and the p-value is published only as a category."""
    df = _cohort({0: 100, 1: 100}, {0: 400.0, 1: 60.0}, seed=1)
    res = survival_by_cluster(df)
    assert res.clusters[1]["events_suppressed"]
    ref = multivariate_logrank_test(df["time"].to_numpy(), df["cluster"].to_numpy(), df["event"])
    assert res.logrank["statistic"] is None and res.logrank["p"] is None
    assert res.logrank["p_coarsened"] and res.logrank["p_bound"] == p_bound(ref.p_value)
    hr = res.cox["hazard_ratios"][0]
    assert hr["withheld"] and hr["hr"] is None and hr["ci_lower"] is None and hr["p"] is None
    assert res.summary["HR (95% CI)"].to_list()[1] == WITHHELD_MARK


def test_strong_difference_logrank_matches_lifelines() -> None:
    df = _cohort({0: 100, 1: 100}, {0: 400.0, 1: 100.0}, seed=1)
    res = survival_by_cluster(df)
    ref = multivariate_logrank_test(df["time"].to_numpy(), df["cluster"].to_numpy(), df["event"])
    assert res.logrank["p"] == pytest.approx(ref.p_value)
    assert res.logrank["statistic"] == pytest.approx(ref.test_statistic)
    assert res.logrank["p"] < 0.001
    assert res.logrank["df"] == 1


def test_null_difference_not_significant() -> None:
    df = _cohort({0: 80, 1: 80}, {0: 200.0, 1: 200.0}, seed=5)
    res = survival_by_cluster(df)
    ref = multivariate_logrank_test(df["time"].to_numpy(), df["cluster"].to_numpy(), df["event"])
    assert res.logrank["p"] == pytest.approx(ref.p_value)
    assert res.logrank["p"] > 0.05


def test_cox_hr_vs_largest_cluster_and_medians() -> None:
    df = _cohort({0: 60, 1: 90, 2: 70}, {0: 150.0, 1: 250.0, 2: 80.0}, seed=2)
    res = survival_by_cluster(df)
    assert res.cox["reference"] == 1  # the largest cluster
    pdf = pd.DataFrame(
        {
            "time": df["time"].to_numpy(),
            "event": df["event"].to_numpy(),
            "c0": (df["cluster"] == 0).to_numpy().astype(float),
            "c2": (df["cluster"] == 2).to_numpy().astype(float),
        }
    )
    cph = CoxPHFitter().fit(pdf, duration_col="time", event_col="event")
    for h in res.cox["hazard_ratios"]:
        row = cph.summary.loc[f"c{h['cluster']}"]
        assert h["hr"] == pytest.approx(row["exp(coef)"], rel=1e-6)
        assert h["ci_lower"] == pytest.approx(row["exp(coef) lower 95%"], rel=1e-6)
        assert h["ci_upper"] == pytest.approx(row["exp(coef) upper 95%"], rel=1e-6)
        assert h["p"] == pytest.approx(row["p"], rel=1e-6)
    assert res.summary.filter(pl.col("cluster") == "cluster 1")["HR (95% CI)"].item() == (
        "1 (reference)"
    )
    for c in res.clusters:
        m = df["cluster"] == c["cluster"]
        kmf = KaplanMeierFitter().fit(df["time"].filter(m), df["event"].filter(m))
        assert c["n"] == int(m.sum()) and c["events"] == int(df["event"].filter(m).sum())
        if np.isfinite(kmf.median_survival_time_):
            assert c["median"] == pytest.approx(kmf.median_survival_time_)


def test_km_curve_points_truncation_and_coarsening() -> None:
    df = _cohort({0: 40}, {0: 120.0}, seed=3)
    t, e = df["time"].to_numpy(), df["event"].to_numpy()
    curve = km_curve(t, e, 5)
    kmf = KaplanMeierFitter().fit(t, e)
    et = kmf.event_table
    assert curve.times[0] == 0 and curve.survival[0] == 1 and curve.at_risk[0] == 40
    prev = 0.0
    for time, surv, lo, at_risk in zip(
        curve.times[1:], curve.survival[1:], curve.ci_lower[1:], curve.at_risk[1:], strict=True
    ):
        # Published to 3 decimals.
        assert surv == pytest.approx(float(kmf.survival_function_at_times(time).iloc[0]),
                                     abs=5e-4)
        assert lo == pytest.approx(float(kmf.confidence_interval_.loc[time].iloc[0]), abs=5e-4)
        assert at_risk == et.loc[time, "at_risk"] >= 5
        # Each displayed step aggregates at least min_cell events.
        step_events = et.loc[(et.index > prev) & (et.index <= time), "observed"].sum()
        assert step_events >= 5
        prev = time
    # Truncation: no point where fewer than 5 patients are at risk.
    last_ok = et[(et["at_risk"] >= 5) & (et["observed"] > 0)].index.max()
    assert curve.times[-1] <= last_ok
    assert km_curve(t[:4], e[:4], 5).withheld


def test_km_curve_steps_are_bounded_on_large_cohorts() -> None:
    """At 100,000 patients a step per min_cell events made every curve thousands of points
    long; steps grow instead, so a curve has at most MAX_KM_STEPS of them."""
    rng = np.random.default_rng(0)
    t = rng.exponential(100, 20_000)
    e = rng.random(20_000) < 0.8
    curve = km_curve(t, e, 5)
    assert 100 <= len(curve.times) - 1 <= MAX_KM_STEPS
    kmf = KaplanMeierFitter().fit(t, e)
    et = kmf.event_table
    per_step = [et.loc[(et.index > a) & (et.index <= b), "observed"].sum()
                for a, b in zip(curve.times[:-1], curve.times[1:], strict=True)]
    assert min(per_step) >= e.sum() / MAX_KM_STEPS


def test_missing_time_excluded_and_counted() -> None:
    df = _cohort({0: 50, 1: 40}, {0: 200.0, 1: 100.0}, seed=4)
    time = df["time"].to_numpy().copy()
    time[[0, 1]] = np.nan  # 2 patients of cluster 0 lack a time
    df = df.with_columns(pl.Series("time", time).fill_nan(None))
    # Strict (default): 50 - n would reveal the 2 excluded -> cluster 0's n (and curve) withheld.
    res = survival_by_cluster(df)
    c0 = res.clusters[0]
    assert c0["n"] is None and c0["n_suppressed"] and c0["curve"]["withheld"]
    assert res.excluded == {"n_excluded": None, "n_excluded_suppressed": True}
    assert res.summary["n"].to_list()[:2] == [WITHHELD_MARK, "40"]
    assert res.curves.filter(pl.col("cluster") == 0).is_empty()
    # The tests still use the analysed patients.
    ok = np.isfinite(time)
    ref = multivariate_logrank_test(
        time[ok], df["cluster"].to_numpy()[ok], df["event"].to_numpy()[ok]
    )
    # ... but with cluster 0's n withheld, the statistic is withheld and p is a category.
    assert res.logrank["p"] is None and res.logrank["p_bound"] == p_bound(ref.p_value)
    # Disclosable mode (the report's policy): exact counts and statistics.
    lax = survival_by_cluster(df, protect_missing=False)
    assert lax.excluded == {"n_excluded": 2, "n_excluded_suppressed": False}
    assert lax.clusters[0]["n"] == 48 and not lax.clusters[0]["curve"]["withheld"]
    assert lax.logrank["p"] == pytest.approx(ref.p_value)


def test_event_labels_and_validation() -> None:
    df = _cohort({0: 20, 1: 20}, {0: 100.0, 1: 100.0}, seed=6)
    labelled = df.with_columns(
        pl.when(pl.col("event") == 1)
        .then(pl.lit("1:DECEASED"))
        .otherwise(pl.lit("0:LIVING"))
        .alias("event")
    )
    a = survival_by_cluster(df).to_dict()
    b = survival_by_cluster(labelled).to_dict()
    assert a["logrank"] == b["logrank"]
    with pytest.raises(ValueError):
        survival_by_cluster(df.with_columns(pl.lit(2).alias("event")))
    with pytest.raises(ValueError):
        survival_by_cluster(df.with_columns((-pl.col("time")).alias("time")))


def test_by_treatment_within_cluster_logrank_and_bh() -> None:
    rng = np.random.default_rng(9)
    parts = []
    for k, (scale_a, scale_b) in enumerate([(300.0, 60.0), (150.0, 150.0)]):
        n = 60
        trt = np.array(["A", "B"] * (n // 2))
        t_event = rng.exponential(np.where(trt == "A", scale_a, scale_b))
        t_cens = rng.uniform(100, 500, n)
        parts.append(
            pl.DataFrame(
                {
                    "cluster": [k] * n,
                    "treatment": trt,
                    "time": np.minimum(t_event, t_cens) + 0.5,
                    "event": (t_event <= t_cens).astype(int),
                }
            )
        )
    df = pl.concat(parts).with_row_index("patient_id")
    res = survival_by_treatment_within_cluster(df)
    pvals = []
    for c in res.clusters:
        sub = df.filter(pl.col("cluster") == c["cluster"])
        ref = multivariate_logrank_test(sub["time"].to_numpy(), sub["treatment"], sub["event"])
        if any(g["events_suppressed"] for g in c["groups"]):
            # an arm's events are withheld: the statistic would give them back
            assert c["logrank"]["p"] is None and c["logrank"]["statistic"] is None
            assert c["logrank"]["p_bound"] == p_bound(ref.p_value)
        else:
            assert c["logrank"]["p"] == pytest.approx(ref.p_value)
        pvals.append(ref.p_value)
        for g in c["groups"]:
            m = sub["treatment"] == g["treatment"]
            n, e = int(m.sum()), int(sub["event"].filter(m).sum())
            assert g["n"] == n
            if g["events_suppressed"]:
                assert 0 < e < 5 or 0 < n - e < 5  # 29 events of 30: 1 censored is small
            else:
                assert g["events"] == e
    true_q = bh_qvalues(pvals)
    for c, q in zip(res.clusters, true_q, strict=True):
        if c["logrank"]["q_coarsened"]:
            assert c["logrank"]["q"] is None and c["logrank"]["q_bound"] == p_bound(q)
        else:
            assert c["logrank"]["q"] == pytest.approx(q)
    lr0 = res.clusters[0]["logrank"]
    assert (lr0["p"] or lr0["p_bound"]) <= 0.001
    assert set(res.curves["treatment"].unique().to_list()) == {"A", "B"}


def test_cluster_with_few_analysed_patients_is_not_broken_down_by_treatment() -> None:
    """6 patients, 2 without follow-up: which arms the other 4 have would show through the
    rows present (a missing row is a shown zero), so the cluster gets no per-arm rows."""
    rng = np.random.default_rng(1)
    n = 36
    cluster = np.array([0] * 30 + [1] * 6)
    time = rng.exponential(100, n) + 1
    time[[30, 31]] = np.nan
    df = pl.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "cluster": cluster,
                       "time": time, "event": rng.integers(0, 2, n),
                       "treatment": ["A", "B"] * 15 + ["A"] * 6})
    res = survival_by_treatment_within_cluster(df, 5, protect_missing=False)
    by = {c["cluster"]: c for c in res.clusters}
    assert by[1]["groups"] == [] and len(by[0]["groups"]) == 2
    assert any("Not broken down by treatment" in n and "cluster 1" in n for n in res.notes)
