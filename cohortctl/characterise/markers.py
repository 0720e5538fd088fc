"""Marker features of each cluster (cluster vs rest) for one modality, vectorised.

For every feature and every assigned cluster with >= ``min_cell`` patients (cluster sizes from
the whole clustering in ``labels``), the cluster is compared with the patients of all *other*
such clusters ("rest"; unassigned patients and suppressed clusters are left out entirely):

* standardised mean difference (Cohen's d, pooled SD with ``n - 1`` denominators);
* effect size: log2 fold change ``log2((mean_in + 1) / (mean_rest + 1))`` when the whole matrix
  looks like non-negative counts (every value a non-negative integer), otherwise the difference
  of means;
* two-sided Mann–Whitney U p-value: normal approximation with tie and continuity correction
  (identical to ``scipy.stats.mannwhitneyu(method="asymptotic")``), replaced by scipy's exact
  p-value when one group has <= 8 values and there are no ties (as scipy's ``method="auto"``);
* Benjamini–Hochberg q-values over all features x clusters of the modality.

Ranks are computed once per feature (in blocks of features, optionally in threads); rank sums
per cluster come from one weighted ``bincount``. Statistics of a cluster are withheld for a
feature with fewer than ``min_cell`` non-missing values in the cluster or in the rest.

Top markers per cluster rank by ``|SMD|`` among features with q < 0.05 first, then the others.
The heatmap holds the mean z-score (feature standardised over the displayed clusters'
patients) of each displayed cluster for the union of top markers; a cell with fewer than
``min_cell`` non-missing values is ``None``.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import special, stats

from cohortctl.characterise.multiple_testing import bh_qvalues, format_p
from cohortctl.characterise.privacy import (
    UNASSIGNED,
    CharacteriseInputError,
    ClusterLayout,
    check_min_cell,
    cluster_name,
    format_number,
    join_labels,
    to_jsonable,
)

__all__ = ["MarkerResult", "markers", "rank_sum_block"]

#: Target number of matrix elements per block (bounds memory to a few hundred MB).
BLOCK_ELEMENTS = 4_000_000


@dataclass
class MarkerResult:
    """Result of :func:`markers`.

    ``top`` (display) and ``top_raw``: top markers per cluster. ``heatmap``: cluster x feature
    mean z-scores (``None`` where withheld). ``stats``: every feature x cluster comparison
    (withheld statistics are null). ``effect_kind`` is ``"log2_fold_change"`` or
    ``"mean_difference"``.
    """

    top: pl.DataFrame
    top_raw: list[dict[str, Any]]
    heatmap: pl.DataFrame
    stats: pl.DataFrame
    effect_kind: str
    layout: dict[str, Any]
    n_features: int
    notes: list[str] = field(default_factory=list)
    min_cell: int = 5

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """JSON-serialisable raw numbers; ``full=True`` adds every feature x cluster row."""
        out: dict[str, Any] = {
            "min_cell": self.min_cell,
            "layout": self.layout,
            "effect_kind": self.effect_kind,
            "n_features": self.n_features,
            "top": self.top_raw,
            "heatmap": {
                "clusters": self.heatmap["cluster"].to_list(),
                "features": [c for c in self.heatmap.columns if c != "cluster"],
                "values": [list(r[1:]) for r in self.heatmap.iter_rows()],
            },
            "notes": self.notes,
        }
        if full:
            out["stats"] = self.stats
        return to_jsonable(out)


def _ranks_sorted(srt: np.ndarray, nvalid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based; 0 for missing) of rows already sorted (NaN last), tie terms."""
    b, n = srt.shape
    pos = np.broadcast_to(np.arange(n), (b, n))
    valid = pos < nvalid[:, None]
    new = np.ones((b, n), dtype=bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    new |= ~valid
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    is_end = np.ones((b, n), dtype=bool)
    is_end[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(is_end, pos, n)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.where(valid, (start + end) / 2.0 + 1.0, 0.0)
    size = (end - start + 1).astype(np.float64)
    tie = np.where(new & valid & (size > 1), size**3 - size, 0.0).sum(axis=1)
    return ranks, tie


def rank_sum_block(
    xt: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank sums of each group per feature row, ranking each row once.

    ``xt``: features x patients (NaN = missing); ``codes``: group code per patient in
    ``0..n_groups-1``. Returns rank sums and non-missing counts (features x groups), the number
    of non-missing values and the tie term ``sum(t^3 - t)`` per feature. Rows without ties or
    missing values take a fast path (ranks are the sorted positions).
    """
    b, n = xt.shape
    order = np.argsort(xt, axis=1)
    srt = np.take_along_axis(xt, order, axis=1)
    nan = np.isnan(xt)
    nvalid = n - nan.sum(axis=1)
    slow = (srt[:, 1:] == srt[:, :-1]).any(axis=1) | (nvalid < n)
    tie = np.zeros(b)
    if slow.any():
        ranks = np.repeat(np.arange(1.0, n + 1.0)[None, :], b, axis=0)
        ranks[slow], tie[slow] = _ranks_sorted(srt[slow], nvalid[slow])
    else:
        ranks = np.broadcast_to(np.arange(1.0, n + 1.0), (b, n))
    lab = codes[order]
    idx = (np.arange(b)[:, None] * n_groups + lab).ravel()
    rsum = np.bincount(idx, weights=ranks.ravel(), minlength=b * n_groups).reshape(b, n_groups)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    if nan.any():
        onehot = np.zeros((n, n_groups))
        onehot[np.arange(n), codes] = 1.0
        counts = sizes[None, :] - nan.astype(np.float64) @ onehot
    else:
        counts = np.repeat(sizes[None, :], b, axis=0)
    return rsum, counts, nvalid, tie


def _block_stats(
    xt: np.ndarray, codes: np.ndarray, n_groups: int, n_test: int
) -> dict[str, np.ndarray]:
    """All per-feature statistics for one block (groups ``0..n_test-1`` are tested)."""
    xt[~np.isfinite(xt)] = np.nan
    rsum, n_in, n_tot, tie = rank_sum_block(xt, codes, n_groups)
    nvalid = n_tot.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(nvalid > 0, np.nansum(xt, axis=1) / nvalid, 0.0)
    xc = xt - mu[:, None]
    if (nvalid < xt.shape[1]).any():
        xc = np.nan_to_num(xc, nan=0.0)
    onehot = np.zeros((xt.shape[1], n_groups))
    onehot[np.arange(xt.shape[1]), codes] = 1.0
    s_in = xc @ onehot
    xc *= xc
    ss_in = xc @ onehot
    s_all = s_in.sum(axis=1)[:, None]
    ss_all = ss_in.sum(axis=1)[:, None]
    n_tot = nvalid[:, None]
    n_in, rsum = n_in[:, :n_test], rsum[:, :n_test]
    s_in, ss_in = s_in[:, :n_test], ss_in[:, :n_test]
    n_out = n_tot - n_in
    s_out, ss_out = s_all - s_in, ss_all - ss_in
    with np.errstate(invalid="ignore", divide="ignore"):
        m_in = s_in / n_in
        m_out = s_out / n_out
        v_in = (ss_in - s_in * m_in) / (n_in - 1)
        v_out = (ss_out - s_out * m_out) / (n_out - 1)
        pooled = np.sqrt(
            np.maximum((n_in - 1) * v_in + (n_out - 1) * v_out, 0.0) / (n_in + n_out - 2)
        )
        smd = (m_in - m_out) / pooled
        smd[~(pooled > 1e-12 * (1.0 + np.abs(mu[:, None])))] = np.nan
        u1 = rsum - n_in * (n_in + 1) / 2.0
        prod = n_in * n_out
        u = np.maximum(u1, prod - u1)
        n = n_in + n_out
        var = prod / 12.0 * ((n + 1) - tie[:, None] / (n * (n - 1)))
        z = (u - prod / 2.0 - 0.5) / np.sqrt(var)
        p = np.clip(2.0 * special.ndtr(-z), 0.0, 1.0)
    all_tied = (tie[:, None] == n**3 - n) & (n > 1)
    p = np.where(all_tied, 1.0, p)
    return {
        "mean_in": m_in + mu[:, None],
        "mean_out": m_out + mu[:, None],
        "smd": smd,
        "p": p,
        "n_in": n_in,
        "n_out": n_out,
        "has_tie": np.broadcast_to((tie > 0)[:, None], n_in.shape).copy(),
    }


def _exact_fix(xt: np.ndarray, codes: np.ndarray, res: dict[str, np.ndarray], n_test: int) -> None:
    """Replace asymptotic p by scipy's exact p where scipy's ``method='auto'`` would use it."""
    small = ((res["n_in"] <= 8) | (res["n_out"] <= 8)) & ~res["has_tie"]
    small &= (res["n_in"] > 0) & (res["n_out"] > 0)
    if not small.any():
        return
    for g in range(n_test):
        rows = np.flatnonzero(small[:, g])
        if rows.size == 0:
            continue
        ing = codes == g
        sub_in, sub_out = xt[np.ix_(rows, ing)], xt[np.ix_(rows, ~ing)]
        complete = np.isfinite(sub_in).all(axis=1) & np.isfinite(sub_out).all(axis=1)
        if complete.any():
            r = stats.mannwhitneyu(sub_in[complete], sub_out[complete], axis=1, method="exact")
            res["p"][rows[complete], g] = r.pvalue
        for i in np.flatnonzero(~complete):
            a, b_ = sub_in[i], sub_out[i]
            a, b_ = a[np.isfinite(a)], b_[np.isfinite(b_)]
            res["p"][rows[i], g] = stats.mannwhitneyu(a, b_, method="exact").pvalue


def markers(
    matrix: pl.DataFrame,
    labels: pl.DataFrame,
    top: int = 10,
    min_cell: int = 5,
    *,
    id_col: str = "patient_id",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> MarkerResult:
    """Per-cluster marker features of one modality (see module docstring)."""
    min_cell = check_min_cell(min_cell)
    joined = join_labels(matrix, labels, id_col=id_col, how="inner")
    # Cluster sizes (and so which clusters are suppressed) come from the whole clustering.
    layout = ClusterLayout.from_labels(labels["cluster"].cast(pl.Int64).to_list(), min_cell)
    feats = [c for c in matrix.columns if c not in (id_col, "cluster")]
    non_num = [c for c in feats if not joined[c].dtype.is_numeric()]
    if non_num:
        raise CharacteriseInputError(
            f"marker matrix must be numeric; non-numeric column(s): {non_num[:5]}"
        )
    notes: list[str] = []
    cl_all = joined["cluster"].to_numpy()
    # Suppressed clusters are left out entirely: as part of "rest" their values could be
    # recovered from the rest means and the other clusters' means.
    assigned = joined.filter(pl.col("cluster").is_in(layout.tested))
    cl = assigned["cluster"].to_numpy()
    n_a = cl.size
    tested = [k for k in layout.tested if n_a - int((cl == k).sum()) >= min_cell]
    code_of = {k: i for i, k in enumerate(tested)}
    codes = np.array([code_of.get(int(k), len(tested)) for k in cl], dtype=np.int64)
    n_groups = len(tested) + 1
    n_feat = len(feats)
    shape = (n_feat, len(tested))
    out = {k: np.full(shape, np.nan) for k in ("mean_in", "mean_out", "smd", "p")}
    n_in_all = np.zeros(shape)
    n_out_all = np.zeros(shape)
    is_counts = True
    if block_size is None:
        block_size = int(min(1024, max(8, BLOCK_ELEMENTS // max(n_a, 1))))
    blocks = [feats[i : i + block_size] for i in range(0, n_feat, block_size)]
    starts = list(range(0, n_feat, block_size))

    def work(cols: list[str]) -> tuple[dict[str, np.ndarray], bool]:
        x = assigned.select([pl.col(c).cast(pl.Float64) for c in cols]).to_numpy(order="fortran")
        xt = np.array(x.T, dtype=np.float64, order="C")  # writable copy
        fin = np.isfinite(xt)
        vals = xt[fin]
        counts_like = bool(vals.size == 0 or ((vals >= 0).all() and (vals == np.round(vals)).all()))
        res = _block_stats(xt, codes, n_groups, len(tested))
        _exact_fix(xt, codes, res, len(tested))
        return res, counts_like

    if tested and n_feat:
        threads = max(1, n_threads or min(2, os.cpu_count() or 1))
        if threads == 1 or len(blocks) == 1:
            results = map(work, blocks)
            pool = None
        else:
            pool = ThreadPoolExecutor(max_workers=threads)
            results = pool.map(work, blocks)
        try:
            for start, (res, counts_like) in zip(starts, results, strict=True):
                sl = slice(start, start + res["p"].shape[0])
                for k in out:
                    out[k][sl] = res[k]
                n_in_all[sl] = res["n_in"]
                n_out_all[sl] = res["n_out"]
                is_counts &= counts_like
        finally:
            if pool is not None:
                pool.shutdown()
    elif not tested:
        notes.append("No cluster has enough patients (in it and outside it) for marker tests.")
    withheld = (n_in_all < min_cell) | (n_out_all < min_cell)
    for k in out:
        out[k][withheld] = np.nan
    if is_counts:
        effect_kind = "log2_fold_change"
        with np.errstate(invalid="ignore", divide="ignore"):
            effect = np.log2((out["mean_in"] + 1.0) / (out["mean_out"] + 1.0))
    else:
        effect_kind = "mean_difference"
        effect = out["mean_in"] - out["mean_out"]
    q = bh_qvalues(out["p"])

    rows_raw: list[dict[str, Any]] = []
    top_cols: list[str] = []
    for g, k in enumerate(tested):
        smd = out["smd"][:, g]
        ok = np.flatnonzero(np.isfinite(smd))
        not_sig = ~(np.nan_to_num(q[ok, g], nan=1.0) < 0.05)
        # lexsort: last key is primary -> (not significant, -|SMD|, feature position)
        key = ok[np.lexsort((ok, -np.abs(smd[ok]), not_sig))]
        for rank, i in enumerate(key[: max(0, int(top))].tolist(), start=1):
            rows_raw.append(
                {
                    "cluster": k,
                    "name": cluster_name(k),
                    "rank": rank,
                    "feature": feats[i],
                    "direction": "up" if smd[i] > 0 else "down",
                    "smd": float(smd[i]),
                    "effect": float(effect[i, g]),
                    "mean_in": float(out["mean_in"][i, g]),
                    "mean_rest": float(out["mean_out"][i, g]),
                    "p": float(out["p"][i, g]),
                    "q": float(q[i, g]),
                }
            )
            if feats[i] not in top_cols:
                top_cols.append(feats[i])
    eff_label = "log2 FC" if is_counts else "mean difference"
    top_df = pl.DataFrame(
        [
            {
                "cluster": r["name"],
                "rank": str(r["rank"]),
                "feature": r["feature"],
                "direction": r["direction"],
                "SMD": format_number(r["smd"]),
                eff_label: format_number(r["effect"]),
                "mean (cluster)": format_number(r["mean_in"]),
                "mean (rest)": format_number(r["mean_rest"]),
                "p": format_p(r["p"]),
                "q": format_p(r["q"]),
            }
            for r in rows_raw
        ],
        schema={
            c: pl.String
            for c in [
                "cluster",
                "rank",
                "feature",
                "direction",
                "SMD",
                eff_label,
                "mean (cluster)",
                "mean (rest)",
                "p",
                "q",
            ]
        },
        orient="row",
    )

    # Heatmap: mean z-score per displayed cluster (the displayed clusters' patients define the
    # z-scale, so that nothing about suppressed clusters enters it).
    heat_rows: list[dict[str, Any]] = []
    if top_cols:
        x = np.array(joined.select([pl.col(c).cast(pl.Float64) for c in top_cols]).to_numpy())
        x[~np.isfinite(x)] = np.nan
        on_show = np.isin(cl_all, layout.shown)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mu = np.nanmean(x[on_show], axis=0)
            sd = np.nanstd(x[on_show], axis=0, ddof=1)
            z = (x - mu) / np.where(sd > 0, sd, np.nan)
        for k in layout.shown:
            m = cl_all == k
            zz = z[m]
            nn = np.isfinite(zz).sum(axis=0)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                means = (
                    np.nanmean(np.where(np.isfinite(zz), zz, np.nan), axis=0)
                    if m.any()
                    else np.full(len(top_cols), np.nan)
                )
            row: dict[str, Any] = {"cluster": cluster_name(k)}
            for c, v, n in zip(top_cols, means, nn, strict=True):
                row[c] = float(v) if (n >= min_cell and math.isfinite(v)) else None
            heat_rows.append(row)
    heatmap = pl.DataFrame(
        heat_rows,
        schema={"cluster": pl.String, **{c: pl.Float64 for c in top_cols}},
        orient="row",
    )

    stat_rows = {
        "feature": np.repeat(np.array(feats, dtype=object), len(tested)).tolist(),
        "cluster": np.tile(np.array(tested, dtype=np.int64), n_feat).tolist(),
        "smd": out["smd"].ravel(),
        "effect": effect.ravel(),
        "mean_in": out["mean_in"].ravel(),
        "mean_rest": out["mean_out"].ravel(),
        "p": out["p"].ravel(),
        "q": q.ravel(),
        "withheld": withheld.ravel(),
    }
    stats_df = pl.DataFrame(
        stat_rows,
        schema={
            "feature": pl.String,
            "cluster": pl.Int64,
            "smd": pl.Float64,
            "effect": pl.Float64,
            "mean_in": pl.Float64,
            "mean_rest": pl.Float64,
            "p": pl.Float64,
            "q": pl.Float64,
            "withheld": pl.Boolean,
        },
    ).with_columns(pl.col(pl.Float64).fill_nan(None))

    notes.append(
        f"Each cluster is compared with all other assigned patients (Mann–Whitney U, two-sided;"
        f" BH q over {n_feat} features x {len(tested)} clusters). Effect: {eff_label}."
    )
    if layout.suppressed:
        notes.append(
            f"Groups with fewer than {min_cell} patients are counted only in the line "
            "'not clustered or withheld' "
            f"({', '.join(layout.suppressed_names)}): no markers are reported for them and their "
            "patients are left out of every comparison."
        )
    if UNASSIGNED in layout.sizes:
        notes.append("Unassigned patients are excluded from the comparisons.")
    if withheld.any():
        notes.append(
            f"Statistics withheld where a cluster or its rest has fewer than {min_cell} "
            "non-missing values for a feature."
        )
    return MarkerResult(
        top=top_df,
        top_raw=rows_raw,
        heatmap=heatmap,
        stats=stats_df,
        effect_kind=effect_kind,
        layout=layout.to_dict(),
        n_features=n_feat,
        notes=notes,
        min_cell=min_cell,
    )
