"""Mutation frequencies per cluster, enrichment tests and an oncoprint matrix.

* Frequency per gene and displayed cluster: ``n mutated (% of the cluster's patients with
  mutation data)``, small-cell suppression per gene (the cluster sizes in the header are public,
  so protection comes from the other cells).
* Enrichment: one-sided Fisher's exact test (``alternative="greater"``) of each assigned
  cluster with >= ``min_cell`` patients against all other assigned patients, computed
  vectorised as the hypergeometric upper tail (identical to ``scipy.stats.fisher_exact``), with
  the sample odds ratio; BH q-values over all genes x clusters (genes never mutated among
  assigned patients are not tested). Where the cluster's mutated or wild-type count is withheld,
  the odds ratio is withheld and p/q are published only as categories (they would otherwise
  reveal the count).
* Oncoprint: top genes x patients (0/1), columns grouped by displayed cluster and sorted by
  mutation pattern within each cluster; no patient identifiers and no columns for suppressed
  clusters. A gene's block in a cluster whose count is withheld is ``-1`` (``None`` in JSON) and
  does not take part in the column ordering.

Null values are read as "not mutated"; values other than 0/1/true/false are an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from cohortctl.characterise.multiple_testing import bh_qvalues, display_p, publish_test
from cohortctl.characterise.privacy import (
    NOT_SHOWN,
    SUPPRESSED_CLUSTER,
    CharacteriseInputError,
    ClusterLayout,
    check_min_cell,
    cluster_name,
    format_count,
    format_number,
    join_labels,
    suppress_with_margins,
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
        """JSON-serialisable raw numbers; top genes only unless ``full``."""
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
                "oncoprint": self.oncoprint.to_dict(),
                "notes": self.notes,
            }
        )


def _binary_matrix(df: pl.DataFrame, genes: list[str]) -> tuple[np.ndarray, bool]:
    bad = [g for g in genes if not (df[g].dtype.is_numeric() or df[g].dtype == pl.Boolean)]
    if bad:
        raise CharacteriseInputError(
            f"mutation matrix must be 0/1; non-numeric column(s) {bad[:5]}"
        )
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


def mutation_enrichment(
    mut: pl.DataFrame,
    labels: pl.DataFrame,
    min_cell: int = 5,
    top: int = 20,
    *,
    id_col: str = "patient_id",
    overall: bool = False,
) -> MutationResult:
    """Per-gene mutation frequency per cluster, Fisher enrichment vs rest, oncoprint matrix.

    ``overall=True`` adds an "overall" column (costs extra complementary suppression).
    """
    min_cell = check_min_cell(min_cell)
    joined = join_labels(mut, labels, id_col=id_col, how="inner")
    layout = ClusterLayout.from_labels(joined["cluster"].to_list(), min_cell)
    genes = [c for c in mut.columns if c not in (id_col, "cluster")]
    m, had_null = _binary_matrix(joined, genes)
    cl = joined["cluster"].to_numpy()
    shown = layout.shown
    notes: list[str] = []
    if had_null:
        notes.append("Missing values in the mutation matrix are counted as not mutated.")
    if layout.suppressed:
        notes.append(
            f"Clusters with fewer than {min_cell} patients are suppressed "
            f"({', '.join(layout.suppressed_names)}): no frequencies, tests or oncoprint columns."
        )

    n_genes = len(genes)
    sizes = np.array([int((cl == k).sum()) for k in shown], dtype=np.int64)
    mcount = (
        np.column_stack([m[cl == k].sum(axis=0) for k in shown]).astype(np.int64)
        if shown
        else np.zeros((n_genes, 0), np.int64)
    )
    cell_sup = np.zeros((n_genes, len(shown)), dtype=bool)
    wt_sup = np.zeros((n_genes, len(shown)), dtype=bool)
    tot_sup = np.zeros(n_genes, dtype=bool)
    for i in range(n_genes):
        s = suppress_with_margins(
            np.vstack([mcount[i], sizes - mcount[i]]),
            min_cell,
            row_totals="shown" if overall else "hidden",
            col_totals="public",
        )
        cell_sup[i], wt_sup[i], tot_sup[i] = s.cells[0], s.cells[1], s.row_totals[0]

    # Enrichment: cluster vs all other assigned patients (one-sided Fisher = hypergeom tail).
    assigned = cl >= 0
    big_n = int(assigned.sum())
    k_mut = m[assigned].sum(axis=0).astype(np.int64)
    tested = [k for k in layout.tested if big_n - int((cl == k).sum()) >= min_cell]
    enr_rows: list[dict[str, Any]] = []
    pmat = np.full((n_genes, len(tested)), np.nan)
    ormat = np.full((n_genes, len(tested)), np.nan)
    for g, k in enumerate(tested):
        n1 = int((cl == k).sum())
        a = m[cl == k].sum(axis=0).astype(np.int64)
        b = n1 - a
        c = k_mut - a
        d = big_n - n1 - c
        p = stats.hypergeom.sf(a - 1, big_n, k_mut, n1)
        p = np.where(k_mut > 0, np.clip(p, 0.0, 1.0), np.nan)
        pmat[:, g] = p
        ormat[:, g] = _odds_ratio(a, b, c, d)
    qmat = bh_qvalues(pmat)
    col_of = {k: j for j, k in enumerate(shown)}
    for i, gene in enumerate(genes):
        for g, k in enumerate(tested):
            j = col_of[k]
            coarsen = bool(cell_sup[i, j] or wt_sup[i, j])
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
            )
            rec.setdefault("p_bound", None)
            rec.setdefault("q_bound", None)
            rec.pop("statistic")
            enr_rows.append(rec)
    enrichment = (
        pl.DataFrame(
            enr_rows,
            schema={
                "gene": pl.String,
                "cluster": pl.Int64,
                "odds_ratio": pl.Float64,
                "p": pl.Float64,
                "q": pl.Float64,
                "p_coarsened": pl.Boolean,
                "p_bound": pl.Float64,
                "q_bound": pl.Float64,
            },
            orient="row",
        )
        if enr_rows
        else pl.DataFrame(
            schema={
                "gene": pl.String,
                "cluster": pl.Int64,
                "odds_ratio": pl.Float64,
                "p": pl.Float64,
                "q": pl.Float64,
                "p_coarsened": pl.Boolean,
                "p_bound": pl.Float64,
                "q_bound": pl.Float64,
            }
        )
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
                    "n_mutated": None if sup else int(mcount[i, j]),
                    "n_mutated_suppressed": sup,
                    "n_patients": int(sizes[j]),
                    "frequency": None if sup else float(mcount[i, j] / sizes[j]),
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
    top_idx = [int(i) for i in order[: max(0, int(top))] if freq_all[i] > 0]
    top_genes = [genes[i] for i in top_idx]

    rows = []
    enr_by = {(r["gene"], r["cluster"]): r for r in enr_rows}
    for i in top_idx:
        row = {"gene": genes[i]}
        for j, k in enumerate(shown):
            n = int(mcount[i, j])
            row[cluster_name(k)] = (
                format_count(n, True, min_cell)
                if cell_sup[i, j]
                else f"{n} ({100 * n / sizes[j]:.1f}%)"
            )
        for k in layout.suppressed:
            row[cluster_name(k)] = SUPPRESSED_CLUSTER
        tot = int(mcount[i].sum())
        if overall:
            row["overall"] = (
                format_count(tot, True, min_cell)
                if tot_sup[i]
                else f"{tot} ({100 * tot / max(int(sizes.sum()), 1):.1f}%)"
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
        *[cluster_name(k) for k in layout.suppressed],
        *(["overall"] if overall else []),
        "most enriched in",
        "OR",
        "p",
        "q",
    ]
    table = pl.DataFrame(rows, schema={c: pl.String for c in cols}, orient="row")

    # Oncoprint.
    blocks = []
    col_clusters: list[int] = []
    for j, k in enumerate(shown):
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
        "Enrichment: one-sided Fisher's exact test of each cluster against all other assigned "
        f"patients, BH q over {n_genes} genes x {len(tested)} clusters."
    )
    return MutationResult(
        table=table,
        frequencies=frequencies,
        enrichment=enrichment,
        top_genes=top_genes,
        oncoprint=OncoPrint(genes=top_genes, column_clusters=col_clusters, matrix=matrix),
        layout=layout.to_dict(),
        notes=notes,
        min_cell=min_cell,
    )
