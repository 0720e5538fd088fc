"""Compact Markdown summary of the report (terminal or wiki), same numbers as the HTML."""

from __future__ import annotations

from cohortctl import __version__
from cohortctl.report.build import Report

MD_MAX_ROWS = 25


def _cell(v: object) -> str:
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(rep: Report) -> str:
    """Headings per section, its notes and texts, and each table (first rows only)."""
    g = rep.data.get("groups", {})
    lines = [f"# Patient stratification report — run `{rep.data.get('run')}`", "",
             f"{g.get('n_clusters')} clusters · cohortctl {__version__}", "",
             f"> {rep.data.get('privacy')}", ""]
    for sec in rep.sections:
        lines += [f"## {sec['title']}", ""]
        if sec["note"]:
            lines += [f"_{sec['note']}_", ""]
        for item in sec["items"]:
            if item["type"] == "text":
                lines += [item["text"], ""]
            elif item["type"] == "table":
                df = rep.tables[item["name"]]
                if df.width == 0:
                    continue
                lines += [f"**{item['title']}**", "",
                          "| " + " | ".join(_cell(c) for c in df.columns) + " |",
                          "|" + "---|" * df.width]
                for row in df.head(MD_MAX_ROWS).iter_rows():
                    lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
                if df.height > MD_MAX_ROWS:
                    lines.append(f"\n_{df.height - MD_MAX_ROWS} more rows (see --tables)._")
                lines.append("")
            elif item["type"] == "figure":
                lines += [f"_Figure: {item['title']} (HTML report only)._", ""]
    return "\n".join(lines).rstrip() + "\n"
