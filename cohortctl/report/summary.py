"""The report's summary: what was found, how sure, what marks each group, how it fared.

Built only from the report's already protected numbers (``Report.data``), never from patient
data, so it can show nothing the sections below do not: a withheld value stays withheld.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from cohortctl.characterise.privacy import format_number

TOP_FEATURES = 3  # distinguishing features per modality and group
Q_LEVEL = 0.05


def _markers(data: dict[str, Any], cluster: int) -> dict[str, str]:
    """Top markers (BH q < 0.05) of ``cluster`` per modality: ``"KDM4B ↑, CCNA2 ↓"``."""
    out = {}
    for modality, res in (data.get("markers") or {}).items():
        top = [t for t in res.get("top", []) if t.get("cluster") == cluster
               and t.get("q") is not None and t["q"] < Q_LEVEL]
        top.sort(key=lambda t: t.get("rank", 0))
        out[modality] = ", ".join(f"{t['feature']} {'↑' if t['direction'] == 'up' else '↓'}"
                                  for t in top[:TOP_FEATURES])
    return out


def _mutations(data: dict[str, Any], cluster: int) -> dict[str, str]:
    """Genes enriched in ``cluster`` (BH q < 0.05, odds ratio shown) per genetic table."""
    out = {}
    for table, res in (data.get("mutations") or {}).items():
        hits = [e for e in res.get("enrichment", []) if e.get("cluster") == cluster
                and e.get("q") is not None and e["q"] < Q_LEVEL and e.get("odds_ratio")]
        hits.sort(key=lambda e: e["q"])
        out[table] = ", ".join(f"{e['gene']} (OR {format_number(e['odds_ratio'])})"
                               for e in hits[:TOP_FEATURES])
    return out


def _survival(data: dict[str, Any], cluster: int) -> str:
    surv = data.get("survival") or {}
    row = next((c for c in surv.get("clusters", []) if c.get("cluster") == cluster), None)
    if row is None:
        return ""
    if row.get("median_withheld"):
        median = "median withheld"
    elif not row.get("median_reached"):
        median = "median not reached"
    else:
        median = f"median {format_number(row['median'])}"
    cox = surv.get("cox") or {}
    if cluster == cox.get("reference"):
        return f"{median} (HR reference)"
    hr = next((h for h in cox.get("hazard_ratios", []) if h.get("cluster") == cluster), None)
    if hr and hr.get("hr") is not None:
        return (f"{median}; HR {format_number(hr['hr'])} "
                f"({format_number(hr['ci_lower'])}–{format_number(hr['ci_upper'])})")
    return median


def _response(data: dict[str, Any], cluster: int) -> str:
    """The treatment with the highest shown response rate in ``cluster``."""
    cells = [c for c in (data.get("response") or {}).get("cells", [])
             if c.get("cluster") == cluster and c.get("rate") is not None]
    if not cells:
        return ""
    best = max(cells, key=lambda c: (c["rate"], str(c["treatment"])))
    return f"best {best['treatment']}: {100 * best['rate']:.0f}% (n {best['n']})"


def _patients(n: int) -> str:
    return f"{n} patient is" if n == 1 else f"{n} patients are"


def summarise(data: dict[str, Any]) -> tuple[list[str], pl.DataFrame | None]:
    """Sentences and a compact per-group table from the report's protected numbers."""
    groups = data.get("groups") or {}
    clusters = [c for c in groups.get("clusters", []) if not c.get("suppressed")
                and c.get("cluster", -1) >= 0]
    sel = (groups.get("selected") or {}).get("selection") or {}
    sentences = []
    # The cohort section's count (rounded once under the strict profile; a sum of rounded
    # group sizes would disagree with it).
    total = (data.get("cohort") or {}).get("clustered")
    if total is None:
        total = sum(c["n"] for c in clusters if c.get("n") is not None)
    if sel and not sel.get("structure", True):
        sentences.append(f"No stable structure: the {total} clustered patients are reported "
                         "as one group.")
    else:
        how = ""
        chosen = sel.get("chosen") or {}
        if chosen:
            how = (f" ({chosen.get('family')}, bootstrap stability "
                   f"{float(chosen.get('stability') or 0):.2f}"
                   + ("" if sel.get("decisive", True) else "; not a decisive choice") + ")")
        sentences.append(f"{len(clusters)} groups among {total} clustered patients{how}.")
    unassigned = groups.get("unassigned") or 0
    folded = groups.get("not_clustered_or_withheld")
    if unassigned and not any(c.get("cluster") == -1 for c in groups.get("clusters", [])
                              if c.get("suppressed")):
        sentences.append(f"{_patients(unassigned)} unassigned (shown as their own group).")
    if folded:
        sentences.append(f"{_patients(folded)} not clustered or in groups too small to "
                         "report.")
    for ref in groups.get("reference_agreement") or []:
        sentences.append(f"Agreement with the reference labelling {ref['column']} (never used "
                         f"for fitting): ARI {ref['ari']:.2f}, NMI {ref['nmi']:.2f}.")
    sentences += [f"Caveat: {c}" for c in groups.get("caveats", [])]
    if not clusters:
        return sentences, None
    rows = []
    for c in clusters:
        k = c["cluster"]
        row: dict[str, str] = {
            "group": c["name"], "patients": str(c["n"]),
            "stability": "" if c.get("stability") is None else f"{c['stability']:.2f}"}
        for modality, text in _markers(data, k).items():
            row[f"{modality} markers"] = text
        for table, text in _mutations(data, k).items():
            row[f"{table}: enriched"] = text
        if data.get("survival"):
            row["survival"] = _survival(data, k)
        if data.get("response"):
            row["response"] = _response(data, k)
        rows.append(row)
    table = pl.DataFrame(rows)
    keep = [col for col in table.columns if col in ("group", "patients", "stability")
            or (table[col] != "").any()]
    return sentences, table.select(keep)
