"""Multiple-testing correction (Benjamini–Hochberg) and p-value display."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "P_BOUNDS",
    "bh_qvalues",
    "display_p",
    "format_p",
    "format_p_bound",
    "p_bound",
    "publish_test",
]


def bh_qvalues(pvalues: ArrayLike) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values), same shape as the input.

    NaN p-values (tests that could not be run) stay NaN and do not count towards the number of
    tests. Matches ``statsmodels.stats.multitest.multipletests(p, method="fdr_bh")[1]`` on the
    finite entries.
    """
    p = np.asarray(pvalues, dtype=float)
    shape = p.shape
    flat = p.ravel()
    q = np.full(flat.shape, np.nan)
    ok = np.isfinite(flat)
    m = int(ok.sum())
    if m == 0:
        return q.reshape(shape)
    pv = flat[ok]
    if np.any((pv < 0) | (pv > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = np.argsort(pv, kind="mergesort")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q.reshape(shape)


def format_p(p: float | None) -> str:
    """Display string of a p- or q-value: ``"<0.001"``, ``"0.012"``, ``"0.43"``; NaN -> "–"."""
    if p is None:
        return "–"
    p = float(p)
    if not math.isfinite(p):
        return "–"
    if p < 0.001:
        return "<0.001"
    if p < 0.1:
        return f"{p:.3f}"
    return f"{p:.2f}"


#: Upper bounds of the coarse p-value categories used when a test's table has withheld cells.
P_BOUNDS: tuple[float, ...] = (0.001, 0.01, 0.05)


def p_bound(p: float | None) -> float | None:
    """Coarsen a p-value to the smallest of :data:`P_BOUNDS` above it (1.0 if none).

    A p-value computed from a table with withheld counts can, together with the displayed
    margins, reveal a withheld count; only its category (``p < bound``) is published then.
    """
    if p is None or not math.isfinite(float(p)):
        return None
    for b in P_BOUNDS:
        if p < b:
            return b
    return 1.0


def format_p_bound(bound: float | None) -> str:
    """Display string of a coarsened p-value (``"<0.01"``, ``"≥0.05"``)."""
    if bound is None:
        return "–"
    if bound >= 1.0:
        return f"≥{P_BOUNDS[-1]:g}"
    return f"<{bound:g}"


def publish_test(result: dict, coarsen: bool, extra: tuple[str, ...] = ()) -> dict:
    """Apply the publication rule to a test-result dict with ``statistic``, ``p``, ``q`` keys.

    With ``coarsen`` the statistic (and any ``extra`` keys, e.g. an odds ratio) become
    ``None`` and ``p``/``q`` are replaced by ``p_bound``/``q_bound`` categories; the dict gains
    ``p_coarsened``. NaN values become ``None``.
    """
    for k in ("statistic", "p", "q", *extra):
        v = result.get(k)
        if v is not None and not math.isfinite(float(v)):
            result[k] = None
    result["p_coarsened"] = bool(coarsen and result.get("p") is not None)
    if result["p_coarsened"]:
        result["p_bound"] = p_bound(result["p"])
        result["q_bound"] = p_bound(result.get("q"))
        for k in ("statistic", "p", "q", *extra):
            result[k] = None
    return result


def display_p(result: dict, key: str = "p") -> str:
    """Display string of ``result[key]`` honouring :func:`publish_test` coarsening."""
    if result.get("p_coarsened"):
        return format_p_bound(result.get(f"{key}_bound"))
    return format_p(result.get(key))
