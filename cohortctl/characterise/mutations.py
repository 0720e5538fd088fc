"""Mutation frequencies per cluster, enrichment tests and an oncoprint matrix.

* Layout: cluster sizes (and so which clusters are displayed or suppressed) come from the whole
  clustering in ``labels``; frequencies use the patients with mutation data.
* Frequency per gene and displayed cluster: ``n mutated (% of the cluster's patients with
  mutation data)``, small-cell suppression per gene (cluster sizes are public, so protection
  comes from the other cells). A cluster whose number of patients with mutation data would
  reveal a small number without data (cluster size minus it) gets counts but no percentages,
  test or oncoprint block (``protect_missing``).
* Enrichment: one-sided Fisher's exact test (``alternative="greater"``) of each tested cluster
  (assigned, >= ``min_cell`` patients, denominator shown) against the patients of the *other*
  tested clusters, computed vectorised as the hypergeometric upper tail (identical to
  ``scipy.stats.fisher_exact``), with the sample odds ratio; BH q-values over all genes x
  clusters (genes never mutated among tested patients are not tested). An unwithheld test
  reveals the gene's number mutated over the tested clusters, so that total is treated as
  published when suppressing; where it, or the cluster's own mutated or wild-type count, is
  withheld, the odds ratio is withheld and p/q are published only as categories.
* Oncoprint: top genes x patients (0/1), columns grouped by displayed cluster and sorted by
  mutation pattern within each cluster; no patient identifiers and no columns for suppressed
  clusters. A gene's block in a cluster whose count is withheld is ``-1`` (``None`` in JSON) and
  does not take part in the column ordering. Note: being patient-level, the oncoprint shows
  co-mutation patterns (how many patients carry two given mutations), which are not subject
  to small-cell suppression: it is for library use only. Reports never carry it (neither
  in the page nor in ``to_dict``); they show the per-cluster frequencies instead.

Null values are read as "not mutated"; values other than 0/1/true/false are an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from cohortctl.characterise.multiple_testing import (
    bh_qvalues,
    coarsen_flags_for_q,
    display_p,
    publish_test,
)
from cohortctl.characterise.privacy import (
    NOT_SHOWN,
    WITHHELD_MARK,
    CharacteriseInputError,
    ClusterLayout,
    check_min_cell,
    cluster_name,
    format_count,
    format_number,
    join_labels,
    published,
    published_percent,
    suppress_linear,
    suppress_nested,
    to_jsonable,
)

__all__ = ["MutationResult", "OncoPrint", "mutation_enrichment"]


@dataclass
class OncoPrint:
    """Genes x patients 0/1 matrix (``-1`` = withheld block) with the cluster of each column."""

    genes: list[str]
    column_clusters: list[int]
    matrix: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (withheld entries -> ``None``)."""
        m = self.matrix.astype(object)
        m[self.matrix < 0] = None
        return {
            "genes": list(self.genes),
            "column_clusters": [int(k) for k in self.column_clusters],
            "matrix": m.tolist(),
        }


@dataclass
class MutationResult:
    """Result of :func:`mutation_enrichment`.

    ``table`` (display): top genes with ``n (%)`` per cluster and the strongest enrichment.
    ``frequencies`` / ``enrichment``: long raw tables for all genes (suppression applied).
    ``oncoprint``: plotting matrix (see module docstring).
    """

    table: pl.DataFrame
    frequencies: pl.DataFrame
    enrichment: pl.DataFrame
    top_genes: list[str]
    oncoprint: OncoPrint
    layout: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    min_cell: int = 5

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """JSON-serialisable raw numbers (never the patient-level oncoprint); top genes only
        unless ``full``."""
        genes = None if full else set(self.top_genes)
        freq = (
            self.frequencies
            if full
            else self.frequencies.filter(pl.col("gene").is_in(list(genes or [])))
        )
        enr = (
            self.enrichment
            if full
            else self.enrichment.filter(pl.col("gene").is_in(list(genes or [])))
        )
        return to_jsonable(
            {
                "min_cell": self.min_cell,
                "layout": self.layout,
                "top_genes": self.top_genes,
                "frequencies": freq,
                "enrichment": enr,
                "notes": self.notes,
            }
        )


