"""``cohortctl twins``: the cohort patients most like one patient, and how they fared.

Twins are the ``k`` patients of a run nearest to a store patient in the run's integrated
space (per-block PCA scores with MFA weights, Euclidean; the query itself excluded; ties
broken by patient order). Only patients of the run qualify: a patient placed by
``assign`` is not in the store, so it has no twins here (look at its ``nearest_cluster``).

Privacy (same ``min_cell`` as the report; see :mod:`cohortctl.characterise.privacy`):

* Without ``include_ids`` twins are listed by rank only (rank, distance, cluster) -- no
  identifier and no per-patient outcome. Outcomes (treatment counts, response rate,
  Kaplan-Meier median survival) are reported only as summaries over the ``k`` twins with
  small-cell suppression (counts below ``min_cell`` and anything that would let them be
  recomputed are withheld; the median follows the report's truncation rules).
* ``k`` must be >= ``min_cell`` and a multiple of it (refused otherwise, exit 2): two
  queries for the same patient then differ by at least ``min_cell`` twins, so subtracting
  their summaries cannot single out one patient's outcome.
* Clusters with fewer than ``min_cell`` patients are shown as suppressed, as in the report.
* ``include_ids`` (explicit opt-in, like ``report --include-ids``) adds the query's and the
  twins' identifiers and per-twin rows with treatment, response, time and event, and lifts
  the ``k`` restriction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cohortctl.assign import load_run, open_store
from cohortctl.characterise.privacy import (
    check_min_cell,
    cluster_name,
    small_clusters,
    suppress_with_margins,
    to_jsonable,
)
from cohortctl.errors import InputDataError, InputMissingError, UsageError
from cohortctl.store import Store

SPACE = "run's integrated space (per-block PCA scores, MFA-weighted), Euclidean distance"


def twins(
    store: Store | str | Path,
    patient_id: str,
    run: str = "latest",
    k: int = 10,
    include_ids: bool = False,
    min_cell: int = 5,
) -> dict[str, Any]:
    """The ``k`` nearest cohort patients of ``patient_id`` with outcome summaries (JSON-able).

    See the module docstring for the privacy rules. Unknown patient: exit 66; a store
    patient without data for the run's modalities: exit 65.
    """
    try:
        min_cell = check_min_cell(min_cell)
    except ValueError as exc:
        raise UsageError(f"--min-cell: {exc}") from None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"--k must be an integer >= 1, not {k!r}")
    if not include_ids and (k < min_cell or k % min_cell):
        lower = max(min_cell, k // min_cell * min_cell)
        raise UsageError(
            f"--k {k}: without --include-ids k must be a multiple of --min-cell {min_cell} "
            f"(e.g. {lower} or {lower + min_cell}) so that no twin's outcome can be singled out"
        )
    st = open_store(store)
    rm = load_run(st, run)
    pid = str(patient_id).strip()
    index = rm.index
    if pid not in index:
        _unknown_patient(st, rm.name, pid)
    n = len(rm.patient_ids)
    if k > n - 1:
        raise UsageError(f"--k {k}: run {rm.name} has only {n - 1} other patients")
    q = index[pid]
    d = np.sqrt(((rm.matrix - rm.matrix[q]) ** 2).sum(axis=1))
    d[q] = np.inf
    order = np.argsort(d, kind="stable")[:k]
    sizes = {int(c): int(s) for c, s in zip(*np.unique(rm.clusters, return_counts=True),
                                            strict=True)}
    small = small_clusters(sizes, min_cell)
    ids = [rm.patient_ids[i] for i in order]
    clusters = [int(rm.clusters[i]) for i in order]
    outcomes = _outcomes(st, ids)

    rows = []
    for rank, (i, c) in enumerate(zip(order, clusters, strict=True), start=1):
        row: dict[str, Any] = {"rank": rank, "distance": round(float(d[i]), 6),
                               **_cluster_fields(c, small)}
        if include_ids:
            row = {"patient_id": rm.patient_ids[i], **row,
                   **{r: outcomes[r][rank - 1] for r in outcomes}}
        rows.append(row)
    qc = int(rm.clusters[q])
    query: dict[str, Any] = {**_cluster_fields(qc, small),
                             "imputed_blocks": [b for b, v in rm.imputed.items() if pid in v]}
    if include_ids:
        query = {"patient_id": pid, **query}
    result = {
        "run": rm.name,
        "k": k,
        "min_cell": min_cell,
        "include_ids": include_ids,
        "space": SPACE,
        "query": query,
        "twins": rows,
        "distance": {"min": round(float(d[order].min()), 6),
                     "median": round(float(np.median(d[order])), 6),
                     "max": round(float(d[order].max()), 6)},
        "clusters": _cluster_counts(clusters, small),
        "treatment": _treatment_counts(outcomes.get("treatment"), min_cell),
        "response": _response_summary(outcomes.get("response"), min_cell),
        "survival": _survival_summary(outcomes.get("time"), outcomes.get("event"), min_cell),
        "notes": _notes(st, min_cell, include_ids),
    }
    return to_jsonable(result)


def _unknown_patient(st: Store, run: str, pid: str) -> None:
    clin = st.clinical()
    if clin is not None and pid in set(clin["patient_id"].to_list()):
        raise InputDataError(
            f"patient {pid!r} is in the store but not in run {run} (no data for the "
            "modalities it clustered), so it has no position to find twins from"
        )
    hint = " (IDs in this store are pseudonyms)" if st.manifest.get("pseudonymized") else ""
    raise InputMissingError(
        f"no patient {pid!r} in run {run} of {st.root}{hint}; twins works for store patients "
        "only (a patient placed by `assign` has a nearest_cluster instead)"
    )


def _cluster_fields(c: int, small: set[int]) -> dict[str, Any]:
    sup = c in small
    return {"cluster": None if sup else c, "cluster_name": "suppressed" if sup else cluster_name(c),
            "cluster_suppressed": sup}


def _cluster_counts(clusters: list[int], small: set[int]) -> list[dict[str, Any]]:
    """Twins per cluster; twins in small clusters are pooled as one suppressed line."""
    out = []
    for c in sorted(set(clusters) - small, key=lambda x: (x == -1, x)):
        out.append({"cluster": c, "name": cluster_name(c), "n": clusters.count(c)})
    pooled = sum(1 for c in clusters if c in small)
    if pooled:
        out.append({"cluster": None, "name": "suppressed", "n": pooled})
    return out


def _outcomes(st: Store, ids: list[str]) -> dict[str, list[Any]]:
    """Treatment, response, time and event of the twins (roles from the store manifest)."""
    clin = st.clinical()
    roles = st.roles
    cols = {r: roles.get(r) for r in ("treatment", "response", "time", "event")}
    cols = {r: c for r, c in cols.items() if c}
    if clin is None or not cols:
        return {}
    cols = {r: c for r, c in cols.items() if c in clin.columns}
    frame = pl.DataFrame({"patient_id": ids}).join(
        clin.select("patient_id", *set(cols.values())), on="patient_id", how="left")
    return {r: frame[c].to_list() for r, c in cols.items()}


def _counts_line(counts: list[int], min_cell: int) -> list[bool]:
    """Withheld mask for one line of counts whose total (k twins) is public."""
    sup = suppress_with_margins(np.array([counts], dtype=np.int64), min_cell,
                                row_totals="public", col_totals="hidden")
    return [bool(x) for x in sup.cells[0]]


def _treatment_counts(values: list[Any] | None, min_cell: int) -> list[dict[str, Any]] | None:
    if values is None:
        return None
    labels = sorted({str(v) for v in values if v is not None})
    counts = [sum(1 for v in values if v is not None and str(v) == t) for t in labels]
    missing = sum(1 for v in values if v is None)
    if missing:
        labels.append("missing")
        counts.append(missing)
    mask = _counts_line(counts, min_cell)
    return [{"treatment": t, "n": None if m else n, "n_suppressed": m}
            for t, n, m in zip(labels, counts, mask, strict=True)]


def _response_summary(values: list[Any] | None, min_cell: int) -> dict[str, Any] | None:
    if values is None:
        return None
    from cohortctl.characterise.response import parse_response

    y = parse_response(pl.Series("response", values))
    known = y[np.isfinite(y)]
    r, n = int(known.sum()), int(known.size)
    sup = suppress_with_margins(np.array([[r, n - r]], dtype=np.int64), min_cell,
                                row_totals="shown", col_totals="hidden")
    n_sup, r_sup = bool(sup.row_totals[0]), bool(sup.cells[0, 0] or sup.cells[0, 1])
    shown = not (n_sup or r_sup) and n > 0
    return {"n_evaluated": None if n_sup else n, "n_evaluated_suppressed": n_sup,
            "responders": r if shown else None, "responders_suppressed": not shown and n > 0,
            "response_rate": round(r / n, 6) if shown else None}


def _survival_summary(time: list[Any] | None, event: list[Any] | None,
                      min_cell: int) -> dict[str, Any] | None:
    if time is None or event is None:
        return None
    from cohortctl.characterise.survival import km_curve

    t = np.array([np.nan if v is None else float(v) for v in time])
    e = np.array([np.nan if v is None else float(v) for v in event])
    ok = np.isfinite(t) & np.isfinite(e)
    n, events = int(ok.sum()), int(e[ok].sum())
    sup = suppress_with_margins(np.array([[events, n - events]], dtype=np.int64), min_cell,
                                row_totals="shown", col_totals="hidden")
    n_sup = bool(sup.row_totals[0])
    ev_sup = bool(sup.cells[0, 0] or sup.cells[0, 1])
    curve = km_curve(t[ok], e[ok].astype(bool), min_cell, group="twins")
    withheld = curve.withheld or curve.median_withheld
    return {"n": None if n_sup else n, "n_suppressed": n_sup,
            "events": None if (ev_sup or n_sup) else events, "events_suppressed": ev_sup or n_sup,
            "median": curve.median, "median_withheld": withheld,
            "median_reached": None if withheld else curve.median_reached}


def _notes(st: Store, min_cell: int, include_ids: bool) -> list[str]:
    notes = [
        "Twins: nearest patients of the run in its integrated space (the query excluded).",
        f"Counts below {min_cell} (and counts that would reveal them) are withheld; median "
        "survival is Kaplan-Meier, shown only within the range where enough patients are at "
        "risk.",
    ]
    if not include_ids:
        notes.append("Identifiers and per-patient outcomes are left out (use --include-ids); "
                     "a larger k withholds less.")
    missing = [r for r in ("treatment", "response", "time", "event") if not st.roles.get(r)]
    if missing:
        notes.append(f"No {', '.join(missing)} column in the store: not summarised.")
    return notes
