"""Survival by cluster (and by treatment within cluster) with Kaplan–Meier, log-rank and Cox PH.

Privacy rules for curves (``min_cell``, default 5):

* a curve is only drawn for a group whose analysed size is displayed (>= ``min_cell`` and not
  withheld);
* the curve is **truncated** at the first event time at which fewer than ``min_cell`` patients
  are at risk;
* the curve is **coarsened** so that every displayed drop aggregates at least ``min_cell``
  events: a point ``(time, survival, CI, at risk)`` is emitted only once the events since the
  previous point reach ``min_cell`` (the value is the true Kaplan–Meier estimate at that time).
  The curve ends at its last emitted point; plot it as a step function through the points.
* the median survival (and its CI bounds) is shown only when it lies within the displayed
  (truncated) range; "not reached" is reported as a flag.

Log-rank and Cox models use the assigned clusters with >= ``min_cell`` patients (unassigned
and suppressed clusters are excluded). Hazard ratios compare each cluster with the largest
cluster (by analysed patients; ties -> lowest id).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from lifelines.statistics import multivariate_logrank_test
from lifelines.utils import median_survival_times

from cohortctl.characterise.multiple_testing import (
    display_p,
    format_p,
    publish_family,
    publish_test,
)
from cohortctl.characterise.privacy import (
    NOT_SHOWN,
    UNASSIGNED,
    WITHHELD_MARK,
    CharacteriseInputError,
    ClusterLayout,
    Release,
    check_min_cell,
    cluster_name,
    format_count,
    format_number,
    protect_nested,
    published,
    suppress_nested,
    to_jsonable,
)
from cohortctl.vocabulary import event_code

__all__ = [
    "KMCurve",
    "SurvivalByCluster",
    "SurvivalByTreatment",
    "km_curve",
    "survival_by_cluster",
    "survival_by_treatment_within_cluster",
]

_CURVE_SCHEMA = {
    "cluster": pl.Int64,
    "group": pl.String,
    "treatment": pl.String,
    "time": pl.Float64,
    "survival": pl.Float64,
    "ci_lower": pl.Float64,
    "ci_upper": pl.Float64,
}


@dataclass
class KMCurve:
    """A privacy-coarsened Kaplan–Meier curve and median survival of one group."""

    group: str
    cluster: int
    treatment: str | None
    withheld: bool
    times: list[float] = field(default_factory=list)
    survival: list[float] = field(default_factory=list)
    ci_lower: list[float] = field(default_factory=list)
    ci_upper: list[float] = field(default_factory=list)
    at_risk: list[int] = field(default_factory=list)
    median: float | None = None
    median_ci_lower: float | None = None
    median_ci_upper: float | None = None
    median_reached: bool | None = None
    median_withheld: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable curve. The numbers at risk at its steps are not published: with
        the survival and its bounds they rebuild the deaths and censorings between the
        steps (the numbers-at-risk table is the one protected place for them)."""
        return to_jsonable({k: v for k, v in self.__dict__.items() if k != "at_risk"})

    def rows(self) -> list[dict[str, Any]]:
        """Long-format rows for plotting."""
        return [
            {
                "cluster": self.cluster,
                "group": self.group,
                "treatment": self.treatment,
                "time": t,
                "survival": s,
                "ci_lower": lo,
                "ci_upper": hi,
            }
            for t, s, lo, hi in zip(
                self.times, self.survival, self.ci_lower, self.ci_upper, strict=True
            )
        ]


#: Most steps drawn per Kaplan–Meier curve (see :func:`km_curve`).
MAX_KM_STEPS = 150
#: Decimals of published survival probabilities and their bounds (more would help rebuild
#: the events and censorings behind a coarsened step).
KM_DECIMALS = 3


