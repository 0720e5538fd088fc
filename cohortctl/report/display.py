"""Display rules shared by the HTML and Markdown presenters (they only format)."""

from __future__ import annotations

import re

#: The legend of every table with p or q columns (HTML and Markdown alike).
PQ_LEGEND = ("p: p-value of the test named in the table; q: Benjamini–Hochberg q-value "
             "(false discovery rate) over the tests of the same family; where an exact value "
             "would give a withheld count back, a category is shown instead (<0.001, <0.01, "
             "<0.05, ≥0.05).")

#: Columns holding p- or q-values.
PQ_COLUMNS = frozenset({"p", "q", "HR p", "log-rank p"})


def has_p_values(columns: list[str]) -> bool:
    """Whether a table shows p- or q-values (and so gets :data:`PQ_LEGEND`)."""
    return bool(PQ_COLUMNS & set(columns))


#: A displayed number: a count, a statistic, "33 (55.0%)", "12.5 [10.1, 14.0]", a p-value
#: category ("<0.001", "≥0.05").
_NUMBER = re.compile(r"^(?:[<>≤≥]\s?)?[-−]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?:\s|%|$)")
#: Cells that say nothing about a column's type (withheld, not shown, empty).
_NEUTRAL = {"", "*", "–", "-", "NE", "suppressed"}


def numeric_columns(rows: list[list[str]], n_columns: int) -> list[bool]:
    """Columns whose every informative cell is a displayed number (right-aligned, sorted by
    value)."""
    out = []
    for j in range(n_columns):
        cells = [r[j].strip() for r in rows if r[j].strip() not in _NEUTRAL]
        out.append(bool(cells) and all(_NUMBER.match(c) for c in cells))
    return out
