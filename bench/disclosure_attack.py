"""Disclosure attack harness (used by bench/disclosure_scan.py): build cohorts whose cluster
membership is controlled, produce reports, and attack every withheld count with integer
programs over everything a report publishes. Written for the issue-15 adversarial review;
docs/usage.md ("Known limits") quotes its results."""
from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import linprog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cohortctl.cli import main  # noqa: E402
from cohortctl.cluster.run import ClusterOptions, cluster  # noqa: E402
from cohortctl.features import FeatureSettings  # noqa: E402
from cohortctl.report.build import gather, rep_to_json  # noqa: E402
from cohortctl.store import Store  # noqa: E402


def build(tmp: Path, groups: list[int], clin: dict[str, list[Any]], *, roles: dict[str, str],
          genetic: pl.DataFrame | None = None, seed: int = 0,
          labels: list[int] | None = None) -> Path:
    """groups[i] = intended group of patient i (0..G-1). Molecular data well separated.
    ``labels`` (optional) overrides the run's cluster labels (e.g. -1 for unassigned)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = len(groups)
    ids = [f"P{seed}x{i:05d}" for i in range(n)]
    G = max(groups) + 1
    rows = []
    for g in groups:
        c = np.zeros(max(6, G))
        c[g] = 14.0
        rows.append(c + rng.normal(0, 0.5, c.size))
    mol = pl.DataFrame({"patient_id": ids, **{f"g{j}": [r[j] for r in rows]
                                              for j in range(len(rows[0]))}})
    mol.write_parquet(tmp / "mol.parquet")
    pl.DataFrame({"patient_id": ids, **clin}).write_parquet(tmp / "clin.parquet")
    store = tmp / "store"
    if store.exists():
        import shutil
        shutil.rmtree(store)
    args = ["-q", "ingest", "-o", str(store), "--molecular", f"expr={tmp / 'mol.parquet'}",
            "--clinical", str(tmp / "clin.parquet")]
    for r, c in roles.items():
        args += [f"--{r}", c]
    if genetic is not None:
        write_maf(genetic.with_columns(pl.Series("patient_id", [ids[i] for i in
                                                                genetic["idx"].to_list()])),
                  tmp / "mut.maf")
        args += ["--genetic", f"mut={tmp / 'mut.maf'}"]
    assert main(args) == 0
    cluster(Store.open(store), ClusterOptions(method="ward", k=G, bootstrap=3,
                                              features=FeatureSettings(components="variance")))
    relabel(store, ids, labels if labels is not None else groups)
    return store


def write_maf(df: pl.DataFrame, path: Path) -> None:
    lines = ["Hugo_Symbol\tTumor_Sample_Barcode\tVariant_Classification"]
    for r in df.iter_rows(named=True):
        lines.append(f"{r['gene']}\t{r['patient_id']}\tMissense_Mutation")
    path.write_text("\n".join(lines) + "\n")


def relabel(store: Path, ids: list[str], labels: list[int]) -> None:
    """Force the run's labels to ``labels`` (test artefact in /tmp; checksum updated)."""
    st = Store.open(store)
    run = st.resolve_run("latest")
    a = pl.read_parquet(run / "assignments.parquet")
    m = dict(zip(ids, labels, strict=True))
    a = a.with_columns(pl.Series("cluster", [int(m[p]) for p in a["patient_id"].to_list()],
                                 dtype=a["cluster"].dtype))
    a.write_parquet(run / "assignments.parquet")
    man = json.loads((run / "run.json").read_text())
    man["files"]["assignments.parquet"] = hashlib.sha256(
        (run / "assignments.parquet").read_bytes()).hexdigest()
    (run / "run.json").write_text(json.dumps(man))


def report(store: Path, min_cell: int = 5, profile: str = "standard"):
    rep = gather(Store.open(store), min_cell=min_cell, profile=profile)
    return rep, json.loads(json.dumps(rep_to_json(rep)))


def truth_frame(store: Path) -> pl.DataFrame:
    st = Store.open(store)
    run = st.resolve_run("latest")
    lab = pl.read_parquet(run / "assignments.parquet").select("patient_id", "cluster")
    return lab.join(st.clinical(), on="patient_id", how="left")


