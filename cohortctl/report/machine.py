"""Machine-readable tables for ``report --tables``: the report's protected numbers as typed
columns (numbers stay numbers, a withheld or missing value is an empty cell with its
``*_suppressed`` / ``*_withheld`` flag beside it), and a data dictionary describing every
column. Built from the report's JSON data only, so they carry exactly what the report
publishes (the disclosure policy has been applied before)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import polars as pl

#: What every column of the machine tables means (the data dictionary).
COLUMNS: dict[str, str] = {
    "table": "name of the machine table (data_*.tsv / data_*.parquet)",
    "column": "column of that table",
    "type": "data type (Int64, Float64, Boolean, String)",
    "description": "what the column holds",
    "cluster": "cluster number (-1: unassigned patients shown as their own group)",
    "name": "display name of the group",
    "n": "number of patients (analysed patients in survival/response tables); empty when "
         "withheld",
    "n_suppressed": "true when n is withheld by the disclosure policy",
    "suppressed": "true when the group is below the minimum cell and counted only in the "
                  "'not clustered or withheld' line",
    "stability": "mean Jaccard of the best-matching cluster over bootstrap re-clusterings",
    "mean_confidence": "mean per-patient confidence of the assignment",
    "variable": "clinical variable (Table 1)",
    "kind": "categorical or numeric",
    "level": "level of a categorical variable ('missing': no value); empty for numeric rows",
    "is_missing": "true for the row of patients without a value",
    "percent": "percentage of the cluster's patients (of the published counts)",
    "missing": "patients of the cluster without a value (numeric variables)",
    "missing_suppressed": "true when missing is withheld",
    "median": "median (Table 1: of the values; survival: median survival time); empty when "
              "withheld or not reached",
    "q1": "first quartile (3 significant figures)",
    "q3": "third quartile (3 significant figures)",
    "summary_withheld": "true when the median and quartiles are withheld (fewer than the "
                        "minimum cell with a value)",
    "test": "test of difference (chi2, fisher, kruskal, logrank...)",
    "statistic": "test statistic; empty when withheld (it would give back a withheld count)",
    "df": "degrees of freedom",
    "p": "p-value; empty when only a category is published (see p_bound)",
    "p_bound": "upper bound of the published p-value category (0.001, 0.01, 0.05; 1 means "
               ">= 0.05) when the exact p is withheld",
    "q": "Benjamini-Hochberg q-value; empty when only a category is published",
    "q_bound": "upper bound of the published q-value category",
    "events": "patients with the event; empty when withheld",
    "events_suppressed": "true when events is withheld",
    "censored": "analysed patients without the event",
    "median_ci_lower": "lower 95% confidence bound of the median survival",
    "median_ci_upper": "upper 95% confidence bound of the median survival",
    "median_reached": "false when the survival curve never falls to 0.5",
    "median_withheld": "true when the median is withheld",
    "reference": "cluster the hazard ratios are relative to",
    "hr": "hazard ratio against the reference cluster (Cox); empty when withheld",
    "ci_lower": "lower 95% confidence bound",
    "ci_upper": "upper 95% confidence bound",
    "estimable": "false when the model could not estimate the value",
    "withheld": "true when the value is withheld by the disclosure policy",
    "p10": "10th percentile of the group's assignment confidence (share of bootstrap "
           "re-clusterings in which a patient kept its group; 2 decimals)",
    "p25": "25th percentile of the assignment confidence",
    "p50": "median assignment confidence",
    "p75": "75th percentile of the assignment confidence",
    "p90": "90th percentile of the assignment confidence",
    "group": "curve: cluster, or cluster / treatment",
    "treatment": "treatment arm",
    "time": "time since the start of follow-up (unit of the input time column)",
    "survival": "Kaplan-Meier survival probability (3 decimals)",
    "responders": "patients with a response; empty when withheld",
    "responders_suppressed": "true when responders is withheld",
    "rate": "response rate (responders / n of the published counts)",
    "rate_withheld": "true when the rate is withheld",
}


_INT = {"cluster", "n", "missing", "events", "censored", "responders", "df", "reference"}
_TEXT = {"name", "variable", "kind", "level", "test", "group", "treatment", "table", "column",
         "type", "description"}


def column_type(column: str) -> pl.DataType:
    """The fixed type of a machine-table column (the same in every report)."""
    if column in _INT:
        return pl.Int64()
    if column in _TEXT:
        return pl.String()
    if column.endswith(("_suppressed", "_withheld", "_reached")) or column in {
            "suppressed", "withheld", "estimable", "is_missing"}:
        return pl.Boolean()
    return pl.Float64()


def _frame(rows: Iterable[dict[str, Any]], columns: list[str]) -> pl.DataFrame:
    """Rows (dicts) as a frame with exactly ``columns``, each of its fixed type (absent keys
    and withheld values are null)."""
    schema = {c: column_type(c) for c in columns}
    data = {c: [] for c in columns}
    for r in rows:
        for c in columns:
            v = r.get(c)
            data[c].append(None if v is None else (str(v) if c in _TEXT else v))
    return pl.DataFrame(data, schema=schema, strict=False)


def _tests(results: Iterable[dict[str, Any]], key: str, value_name: str | None = None
           ) -> list[dict[str, Any]]:
    """Test results with the published p/q (exact, or a category's bound)."""
    return [{value_name or key: r.get(key), "test": r.get("test"),
             "statistic": r.get("statistic"), "df": r.get("df"), "p": r.get("p"),
             "p_bound": r.get("p_bound"), "q": r.get("q"), "q_bound": r.get("q_bound")}
            for r in results]


def _table1(clinical: dict[str, Any]) -> dict[str, pl.DataFrame]:
    rows = []
    for var in clinical.get("variables", []):
        if var["kind"] == "categorical":
            for lev in var["levels"]:
                for cell in lev["cells"]:
                    rows.append({"variable": var["variable"], "kind": "categorical",
                                 "level": lev["level"], "is_missing": lev["is_missing"],
                                 **cell})
        else:
            for cell in var["cells"]:
                rows.append({"variable": var["variable"], "kind": "numeric", **cell})
    cols = ["variable", "kind", "level", "is_missing", "cluster", "name", "n", "n_suppressed",
            "percent", "missing", "missing_suppressed", "median", "q1", "q3",
            "summary_withheld"]
    test_cols = ["variable", "test", "statistic", "df", "p", "p_bound", "q", "q_bound"]
    return {"data_table1": _frame(rows, cols),
            "data_table1_tests": _frame(_tests(clinical.get("variables", []), "variable"),
                                        test_cols)}


def _curve_rows(curve: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("times", "survival", "ci_lower", "ci_upper")
    return [{"group": curve.get("group"), "cluster": curve.get("cluster"),
             "treatment": curve.get("treatment"), "time": t, "survival": s,
             "ci_lower": lo, "ci_upper": hi}
            for t, s, lo, hi in zip(*(curve.get(k, []) for k in keys), strict=True)]


def _survival(surv: dict[str, Any], by_treatment: dict[str, Any]) -> dict[str, pl.DataFrame]:
    out: dict[str, pl.DataFrame] = {}
    med = ["median", "median_ci_lower", "median_ci_upper", "median_reached", "median_withheld"]
    curves = []
    if surv:
        out["data_survival"] = _frame(surv.get("clusters", []), [
            "cluster", "name", "n", "n_suppressed", "events", "events_suppressed", "censored",
            *med])
        cox = surv.get("cox", {})
        out["data_hazard_ratios"] = _frame(
            [{**h, "reference": cox.get("reference"), "withheld": bool(h.get("withheld"))}
             for h in cox.get("hazard_ratios", [])],
            ["cluster", "name", "reference", "hr", "ci_lower", "ci_upper", "p", "estimable",
             "withheld"])
        curves += [r for c in surv.get("clusters", []) for r in _curve_rows(c["curve"])]
    if by_treatment:
        rows, tests = [], []
        for c in by_treatment.get("clusters", []):
            for g in c["groups"]:
                rows.append({"cluster": c["cluster"], "name": c["name"], **g})
                curves += _curve_rows(g["curve"])
            tests.append({"cluster": c["cluster"], "test": "logrank", **c["logrank"]})
        out["data_survival_by_treatment"] = _frame(rows, [
            "cluster", "name", "treatment", "n", "n_suppressed", "events", "events_suppressed",
            *med])
        out["data_survival_by_treatment_tests"] = _frame(
            _tests(tests, "cluster"),
            ["cluster", "test", "statistic", "df", "p", "p_bound", "q", "q_bound"])
    if curves:
        out["data_km_curves"] = _frame(curves, ["group", "cluster", "treatment", "time",
                                                "survival", "ci_lower", "ci_upper"])
    return out


def machine_tables(data: dict[str, Any]) -> dict[str, pl.DataFrame]:
    """The report's protected numbers (its JSON ``data``) as typed tables, by file name."""
    out: dict[str, pl.DataFrame] = {}
    groups = data.get("groups", {})
    if groups.get("clusters"):
        out["data_groups"] = _frame(groups["clusters"], [
            "cluster", "name", "n", "suppressed", "stability", "mean_confidence"])
    if groups.get("confidence"):
        out["data_confidence"] = _frame(groups["confidence"], [
            "cluster", "name", "p10", "p25", "p50", "p75", "p90"])
    if data.get("clinical"):
        out.update(_table1(data["clinical"]))
    out.update(_survival(data.get("survival", {}), data.get("survival_by_treatment", {})))
    resp = data.get("response", {})
    if resp.get("cells"):
        out["data_response"] = _frame(resp["cells"], [
            "cluster", "name", "treatment", "n", "n_suppressed", "responders",
            "responders_suppressed", "rate", "ci_lower", "ci_upper", "rate_withheld"])
        out["data_response_tests"] = _frame(
            _tests(resp.get("treatments", []), "treatment"),
            ["treatment", "test", "statistic", "df", "p", "p_bound", "q", "q_bound"])
    return out


def data_dictionary(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per column of every machine table: its type and meaning."""
    rows = [{"table": name, "column": col, "type": str(dtype),
             "description": COLUMNS[col]}
            for name, df in tables.items() for col, dtype in df.schema.items()]
    return _frame(rows, ["table", "column", "type", "description"])
