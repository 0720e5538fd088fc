"""Cross-dataset validation of ``cluster``'s model selection (``make validate``).

For every dataset of ``bench/datasets.py`` (real cohorts from ``sample_data/`` and
simulations of several shapes) and every seed, runs the default ``cohortctl cluster``
through the library, keeps every scored candidate (family x parameter) with its agreement
with the reference labels, and writes:

* the per-dataset results of the default (groups and ARI per seed, median pairwise ARI
  between seeds, seconds),
* the dataset x candidate table (mean score and ARI over seeds),
* the selection-rule grid with leave-one-dataset-out (LODO) evaluation: for each held-out
  dataset the rule parameters are chosen on the *other* datasets only and then judged on
  the held-out one, so a rule that only fits one cohort shows up.

Raw figures go to a JSON file next to the markdown; ``--labels-out`` saves the final
partitions (to compare runs under different CPU settings, ``--compare A.json B.json``).

    .venv/bin/python bench/validate.py --out docs/validation.md --seeds 0-9
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import NAMES, Dataset, build_all  # noqa: E402

from cohortctl.cluster import select  # noqa: E402
from cohortctl.cluster.run import ClusterOptions, cluster  # noqa: E402
from cohortctl.store import Store  # noqa: E402

MIN_SCORES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
TOLERANCES = (0.0, 0.01, 0.025, 0.05)
RANKS = ("stability", "score")
Setting = tuple[str, float, float]  # rank, min_score, tolerance
DEFAULT: Setting = (select.SelectionRule.rank, select.SelectionRule.min_score,
                    select.SelectionRule.tolerance)


def _ari(truth: np.ndarray | None, labels: np.ndarray) -> float | None:
    if truth is None:
        return None
    ok = np.array([t is not None for t in truth])
    if ok.sum() < 2:
        return None
    return float(adjusted_rand_score(truth[ok].astype(str), labels[ok]))


def _correct(ds: Dataset, labels: np.ndarray) -> float:
    """The objective: ARI with the reference; for the no-structure cohort, 1 for one group."""
    if not ds.structure:
        return 1.0 if np.unique(labels[labels >= 0]).size <= 1 else 0.0
    return _ari(ds.truth, labels) or 0.0


def run_one(ds: Dataset, seed: int) -> dict[str, Any]:
    """The default ``cluster`` on one dataset and seed, with every candidate kept."""
    import polars as pl

    from cohortctl.cluster import methods

    captured: dict[str, Any] = {}
    original = methods._auto_core

    def spy(*args: Any, **kwargs: Any) -> methods.ClusterResult:
        res = original(*args, **kwargs)
        captured["candidates"] = res.candidates
        return res

    methods._auto_core = spy
    try:
        store = Store.open(ds.store)
        t0 = time.perf_counter()
        run = cluster(store, ClusterOptions(seed=seed, run=f"validate-s{seed}-{time.time_ns()}"))
        seconds = time.perf_counter() - t0
    finally:
        methods._auto_core = original
    a = pl.read_parquet(run / "assignments.parquet")
    order = {p: i for i, p in enumerate(a["patient_id"].to_list())}
    idx = np.array([order[p] for p in ds.patient_ids])
    labels = a["cluster"].to_numpy()[idx]
    metrics = json.loads((run / "metrics.json").read_text())
    cands = []
    for c in captured.get("candidates", []):
        lab = c.labels[idx] if c.labels.size == len(order) else None
        cands.append({"family": c.family, "param": c.param, "groups": c.groups,
                      "smallest": c.smallest, "unassigned": c.unassigned,
                      "stability": c.stability, "null": c.null_mean, "score": c.score,
                      "eligible": select.ineligible(c, select.SelectionRule()) is None,
                      "ari": None if lab is None else _ari(ds.truth, lab),
                      "correct": None if lab is None else _correct(ds, lab)})
    return {"dataset": ds.name, "seed": seed, "seconds": round(seconds, 2),
            "groups": int(np.unique(labels[labels >= 0]).size),
            "unassigned": int((labels < 0).sum()), "ari": _ari(ds.truth, labels),
            "correct": _correct(ds, labels), "labels": labels.tolist(),
            "selection": metrics["selected"].get("selection"), "candidates": cands}


def _shape_labels(groups: int, smallest: int, unassigned: int, n: int) -> np.ndarray:
    """A partition with the stored candidate's group count, smallest group and unassigned
    count: all the selection rule reads besides the scores."""
    if groups == 0:
        return np.full(n, -1, dtype=np.int64)
    labels = np.full(n, -1, dtype=np.int64)
    assigned = n - unassigned
    sizes = [smallest] * groups
    sizes[-1] = assigned - smallest * (groups - 1)  # the rest in the last (>= smallest)
    labels[:assigned] = np.repeat(np.arange(groups), sizes)
    return labels


def _choose_offline(cands: list[dict[str, Any]], setting: Setting, n: int
                    ) -> dict[str, Any] | None:
    """The selection rule applied to a stored candidate table (None = one group)."""
    rows, by_key = [], {}
    for c in cands:
        row = select.Candidate(c["family"], c["param"],
                               _shape_labels(c["groups"], c["smallest"], c["unassigned"], n),
                               c["stability"], [c["null"]])
        rows.append(row)
        by_key[row.key] = c
    rank, min_score, tolerance = setting
    rule = select.SelectionRule(min_score=min_score, tolerance=tolerance, rank=rank)
    d = select.choose(rows, rule)
    return None if d.chosen is None else by_key[d.chosen.key]


def rule_grid(results: list[dict[str, Any]], datasets: dict[str, Dataset]
              ) -> tuple[dict[Setting, dict[str, float]], list[dict[str, Any]]]:
    """Objective per (rank, min_score, tolerance) and dataset; LODO choice per held-out
    dataset."""
    grid: dict[Setting, dict[str, float]] = {}
    for setting in itertools.product(RANKS, MIN_SCORES, TOLERANCES):
        per: dict[str, list[float]] = {}
        for r in results:
            ds = datasets[r["dataset"]]
            pick = _choose_offline(r["candidates"], setting, len(ds.patient_ids))
            if pick is None:
                val = _correct(ds, np.zeros(len(ds.patient_ids), dtype=np.int64))
            else:
                val = pick["correct"] if pick["correct"] is not None else 0.0
            per.setdefault(r["dataset"], []).append(val)
        grid[setting] = {k: float(np.mean(v)) for k, v in per.items()}
    lodo = []
    names = sorted({r["dataset"] for r in results})
    for held in names:
        def others(key: Setting, held: str = held) -> float:
            return float(np.mean([v for k, v in grid[key].items() if k != held]))
        best = max(grid, key=lambda key: (others(key), key == DEFAULT))
        lodo.append({"held_out": held, "rank": best[0], "min_score": best[1],
                     "tolerance": best[2],
                     "others": round(others(best), 3), "held_out_objective":
                     round(grid[best][held], 3)})
    return grid, lodo


def _median_pairwise(labels: list[list[int]]) -> float | None:
    if len(labels) < 2:
        return None
    return float(np.median([adjusted_rand_score(a, b)
                            for a, b in itertools.combinations(labels, 2)]))


def render(results: list[dict[str, Any]], datasets: dict[str, Dataset],
           seeds: list[int]) -> str:
    out = ["# Model-selection validation across datasets", "",
           f"Generated by `make validate` (`bench/validate.py`) on {platform.node()}, "
           f"{os.cpu_count()} CPUs, seeds {seeds[0]}-{seeds[-1]}; default settings "
           f"(`{select.SelectionRule()}`). Objective: ARI with the reference labels; for "
           "`sim_noise` (no structure), 1 when one group is reported.", "",
           "## Default, per dataset", "",
           "| dataset | kind | shape | groups per seed | ARI per seed | median ARI | min ARI "
           "| modal groups share | median pairwise ARI between seeds | s per run |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    by_ds: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_ds.setdefault(r["dataset"], []).append(r)
    for name, rs in by_ds.items():
        ds = datasets[name]
        groups = [r["groups"] for r in rs]
        aris = [r["ari"] for r in rs if r["ari"] is not None]
        modal = max(groups.count(g) for g in set(groups)) / len(groups)
        mp = _median_pairwise([r["labels"] for r in rs])
        out.append(
            f"| {name} | {ds.kind} | {ds.shape} | {' '.join(map(str, groups))} | "
            f"{' '.join(f'{a:.2f}' for a in aris)} | "
            f"{np.median(aris):.3f} | {min(aris):.3f} | {modal:.0%} | "
            f"{'' if mp is None else f'{mp:.3f}'} | {np.mean([r['seconds'] for r in rs]):.1f} |")
    out += ["", "## Every candidate (mean over seeds)", "",
            "score = stability - null stability; ARI of the candidate's own partition "
            "(reference embedding) with the reference labels.", "",
            "| dataset | candidate | groups | stability | null | score | ARI | eligible |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, rs in by_ds.items():
        keys = sorted({(c["family"], c["param"]) for r in rs for c in r["candidates"]})
        for key in keys:
            cs = [c for r in rs for c in r["candidates"] if (c["family"], c["param"]) == key]
            aris = [c["ari"] for c in cs if c["ari"] is not None]
            out.append(
                f"| {name} | {key[0]} {key[1]} | {np.mean([c['groups'] for c in cs]):.1f} | "
                f"{np.mean([c['stability'] for c in cs]):.3f} | "
                f"{np.mean([c['null'] for c in cs]):.3f} | "
                f"{np.mean([c['score'] for c in cs]):.3f} | "
                f"{np.mean(aris) if aris else float('nan'):.3f} | "
                f"{np.mean([c['eligible'] for c in cs]):.0%} |")
    grid, lodo = rule_grid(results, datasets)
    names = list(by_ds)
    out += ["", "## Selection rule grid (objective per dataset, mean over seeds)", "",
            "Offline re-selection from the stored candidates, judged on each candidate's "
            "reference-embedding partition (the final partition is the bootstrap consensus "
            "of the chosen candidate).", "",
            "| ranked by | min_score | tolerance | " + " | ".join(names) + " | mean |",
            "|---|---:|---:|" + "---:|" * (len(names) + 1)]
    for (rank, ms, tol), per in grid.items():
        mark = " (default)" if (rank, ms, tol) == DEFAULT else ""
        out.append(f"| {rank}{mark} | {ms} | {tol} | "
                   + " | ".join(f"{per[n]:.2f}" for n in names)
                   + f" | {np.mean([per[n] for n in names]):.3f} |")
    out += ["", "## Leave one dataset out", "",
            "For each held-out dataset, the (ranking, min_score, tolerance) best on the others, "
            "and its objective on the held-out one.", "",
            "| held out | ranked by | min_score | tolerance | objective on the others "
            "| held-out objective |",
            "|---|---|---:|---:|---:|---:|"]
    for row in lodo:
        out.append(f"| {row['held_out']} | {row['rank']} | {row['min_score']} | "
                   f"{row['tolerance']} | "
                   f"{row['others']:.3f} | {row['held_out_objective']:.3f} |")
    return "\n".join(out) + "\n"


def compare(a: Path, b: Path) -> None:
    """ARI between the final partitions of two saved runs (e.g. host vs generic CPU)."""
    A, B = json.loads(a.read_text()), json.loads(b.read_text())
    keyed = {(r["dataset"], r["seed"]): r["labels"] for r in B}
    worst = 1.0
    for r in A:
        other = keyed.get((r["dataset"], r["seed"]))
        if other is None:
            continue
        v = adjusted_rand_score(r["labels"], other)
        worst = min(worst, v)
        print(f"{r['dataset']} seed {r['seed']}: ARI {v:.4f}"
              f"{'' if r['labels'] == other else ' (not identical)'}")
    print(f"lowest ARI between the two: {worst:.4f}")


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/validation.md"))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cohortctl-validate"))
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--only", nargs="*", choices=NAMES)
    ap.add_argument("--labels-out", type=Path, help="save every run's result (JSON)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    ap.add_argument("--render-only", action="store_true",
                    help="re-render the markdown from the JSON next to --out")
    args = ap.parse_args(argv)
    if args.compare:
        compare(*args.compare)
        return 0
    import logging

    logging.getLogger("cohortctl").setLevel(logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    datasets = {d.name: d for d in build_all(args.workdir, args.only)}
    seeds = _seeds(args.seeds)
    raw = args.labels_out or args.out.with_suffix(".json")
    if args.render_only:
        results = json.loads(raw.read_text())
    else:
        results = []
        for name, ds in datasets.items():
            for seed in seeds:
                r = run_one(ds, seed)
                results.append(r)
                print(f"{name} seed {seed}: {r['groups']} groups, ARI "
                      f"{'' if r['ari'] is None else round(r['ari'], 3)}, {r['seconds']} s",
                      file=sys.stderr, flush=True)
                raw.write_text(json.dumps(results))
    args.out.write_text(render(results, datasets, seeds))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