def _binary_matrix(df: pl.DataFrame, genes: list[str]) -> tuple[np.ndarray, bool]:
    bad = [g for g in genes if not (df[g].dtype.is_numeric() or df[g].dtype == pl.Boolean)]
    if bad:
        raise CharacteriseInputError(
            f"mutation matrix must be 0/1; non-numeric column(s) {bad[:5]}"
        )
    if not genes:
        return np.zeros((df.height, 0), dtype=np.int8), False
    had_null = any(df[g].null_count() for g in genes)
    x = df.select([pl.col(g).cast(pl.Float64).fill_nan(None).fill_null(0.0) for g in genes])
    m = x.to_numpy()
    ok = (m == 0) | (m == 1)
    if not ok.all():
        j = int(np.argwhere(~ok)[0][1])
        raise CharacteriseInputError(
            f"mutation matrix column {genes[j]!r} has a value other than 0/1"
        )
    return m.astype(np.int8), had_null


def _odds_ratio(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        num = a * d
        den = b * c
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, np.nan))


def _gene_suppression(
    mcount: np.ndarray,
    sizes: np.ndarray,
    size_public: np.ndarray,
    enr_cols: list[int],
    overall: bool,
    min_cell: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per gene: (mutated withheld, wild-type withheld, tested total withheld, overall withheld).

    Cells: mutated counts (shown) and wild-type counts (not displayed) per displayed cluster;
    published sums: the clusters' numbers of patients with mutation data (public unless
    withheld by the coverage step), the number mutated over the enrichment-tested clusters
    (an unwithheld enrichment test reveals it) and, with ``overall``, over all displayed ones.
    """
    n_genes, n_cols = mcount.shape
    cell_status = tuple(["shown", "hidden"] * n_cols)
    aggs: list[tuple[int, ...]] = [(2 * j, 2 * j + 1) for j in range(n_cols)]
    astat = ["public" if size_public[j] else "hidden" for j in range(n_cols)]
    aggs.append(tuple(2 * j for j in enr_cols))
    astat.append("shown" if enr_cols else "hidden")
    if overall:
        aggs.append(tuple(2 * j for j in range(n_cols)))
        astat.append("shown")
    m_sup = np.zeros((n_genes, n_cols), dtype=bool)
    wt_sup = np.zeros((n_genes, n_cols), dtype=bool)
    t_sup = np.zeros(n_genes, dtype=bool)
    o_sup = np.zeros(n_genes, dtype=bool)
    for i in range(n_genes):
        vals = np.empty(2 * n_cols, dtype=np.int64)
        vals[0::2] = mcount[i]
        vals[1::2] = sizes - mcount[i]
        sup = suppress_linear(vals, aggs, min_cell, cell_status=cell_status, aggregate_status=astat)
        m_sup[i] = sup.cells[0::2]
        wt_sup[i] = sup.cells[1::2] & (vals[1::2] > 0) & (vals[1::2] < min_cell)
        t_sup[i] = sup.aggregates[n_cols]
        if overall:
            o_sup[i] = sup.aggregates[n_cols + 1]
    return m_sup, wt_sup, t_sup, o_sup


_ENR_SCHEMA = {
    "gene": pl.String,
    "cluster": pl.Int64,
    "odds_ratio": pl.Float64,
    "p": pl.Float64,
    "q": pl.Float64,
    "p_coarsened": pl.Boolean,
    "q_coarsened": pl.Boolean,
    "p_bound": pl.Float64,
    "q_bound": pl.Float64,
}


def mutation_enrichment(
    mut: pl.DataFrame,
    labels: pl.DataFrame,
    min_cell: int = 5,
    top: int = 20,
    *,
    id_col: str = "patient_id",
    overall: bool = False,
    protect_missing: bool = True,
) -> MutationResult:
    """Per-gene mutation frequency per cluster, Fisher enrichment vs rest, oncoprint matrix.

    ``mut`` is a patients x genes 0/1 matrix; ``labels`` the whole clustering (cluster sizes,
    and so which clusters are suppressed, come from it). Frequencies use the patients with
    mutation data. Cluster sizes are public, so with ``protect_missing`` (default) a small
    number of patients *without* mutation data in a cluster withholds that cluster's
    denominator (percentages, enrichment test, oncoprint block); ``protect_missing=False``
    treats these numbers as disclosable. ``overall=True`` adds an "overall" column (costs
    extra complementary suppression).
    """
    min_cell = check_min_cell(min_cell)
    joined = join_labels(mut, labels, id_col=id_col, how="inner")
    layout = ClusterLayout.from_labels(labels["cluster"].cast(pl.Int64).to_list(), min_cell)
    genes = [c for c in mut.columns if c not in (id_col, "cluster")]
    m, had_null = _binary_matrix(joined, genes)
    cl = joined["cluster"].to_numpy()
    shown = layout.shown
    notes: list[str] = []
    if had_null:
        notes.append("Missing values in the mutation matrix are counted as not mutated.")
    if layout.suppressed:
        notes.append(
            f"Groups with fewer than {min_cell} patients are counted only in the line "
            "'not clustered or withheld' "
            f"({', '.join(layout.suppressed_names)}): no frequencies, tests or oncoprint "
            "columns, and their patients are left out of every comparison."
        )

    n_genes = len(genes)
    sizes = np.array([int((cl == k).sum()) for k in shown], dtype=np.int64)
    # Coverage: patients with mutation data per displayed cluster.
    cov = suppress_nested(
        [layout.sizes[k] for k in shown],
        [{"data": (int(w), 0)} if w else {} for w in sizes],
        [[layout.sizes[k] - int(w)] for k, w in zip(shown, sizes, strict=True)],
        min_cell,
        protect_excluded=protect_missing,
    )
    cov_sup = np.array([bool(cov.n[j].get("data", False)) for j in range(len(shown))], bool)
    n_no_data = int(sum(layout.sizes[k] for k in shown) - sizes.sum())
    no_data_sup = bool(cov.excluded_totals[0]) if shown else False
    mcount = (
        np.column_stack([m[cl == k].sum(axis=0) for k in shown]).astype(np.int64)
        if shown
        else np.zeros((n_genes, 0), np.int64)
    )
    col_of = {k: j for j, k in enumerate(shown)}
    # Enrichment: each tested cluster vs the other tested clusters (one-sided Fisher).
    pool = [k for k in layout.tested if not cov_sup[col_of[k]] and sizes[col_of[k]] > 0]
    big_n = int(sum(sizes[col_of[k]] for k in pool))
    tested = pool if len(pool) >= 2 else []  # each has >= min_cell patients with data
    enr_cols = [col_of[k] for k in pool] if tested else []
    cell_sup, wt_sup, tot_sup, all_sup = _gene_suppression(
        mcount, sizes, ~cov_sup, enr_cols, overall, min_cell
    )
    k_mut = mcount[:, enr_cols].sum(axis=1) if enr_cols else np.zeros(n_genes, np.int64)
    enr_rows: list[dict[str, Any]] = []
    pmat = np.full((n_genes, len(tested)), np.nan)
    ormat = np.full((n_genes, len(tested)), np.nan)
    for g, k in enumerate(tested):
        n1 = int(sizes[col_of[k]])
        a = mcount[:, col_of[k]]
        b = n1 - a
        c = k_mut - a
        d = big_n - n1 - c
        p = stats.hypergeom.sf(a - 1, big_n, k_mut, n1)
        p = np.where(k_mut > 0, np.clip(p, 0.0, 1.0), np.nan)
        pmat[:, g] = p
        ormat[:, g] = _odds_ratio(a, b, c, d)
    qmat = bh_qvalues(pmat)
    coarse = np.zeros(pmat.shape, dtype=bool)
    for g, k in enumerate(tested):
        j = col_of[k]
        coarse[:, g] = cell_sup[:, j] | wt_sup[:, j] | tot_sup
    q_leak = coarsen_flags_for_q(pmat, coarse)
    for i, gene in enumerate(genes):
        for g, k in enumerate(tested):
            coarsen = bool(coarse[i, g])
            rec = publish_test(
                {
                    "gene": gene,
                    "cluster": k,
                    "odds_ratio": float(ormat[i, g]),
                    "statistic": None,
                    "p": float(pmat[i, g]),
                    "q": float(qmat[i, g]),
                },
                coarsen,
                extra=("odds_ratio",),
                coarsen_q=bool(q_leak[i, g]),
            )
            rec.setdefault("p_bound", None)
            rec.setdefault("q_bound", None)
            rec.pop("statistic")
            enr_rows.append(rec)
    enrichment = (
        pl.DataFrame(enr_rows, schema=_ENR_SCHEMA, orient="row")
        if enr_rows
        else pl.DataFrame(schema=_ENR_SCHEMA)
    )

    freq_rows = []
    for i, gene in enumerate(genes):
        for j, k in enumerate(shown):
            sup = bool(cell_sup[i, j])
            freq_rows.append(
                {
                    "gene": gene,
                    "cluster": k,
                    "name": cluster_name(k),
                    "n_mutated": None if sup else published(int(mcount[i, j])),
                    "n_mutated_suppressed": sup,
                    "n_patients": None if cov_sup[j] else published(int(sizes[j])),
                    "n_patients_suppressed": bool(cov_sup[j]),
                    "frequency": None
                    if (sup or cov_sup[j] or sizes[j] == 0)
                    else float(published_percent(int(mcount[i, j]), int(sizes[j])) or 0) / 100,
                }
            )
    frequencies = pl.DataFrame(
        freq_rows,
        schema={
            "gene": pl.String,
            "cluster": pl.Int64,
            "name": pl.String,
            "n_mutated": pl.Int64,
            "n_mutated_suppressed": pl.Boolean,
            "n_patients": pl.Int64,
            "n_patients_suppressed": pl.Boolean,
            "frequency": pl.Float64,
        },
        orient="row",
    )

    # Top genes: smallest q over clusters, then most frequently mutated.
    with np.errstate(invalid="ignore"):
        minq = (
            np.nanmin(np.where(np.isfinite(qmat), qmat, 2.0), axis=1)
            if tested
            else np.full(n_genes, 2.0)
        )
    freq_all = mcount.sum(axis=1) if shown else np.zeros(n_genes)
    order = np.lexsort((np.arange(n_genes), -freq_all, minq))
    top_idx = [int(i) for i in order if freq_all[i] > 0][: max(0, int(top))]
    top_genes = [genes[i] for i in top_idx]

    rows = []
    enr_by = {(r["gene"], r["cluster"]): r for r in enr_rows}
    for i in top_idx:
        row = {"gene": genes[i]}
        for j, k in enumerate(shown):
            n = int(mcount[i, j])
            if cell_sup[i, j]:
                row[cluster_name(k)] = format_count(n, True, min_cell)
            elif cov_sup[j] or sizes[j] == 0:
                row[cluster_name(k)] = str(published(n))
            else:
                row[cluster_name(k)] = (f"{published(n)} "
                                        f"({published_percent(n, int(sizes[j])):.1f}%)")
        if overall:
            tot = int(mcount[i].sum())
            tot_n = int(sizes.sum())
            row["overall"] = (
                format_count(tot, True, min_cell)
                if all_sup[i]
                else (str(published(tot)) if cov_sup.any() or tot_n == 0
                      else f"{published(tot)} ({published_percent(tot, tot_n):.1f}%)")
            )
        best = None
        for g, k in enumerate(tested):
            if np.isfinite(qmat[i, g]) and (best is None or qmat[i, g] < qmat[i, best[0]]):
                best = (g, k)
        if best is not None:
            rec = enr_by[(genes[i], best[1])]
            row["most enriched in"] = cluster_name(best[1])
            row["OR"] = (
                format_number(rec["odds_ratio"])
                if rec["odds_ratio"] is not None
                else (
                    "inf" if (np.isinf(ormat[i, best[0]]) and not rec["p_coarsened"]) else NOT_SHOWN
                )
            )
            row["p"] = display_p(rec, "p")
            row["q"] = display_p(rec, "q")
        else:
            row["most enriched in"] = NOT_SHOWN
            row["OR"] = row["p"] = row["q"] = NOT_SHOWN
        rows.append(row)
    cols = [
        "gene",
        *[cluster_name(k) for k in shown],
        *(["overall"] if overall else []),
        "most enriched in",
        "OR",
        "p",
        "q",
    ]
    table = pl.DataFrame(rows, schema={c: pl.String for c in cols}, orient="row")
    if not tested:  # nothing to compare: frequencies only, no columns of dashes
        table = table.drop("most enriched in", "OR", "p", "q")

    # Oncoprint: displayed clusters whose number of patients with data is shown.
    blocks = []
    col_clusters: list[int] = []
    for j, k in enumerate(shown):
        if cov_sup[j]:
            continue
        sub = m[cl == k][:, top_idx].T.astype(np.int8)  # genes x patients
        hide = cell_sup[top_idx, j] if top_idx else np.zeros(0, bool)
        visible = sub[~hide]
        if visible.shape[0] and sub.shape[1]:
            # Mutated first, by gene priority (first gene is the primary key).
            perm = np.lexsort(tuple(-visible[::-1]))
            sub = sub[:, perm]
        sub[hide, :] = -1
        blocks.append(sub)
        col_clusters.extend([k] * sub.shape[1])
    matrix = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(top_idx), 0), np.int8)
    notes.append(
        "Enrichment: one-sided Fisher's exact test of each cluster against the patients of the "
        f"other tested clusters, BH q over {n_genes} genes x {len(tested)} clusters. Where a "
        "count the test depends on is withheld, the odds ratio is withheld and p/q are shown "
        "only as categories."
        if tested else "Fewer than two groups large enough to compare: frequencies only, no "
        "enrichment test."
    )
    if n_no_data:
        what = (f"An undisclosed number ({WITHHELD_MARK}) of" if no_data_sup
                else str(published(n_no_data)))
        notes.append(f"{what} patient(s) of the displayed clusters have no mutation data.")
    if cov_sup.any():
        notes.append(
            "The number of patients with mutation data is withheld for "
            + ", ".join(cluster_name(k) for k, c in zip(shown, cov_sup, strict=True) if c)
            + " (it would reveal a small count): no percentages, enrichment test or oncoprint "
            "block there."
        )
    layout_d = layout.to_dict()
    layout_d["with_data"] = [
        {
            "cluster": k,
            "name": cluster_name(k),
            "n": None if cov_sup[j] else published(int(sizes[j])),
            "n_suppressed": bool(cov_sup[j]),
        }
        for j, k in enumerate(shown)
    ]
    layout_d["n_without_data"] = None if no_data_sup else published(n_no_data)
    layout_d["n_without_data_suppressed"] = no_data_sup
    return MutationResult(
        table=table,
        frequencies=frequencies,
        enrichment=enrichment,
        top_genes=top_genes,
        oncoprint=OncoPrint(genes=top_genes, column_clusters=col_clusters, matrix=matrix),
        layout=layout_d,
        notes=notes,
        min_cell=min_cell,
    )
