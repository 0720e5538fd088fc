"""The embedding view without patient-level records: binned counts, never points.

A scatter of patients carries one record per point (its coordinates, and whatever the page
shows on hover); 105 of 247 points of a small cohort were unique on age, sex and stage
alone. The report therefore draws *areas*: the 2-D embedding is cut into a grid, and
every grid cell that holds at least ``min_cell`` patients of one group is drawn as one
marker at the cell's centre, sized by its count. Patients in cells below ``min_cell`` move
to the next coarser grid (32, 16, 8, 4, 2 cells per side, then the whole plane), so sparse
regions are still drawn as larger areas; what never reaches ``min_cell`` even as the whole
plane is left out and counted in the note. Coordinates are cell centres, so no marker
carries one patient's position.

Views: by cluster, and by each clinical column the report may show (categorical levels;
numeric columns as the median of the cell's patients, rounded to 2 significant figures,
from cells of at least ``min_cell`` patients with a value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cohortctl.characterise.privacy import published

GRIDS = (32, 16, 8, 4, 2, 1)  # cells per side, finest first


@dataclass(frozen=True)
class Area:
    """One drawn grid cell: its group, centre (embedding units), count and cell width."""

    group: str
    x: float
    y: float
    n: int
    width: float
    value: float | None = None  # numeric views: the rounded median of the cell


def _grid_index(u: np.ndarray, cells: int) -> np.ndarray:
    return np.minimum((u * cells).astype(np.int64), cells - 1)


def binned_areas(x: np.ndarray, y: np.ndarray, groups: np.ndarray, min_cell: int,
                 values: np.ndarray | None = None) -> tuple[list[Area], int]:
    """Areas of at least ``min_cell`` patients per group, finest grid first, and the number
    of patients left out (in no area of ``min_cell`` even as the whole plane).

    ``values`` (numeric views): each area carries the median of its patients' finite
    values (rounded to 2 significant figures) when at least ``min_cell`` have one.
    """
    n = x.size
    if n == 0:
        return [], 0
    lo_x, lo_y = float(x.min()), float(y.min())
    span_x = max(float(x.max()) - lo_x, 1e-12)
    span_y = max(float(y.max()) - lo_y, 1e-12)
    ux, uy = (x - lo_x) / span_x, (y - lo_y) / span_y
    remaining = np.ones(n, dtype=bool)
    areas: list[Area] = []
    for cells in GRIDS:
        ix, iy = _grid_index(ux, cells), _grid_index(uy, cells)
        cell_id = ix * cells + iy
        for g in sorted(set(groups[remaining].tolist())):
            member = remaining & (groups == g)
            ids, counts = np.unique(cell_id[member], return_counts=True)
            for c, k in zip(ids, counts, strict=True):
                if k < min_cell:
                    continue
                inside = member & (cell_id == c)
                value = None
                if values is not None:
                    v = values[inside]
                    v = v[np.isfinite(v)]
                    if v.size >= min_cell:
                        value = float(f"{np.median(v):.2g}")
                cx, cy = divmod(int(c), cells)
                areas.append(Area(str(g), lo_x + (cx + 0.5) / cells * span_x,
                                  lo_y + (cy + 0.5) / cells * span_y, int(k),
                                  span_x / cells, value))
                remaining &= ~inside
    return areas, int(remaining.sum())


def figure(areas: list[Area], left_out: int, *, title: str, palette: list[str],
           numeric: bool = False) -> dict[str, Any]:
    """A Plotly figure of the areas: one trace per group (or one coloured by value)."""
    def size(n: int) -> float:
        return float(6 + 3 * np.sqrt(published(n)))

    def hover(a: Area) -> str:
        val = "" if a.value is None else f"<br>median {a.value:g}"
        return f"{a.group}: {published(a.n)} patients in this area{val}"

    traces: list[dict[str, Any]] = []
    if numeric:
        shown = [a for a in areas if a.value is not None]
        traces.append({"type": "scatter", "mode": "markers", "name": title, "hoverinfo": "text",
                       "x": [round(a.x, 3) for a in shown], "y": [round(a.y, 3) for a in shown],
                       "text": [hover(a) for a in shown],
                       "marker": {"size": [size(a.n) for a in shown],
                                  "color": [a.value for a in shown], "colorscale": "Viridis",
                                  "showscale": True, "opacity": 0.75,
                                  "colorbar": {"title": {"text": title}}}})
    else:
        for j, g in enumerate(sorted({a.group for a in areas})):
            mine = [a for a in areas if a.group == g]
            traces.append({"type": "scatter", "mode": "markers", "name": g,
                           "hoverinfo": "text",
                           "x": [round(a.x, 3) for a in mine],
                           "y": [round(a.y, 3) for a in mine],
                           "text": [hover(a) for a in mine],
                           "marker": {"size": [size(a.n) for a in mine], "opacity": 0.7,
                                      "color": palette[j % len(palette)]}})
    return {"data": traces, "left_out": published(left_out), "layout": {
        "height": 480, "margin": {"t": 60},
        "legend": {"orientation": "h", "x": 0, "y": 1.1, "yanchor": "bottom"},
        "xaxis": {"title": {"text": "dimension 1"}, "zeroline": False},
        "yaxis": {"title": {"text": "dimension 2"}, "zeroline": False}}}
