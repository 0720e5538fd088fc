"""Multiple-testing correction (Benjamini–Hochberg) and p-value display."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "P_BOUNDS",
    "bh_qvalues",
    "bh_sources",
    "coarsen_flags_for_q",
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


def bh_sources(pvalues: ArrayLike) -> np.ndarray:
    """For each p-value, the index of the p-value whose ``p * m / rank`` is its BH q-value.

    The Benjamini–Hochberg q-value of a test is ``min`` over the tests ranked at or after it of
    ``p_j * m / rank_j``; when that minimum comes from another test, the q-value reveals that
    test's p-value. -1 for NaN p-values. Same shape as the input (flattened indices).
    """
    p = np.asarray(pvalues, dtype=float)
    flat = p.ravel()
    src = np.full(flat.shape, -1, dtype=np.int64)
    ok = np.flatnonzero(np.isfinite(flat))
    m = ok.size
    if m == 0:
        return src.reshape(p.shape)
    order = ok[np.argsort(flat[ok], kind="mergesort")]
    ranked = flat[order] * m / np.arange(1, m + 1)
    best = order[-1]
    best_val = ranked[-1]
    for i in range(m - 1, -1, -1):
        if ranked[i] <= best_val:
            best_val, best = ranked[i], order[i]
        src[order[i]] = best
    return src.reshape(p.shape)


def coarsen_flags_for_q(pvalues: ArrayLike, coarsened: ArrayLike) -> np.ndarray:
    """Tests whose q-value must be coarsened because it equals a coarsened test's ``p*m/rank``."""
    c = np.asarray(coarsened, dtype=bool).ravel()
    src = bh_sources(pvalues).ravel()
    out = np.zeros(c.shape, dtype=bool)
    has = src >= 0
    out[has] = c[src[has]]
    return out.reshape(np.shape(coarsened))


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


def publish_test(
    result: dict, coarsen: bool, extra: tuple[str, ...] = (), *, coarsen_q: bool = False
) -> dict:
    """Apply the publication rule to a test-result dict with ``statistic``, ``p``, ``q`` keys.

    With ``coarsen`` the statistic (and any ``extra`` keys, e.g. an odds ratio) become
    ``None`` and ``p``/``q`` are replaced by ``p_bound``/``q_bound`` categories; the dict gains
    ``p_coarsened``. With only ``coarsen_q`` (the q-value would reveal another, coarsened
    test's p-value; see :func:`coarsen_flags_for_q`) just ``q`` is replaced by ``q_bound`` and
    ``q_coarsened`` is set. NaN values become ``None``.
    """
    for k in ("statistic", "p", "q", *extra):
        v = result.get(k)
        if v is not None and not math.isfinite(float(v)):
            result[k] = None
    result["p_coarsened"] = bool(coarsen and result.get("p") is not None)
    result["q_coarsened"] = bool((coarsen or coarsen_q) and result.get("q") is not None)
    if result["q_coarsened"]:
        result["q_bound"] = p_bound(result.get("q"))
        result["q"] = None
    if result["p_coarsened"]:
        result["p_bound"] = p_bound(result["p"])
        for k in ("statistic", "p", *extra):
            result[k] = None
    return result


def publish_family(results: list[dict]) -> None:
    """BH q-values over one family of test dicts, then the publication rule on each.

    Each dict has ``p`` (``None`` when not testable) and ``_coarsen`` (its p must be
    coarsened); ``_coarsen`` is consumed, ``q`` set, and :func:`publish_test` applied with
    the q-values that would reveal a coarsened p (:func:`coarsen_flags_for_q`) coarsened.
    """
    pv = [r["p"] if r["p"] is not None else np.nan for r in results]
    q = bh_qvalues(pv)
    q_leak = coarsen_flags_for_q(pv, [r["_coarsen"] for r in results])
    for r, qq, ql in zip(results, q, q_leak, strict=True):
        r["q"] = float(qq) if np.isfinite(qq) else None
        publish_test(r, r.pop("_coarsen"), coarsen_q=bool(ql))


def display_p(result: dict, key: str = "p") -> str:
    """Display string of ``result[key]`` honouring :func:`publish_test` coarsening."""
    if result.get(f"{key}_coarsened"):
        return format_p_bound(result.get(f"{key}_bound"))
    return format_p(result.get(key))
