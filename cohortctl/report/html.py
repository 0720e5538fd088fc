"""Self-contained HTML: inline CSS, inline plotly.js, data embedded as JSON; no request leaves."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2

from cohortctl import __version__
from cohortctl.characterise.privacy import to_jsonable
from cohortctl.report.build import Report
from cohortctl.report.display import PQ_LEGEND, has_p_values, numeric_columns

#: plotly.js, cartesian bundle (scatter, bar, heatmap...), vendored with its provenance and
#: licence in ``report/vendor/`` (1.5 MB instead of the full bundle's 4.8 MB in every report).
PLOTLY_BUNDLE = "plotly-cartesian.min.js"


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    return (resources.files("cohortctl.report") / "vendor" / PLOTLY_BUNDLE).read_text("utf-8")


def _script_json(obj: Any) -> str:
    """JSON safe to embed in a <script> element (no closing tag, no HTML comment opener)."""
    text = json.dumps(to_jsonable(obj), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


#: Plotly renders a small HTML subset in labels (``<a href>``, ``<b>``...): a value from the
#: data (a treatment or feature name) must not become a link. Only the tags the report's
#: own figures use stay markup; every other ``<`` becomes ``&lt;`` (Plotly shows ``<``).
_NOT_OUR_TAG = re.compile(r"<(?!br>|/?extra>)")


def _inert_labels(obj: Any) -> Any:
    """Every string of the figures with data-borne markup neutralised (see above)."""
    if isinstance(obj, str):
        return _NOT_OUR_TAG.sub("&lt;", obj)
    if isinstance(obj, dict):
        return {k: _inert_labels(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_inert_labels(v) for v in obj]
    return obj


def render_html(rep: Report) -> str:
    """Render the report as one HTML document that opens offline."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    source = resources.files("cohortctl.report").joinpath("templates/report.html.j2").read_text(
        encoding="utf-8")
    template = env.from_string(source)
    tables = {}
    for name, df in rep.tables.items():
        rows = [["" if v is None else str(v) for v in row] for row in df.iter_rows()]
        tables[name] = {"columns": df.columns, "rows": rows, "height": df.height,
                        "numeric": numeric_columns(rows, df.width),
                        "pq": has_p_values(df.columns)}
    groups = rep.data.get("groups", {})
    return template.render(
        sections=rep.sections, tables=tables, data=rep.data, groups=groups,
        pq_legend=PQ_LEGEND,
        min_cell=rep.data.get("min_cell", 5),
        version=__version__, figures_json=jinja2.utils.markupsafe.Markup(
            _script_json(_inert_labels(to_jsonable(rep.figures)))),
        plotly_js=jinja2.utils.markupsafe.Markup(_plotly_js().replace("</script", "<\\/script")),
    )