class LP:
    """Unknowns: patients per combination of attribute values (the attacker's atoms)."""

    def __init__(self, patients: list[dict[str, Any]], domains: dict[str, list[Any]]):
        self.keys = list(domains)
        self.atoms = list(itertools.product(*[domains[k] for k in self.keys]))
        self.patients = patients
        self.truth = np.zeros(len(self.atoms))
        idx = {a: i for i, a in enumerate(self.atoms)}
        for p in patients:
            self.truth[idx[tuple(p[k] for k in self.keys)]] += 1
        self.eq: list[tuple[np.ndarray, float, str]] = []
        self.ub: list[tuple[np.ndarray, float, str]] = []
        self.withheld: list[tuple[str, np.ndarray]] = []
        self.maybe_zero: set[str] = set()

    def mask(self, **where: Any) -> np.ndarray:
        """where: key -> set of allowed values (or callable)."""
        out = np.ones(len(self.atoms))
        for i, a in enumerate(self.atoms):
            for k, allowed in where.items():
                v = a[self.keys.index(k)]
                ok = allowed(v) if callable(allowed) else v in allowed
                if not ok:
                    out[i] = 0
                    break
        return out

    def pub(self, m: np.ndarray, value: float | None, name: str, suppressed: bool = False,
            zero_shown: bool = True):
        """``zero_shown=False``: the policy may withhold this count even when it is 0 (the
        positives of a group below min-cell, a thin Table 1 column), so a reader cannot
        assume a withheld value is at least 1."""
        if suppressed or value is None:
            self.withheld.append((name, m))
            if not zero_shown:
                self.maybe_zero.add(name)
            return
        tv = float(m @ self.truth)
        if abs(tv - value) > 1e-9:
            raise AssertionError(f"model mismatch {name}: true {tv} published {value}")
        self.eq.append((m, float(value), name))

    def geq(self, m: np.ndarray, value: float, name: str):
        """sum(m) >= value"""
        assert m @ self.truth >= value - 1e-9, f"bad bound {name}"
        self.ub.append((-m, -float(value), name))

    def leq(self, m: np.ndarray, value: float, name: str):
        assert m @ self.truth <= value + 1e-9, f"bad bound {name}"
        self.ub.append((m, float(value), name))

    def span(self, m: np.ndarray, integer: bool = False) -> tuple[float, float]:
        a = np.array([e[0] for e in self.eq]) if self.eq else None
        b = np.array([e[1] for e in self.eq]) if self.eq else None
        au = np.array([e[0] for e in self.ub]) if self.ub else None
        bu = np.array([e[1] for e in self.ub]) if self.ub else None
        kw = dict(A_eq=a, b_eq=b, A_ub=au, b_ub=bu, bounds=[(0, None)] * len(self.atoms),
                  method="highs")
        if integer:
            kw["integrality"] = np.ones(len(self.atoms))
        lo = linprog(m, **kw)
        hi = linprog(-m, **kw)
        assert lo.status == 0 and hi.status == 0, (lo.message, hi.message)
        return float(lo.fun), float(-hi.fun)

    def attack(self, integer: bool = True, only_small: int | None = None,
               withheld_nonzero: bool = True) -> list[str]:
        """withheld_nonzero: the attacker knows a withheld count is >= 1 (zeros are always
        shown and never used as complements)."""
        if withheld_nonzero:
            for name, m in self.withheld:
                if m @ self.truth >= 1 and name not in self.maybe_zero:
                    self.ub.append((-m, -1.0, "nonzero " + name))
        out = []
        for name, m in self.withheld:
            tv = float(m @ self.truth)
            lo, hi = self.span(m, integer)
            if hi - lo < 0.5:
                out.append(f"PINNED {name}: true={tv:g}")
            elif only_small and lo >= 1 - 1e-9 and hi <= only_small - 1 + 1e-9 and False:
                out.append(f"bounded {name}: [{lo:g},{hi:g}] true={tv:g}")
        return out
