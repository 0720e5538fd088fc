"""scanpy peer: PCA -> neighbours -> UMAP -> Leiden with scanpy's defaults, timed per step.

Usage: python bench/peer_scanpy.py MATRIX.parquet OUT_DIR [--n-top-genes 2000]

MATRIX is a wide table (``patient_id`` + one numeric column per gene, already on a log scale,
so ``normalize_total``/``log1p`` are skipped).  Missing values are filled with the gene's
median (scanpy cannot take NaN).  Writes ``OUT_DIR/labels.parquet`` (patient_id, cluster) and
``OUT_DIR/steps.json`` (seconds per step, parameters, versions).
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import metadata
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("matrix", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n-top-genes", type=int, default=2000)
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}
    t0 = time.perf_counter()

    import anndata as ad
    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq
    import scanpy as sc
    import scipy.sparse as sp

    if not hasattr(sp.csr_array, "getnnz"):
        # scanpy 1.11 (the last release for Python 3.11) calls csr_array.getnnz(axis=1) in
        # neighbors(); scipy 1.17 removed it.  Same result, computed from the index pointer.
        def _getnnz(self, axis=None):  # noqa: ANN001, ANN202
            return np.diff(self.indptr) if axis == 1 else self.nnz

        sp.csr_array.getnnz = _getnnz

    steps["import"] = time.perf_counter() - t0
    t = time.perf_counter()
    # Batched read into one preallocated float32 array (a whole-table read would double it).
    pf = pq.ParquetFile(a.matrix)
    genes = [c for c in pf.schema_arrow.names if c != "patient_id"]
    X = np.empty((pf.metadata.num_rows, len(genes)), dtype=np.float32)
    ids: list[str] = []
    for batch in pf.iter_batches(batch_size=2000):
        r0 = len(ids)
        ids.extend(batch.column("patient_id").to_pylist())
        for j, g in enumerate(genes):
            X[r0:len(ids), j] = batch.column(g).to_numpy(zero_copy_only=False)
    nan = np.isnan(X)
    if nan.any():
        med = np.nanmedian(X, axis=0)
        X[nan] = np.take(med, np.nonzero(nan)[1])
    del nan
    adata = ad.AnnData(X)
    adata.obs_names = ids
    adata.var_names = genes
    steps["read"] = time.perf_counter() - t

    def step(name, fn, *args, **kw):
        t = time.perf_counter()
        fn(*args, **kw)
        steps[name] = time.perf_counter() - t
        # Written after every step, so a failed or killed run still shows where time went.
        (a.out / "steps_partial.json").write_text(json.dumps(steps) + "\n")

    if adata.n_vars > a.n_top_genes:
        step("highly_variable_genes", sc.pp.highly_variable_genes, adata,
             n_top_genes=a.n_top_genes, subset=True)
    step("scale", sc.pp.scale, adata, max_value=10)
    step("pca", sc.tl.pca, adata, random_state=a.seed)
    step("neighbors", sc.pp.neighbors, adata, random_state=a.seed)
    step("umap", sc.tl.umap, adata, random_state=a.seed)
    step("leiden", sc.tl.leiden, adata, resolution=a.resolution, flavor="igraph",
         n_iterations=2, directed=False, random_state=a.seed)
    labels = adata.obs["leiden"].astype(int).to_numpy()
    pl.DataFrame({"patient_id": ids, "cluster": labels}).write_parquet(a.out / "labels.parquet")
    steps["total_in_process"] = time.perf_counter() - t0
    info = {
        "steps_s": {k: round(v, 3) for k, v in steps.items()},
        "n_obs": int(adata.n_obs), "n_vars_used": int(adata.n_vars),
        "n_clusters": int(len(set(labels.tolist()))),
        "params": {"n_top_genes": a.n_top_genes, "scale_max_value": 10, "pca_n_comps": 50,
                   "neighbors_n_neighbors": 15, "leiden_resolution": a.resolution,
                   "leiden_flavor": "igraph", "leiden_n_iterations": 2},
        "versions": {d: metadata.version(d) for d in ("scanpy", "anndata", "leidenalg", "igraph")},
    }
    (a.out / "steps.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