def km_curve(
    time: np.ndarray,
    event: np.ndarray,
    min_cell: int = 5,
    *,
    group: str = "all",
    cluster: int = 0,
    treatment: str | None = None,
) -> KMCurve:
    """Kaplan–Meier curve with truncation/coarsening and median (see module docstring)."""
    min_cell = check_min_cell(min_cell)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    out = KMCurve(group=group, cluster=cluster, treatment=treatment, withheld=False)
    if time.size < min_cell or time.size == 0:
        out.withheld = True
        return out
    kmf = KaplanMeierFitter().fit(time, event_observed=event)
    et = kmf.event_table
    sf = kmf.survival_function_.iloc[:, 0]
    ci = kmf.confidence_interval_
    out.times.append(0.0)
    out.survival.append(1.0)
    out.ci_lower.append(1.0)
    out.ci_upper.append(1.0)
    out.at_risk.append(int(time.size))
    cum = 0
    last_ok = 0.0
    # Each drawn step aggregates at least min_cell events, and a curve has at most
    # MAX_KM_STEPS steps (at 100,000 patients a step per 5 events made reports of 10+ MB).
    per_step = max(min_cell, math.ceil(int(event.sum()) / MAX_KM_STEPS))
    for t, d, n in zip(
        et.index.to_numpy(dtype=float),
        et["observed"].to_numpy(),
        et["at_risk"].to_numpy(),
        strict=True,
    ):
        if d == 0:
            continue
        if n < min_cell:
            break
        last_ok = float(t)
        cum += int(d)
        if cum >= per_step:
            cum = 0
            out.times.append(float(t))
            out.survival.append(round(float(sf.loc[t]), KM_DECIMALS))
            out.ci_lower.append(round(float(ci.iloc[:, 0].loc[t]), KM_DECIMALS))
            out.ci_upper.append(round(float(ci.iloc[:, 1].loc[t]), KM_DECIMALS))
            out.at_risk.append(int(n))
    med = float(kmf.median_survival_time_)
    out.median_reached = math.isfinite(med)
    if out.median_reached and med <= last_ok and med <= out.times[-1]:
        out.median = med
        out.median_withheld = False
        mci = median_survival_times(ci)
        lo, hi = float(mci.iloc[0, 0]), float(mci.iloc[0, 1])
        # Columns are (lower survival band, upper band): the lower band crosses 0.5 first.
        lo, hi = min(lo, hi), max(lo, hi)
        out.median_ci_lower = lo if math.isfinite(lo) and lo <= last_ok else None
        out.median_ci_upper = hi if math.isfinite(hi) and hi <= last_ok else None
    elif not out.median_reached:
        out.median_withheld = False  # "not reached" is itself safe to report
    return out


def _median_text(c: KMCurve) -> str:
    if c.withheld or c.median_withheld:
        return NOT_SHOWN
    if not c.median_reached:
        return "not reached"
    lo = format_number(c.median_ci_lower) if c.median_ci_lower is not None else "NE"
    hi = format_number(c.median_ci_upper) if c.median_ci_upper is not None else "NE"
    return f"{format_number(c.median)} ({lo}–{hi})"




def _event_values(s: pl.Series) -> np.ndarray:
    """Event indicator as float (1/0, NaN missing). Strings like ``"1:DECEASED"`` accepted."""
    if s.dtype == pl.Boolean:
        return s.cast(pl.Float64).to_numpy()
    if s.dtype.is_numeric():
        v = s.cast(pl.Float64).fill_nan(None).to_numpy().astype(float)
        bad = v[np.isfinite(v) & ~np.isin(v, [0.0, 1.0])]
        if bad.size:
            raise CharacteriseInputError(f"event column must be 0/1, found value {bad[0]!r}")
        return v
    out = np.full(s.len(), np.nan)
    for i, raw in enumerate(s.cast(pl.String).to_list()):
        try:
            code = event_code(raw)
        except ValueError:
            raise CharacteriseInputError(
                f"event column has unrecognised value {raw!r} (use 0/1)") from None
        if code is not None:
            out[i] = float(code)
    return out


def _prepare(
    df: pl.DataFrame, time_col: str, event_col: str, extra: tuple[str, ...] = ()
) -> tuple[pl.DataFrame, int]:
    need = ["cluster", time_col, event_col, *extra]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise CharacteriseInputError(f"survival table lacks column(s) {missing}")
    t_col = df[time_col]
    if t_col.dtype == pl.String:
        parsed = t_col.str.strip_chars().replace("", None).cast(pl.Float64, strict=False)
        if (parsed.is_null() & t_col.str.strip_chars().replace("", None).is_not_null()).any():
            raise CharacteriseInputError(f"time column {time_col!r} has non-numeric values")
        t_col = parsed
    elif not t_col.dtype.is_numeric():
        raise CharacteriseInputError(f"time column {time_col!r} must be numeric")
    t = t_col.cast(pl.Float64).fill_nan(None).to_numpy().astype(float)
    e = _event_values(df[event_col])
    ok = np.isfinite(t) & np.isfinite(e)
    if np.any(t[ok] < 0):
        raise CharacteriseInputError(f"time column {time_col!r} has negative values")
    if df["cluster"].null_count():
        raise CharacteriseInputError("cluster column has missing labels (use -1 for unassigned)")
    data = pl.DataFrame(
        {
            "cluster": df["cluster"].cast(pl.Int64),
            "time": t,
            "event": e,
            "row": np.arange(df.height, dtype=np.int64),
            **{c: df[c] for c in extra},
        }
    )
    return data.filter(pl.Series(ok)), int((~ok).sum())


