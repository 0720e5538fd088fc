"""SNF peer: cohortctl's own SNF (snf_from_blocks) + spectral clustering on the same
preprocessed blocks that ``cohortctl cluster`` builds (per-block filtering, imputation,
scaling and PCA from cohortctl.features).

Usage: python bench/peer_snf.py STORE OUT_DIR [--max-gib 14]

K (neighbours) = 20, mu = 0.5, t = 20 (SNFtool defaults); the number of clusters is chosen by
SNFtool's eigen-gap heuristic over 2..8 (estimate_n_clusters).  Writes
``OUT_DIR/labels.parquet`` and ``OUT_DIR/steps.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-gib", type=float, default=14.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}
    t0 = time.perf_counter()

    import numpy as np
    import polars as pl

    from cohortctl.cluster import snf
    from cohortctl.cluster.run import ClusterOptions, build_blocks
    from cohortctl.store import Store

    steps["import"] = time.perf_counter() - t0
    t = time.perf_counter()
    _models, scores = build_blocks(Store.open(a.store), ClusterOptions())
    ids = sorted(set().union(*(set(p) for p, _ in scores.values())))
    index = {p: i for i, p in enumerate(ids)}
    n = len(ids)
    blocks, masks = [], []
    for pids, s in scores.values():
        mask = np.zeros(n, dtype=bool)
        rows = np.fromiter((index[p] for p in pids), dtype=np.int64, count=len(pids))
        mask[rows] = True
        X = np.full((n, s.shape[1]), np.nan)
        X[rows] = s
        blocks.append(X)
        masks.append(mask)
    steps["preprocess_blocks"] = time.perf_counter() - t
    t = time.perf_counter()
    W = snf.snf_from_blocks(blocks, masks, K=20, mu=0.5, t=20,
                            max_bytes=a.max_gib * 2**30)
    steps["snf"] = time.perf_counter() - t
    t = time.perf_counter()
    k, k_scores = snf.estimate_n_clusters(W, range(2, 9))
    steps["estimate_k"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = snf.spectral_labels(W, k, seed=a.seed)
    steps["spectral"] = time.perf_counter() - t
    pl.DataFrame({"patient_id": ids, "cluster": labels}).write_parquet(a.out / "labels.parquet")
    steps["total_in_process"] = time.perf_counter() - t0
    info = {"steps_s": {k_: round(v, 3) for k_, v in steps.items()}, "n_obs": n,
            "n_blocks": len(blocks), "n_clusters": int(k),
            "eigengap_scores": {str(k_): round(v, 6) for k_, v in k_scores.items()},
            "params": {"K": 20, "mu": 0.5, "t": 20, "k_range": [2, 8]}}
    (a.out / "steps.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
