"""Gather every section of the report from a store and one of its runs, then write it.

The report is computed once into a :class:`Report` (JSON-able numbers, display tables,
figure specifications) and rendered as HTML, Markdown or JSON from that single object, so
every format shows the same numbers under the same small-cell rules.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cohortctl import characterise as ch
from cohortctl.characterise.multiple_testing import format_p_bound
from cohortctl.characterise.privacy import (
    FOLDED_KEY,
    FOLDED_LINE,
    PROFILES,
    ClusterLayout,
    DisclosurePolicy,
    Release,
    cluster_name,
    published,
    to_jsonable,
)
from cohortctl.characterise.table1 import linked_columns, looks_like_id_name
from cohortctl.errors import InputDataError, OutputError, UsageError
from cohortctl.report import embedding as emb
from cohortctl.report.machine import data_dictionary, machine_tables
from cohortctl.report.summary import summarise
from cohortctl.store import Store, verify_run, version_info

log = logging.getLogger("cohortctl")

FORMATS = ("html", "json", "md")
MAX_VIEW_COLUMNS = 12  # clinical columns offered as embedding views
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
MAX_LEVELS = 20
TOP_MARKERS = 10
TOP_GENES = 20
TOP_OUTCOMES = 20
ROLE_KEYS = ("time", "event", "treatment", "response")


@dataclass
class Report:
    """Everything the renderers need: numbers, display tables and figure specifications."""

    data: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    raw_tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: list[dict[str, Any]] = field(default_factory=list)
    #: The one disclosure policy every section applies.
    policy: DisclosurePolicy = field(default_factory=DisclosurePolicy)
    #: Counts about clusters x treatment x outcomes, protected together across sections
    #: (Table 1's treatment, survival, survival by treatment, response).
    release: Release | None = None

    def section(self, key: str, title: str, *, note: str = "") -> dict[str, Any]:
        sec: dict[str, Any] = {"key": key, "title": title, "note": note, "items": []}
        self.sections.append(sec)
        return sec


def _add_table(rep: Report, sec: dict[str, Any], name: str, title: str, table: pl.DataFrame,
               *, max_rows: int = 60, sortable: bool = True) -> None:
    """A table item; ``sortable=False`` for tables whose row order carries meaning (Table 1's
    variables and levels, numbers at risk)."""
    rep.tables[name] = table
    sec["items"].append({"type": "table", "name": name, "title": title, "max_rows": max_rows,
                         "sortable": sortable})


def _add_figure(rep: Report, sec: dict[str, Any], name: str, title: str,
                spec: dict[str, Any]) -> None:
    rep.figures[name] = spec
    sec["items"].append({"type": "figure", "name": name, "title": title})


def _add_text(sec: dict[str, Any], text: str) -> None:
    sec["items"].append({"type": "text", "text": text})


# -- gathering -------------------------------------------------------------------------
def gather(store: Store, run: str = "latest", *, min_cell: int = 5, include_ids: bool = False,
           progress: Callable[[str], None] | None = None, profile: str = "standard") -> Report:
    """Compute every section of the report for ``run`` of ``store`` under the disclosure
    ``profile`` (``standard`` or ``strict``, see :class:`DisclosurePolicy`)."""
    policy = DisclosurePolicy(min_cell, profile=profile)
    forced: frozenset[bytes] = frozenset()
    with policy.in_force():
        # Sections protect their counts in turn; when a later one finds a count pinned by
        # what earlier ones published, the audit names earlier counts to withhold and the
        # report is computed again (rarely more than once; each round only withholds more).
        for _ in range(MAX_AUDIT_ROUNDS):
            rep = _gather(store, run, policy, include_ids, progress, forced)
            extra = rep.release.audit() if rep.release is not None else frozenset()
            if extra <= forced:
                return rep
            log.info("disclosure audit: withholding %d more count(s) across sections",
                     len(extra - forced))
            forced = forced | extra
    raise OutputError("disclosure control did not settle after "
                      f"{MAX_AUDIT_ROUNDS} rounds; no report written (please report this)")


#: Rounds of whole-report disclosure audit before giving up (see :func:`gather`).
MAX_AUDIT_ROUNDS = 8


def _gather(store: Store, run: str, policy: DisclosurePolicy, include_ids: bool,
            progress: Callable[[str], None] | None, forced: frozenset[bytes]) -> Report:
    min_cell = policy.min_cell
    run_dir = store.resolve_run(run)
    verify_run(run_dir)
    params = _read_json(run_dir / "params.json")
    metrics = _read_json(run_dir / "metrics.json")
    try:
        assignments = pl.read_parquet(run_dir / "assignments.parquet")
    except Exception as exc:  # noqa: BLE001 - any decode failure is corrupt data
        raise InputDataError(f"{run_dir / 'assignments.parquet'}: unreadable ({exc})") from None
    labels = assignments.select("patient_id", pl.col("cluster").cast(pl.Int64))
    layout = ClusterLayout.from_labels(labels["cluster"].to_list(), min_cell)
    roles = store.roles
    clinical = store.clinical()
    rep = Report(policy=policy, release=Release(labels["patient_id"].to_list(), min_cell,
                                                protect_missing=policy.protect_missing,
                                                forced=forced))
    rep.data = {
        "report_format_version": 1,
        "run": run_dir.name,
        "min_cell": min_cell,
        "disclosure_profile": policy.profile,
        "include_ids": include_ids,
        "privacy": policy.describe(include_ids),
    }

    def step(name: str) -> None:
        if progress:
            progress(name)

    step("cohort")
    _cohort_section(rep, store, params, metrics, min_cell)
    step("groups")
    _groups_section(rep, assignments, layout, params, metrics, clinical, roles, min_cell,
                    include_ids)
    if clinical is not None:
        step("clinical characteristics")
        _table1_section(rep, clinical, labels, roles, min_cell)
        step("survival")
        _survival_section(rep, clinical, labels, roles, min_cell)
        step("treatment response")
        _response_section(rep, store, clinical, labels, roles, min_cell)
    else:
        _outcome_tables(rep, store, labels, min_cell, rep.section(
            "response", "Treatment response and outcomes"))
    step("markers")
    _markers_section(rep, store, run_dir, labels, min_cell)
    step("mutations")
    _mutations_section(rep, store, labels, min_cell)
    _methods_section(rep, store, run_dir, params)
    _summary_section(rep)
    if include_ids:
        # Patient-level coordinates only with identifiers asked for (--tables output).
        shown = assignments.filter(~pl.col("cluster").is_in(sorted(layout.suppressed)))
        rep.raw_tables["embedding"] = shown.select("patient_id", "cluster", "embedding_1",
                                                   "embedding_2")
        rep.raw_tables["assignments"] = assignments
    return rep


def _summary_section(rep: Report) -> None:
    """The summary, first in the report, from the sections' protected numbers only."""
    sentences, table = summarise(rep.data)
    sec = rep.section("summary", "Summary",
                      note="What was found, how sure, what marks each group and how it fared; "
                           "details and tests in the sections below.")
    rep.sections.insert(0, rep.sections.pop())
    for text in sentences:
        _add_text(sec, text)
    if table is not None:
        _add_table(rep, sec, "summary", "Groups at a glance", table)
    rep.data["summary"] = {"sentences": sentences,
                           "groups": [] if table is None else table.to_dicts()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: unreadable run file ({exc})") from None


def _p_text(p: float) -> str:
    text = ch.format_p(p)
    return f"p {text[0]} {text[1:]}" if text[:1] in "<>" else f"p = {text}"


def _structural(n: int | None) -> int | None:
    """A structural count (patients per table, overlap, missing data): shown under the
    disclosure policy (exactly, or rounded by the strict profile; :class:`DisclosurePolicy`)."""
    return None if n is None else published(int(n))


def _cohort_section(rep: Report, store: Store, params: dict[str, Any],
                    metrics: dict[str, Any], min_cell: int) -> None:
    sec = rep.section("cohort", "Cohort",
                      note="Patients per table, overlap between tables, missingness and the "
                           "features that entered the clustering.")
    patients = store.manifest.get("patients", {})
    blocks = params.get("blocks", {})
    rows = []
    for t in store.tables:
        key = f"{t['kind']}:{t['name']}"
        used = blocks.get(t["name"], {})
        rows.append({
            "table": t["name"], "kind": t["kind"],
            "patients": _structural(patients.get("per_table", {}).get(key, t.get("rows"))),
            "columns": t.get("columns"),
            "dropped (all missing)": len(t.get("columns_dropped_all_missing", []) or []),
            "features used": used.get("features_used"),
            "PCA components": used.get("components"),
            "transform": used.get("transform"),
            "block weight": used.get("weight"),
            "file": Path(str(t.get("source_path", ""))).name,
        })
    table = pl.DataFrame([{k: ("" if v is None else str(v)) for k, v in r.items()} for r in rows])
    _add_table(rep, sec, "cohort_tables", "Tables in the store", table)
    names = list(patients.get("pairwise_shared", {}))
    if names:
        overlap = pl.DataFrame({"table": names, **{
            b: [str(_structural(patients["pairwise_shared"][a].get(b, 0))) for a in names]
            for b in names}})
        _add_table(rep, sec, "cohort_overlap", "Patients shared between tables", overlap)
    mod = metrics.get("modalities", {})
    clustered = _structural(mod.get("patients"))
    _add_text(sec, f"{clustered} patients clustered; "
                   f"{_structural(mod.get('patients_missing_any_block', 0))} of them lacked "
                   "at least one modality and were placed from the modalities they have; "
                   f"{_structural(metrics.get('patients_without_any_modality', 0))} patients "
                   "of the clinical table had no clustering data.")
    rep.data["cohort"] = to_jsonable({
        "tables": rows,
        "patients_total": _structural(patients.get("total")),
        "pairwise_shared": {a: {b: _structural(v) for b, v in row.items()}
                            for a, row in patients.get("pairwise_shared", {}).items()},
        "clustered": clustered,
        "missing_modality": {k: _structural(v)
                             for k, v in (mod.get("missing_per_block") or {}).items()},
        "patients_missing_any_block": _structural(mod.get("patients_missing_any_block", 0)),
        "patients_without_any_modality": _structural(
            metrics.get("patients_without_any_modality", 0)),
    })


def _groups_section(rep: Report, assignments: pl.DataFrame, layout: ClusterLayout,
                    params: dict[str, Any], metrics: dict[str, Any],
                    clinical: pl.DataFrame | None, roles: dict[str, Any], min_cell: int,
                    include_ids: bool) -> None:
    sec = rep.section("groups", "Groups",
                      note="Cluster sizes, stability (mean Jaccard of the best-matching cluster "
                           "over bootstrap re-clusterings) and mean patient confidence.")
    stab = {str(k): v for k, v in (metrics.get("stability") or {}).items()}
    conf = {str(k): v for k, v in (metrics.get("mean_confidence") or {}).items()}
    rows, raw = [], []
    for k in layout.shown:
        entry = {"cluster": k, "name": layout.name(k), "suppressed": False,
                 "n": published(layout.sizes[k]), "stability": stab.get(str(k)),
                 "mean_confidence": conf.get(str(k))}
        raw.append(entry)
        rows.append({
            "cluster": layout.name(k),
            "patients": str(published(layout.sizes[k])),
            "stability": "" if entry["stability"] is None else f"{entry['stability']:.2f}",
            "mean confidence": ("" if entry["mean_confidence"] is None
                                else f"{entry['mean_confidence']:.2f}"),
        })
    for k in layout.suppressed:
        raw.append({"cluster": k, "name": layout.name(k), "suppressed": True, "n": None,
                    "stability": None, "mean_confidence": None})
    if layout.suppressed:
        rows.append({"cluster": f"{FOLDED_LINE} ({', '.join(layout.suppressed_names)})",
                     "patients": str(published(layout.folded)), "stability": "",
                     "mean confidence": ""})
    _add_table(rep, sec, "groups", "Clusters", pl.DataFrame(rows))
    n_clusters = sum(1 for k in layout.sizes if k >= 0)
    # Folded together with a small cluster, the unassigned count (and the assigned total,
    # which gives it back) would split the folded line into the small cluster's size.
    split = -1 in layout.suppressed and len(layout.suppressed) > 1
    n_assigned = None if split else published(
        sum(layout.sizes[k] for k in layout.sizes if k >= 0))
    unassigned = None if split else published(layout.sizes.get(-1, 0))
    groups = f"{n_clusters} {'group' if n_clusters == 1 else 'groups'}"
    text = (f"{groups}; {unassigned} {'patient' if unassigned == 1 else 'patients'} "
            "unassigned (no majority for one group; their nearest group is kept in the "
            "assignments)." if unassigned
            else f"{groups}; some patients unassigned (counted in the line "
                 f"'{FOLDED_LINE}')." if split
            else f"{groups}; every patient assigned.")
    if layout.suppressed:
        text += (f" Groups of fewer than {min_cell} patients "
                 f"({', '.join(layout.suppressed_names)}) are counted only in the line "
                 f"'{FOLDED_LINE}' and left out of every statistic below.")
    _add_text(sec, text)
    confidence = _confidence_by_group(assignments, layout, min_cell)
    raw_conf: list[dict[str, Any]] = []
    if confidence is not None:
        table, fig, raw_conf = confidence
        _add_figure(rep, sec, "confidence", "How sure is each patient's group", fig)
        _add_text(sec, "How to read: one box per group, over its patients' assignment "
                       "confidence (the share of bootstrap re-clusterings in which the "
                       "patient kept its group): the box spans the middle half, the line is "
                       "the median, the whiskers the 10th and 90th percentiles. A box near 1 "
                       "means patients sit firmly in their group; a long left whisker, that "
                       "some lie between groups. Drawn from these percentiles, not from "
                       "patients.")
        _add_table(rep, sec, "confidence", "Assignment confidence per group", table)
    scores = metrics.get("selection_scores") or []
    selected = metrics.get("selected") or params.get("resolved") or {}
    caveats = selection_caveats(selected, raw)
    for text in caveats:
        _add_text(sec, "Caveat: " + text)
    if scores:
        _add_figure(rep, sec, "selection", "Model selection", _selection_figure(scores, selected))
        _add_table(rep, sec, "selection_scores", "Score of every setting tried",
                   _selection_table([_published_score(s, min_cell) for s in scores],
                                    min_cell))
    cons = metrics.get("consensus")
    reference = _reference_agreement(assignments, clinical, roles, layout.shown)
    if reference:
        _add_text(sec, "Agreement with reference labelling (never used for fitting): " + "; ".join(
            f"{r['column']}: ARI {r['ari']:.2f}, NMI {r['nmi']:.2f}" for r in reference)
            + " (displayed groups). The cluster x reference counts are in Table 1.")
    fig, hover_cols = _embedding_figure(assignments, layout, clinical, roles, min_cell)
    if fig:
        _add_figure(rep, sec, "embedding", "Embedding (2-D view of the clustered space)", fig)
    rep.data["groups"] = to_jsonable({
        "n_clusters": n_clusters, "n_assigned": n_assigned,
        "unassigned": unassigned,
        FOLDED_KEY: published(layout.folded) if layout.suppressed else None,
        "clusters": raw, "confidence": raw_conf,
        "selection_scores": [_published_score(s, min_cell) for s in scores],
        "selected": selected,
        "caveats": caveats,
        "consensus": {k: v for k, v in (cons or {}).items() if k != "histogram"} or None,
        "silhouette": metrics.get("silhouette"),
        "reference_agreement": reference, "embedding_colour_columns": hover_cols,
    })


UNSTABLE_CLUSTER = 0.6  # Hennig: 0.5-0.75 'patterns', below 0.5 'dissolved'


#: Quantiles of per-patient assignment confidence drawn per group (a box from summary
#: statistics: 10th, 25th, 50th, 75th and 90th percentiles).
CONFIDENCE_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _confidence_by_group(assignments: pl.DataFrame, layout: ClusterLayout, min_cell: int
                         ) -> tuple[pl.DataFrame, dict[str, Any], list[dict[str, Any]]] | None:
    """Per displayed group, percentiles of the patients' assignment confidence (the share
    of bootstrap re-clusterings in which they kept their group), published like Table 1's
    quartiles: from at least ``min_cell`` patients, rounded to 2 decimals. Returns the
    display table, a box figure drawn from those summaries (never from patients) and the
    raw rows. Counts per confidence band would need complementary suppression that hides
    most bars of a small group."""
    # With one group every patient "keeps" it: nothing to show.
    if "confidence" not in assignments.columns or len(layout.shown) < 2:
        return None
    cl = assignments["cluster"].cast(pl.Int64).to_numpy()
    conf = assignments["confidence"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    rows, raw = [], []
    for k in layout.shown:
        v = conf[(cl == k) & np.isfinite(conf)]
        if v.size < min_cell:
            continue
        q = [round(float(x), 2) for x in np.quantile(v, CONFIDENCE_QUANTILES)]
        raw.append({"cluster": k, "name": cluster_name(k),
                    **{f"p{int(100 * p)}": x for p, x in zip(CONFIDENCE_QUANTILES, q,
                                                             strict=True)}})
        rows.append({"group": cluster_name(k),
                     **{f"{int(100 * p)}th percentile": f"{x:.2f}"
                        for p, x in zip(CONFIDENCE_QUANTILES, q, strict=True)}})
    if not rows:
        return None
    names = [r["name"] for r in raw]
    trace = {"type": "box", "name": "confidence", "y": names, "orientation": "h",
             "lowerfence": [r["p10"] for r in raw], "q1": [r["p25"] for r in raw],
             "median": [r["p50"] for r in raw], "q3": [r["p75"] for r in raw],
             "upperfence": [r["p90"] for r in raw], "marker": {"color": PALETTE[0]},
             "hoverinfo": "y+x"}
    fig = {"data": [trace], "layout": {
        "height": max(220, 70 + 40 * len(names)), "showlegend": False,
        "margin": {"l": 110, "t": 20},
        "xaxis": {"title": {"text": "assignment confidence (whiskers: 10th-90th percentile)"},
                  "range": [0, 1.02]},
        "yaxis": {"autorange": "reversed", "automargin": True}}}
    return pl.DataFrame(rows), fig, raw


def selection_caveats(selected: dict[str, Any], clusters: list[dict[str, Any]]) -> list[str]:
    """Plain-language warnings when the groups or their selection are not to be relied on."""
    out = []
    sel = selected.get("selection") or {}
    if sel and not sel.get("structure", True):
        out.append("no stable structure was found: no candidate partition was more "
                   "reproducible than the same method on data without groups "
                   f"({sel.get('reason')}). All patients are reported as one group.")
    elif sel and not sel.get("decisive", True):
        r = sel.get("runner_up") or {}
        out.append(f"the choice of {sel['chosen']['clusters']} groups is not decisive: "
                   f"{r.get('clusters')} groups ({r.get('family')}) came within "
                   f"{abs(sel.get('margin') or 0):.3f} in {sel.get('ranked_by', 'score')}. "
                   "Another seed may give that partition.")
    weak = [c["name"] for c in clusters if not c["suppressed"]
            and c.get("stability") is not None and c["stability"] < UNSTABLE_CLUSTER]
    if weak:
        out.append(f"{', '.join(weak)} {'is' if len(weak) == 1 else 'are'} unstable "
                   f"(bootstrap Jaccard below {UNSTABLE_CLUSTER}): "
                   "treat as tentative.")
    return out


def _reference_agreement(assignments: pl.DataFrame, clinical: pl.DataFrame | None,
                         roles: dict[str, Any], shown: list[int]) -> list[dict[str, Any]]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    out = []
    if clinical is None:
        return out
    for col in roles.get("reference") or []:
        if col not in clinical.columns:
            continue
        j = assignments.join(clinical.select("patient_id", col), on="patient_id", how="inner")
        # Displayed groups only, and 2 decimals: with Table 1's counts public, a precise
        # index over folded patients would pin how they split across the labels.
        j = j.filter(pl.col(col).is_not_null() & pl.col("cluster").is_in(shown))
        if j.height < 2:
            continue
        ref, found = j[col].cast(pl.String).to_list(), j["cluster"].to_list()
        ari = adjusted_rand_score(ref, found)
        nmi = normalized_mutual_info_score(ref, found)
        out.append({"column": col, "patients": published(j.height),
                    "ari": round(float(ari), 2),
                    "nmi": round(float(nmi), 2),
                    "note": "patients of the displayed groups (unassigned: one more group)"})
    return out


def _published_score(s: dict[str, Any], min_cell: int) -> dict[str, Any]:
    """A candidate's score row with its counts of patients as the policy publishes them: a
    smallest group or an unassigned set below ``min_cell`` only as "below" (for the chosen
    candidate it is a folded group's size; for the others, that a tiny group exists)."""
    out = dict(s)
    for k in ("smallest", "unassigned"):
        v = s.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            below = 0 < v < min_cell
            out[k] = None if below else published(v)
            out[f"{k}_below_min_cell"] = below
    return out


def _candidate_name(s: dict[str, Any]) -> str:
    """'ward K=3', 'hdbscan size=15'; older runs and K methods: their setting."""
    if "family" in s:
        return f"{s['family']} {'size' if s['family'] == 'hdbscan' else 'K'}={s['param']}"
    setting = next((k for k in ("min_cluster_size", "k") if k in s), None)
    return f"{setting}={s[setting]}" if setting else "-"


def _is_chosen(s: dict[str, Any], selected: dict[str, Any]) -> bool:
    """Whether a score row is the run's chosen candidate (or, for K methods, its K)."""
    if "family" in s:
        setting = "min_cluster_size" if s["family"] == "hdbscan" else "k"
        return s["family"] == selected.get("family") and s["param"] == selected.get(setting)
    setting = "k" if "k" in s else "min_cluster_size"
    return setting in s and s[setting] == selected.get(setting)


def _selection_table(scores: list[dict[str, Any]], min_cell: int) -> pl.DataFrame:
    """One row per candidate (as :func:`_published_score` publishes it): what it found and
    how it scored."""
    if "family" not in scores[0]:  # K methods and runs of earlier versions
        return pl.DataFrame([{k: str(v) for k, v in s.items()} for s in scores])
    return pl.DataFrame([{
        "candidate": _candidate_name(s), "groups": s["clusters"],
        "smallest group": f"<{min_cell}" if s["smallest"] is None else str(s["smallest"]),
        "unassigned": f"<{min_cell}" if s["unassigned"] is None else str(s["unassigned"]),
        "stability": round(s["stability"], 3), "null stability": round(s["null_stability"], 3),
        "score": round(s["score"], 3),
        "usable": "yes" if s["eligible"] else f"no: {s['why_not']}",
    } for s in scores])


def _selection_figure(scores: list[dict[str, Any]], selected: dict[str, Any]) -> dict[str, Any]:
    """Every candidate's scores; the x axis names the candidate (family and parameter)."""
    metric_keys = [k for k in ("stability", "null_stability", "score", "silhouette", "pac",
                               "bootstrap_agreement_ari") if k in scores[0]]
    xs = [_candidate_name(s) for s in scores]
    traces = [{"type": "scatter", "mode": "markers", "name": m.replace("_", " "),
               "x": xs, "y": [s.get(m) for s in scores]} for m in metric_keys]
    chosen = next((x for x, s in zip(xs, scores, strict=True) if _is_chosen(s, selected)), None)
    shapes = ([{"type": "line", "x0": chosen, "x1": chosen, "yref": "paper", "y0": 0, "y1": 1,
                "line": {"dash": "dot", "color": "#888"}}] if chosen is not None else [])
    # Legend above the plot, clear of the slanted candidate names.
    return {"data": traces, "layout": {
        "xaxis": {"title": {"text": "candidate (dotted line: chosen)"}, "type": "category",
                  "tickangle": -35, "automargin": True},
        "yaxis": {"title": {"text": "score"}, "automargin": True},
        "margin": {"t": 40, "b": 120}, "legend": {"orientation": "h", "x": 0, "y": 1.12},
        "shapes": shapes, "height": 380}}


def _embedding_figure(assignments: pl.DataFrame, layout: ClusterLayout,
                      clinical: pl.DataFrame | None, roles: dict[str, Any], min_cell: int
                      ) -> tuple[dict[str, Any] | None, list[str]]:
    """Binned views of the embedding (:mod:`cohortctl.report.embedding`): by cluster, and
    by each numeric clinical column (an area's rounded median). No view carries a
    patient-level value; folded (small) groups are not drawn. Categorical columns get no
    view: level totals per area would undo Table 1's suppression.
    """
    df = assignments.filter(~pl.col("cluster").is_in(sorted(layout.suppressed)))
    if df.height == 0:
        return None, []
    x, y = df["embedding_1"].to_numpy(), df["embedding_2"].to_numpy()
    names = np.array([layout.name(int(k)) for k in df["cluster"].to_list()])
    views = {"cluster": emb.figure(*emb.binned_areas(x, y, names, min_cell),
                                   title="cluster", palette=PALETTE)}
    if clinical is not None:
        excluded = {roles.get(r) for r in ROLE_KEYS} | {"patient_id"}
        candidates = [c for c in clinical.columns
                      if c not in excluded and not looks_like_id_name(c)]
        joined = df.select("patient_id").join(clinical, on="patient_id", how="left",
                                              maintain_order="left")
        # Numeric columns only. Categorical columns get no view: areas per level would
        # publish level totals that Table 1 withholds (its complementary suppression
        # assumes them hidden); their distribution per cluster is in Table 1.
        numeric = [c for c in candidates if joined[c].dtype.is_numeric()
                   and joined[c].n_unique() > MAX_LEVELS]
        for c in numeric[:MAX_VIEW_COLUMNS]:
            values = joined[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
            views[c] = emb.figure(*emb.binned_areas(x, y, np.array(["all"] * df.height),
                                                    min_cell, values),
                                  title=c, palette=PALETTE, numeric=True)
    return {"embedding": {"views": views, "drawn": df.height}}, [v for v in views if
                                                                 v != "cluster"]


def _table1_section(rep: Report, clinical: pl.DataFrame, labels: pl.DataFrame,
                    roles: dict[str, Any], min_cell: int) -> None:
    sec = rep.section("clinical", "Clinical characteristics",
                      note="Numeric: median [IQR], Kruskal–Wallis; categorical: n (%), "
                           "chi-square or Fisher's exact; q = Benjamini–Hochberg.")
    drop = [roles.get(r) for r in ("time", "event", "response")
            if roles.get(r) in clinical.columns]
    columns = [c for c in clinical.columns if c not in drop and c != "patient_id"]
    if not columns:
        _add_text(sec, "No clinical characteristics besides outcomes.")
        return
    # In Table 1 "missing" is a level of the variable like any other ("stage unknown"), and
    # the cheapest complement for a small cell: it stays protected.
    anchors = [roles[r] for r in ("treatment", "event", "response")
               if roles.get(r) in clinical.columns]
    t1 = ch.table_one(clinical.select("patient_id", *columns), labels, min_cell=min_cell,
                      release=rep.release,
                      release_columns=linked_columns(clinical, columns, anchors))
    _add_table(rep, sec, "table1", "Table 1", t1.table, max_rows=200, sortable=False)
    for n in t1.notes:
        _add_text(sec, n)
    rep.data["clinical"] = t1.to_dict()


def _outcome_frame(clinical: pl.DataFrame, labels: pl.DataFrame,
                   roles: dict[str, Any]) -> pl.DataFrame:
    cols = {r: roles.get(r) for r in ROLE_KEYS if roles.get(r) in clinical.columns}
    sel = clinical.select("patient_id", *[pl.col(c).alias(r) for r, c in cols.items()])
    return labels.join(sel, on="patient_id", how="left")


def _survival_section(rep: Report, clinical: pl.DataFrame, labels: pl.DataFrame,
                      roles: dict[str, Any], min_cell: int) -> None:
    if not (roles.get("time") and roles.get("event")):
        return
    sec = rep.section("survival", "Survival",
                      note="Kaplan–Meier per cluster (curves truncated where fewer than "
                           f"{min_cell} patients remain at risk), log-rank test across clusters, "
                           "Cox hazard ratios against the largest cluster (lifelines).")
    df = _outcome_frame(clinical, labels, roles)
    res = ch.survival_by_cluster(df, min_cell, protect_missing=rep.policy.protect_missing,
                                 release=rep.release)
    lr = res.logrank
    if lr.get("p") is not None:
        _add_text(sec, f"Log-rank test across {len(lr.get('clusters', []))} clusters: "
                       f"chi² = {lr['statistic']:.2f}, df = {lr['df']}, "
                       f"{_p_text(lr['p'])}.")
    elif lr.get("p_coarsened"):
        _add_text(sec, f"Log-rank test across {len(lr.get('clusters', []))} clusters: "
                       f"p {format_p_bound(lr.get('p_bound'))} "
                       "(statistic withheld: it would give back a small count).")
    time_label = f"time ({roles['time']})"
    _add_figure(rep, sec, "km", "Kaplan–Meier by cluster",
                _km_figure(res.curves, "group", time_label=time_label))
    if res.at_risk is not None:
        _add_table(rep, sec, "km_at_risk", f"Numbers at risk ({time_label})", res.at_risk,
                   sortable=False)
    _add_table(rep, sec, "survival", "Median survival and hazard ratios", res.summary)
    forest = _forest_figure(res.cox)
    if forest is not None:
        _add_figure(rep, sec, "hazard_ratios", "Hazard ratios vs "
                    f"{res.cox.get('reference_name')} (95% CI)", forest)
        _add_text(sec, "How to read: each point is a group's hazard ratio against the "
                       "reference group, with its 95% confidence interval; right of the "
                       "dotted line (HR > 1) the group fares worse. Withheld ratios are not "
                       "drawn.")
    for n in res.notes:
        _add_text(sec, n)
    rep.data["survival"] = res.to_dict()
    if roles.get("treatment"):
        bt = ch.survival_by_treatment_within_cluster(df, min_cell,
                                                     protect_missing=rep.policy.protect_missing,
                                                     release=rep.release)
        if bt.curves.height:
            _add_figure(rep, sec, "km_treatment", "Kaplan–Meier by treatment within cluster",
                        _km_facets(bt.curves))
        _add_table(rep, sec, "survival_treatment", "Survival by treatment within cluster",
                   bt.summary)
        rep.data["survival_by_treatment"] = bt.to_dict()



def _forest_figure(cox: dict[str, Any]) -> dict[str, Any] | None:
    """Forest plot of the published (protected) hazard ratios; None if none is shown."""
    shown = [h for h in cox.get("hazard_ratios", []) if h.get("hr") is not None
             and h.get("ci_lower") is not None and h.get("ci_upper") is not None]
    if not shown:
        return None
    names = [h["name"] for h in shown]
    return {"data": [{
        "type": "scatter", "mode": "markers", "x": [h["hr"] for h in shown], "y": names,
        "marker": {"size": 10, "color": PALETTE[0]}, "name": "hazard ratio",
        "error_x": {"type": "data", "symmetric": False,
                    "array": [h["ci_upper"] - h["hr"] for h in shown],
                    "arrayminus": [h["hr"] - h["ci_lower"] for h in shown]},
        "hovertemplate": "%{y}: HR %{x:.2f}<extra></extra>"}],
        "layout": {"height": max(220, 120 + 40 * len(shown)), "showlegend": False,
                   "xaxis": {"type": "log", "title": {"text": "hazard ratio (log scale)"}},
                   "yaxis": {"automargin": True, "autorange": "reversed"},
                   "shapes": [{"type": "line", "x0": 1, "x1": 1, "y0": 0, "y1": 1,
                               "yref": "paper", "line": {"dash": "dot", "color": "#555"}}]}}


def _km_figure(curves: pl.DataFrame, group_col: str, xaxis: str = "x",
               yaxis: str = "y", legend: bool = True,
               time_label: str = "time") -> dict[str, Any]:
    traces = []
    for i, (g, part) in enumerate(curves.group_by(group_col, maintain_order=True)):
        name = str(g[0] if isinstance(g, tuple) else g)
        colour = PALETTE[i % len(PALETTE)]
        traces.append({"type": "scatter", "mode": "lines", "name": name, "line":
                       {"shape": "hv", "color": colour}, "x": part["time"].to_list(),
                       "y": part["survival"].to_list(), "xaxis": xaxis, "yaxis": yaxis,
                       "legendgroup": name, "showlegend": legend,
                       "hovertemplate": name + ": S=%{y:.3f} at %{x}<extra></extra>"})
        traces.append({"type": "scatter", "mode": "lines", "line": {"shape": "hv", "width": 0},
                       "x": part["time"].to_list() + part["time"].to_list()[::-1],
                       "y": part["ci_upper"].to_list() + part["ci_lower"].to_list()[::-1],
                       "fill": "toself", "fillcolor": colour + "22", "hoverinfo": "skip",
                       "showlegend": False, "legendgroup": name, "xaxis": xaxis, "yaxis": yaxis})
    return {"data": traces, "layout": {"xaxis": {"title": {"text": time_label}},
                                       "yaxis": {"title": {"text": "survival"},
                                                 "range": [0, 1.02]}, "height": 400,
                                       "margin": {"t": 50},
                                       "legend": {"orientation": "h", "x": 0, "y": 1.02,
                                                  "yanchor": "bottom"}}}


def _km_facets(curves: pl.DataFrame) -> dict[str, Any]:
    clusters = curves["cluster"].unique(maintain_order=True).to_list()
    data: list[dict[str, Any]] = []
    # Legend above the panels: below them it covered the "cluster k" axis titles.
    layout: dict[str, Any] = {"height": 340, "grid": {"rows": 1, "columns": len(clusters),
                                                      "pattern": "independent"},
                              "annotations": [], "margin": {"t": 50},
                              "legend": {"orientation": "h", "x": 0, "y": 1.02,
                                         "yanchor": "bottom"}}
    for i, k in enumerate(clusters, start=1):
        sub = curves.filter(pl.col("cluster") == k).with_columns(
            pl.col("treatment").cast(pl.String))
        fig = _km_figure(sub, "treatment", f"x{i if i > 1 else ''}", f"y{i if i > 1 else ''}",
                         legend=i == 1)
        data.extend(fig["data"])
        layout[f"xaxis{i if i > 1 else ''}"] = {"title": {"text": f"cluster {k}"}}
        layout[f"yaxis{i if i > 1 else ''}"] = {"range": [0, 1.02]}
    return {"data": data, "layout": layout}


def _response_section(rep: Report, store: Store, clinical: pl.DataFrame, labels: pl.DataFrame,
                      roles: dict[str, Any], min_cell: int) -> None:
    sec = rep.section("response", "Treatment response",
                      note="Response rate per cluster and treatment with Wilson 95% CIs; the "
                           "cluster × treatment interaction is a likelihood-ratio test in a "
                           "logistic model; per-treatment tests across clusters with BH q.")
    if roles.get("response"):
        df = _outcome_frame(clinical, labels, roles)
        if "treatment" not in df.columns:
            df = df.with_columns(pl.lit("all").alias("treatment"))
        res = ch.response_by_cluster(df, min_cell, protect_missing=rep.policy.protect_missing,
                                     release=rep.release)
        inter = res.interaction
        p_int = inter.get("p")
        if p_int is None and inter.get("p_coarsened") and inter.get("p_bound") is not None:
            # Exact p withheld to protect a small cell: its category ("p <0.01", "p ≥0.05").
            p_text = f"p {format_p_bound(inter['p_bound'])}"
            significant = inter["p_bound"] <= 0.05
        elif p_int is not None:
            p_text, significant = _p_text(p_int), p_int < 0.05
        else:
            p_text, significant = "", None
        if significant is not None:
            verdict = "differs" if significant else "shows no significant difference"
            stat = inter.get("statistic")
            stat_text = f"LR χ² = {stat:.2f}, " if stat is not None else ""
            _add_text(sec, f"Cluster × treatment interaction: {stat_text}"
                           f"df = {inter.get('df')}, {p_text} — the treatment "
                           f"effect {verdict} between clusters (α = 0.05).")
        elif inter:
            _add_text(sec, "Cluster × treatment interaction not testable: "
                           + str(inter.get("note") or inter.get("reason") or "too few patients"))
        _add_figure(rep, sec, "response", "Response rate by cluster and treatment",
                    _response_figure(res.cells))
        _add_table(rep, sec, "response", "Response per cluster and treatment", res.table)
        _add_table(rep, sec, "response_tests", "Per-treatment tests across clusters", res.tests)
        for n in res.notes:
            _add_text(sec, n)
        rep.data["response"] = res.to_dict()
    else:
        _add_text(sec, "No response column in the store (declare one with --response at "
                       "ingest).")
    _outcome_tables(rep, store, labels, min_cell, sec)


def _response_figure(cells: list[dict[str, Any]]) -> dict[str, Any]:
    treatments = list(dict.fromkeys(c["treatment"] for c in cells))
    traces = []
    for i, t in enumerate(treatments):
        cs = [c for c in cells if c["treatment"] == t and c.get("rate") is not None]
        traces.append({
            "type": "bar", "name": str(t), "x": [c["name"] for c in cs],
            "y": [c["rate"] for c in cs], "marker": {"color": PALETTE[i % len(PALETTE)]},
            "error_y": {"type": "data", "symmetric": False,
                        "array": [c["ci_upper"] - c["rate"] for c in cs],
                        "arrayminus": [c["rate"] - c["ci_lower"] for c in cs]},
        })
    return {"data": traces, "layout": {"barmode": "group", "height": 340,
                                       "yaxis": {"title": {"text": "response rate"},
                                                 "range": [0, 1]}}}


def _outcome_tables(rep: Report, store: Store, labels: pl.DataFrame, min_cell: int,
                    sec: dict[str, Any]) -> None:
    outs = [t for t in store.tables if t["kind"] == "outcome"]
    results = {}
    for t in outs:
        df = store.read(t)
        res = ch.outcome_table_by_cluster(df, labels, min_cell, top=TOP_OUTCOMES)
        _add_table(rep, sec, f"outcome_{t['name']}",
                   f"Outcome table {t['name']}: most different features across clusters",
                   res.table)
        for n in res.notes:
            _add_text(sec, n)
        results[t["name"]] = to_jsonable({"features": res.features, "layout": res.layout,
                                           "skipped": res.skipped, "notes": res.notes})
    if results:
        rep.data["outcome_tables"] = results
    elif not sec["items"]:
        _add_text(sec, "No treatment, response or outcome data in the store (declare them at "
                       "ingest: --clinical with --treatment/--response, or --outcome).")


def _markers_section(rep: Report, store: Store, run_dir: Path, labels: pl.DataFrame,
                     min_cell: int) -> None:
    sec = rep.section("markers", "Markers",
                      note="Per cluster and modality, top features versus the rest: "
                           "standardised mean difference (SMD), effect, Mann–Whitney p, BH q "
                           "over all features × clusters of the modality.")
    out = {}
    for t in (t for t in store.feature_tables() if t["kind"] != "genetic"):
        model_file = run_dir / "model" / f"block-{t['name']}.json"
        if not model_file.exists():
            continue
        features = json.loads(model_file.read_text()).get("features") or []
        if not features:
            continue
        df = store.read(t, columns=["patient_id", *features])
        res = ch.markers(df, labels, top=TOP_MARKERS, min_cell=min_cell)
        name = t["name"]
        if res.top.height:
            _add_table(rep, sec, f"markers_{name}", f"{name}: top markers per cluster", res.top)
            _add_figure(rep, sec, f"heatmap_{name}", f"{name}: mean z-score of top markers",
                        _heatmap(res.heatmap))
        for n in res.notes:
            _add_text(sec, f"{name}: {n}")
        out[name] = res.to_dict()
        rep.raw_tables[f"markers_{name}_all"] = res.stats
    # Never an empty section: say why in one sentence.
    if not out:
        _add_text(sec, "No molecular (continuous) table was clustered: markers are computed "
                       "for expression-like data; mutation differences are under Mutations.")
    elif not any(f"markers_{nm}" in rep.tables for nm in out):
        _add_text(sec, "No marker to show: fewer than two groups to compare, or no feature "
                       "differs between them.")
    rep.data["markers"] = out


def _heatmap(hm: pl.DataFrame) -> dict[str, Any]:
    feats = [c for c in hm.columns if c != "cluster"]
    z = [list(r[1:]) for r in hm.iter_rows()]
    return {"data": [{"type": "heatmap", "z": z, "x": feats,
                      "y": [str(c) for c in hm["cluster"].to_list()], "colorscale": "RdBu",
                      "reversescale": True, "zmid": 0, "hoverongaps": False}],
            "layout": {"height": 160 + 28 * len(z), "xaxis": {"tickangle": -60},
                       "margin": {"b": 120}}}


def _mutations_section(rep: Report, store: Store, labels: pl.DataFrame, min_cell: int) -> None:
    genetic = [t for t in store.feature_tables() if t["kind"] == "genetic"]
    if not genetic:
        return
    sec = rep.section("mutations", "Mutations",
                      note="Frequency of each gene per cluster; Fisher's exact test of each "
                           "cluster against the rest with BH q; heatmap of the top genes' "
                           "frequencies per cluster (no patient-level columns).")
    out = {}
    for t in genetic:
        df = store.read(t)
        res = ch.mutation_enrichment(df, labels, min_cell, top=TOP_GENES,
                                     protect_missing=rep.policy.protect_missing)
        _add_table(rep, sec, f"mutations_{t['name']}", f"{t['name']}: top genes", res.table)
        if res.top_genes:
            _add_figure(rep, sec, f"mutation_frequency_{t['name']}",
                        f"{t['name']}: % mutated per cluster (top genes)",
                        _frequency_heatmap(res.frequencies, res.top_genes))
        for n in res.notes:
            _add_text(sec, n)
        out[t["name"]] = res.to_dict()
        rep.raw_tables[f"mutations_{t['name']}_frequencies"] = res.frequencies
        rep.raw_tables[f"mutations_{t['name']}_enrichment"] = res.enrichment
    rep.data["mutations"] = out


def _frequency_heatmap(freq: pl.DataFrame, genes: list[str]) -> dict[str, Any]:
    """Genes x displayed clusters, % of the cluster's patients with the gene mutated (the
    protected frequencies; withheld cells are blank and say so). No patient-level column."""
    clusters = sorted({int(k) for k in freq["cluster"].to_list()}, key=lambda k: (k < 0, k))
    names = [cluster_name(k) for k in clusters]
    cell = {(r["gene"], int(r["cluster"])): r for r in freq.iter_rows(named=True)}
    z, text = [], []
    for g in genes:
        zr, tr = [], []
        for k in clusters:
            r = cell.get((g, k))
            f = None if r is None else r.get("frequency")
            zr.append(None if f is None else round(100 * f, 1))
            tr.append("withheld (small count)" if r is not None and f is None
                      else "" if f is None else f"{100 * f:.1f}% ({r['n_mutated']} of "
                      f"{r['n_patients']})")
        z.append(zr)
        text.append(tr)
    return {"data": [{"type": "heatmap", "z": z, "x": names, "y": genes, "text": text,
                      "hovertemplate": "%{y} in %{x}: %{text}<extra></extra>",
                      "colorscale": "Reds", "zmin": 0, "zmax": 100,
                      "colorbar": {"title": {"text": "% mutated"}}, "xgap": 2, "ygap": 2}],
            "layout": {"height": 140 + 22 * len(genes), "margin": {"l": 110},
                       "xaxis": {"side": "top"},
                       "yaxis": {"autorange": "reversed", "automargin": True}}}


def _methods_section(rep: Report, store: Store, run_dir: Path, params: dict[str, Any]) -> None:
    sec = rep.section("methods", "Methods",
                      note="Everything needed to reproduce this run.")
    inputs = [{"table": t["name"], "kind": t["kind"], "file": Path(str(t.get("source_path",
                                                                              ""))).name,
               "sha256": t.get("source_sha256", "")} for t in store.tables]
    _add_table(rep, sec, "inputs", "Input files and checksums",
               pl.DataFrame(inputs) if inputs else pl.DataFrame())
    flat = {k: v for k, v in params.items() if not isinstance(v, dict)}
    # Text as itself; numbers, lists and null as JSON (a string value was shown in quotes).
    ptable = pl.DataFrame({"parameter": list(flat), "value": [
        v if isinstance(v, str) else json.dumps(v) for v in flat.values()]})
    _add_table(rep, sec, "params", "Parameters (resolved)", ptable, max_rows=200)
    versions = params.get("versions") or version_info()
    _add_text(sec, "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if params.get("integration"):
        _add_text(sec, f"Integration: {params['integration']}.")
    rep.data["methods"] = to_jsonable({"run": run_dir.name, "params": params, "inputs": inputs,
                                       "store_format_version": store.manifest.get(
                                           "format_version"),
                                       "report_versions": version_info()})


# -- writing ----------------------------------------------------------------------------
def write_report(store: Store, *, run: str = "latest", out: Path | str, fmt: str | None = None,
                 tables_dir: Path | None = None, min_cell: int = 5, include_ids: bool = False,
                 force: bool = False, progress: Callable[[str], None] | None = None,
                 profile: str = "standard") -> dict[str, Any]:
    """Build the report and write it to ``out`` ("-" = stdout); returns a short summary."""
    fmt = resolve_format(out, fmt)
    if min_cell < 1:
        raise UsageError("--min-cell must be >= 1")
    if profile not in PROFILES:
        raise UsageError(f"--disclosure must be one of {', '.join(PROFILES)}, got {profile!r}")
    out_path = None if str(out) == "-" else Path(out)
    if out_path is not None and out_path.is_dir():
        raise OutputError(f"{out_path}: is a directory (-o names the report file)")
    if out_path is not None and out_path.exists() and not force:
        raise OutputError(f"{out_path}: exists (use --force to overwrite)")
    if tables_dir is not None and os.path.lexists(tables_dir):
        if not tables_dir.is_dir() or tables_dir.is_symlink():
            raise OutputError(f"{tables_dir}: exists and is not a directory (--tables names a "
                              "directory to create)")
        if any(tables_dir.iterdir()):
            if not force:
                raise OutputError(f"{tables_dir}: exists and is not empty (use --force)")
            if not _is_tables_dir(tables_dir):
                raise OutputError(f"{tables_dir}: not a --tables directory written by cohortctl "
                                  "(no marker file); refusing to replace it")
    rep = gather(store, run, min_cell=min_cell, include_ids=include_ids, progress=progress,
                 profile=profile)
    if fmt == "html":
        from cohortctl.report.html import render_html

        text = render_html(rep)
    elif fmt == "md":
        from cohortctl.report.markdown import render_markdown

        text = render_markdown(rep)
    else:
        text = json.dumps(rep_to_json(rep), indent=2, sort_keys=True, allow_nan=False) + "\n"
    if out_path is None:
        sys.stdout.write(text)
    else:
        _atomic_write_text(out_path, text, force=force)
    if tables_dir is not None:
        write_tables(rep, tables_dir, force=force)
    return {"report": str(out) if out_path else "-", "format": fmt, "run": rep.data["run"],
            "bytes": len(text.encode()), "sections": [s["key"] for s in rep.sections],
            "tables_dir": str(tables_dir) if tables_dir else None,
            "n_clusters": rep.data.get("groups", {}).get("n_clusters")}


def rep_to_json(rep: Report) -> dict[str, Any]:
    """The JSON form: every number of the report, with the same suppression."""
    out = dict(rep.data)
    out["sections"] = [s["key"] for s in rep.sections]
    return to_jsonable(out)


def _atomic_write_text(path: Path, text: str, force: bool = False) -> None:
    """Write via a temporary sibling renamed into place (a killed run leaves no report)."""
    from cohortctl.store import atomic_file

    with atomic_file(path, force=force) as tmp:
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None


#: Marker file of a --tables directory: --force replaces only directories that carry it
#: (a flat directory of the user's own .tsv/.parquet inputs was replaced before).
TABLES_MARKER = ".cohortctl-tables.json"
EXTENSIONS = {".html": "html", ".htm": "html", ".json": "json", ".md": "md",
              ".markdown": "md"}


def resolve_format(out: Path | str, fmt: str | None) -> str:
    """The report format: ``--format`` if given, else from the extension of ``-o``.

    An extension that names another format (``-o x.json --format html``) or none that
    cohortctl writes (``-o x.pdf``) is refused: HTML inside a ``.pdf`` helps nobody."""
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    if str(out) == "-":
        if fmt in (None, "html"):
            raise UsageError("-o - (stdout) needs --format md or --format json")
        return fmt
    suffix = Path(out).suffix.lower()
    implied = EXTENSIONS.get(suffix)
    if implied is None:
        raise UsageError(f"-o {out}: cohortctl writes .html, .json or .md reports, not "
                         f"{suffix or 'files without an extension'}")
    if fmt is not None and fmt != implied:
        raise UsageError(f"-o {out} is a .{implied} name but --format is {fmt}")
    return implied


def _is_tables_dir(path: Path) -> bool:
    """Only an empty directory or one cohortctl wrote (its marker file) may be replaced."""
    try:
        return not any(path.iterdir()) or (path / TABLES_MARKER).is_file()
    except OSError:
        return False


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _spreadsheet_safe_frame(table: pl.DataFrame) -> pl.DataFrame:
    """Text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
    ``-``, ``@``, tab or CR), made inert with a leading ``'`` as OWASP recommends against
    CSV injection. Plain numbers, negative ones included, are kept as they are."""
    starts = "^[" + re.escape("".join(_FORMULA_START)) + "]"
    # Empty text is written as an empty cell (not a quoted "").
    return table.with_columns(
        pl.when(pl.col(c) == "").then(None)
        .when(pl.col(c).str.contains(starts) & ~pl.col(c).str.contains(_PLAIN_NUMBER.pattern))
        .then(pl.lit("'") + pl.col(c)).otherwise(pl.col(c)).alias(c)
        for c in table.columns if table.schema[c] == pl.String)


def write_tables(rep: Report, directory: Path, *, force: bool = False) -> None:
    """Every display table as TSV (text cells spreadsheet-safe), every raw table as Parquet
    and the report's protected numbers as typed ``data_*`` tables (TSV and Parquet, with
    ``data_dictionary``), written atomically into a directory marked as cohortctl's."""
    from cohortctl.store import atomic_directory, write_parquet

    # force: write_report has refused a non-empty directory without --force already.
    with atomic_directory(directory, force=True, replace_only=_is_tables_dir) as tmp:
        (tmp / TABLES_MARKER).write_text(json.dumps(
            {"written_by": "cohortctl report --tables", "run": rep.data.get("run")}) + "\n")
        for name, table in rep.tables.items():
            _spreadsheet_safe_frame(table).write_csv(tmp / f"{name}.tsv", separator="\t")
        for name, table in rep.raw_tables.items():
            write_parquet(table, tmp / f"{name}.parquet")
        # The same numbers typed (numbers stay numbers), with a data dictionary.
        data = machine_tables(rep_to_json(rep))
        data["data_dictionary"] = data_dictionary(data)
        for name, table in data.items():
            _spreadsheet_safe_frame(table).write_csv(tmp / f"{name}.tsv", separator="\t")
            write_parquet(table, tmp / f"{name}.parquet")
