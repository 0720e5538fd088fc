"""Outcome separation of ``cluster``'s groups vs k-means with every K (``make validate``).

Issue 14's bar for mutation-only cohorts: the default groups must separate drug responses /
survival at least as well as plain k-means with the best K on the same matrix. For every
dataset of ``bench/datasets.py`` that carries outcomes, reads the default partitions that
``bench/validate.py`` saved (``out/validation.json``) and compares them with k-means
(K = 2..8, 10 starts) on the block's 0/1 calls (rare calls dropped as ``cluster`` does):

* drug outcomes: how many differ between groups (Kruskal-Wallis, BH q < 0.05);
* survival: the log-rank p across groups.

k-means's "best K" is chosen by the outcome itself, so it is an optimistic reference.

    .venv/bin/python bench/outcomes.py --validation out/validation.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kruskal
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import build_all  # noqa: E402

from cohortctl.characterise.multiple_testing import bh_qvalues  # noqa: E402
from cohortctl.store import Store  # noqa: E402


def drugs_separated(labels: np.ndarray, outcomes: dict[str, np.ndarray]) -> int | None:
    """Drug outcomes that differ between groups at BH q < 0.05 (None: no drug outcome)."""
    drugs = [v for k, v in outcomes.items() if k.startswith("drug:")]
    if not drugs:
        return None
    p = []
    for y in drugs:
        ok = np.isfinite(y) & (labels >= 0)
        groups = [y[ok & (labels == g)] for g in np.unique(labels[ok])]
        groups = [g for g in groups if g.size >= 2]
        p.append(kruskal(*groups).pvalue if len(groups) >= 2 else 1.0)
    return int((bh_qvalues(p) < 0.05).sum())


def logrank_p(labels: np.ndarray, outcomes: dict[str, np.ndarray]) -> float | None:
    """Log-rank p across groups (None: no survival outcome; 1.0 for a single group)."""
    if "os_time" not in outcomes:
        return None
    from lifelines.statistics import multivariate_logrank_test

    t, e = outcomes["os_time"], outcomes["os_event"]
    ok = np.isfinite(t) & np.isfinite(e) & (t >= 0) & (labels >= 0)
    if np.unique(labels[ok]).size < 2:
        return 1.0
    return float(multivariate_logrank_test(t[ok], labels[ok], e[ok]).p_value)


def calls_matrix(store: Path, patient_ids: list[str]) -> np.ndarray:
    """The genetic blocks' 0/1 calls for ``patient_ids``, rare calls dropped."""
    import polars as pl

    st = Store.open(store)
    index = pl.DataFrame({"patient_id": patient_ids})
    parts = []
    for entry in st.feature_tables():
        table = index.join(st.read(entry), on="patient_id", how="left", maintain_order="left")
        X = np.nan_to_num(table.drop("patient_id").to_numpy().astype(float))
        X = (X != 0).astype(float)
        parts.append(X[:, X.sum(axis=0) >= max(3, int(np.ceil(0.01 * len(X))))])
    return np.hstack(parts)


def measure(validation: Path, workdir: Path) -> list[dict[str, Any]]:
    runs = json.loads(validation.read_text())
    rows = []
    for ds in build_all(workdir):
        if not ds.outcomes or not (ds.name.startswith("sim_binary") or ds.name == "aml"):
            continue
        X = calls_matrix(ds.store, ds.patient_ids)
        reference = {}
        for k in range(2, 9):
            lab = KMeans(k, n_init=10, random_state=0).fit_predict(X)
            reference[k] = (drugs_separated(lab, ds.outcomes), logrank_p(lab, ds.outcomes))
        for r in (r for r in runs if r["dataset"] == ds.name):
            lab = np.asarray(r["labels"])
            rows.append({"dataset": ds.name, "seed": r["seed"], "groups": r["groups"],
                         "drugs": drugs_separated(lab, ds.outcomes),
                         "logrank_p": logrank_p(lab, ds.outcomes),
                         "kmeans": {k: {"drugs": d, "logrank_p": p}
                                    for k, (d, p) in reference.items()}})
    return rows


def _fmt(drugs: int | None, p: float | None) -> str:
    parts = [] if drugs is None else [f"{drugs} drugs"]
    parts += [] if p is None else [f"log-rank p {p:.3g}"]
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--validation", type=Path, default=Path("out/validation.json"))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cohortctl-validate"))
    args = ap.parse_args(argv)
    rows = measure(args.validation, args.workdir)
    shown: set[str] = set()
    for r in rows:
        if r["dataset"] not in shown:
            shown.add(r["dataset"])
            ref = ", ".join(f"K={k}: {_fmt(v['drugs'], v['logrank_p'])}"
                            for k, v in r["kmeans"].items())
            print(f"{r['dataset']} k-means reference: {ref}")
        print(f"  seed {r['seed']}: {r['groups']} groups, {_fmt(r['drugs'], r['logrank_p'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
