"""Compact Markdown summary of the report (terminal or wiki), same numbers as the HTML."""

from __future__ import annotations

import re

from cohortctl import __version__
from cohortctl.report.build import Report
from cohortctl.report.display import PQ_LEGEND, has_p_values, numeric_columns

MD_MAX_ROWS = 25


_ESCAPES = str.maketrans({"|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]", "\n": " ",
                          "\r": " ", "\t": " ", "\\": "\\\\"})
_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")  # "<0.001" stays readable; "<script" does not
_ENTITY = re.compile(r"&(?=#?\w+;)")


_LINE_START = re.compile(r"^(\s*)(>|(?:#{1,6}|[*+-]|\d+[.)])(?=\s|$))")  # heading/quote/list


def _line(v: object) -> str:
    """A text item as one inert paragraph: :func:`_text`, and a leading ``#``, ``>``,
    list or number marker escaped (a column named ``# x`` would make a heading)."""
    def escape(m: re.Match[str]) -> str:
        mark = m.group(2)
        return m.group(1) + (mark[:-1] + "\\" + mark[-1] if mark[0].isdigit()
                             else "\\" + mark)

    return _LINE_START.sub(escape, _text(v), count=1)


def _text(v: object) -> str:
    """A value from the data as inert Markdown: no HTML tag or entity (``<script>``,
    ``<img onerror>``), no line break (a ``\\r`` broke out of a table and injected a
    heading), no link or image (``![x](http://...)`` would load a remote image), no table or
    code delimiter."""
    if v is None:
        return ""
    text = _ENTITY.sub("&amp;", str(v).translate(_ESCAPES))
    return _TAG_OPEN.sub("&lt;", text)


def _cell(v: object) -> str:
    return _text(v)


def render_markdown(rep: Report) -> str:
    """Headings per section, its notes and texts, and each table (first rows only)."""
    g = rep.data.get("groups", {})
    lines = [f"# Patient stratification report — run `{rep.data.get('run')}`", "",
             f"{g.get('n_clusters')} clusters · cohortctl {__version__}", "",
             f"> {rep.data.get('privacy')}", ""]
    for sec in rep.sections:
        lines += [f"## {_text(sec['title'])}", ""]
        if sec["note"]:
            lines += [f"_{_text(sec['note'])}_", ""]
        for item in sec["items"]:
            if item["type"] == "text":
                lines += [_line(item["text"]), ""]
            elif item["type"] == "table":
                df = rep.tables[item["name"]]
                if df.width == 0:
                    continue
                rows = [["" if v is None else str(v) for v in row] for row in df.iter_rows()]
                align = ["---:" if num else "---" for num in numeric_columns(rows, df.width)]
                lines += [f"**{_text(item['title'])}**", "",
                          "| " + " | ".join(_cell(c) for c in df.columns) + " |",
                          "|" + "|".join(align) + "|"]
                for row in df.head(MD_MAX_ROWS).iter_rows():
                    lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
                if df.height > MD_MAX_ROWS:
                    lines.append(f"\n_{df.height - MD_MAX_ROWS} more rows (see --tables)._")
                if has_p_values(df.columns):
                    lines += ["", f"_{_text(PQ_LEGEND)}_"]
                lines.append("")
            elif item["type"] == "figure":
                lines += [f"_Figure: {_text(item['title'])} (HTML report only)._", ""]
    return "\n".join(lines).rstrip() + "\n"