def _excluded(n: int, suppressed: bool) -> dict[str, Any]:
    return {"n_excluded": None if suppressed else published(n),
            "n_excluded_suppressed": suppressed}


def _excluded_text(n: int | None, suppressed: bool) -> str:
    """Note text for a number of excluded patients (no bound is given when withheld)."""
    if suppressed:
        return f"An undisclosed number ({WITHHELD_MARK}) of"
    return str(n if n is None else published(n))


@dataclass
class SurvivalByCluster:
    """Result of :func:`survival_by_cluster`.

    ``summary`` (display): per cluster n, events, median (95% CI), HR (95% CI), p.
    ``curves``: long-format plotting table (cluster, group, time, survival, ci_lower, ci_upper,
    at_risk). ``at_risk``: numbers at risk per cluster at evenly spaced times (display,
    protected; see :func:`at_risk_table`). ``clusters``/``logrank``/``cox`` hold the raw
    numbers.
    """

    summary: pl.DataFrame
    curves: pl.DataFrame
    clusters: list[dict[str, Any]]
    logrank: dict[str, Any]
    cox: dict[str, Any]
    excluded: dict[str, Any]
    layout: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    min_cell: int = 5
    at_risk: pl.DataFrame | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable raw numbers (suppressed values are ``None`` + flag)."""
        return to_jsonable(
            {
                "min_cell": self.min_cell,
                "layout": self.layout,
                "clusters": self.clusters,
                "logrank": self.logrank,
                "cox": self.cox,
                "excluded": self.excluded,
                "notes": self.notes,
            }
        )


def _cox(data: pl.DataFrame, tested: list[int], events: dict[int, int]) -> dict[str, Any]:
    sizes = {k: int((data["cluster"] == k).sum()) for k in tested}
    ref = sorted(tested, key=lambda k: (-sizes[k], k))[0]
    others = [k for k in tested if k != ref]
    res: dict[str, Any] = {
        "reference": ref,
        "reference_name": cluster_name(ref),
        "method": "Cox proportional hazards (lifelines CoxPHFitter, Efron ties)",
        "converged": False,
        "hazard_ratios": [],
        "note": None,
    }
    pdf = pd.DataFrame({"time": data["time"].to_numpy(), "event": data["event"].to_numpy()})
    cl = data["cluster"].to_numpy()
    for k in others:
        pdf[f"c{k}"] = (cl == k).astype(float)
    blank = [
        {
            "cluster": k,
            "name": cluster_name(k),
            "hr": None,
            "ci_lower": None,
            "ci_upper": None,
            "p": None,
            "estimable": False,
        }
        for k in others
    ]
    if events.get(ref, 0) == 0:
        res["note"] = "Hazard ratios not estimable: the reference cluster has no events."
        res["hazard_ratios"] = blank
        return res
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cph = CoxPHFitter().fit(pdf, duration_col="time", event_col="event")
        conv_warn = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    except (ConvergenceError, np.linalg.LinAlgError, ValueError, ZeroDivisionError) as exc:
        res["note"] = f"Cox model did not converge ({type(exc).__name__}); hazard ratios omitted."
        res["hazard_ratios"] = blank
        return res
    res["converged"] = True
    summ = cph.summary
    unstable = []
    for k in others:
        row = summ.loc[f"c{k}"]
        coef, se = float(row["coef"]), float(row["se(coef)"])
        ok = events.get(k, 0) > 0 and math.isfinite(coef) and math.isfinite(se) and abs(coef) < 15
        ok = ok and se < 50
        if not ok:
            unstable.append(cluster_name(k))
        res["hazard_ratios"].append(
            {
                "cluster": k,
                "name": cluster_name(k),
                "hr": float(row["exp(coef)"]) if ok else None,
                "ci_lower": float(row["exp(coef) lower 95%"]) if ok else None,
                "ci_upper": float(row["exp(coef) upper 95%"]) if ok else None,
                "p": float(row["p"]) if ok else None,
                "estimable": ok,
            }
        )
    notes = []
    if unstable:
        notes.append(
            "Hazard ratio not estimable (no events or separation) for " + ", ".join(unstable)
        )
    if conv_warn:
        notes.append("the Cox fit reported convergence warnings; interpret with care")
    res["note"] = ("; ".join(notes) + ".") if notes else None
    return res


AT_RISK_TIMES = 6  # columns of the numbers-at-risk table


def at_risk_table(time: np.ndarray, cluster: np.ndarray, clusters: list[int],
                  min_cell: int) -> pl.DataFrame | None:
    """Numbers at risk of ``clusters`` (analysed patients) at evenly spaced times.

    Protected like any count: no number below ``min_cell`` (the row ends, as the curve
    does), and no two shown numbers between which fewer than ``min_cell`` patients left the
    risk set (that drop would be a small count of deaths or censorings). Callers leave out
    clusters whose analysed n or events are withheld: their drops would give them back.
    """
    groups = {k: time[cluster == k] for k in clusters}
    reach = [np.sort(t)[-min_cell] for t in groups.values() if t.size >= min_cell]
    if not reach or max(reach) <= 0:
        return None
    step = float(f"{max(reach) / (AT_RISK_TIMES - 1):.1g}")
    times = [i * step for i in range(AT_RISK_TIMES) if i * step <= max(reach)]
    rows = []
    for k, t in groups.items():
        row = {"group": cluster_name(k)}
        last: int | None = None
        for x in times:
            n = int((t >= x).sum())
            drop = 0 if last is None else last - n
            publish = n >= min_cell and (drop == 0 or drop >= min_cell)
            row[f"{x:g}"] = str(published(n)) if publish else NOT_SHOWN
            if publish:
                last = n
        rows.append(row)
    return pl.DataFrame(rows)


class _Positions:
    """Patient positions (in a :class:`Release`) of a survival frame's rows: all rows of
    ``df``, and those of ``data``, the rows with valid follow-up."""

    def __init__(self, release: Release, df: pl.DataFrame, data: pl.DataFrame) -> None:
        if "patient_id" not in df.columns:
            raise CharacteriseInputError("survival table lacks column 'patient_id' (needed to "
                                         "protect counts across sections)")
        self.all = release.positions(df["patient_id"].to_list())
        self.clusters = df["cluster"].cast(pl.Int64).to_numpy()
        self._analysed_rows = data["row"].to_numpy()

    def cluster(self, k: int) -> np.ndarray:
        """Every patient of cluster ``k``."""
        return self.all[self.clusters == k]

    def analysed(self, mask: np.ndarray) -> np.ndarray:
        """Patients of the analysed rows selected by ``mask`` (over ``data``'s rows)."""
        return self.all[self._analysed_rows[mask]]

    def excluded(self, k: int) -> np.ndarray:
        """Patients of cluster ``k`` without valid follow-up."""
        keep = np.zeros(self.all.size, dtype=bool)
        keep[self._analysed_rows] = True
        return self.all[(self.clusters == k) & ~keep]


def survival_by_cluster(
    df: pl.DataFrame,
    min_cell: int = 5,
    *,
    time_col: str = "time",
    event_col: str = "event",
    protect_missing: bool = True,
    release: Release | None = None,
) -> SurvivalByCluster:
    """KM curves, log-rank test, Cox hazard ratios and median survival per cluster.

    ``df`` has one row per clustered patient (every patient of the clustering, so that cluster
    sizes match the rest of the report) with columns ``cluster`` (-1 = unassigned), time and
    event (0/1, bool or labels such as ``"1:DECEASED"``). Patients with missing time or event
    are excluded and counted (among displayed clusters). Cluster sizes are public, so with
    ``protect_missing`` (default) a small number of excluded patients in a cluster withholds
    what would reveal it: that cluster's analysed ``n`` and hence its curve and median.
    ``protect_missing=False`` treats numbers of patients lacking survival data as disclosable.
    With a ``release`` (and a ``patient_id`` column) the counts are protected together with
    what other sections published about the same patients (:class:`Release`).
    """
    min_cell = check_min_cell(min_cell)
    data, _ = _prepare(df, time_col, event_col)
    layout = ClusterLayout.from_labels(df["cluster"].cast(pl.Int64).to_list(), min_cell)
    notes: list[str] = []
    if layout.suppressed:
        notes.append(
            f"Groups with fewer than {min_cell} patients are counted only in the line "
            "'not clustered or withheld' "
            f"({', '.join(layout.suppressed_names)}) and excluded from curves and tests."
        )
    shown = layout.shown
    cl = data["cluster"].to_numpy()
    t_all = data["time"].to_numpy()
    e_all = data["event"].to_numpy().astype(bool)
    ev = np.array([int(e_all[cl == k].sum()) for k in shown], dtype=np.int64)
    na = np.array([int((cl == k).sum()) for k in shown], dtype=np.int64)
    excl = [layout.sizes[k] - int(na[j]) for j, k in enumerate(shown)]
    if release is None:
        sup = suppress_nested(
            [layout.sizes[k] for k in shown],
            [{"all": (int(na[j]), int(ev[j]))} if na[j] else {} for j in range(len(shown))],
            [[x] for x in excl],
            min_cell,
            protect_excluded=protect_missing,
        )
    else:
        where = _Positions(release, df, data)
        sup = protect_nested(
            release,
            [where.cluster(k) for k in shown],
            [{"all": (where.analysed(cl == k), where.analysed((cl == k) & e_all))} if na[j]
             else {} for j, k in enumerate(shown)],
            [[where.excluded(k)] for k in shown],
            protect_excluded=protect_missing,
        )

    curves: list[KMCurve] = []
    clusters_raw: list[dict[str, Any]] = []
    n_sup_l: list[bool] = []
    e_sup_l: list[bool] = []
    for j, k in enumerate(shown):
        m = cl == k
        n_sup = bool(sup.n[j].get("all", False))
        e_sup = bool(sup.positive[j].get("all", False))
        n_sup_l.append(n_sup)
        e_sup_l.append(e_sup)
        # A curve (and its median) only with n and events published: its steps bound the
        # events (each step holds at least min_cell of them).
        if n_sup or e_sup or na[j] == 0:
            c = KMCurve(group=cluster_name(k), cluster=k, treatment=None, withheld=True)
        else:
            c = km_curve(t_all[m], e_all[m], min_cell, group=cluster_name(k), cluster=k)
        curves.append(c)
        clusters_raw.append(
            {
                "cluster": k,
                "name": cluster_name(k),
                "tested": k in layout.tested,
                "n": None if n_sup else published(int(na[j])),
                "n_suppressed": n_sup,
                "events": None if e_sup else published(int(ev[j])),
                "events_suppressed": e_sup,
                # From the published n and events: a separately rounded count of censored
                # patients would be one more count that moves when a patient withdraws.
                "censored": (None if (n_sup or e_sup)
                             else published(int(na[j])) - published(int(ev[j]))),
                "censored_suppressed": n_sup or e_sup,
                "median": c.median,
                "median_ci_lower": c.median_ci_lower,
                "median_ci_upper": c.median_ci_upper,
                "median_reached": c.median_reached,
                "median_withheld": c.withheld or c.median_withheld,
                "curve": c.to_dict(),
            }
        )

    tested = [k for k in layout.tested if (cl == k).any()]
    tmask = np.isin(cl, tested)
    logrank: dict[str, Any] = {"statistic": None, "df": None, "p": None, "clusters": tested}
    cox: dict[str, Any] = {
        "reference": None,
        "hazard_ratios": [],
        "converged": False,
        "note": "fewer than two clusters to compare",
    }
    if len(tested) >= 2:
        if e_all[tmask].sum() == 0:
            notes.append("No events among tested clusters: log-rank and Cox not computed.")
            cox["note"] = "no events"
        else:
            lr = multivariate_logrank_test(t_all[tmask], cl[tmask], e_all[tmask])
            logrank.update(
                statistic=float(lr.test_statistic),
                df=int(lr.degrees_of_freedom),
                p=float(lr.p_value),
            )
            events = {k: int(e_all[cl == k].sum()) for k in tested}
            cox = _cox(data.filter(pl.Series(tmask)), tested, events)
    else:
        notes.append("Fewer than two clusters large enough to compare survival.")
    # Statistics derived from withheld counts are withheld by the same rule: a hazard ratio's
    # standard error gives back a 1-event count, and so does a log-rank statistic.
    hidden = {k for j, k in enumerate(shown) if n_sup_l[j] or e_sup_l[j]}
    if hidden & set(tested):
        publish_test(logrank, True, ("df",))
        withheld_hr = [h for h in cox.get("hazard_ratios", [])
                       if h["estimable"] and (h["cluster"] in hidden or cox["reference"] in hidden)]
        for h in withheld_hr:
            publish_test(h, True, ("hr", "ci_lower", "ci_upper"))
            h["withheld"] = True
        notes.append("The log-rank statistic is withheld and its p given as a category, and "
                      "hazard ratios involving "
                      + ", ".join(cluster_name(k) for k in sorted(hidden & set(tested)))
                      + " are withheld: they would give back a withheld count.")
    if cox.get("note"):
        notes.append(f"Cox model: {cox['note']}")
    if -1 in shown:
        notes.append("Unassigned patients are shown but excluded from log-rank and Cox models.")
    notes.append(
        f"Curves are truncated where fewer than {min_cell} patients remain at risk and "
        f"coarsened so that each step contains at least {min_cell} events."
    )

    hr_by = {h["cluster"]: h for h in cox.get("hazard_ratios", [])}
    rows = []
    for j, (k, c) in enumerate(zip(shown, curves, strict=True)):
        h = hr_by.get(k)
        if k == cox.get("reference"):
            hr_txt, p_txt = "1 (reference)", ""
        elif h is not None and h.get("withheld"):
            hr_txt, p_txt = WITHHELD_MARK, display_p(h)
        elif h is not None and h["estimable"]:
            hr_txt = (
                f"{format_number(h['hr'])} ({format_number(h['ci_lower'])}–"
                f"{format_number(h['ci_upper'])})"
            )
            p_txt = format_p(h["p"])
        else:
            hr_txt, p_txt = NOT_SHOWN, ""
        rows.append(
            {
                "cluster": cluster_name(k),
                "n": format_count(int(na[j]), n_sup_l[j], min_cell),
                "events": format_count(int(ev[j]), e_sup_l[j], min_cell),
                "median (95% CI)": _median_text(c),
                "HR (95% CI)": hr_txt,
                "HR p": p_txt,
            }
        )
    summary = pl.DataFrame(
        rows,
        schema={
            c: pl.String
            for c in ["cluster", "n", "events", "median (95% CI)", "HR (95% CI)", "HR p"]
        },
        orient="row",
    )
    curve_rows = [r for c in curves for r in c.rows()]
    curves_df = pl.DataFrame(curve_rows, schema=_CURVE_SCHEMA, orient="row")
    n_excl = int(sum(excl))
    excluded = _excluded(n_excl, bool(sup.excluded_totals[0]) if shown else False)
    if n_excl:
        notes.append(
            f"{_excluded_text(n_excl, excluded['n_excluded_suppressed'])} patient(s) of the "
            "displayed clusters excluded "
            "for missing time or event."
        )
    if any(n_sup_l):
        notes.append(
            "The analysed number of patients (and so the curve) is withheld for "
            + ", ".join(cluster_name(k) for k, ns in zip(shown, n_sup_l, strict=True) if ns)
            + " (it would reveal a small count)."
        )
    hidden_rows = {k for j, k in enumerate(shown) if n_sup_l[j] or e_sup_l[j]}
    at_risk = at_risk_table(t_all, cl, [k for k in shown if k not in hidden_rows], min_cell)
    return SurvivalByCluster(
        summary=summary,
        curves=curves_df,
        at_risk=at_risk,
        clusters=clusters_raw,
        logrank=logrank,
        cox=cox,
        excluded=excluded,
        layout=layout.to_dict(),
        notes=notes,
        min_cell=min_cell,
    )


@dataclass
class SurvivalByTreatment:
    """Result of :func:`survival_by_treatment_within_cluster`.

    ``summary`` (display): per cluster x treatment n, events, median (95% CI), and the
    within-cluster log-rank p / BH q. ``curves``: long-format plotting table.
    ``clusters``: raw numbers per cluster (groups, log-rank).
    """

    summary: pl.DataFrame
    curves: pl.DataFrame
    clusters: list[dict[str, Any]]
    excluded: dict[str, Any]
    layout: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    min_cell: int = 5

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable raw numbers (suppressed values are ``None`` + flag)."""
        return to_jsonable(
            {
                "min_cell": self.min_cell,
                "layout": self.layout,
                "clusters": self.clusters,
                "excluded": self.excluded,
                "notes": self.notes,
            }
        )


def survival_by_treatment_within_cluster(
    df: pl.DataFrame,
    min_cell: int = 5,
    *,
    time_col: str = "time",
    event_col: str = "event",
    treatment_col: str = "treatment",
    protect_missing: bool = True,
    release: Release | None = None,
) -> SurvivalByTreatment:
    """KM curves by treatment within each displayed cluster, with a log-rank test per cluster.

    ``df`` is as for :func:`survival_by_cluster` plus a treatment column. Patients with
    missing time/event, or missing treatment, are excluded and counted (separately);
    ``protect_missing`` and ``release`` as for :func:`survival_by_cluster`.
    Treatment groups below ``min_cell`` analysed patients (or whose size is withheld to protect
    another count) get no curve and are left out of that cluster's log-rank test. Log-rank
    p-values of the tested clusters are BH-adjusted across clusters.
    """
    min_cell = check_min_cell(min_cell)
    if treatment_col not in df.columns:
        raise CharacteriseInputError(f"survival table lacks column {treatment_col!r}")
    data, _ = _prepare(df, time_col, event_col, (treatment_col,))
    data = data.with_columns(pl.col(treatment_col).cast(pl.String))
    layout = ClusterLayout.from_labels(df["cluster"].cast(pl.Int64).to_list(), min_cell)
    notes: list[str] = []
    if layout.suppressed:
        notes.append(
            f"Groups with fewer than {min_cell} patients are counted only in the line "
            "'not clustered or withheld' "
            f"({', '.join(layout.suppressed_names)})."
        )
    no_trt = data[treatment_col].is_null().to_numpy()
    cl_with_surv = data["cluster"].to_numpy()
    where = _Positions(release, df, data) if release is not None else None
    data = data.filter(pl.col(treatment_col).is_not_null())
    cl = data["cluster"].to_numpy()
    trt = np.array(data[treatment_col].to_list(), dtype=object)
    t_all = data["time"].to_numpy()
    e_all = data["event"].to_numpy().astype(bool)
    treatments = sorted(set(trt.tolist()))
    shown = layout.shown

    ev_by: list[dict[str, int]] = []
    n_by: list[dict[str, int]] = []
    excl_by: list[list[int]] = []
    # A cluster with fewer than min_cell analysed patients is not broken down by treatment:
    # which arms have a row there would tell its few patients' arms (a missing row is a
    # shown zero), the numbers lacking data being public.
    thin = [k for k in shown if 0 < int((cl == k).sum()) < min_cell]
    for k in shown:
        m = cl == k
        n_k = {g: int((m & (trt == g)).sum()) for g in treatments}
        n_by.append({g: v for g, v in n_k.items() if v > 0 and k not in thin})
        ev_by.append({g: int(e_all[m & (trt == g)].sum()) for g in n_by[-1]})
        n_surv = int((cl_with_surv == k).sum())
        n_nt = int((no_trt & (cl_with_surv == k)).sum())
        excl_by.append([layout.sizes[k] - n_surv, n_nt, int(m.sum()) if k in thin else 0])
    if thin:
        notes.append(f"Not broken down by treatment (fewer than {min_cell} patients analysed): "
                     + ", ".join(cluster_name(k) for k in thin) + ".")
    if where is None:
        sup = suppress_nested(
            [layout.sizes[k] for k in shown],
            [{g: (n_by[j][g], ev_by[j][g]) for g in n_by[j]} for j in range(len(shown))],
            excl_by,
            min_cell,
            protect_excluded=protect_missing,
        )
    else:
        analysed = where.all[data["row"].to_numpy()]
        sup = protect_nested(
            release,
            [where.cluster(k) for k in shown],
            [{g: (analysed[(cl == k) & (trt == g)], analysed[(cl == k) & (trt == g) & e_all])
              for g in n_by[j]} for j, k in enumerate(shown)],
            [[where.excluded(k), where.analysed(no_trt & (cl_with_surv == k)),
              analysed[cl == k] if k in thin else analysed[:0]] for k in shown],
            protect_excluded=protect_missing,
            displayed_totals=(True, True, False),
        )

    curves: list[KMCurve] = []
    clusters_raw: list[dict[str, Any]] = []
    rows: list[dict[str, str]] = []
    p_index: list[int] = []
    for j, k in enumerate(shown):
        m = cl == k
        tr_k = list(n_by[j])
        groups = []
        usable = []
        first_row = len(rows)
        for g in tr_k:
            n_sup = bool(sup.n[j][g])
            e_sup = bool(sup.positive[j][g])
            name = f"{cluster_name(k)} / {g}"
            if n_sup:
                c = KMCurve(group=name, cluster=k, treatment=g, withheld=True)
            else:
                gm = m & (trt == g)
                c = km_curve(t_all[gm], e_all[gm], min_cell, group=name, cluster=k, treatment=g)
                if not c.withheld:
                    usable.append(g)  # in the test (coarsened when its events are withheld)
                if e_sup:  # no curve nor median: see survival_by_cluster
                    c = KMCurve(group=name, cluster=k, treatment=g, withheld=True)
            curves.append(c)
            groups.append(
                {
                    "treatment": g,
                    "n": None if n_sup else published(n_by[j][g]),
                    "n_suppressed": n_sup,
                    "events": None if e_sup else published(ev_by[j][g]),
                    "events_suppressed": e_sup,
                    "median": c.median,
                    "median_ci_lower": c.median_ci_lower,
                    "median_ci_upper": c.median_ci_upper,
                    "median_reached": c.median_reached,
                    "median_withheld": c.withheld or c.median_withheld,
                    "curve": c.to_dict(),
                }
            )
            rows.append(
                {
                    "cluster": cluster_name(k),
                    "treatment": g,
                    "n": format_count(n_by[j][g], n_sup, min_cell),
                    "events": format_count(ev_by[j][g], e_sup, min_cell),
                    "median (95% CI)": _median_text(c),
                    "log-rank p": "",
                    "q": "",
                }
            )
        lr: dict[str, Any] = {
            "statistic": None,
            "df": None,
            "p": None,
            "q": None,
            "treatments": usable,
        }
        if k != UNASSIGNED and k in layout.tested and len(usable) >= 2:
            um = m & np.isin(trt, usable)
            if e_all[um].sum() > 0:
                res = multivariate_logrank_test(t_all[um], trt[um], e_all[um])
                lr.update(
                    statistic=float(res.test_statistic),
                    df=int(res.degrees_of_freedom),
                    p=float(res.p_value),
                )
                # A statistic over an arm whose events are withheld gives them back.
                lr["_coarsen"] = any(bool(sup.positive[j][g]) for g in usable)
                p_index.append(len(clusters_raw))
        clusters_raw.append(
            {
                "cluster": k,
                "name": cluster_name(k),
                "groups": groups,
                "logrank": lr,
                "first_row": first_row,
            }
        )
    publish_family([clusters_raw[idx]["logrank"] for idx in p_index])
    for c in clusters_raw:
        fr = c.pop("first_row")
        if fr < len(rows) and c["groups"]:
            rows[fr]["log-rank p"] = display_p(c["logrank"])
            rows[fr]["q"] = display_p(c["logrank"], "q")
    summary = pl.DataFrame(
        rows,
        schema={
            c: pl.String
            for c in ["cluster", "treatment", "n", "events", "median (95% CI)", "log-rank p", "q"]
        },
        orient="row",
    )
    notes.append(
        f"Treatment groups with fewer than {min_cell} patients (or withheld to protect another "
        "count) have no curve and are left out of the log-rank test; unassigned patients are "
        "not tested. Log-rank q-values: Benjamini–Hochberg across clusters."
    )
    notes.append(
        f"Curves are truncated where fewer than {min_cell} patients remain at risk and "
        f"coarsened so that each step contains at least {min_cell} events."
    )
    n_excl = int(sum(e[0] for e in excl_by))
    n_no_trt = int(sum(e[1] for e in excl_by))
    excluded = _excluded(n_excl, bool(sup.excluded_totals[0]) if shown else False)
    excl_trt = _excluded(n_no_trt, bool(sup.excluded_totals[1]) if shown else False)
    excluded["n_missing_treatment"] = excl_trt["n_excluded"]
    excluded["n_missing_treatment_suppressed"] = excl_trt["n_excluded_suppressed"]
    for n_x, x_sup, why in (
        (n_excl, excluded["n_excluded_suppressed"], "missing time or event"),
        (n_no_trt, excl_trt["n_excluded_suppressed"], "missing treatment"),
    ):
        if n_x:
            notes.append(
                f"{_excluded_text(n_x, x_sup)} patient(s) of the displayed clusters excluded "
                f"for {why}."
            )
    curve_rows = [r for c in curves for r in c.rows()]
    return SurvivalByTreatment(
        summary=summary,
        curves=pl.DataFrame(curve_rows, schema=_CURVE_SCHEMA, orient="row"),
        clusters=clusters_raw,
        excluded=excluded,
        layout=layout.to_dict(),
        notes=notes,
        min_cell=min_cell,
    )
