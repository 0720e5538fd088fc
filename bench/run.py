"""Benchmarks at cohort scale: cohortctl (ingest -> cluster -> report) and peers.

Run from the repository root with the project's venv (``make bench`` / ``make bench-smoke``):

    .venv/bin/python bench/run.py --out docs/benchmarks.md            # full run
    .venv/bin/python bench/run.py --smoke --out out/bench-smoke.md    # < 3 min
    .venv/bin/python bench/run.py --only sim-n10000-g2000 --merge     # re-run one workload
    .venv/bin/python bench/run.py --render-only                       # JSON -> markdown

Every stage and every peer runs as its own subprocess under ``/usr/bin/time -v`` with a time
bound and a memory cap; a failure is recorded (TIMEOUT / FAILED / MEMCAP with the stderr
tail) and the run goes on.  Raw figures go to the JSON file next to the markdown (``--json``),
written after every measurement, so an interrupted run keeps what it measured.  Large data
live in ``--workdir`` (default /tmp/bench), never in the repository.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Measurement, not_run, run_measured  # noqa: E402
from render import render_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
COHORTCTL = str(Path(PY).with_name("cohortctl"))
TCGA = ROOT / "sample_data" / "breast_tcga"
SIZES_FULL = [(1000, 2000), (1000, 20000), (10000, 2000), (10000, 20000),
              (100000, 2000), (100000, 20000)]
SIZES_SMOKE = [(300, 500), (800, 500)]
PEERS = ("scanpy", "snf", "ccp")
CCP_MAX_K = 6
CCP_FEATURES = 2000


@dataclass
class Workload:
    name: str
    kind: str  # sim | tcga
    n: int
    genes: int

    @property
    def views(self) -> int:
        return 3 if self.kind == "tcga" else 2


def sim_workload(n: int, g: int) -> Workload:
    return Workload(f"sim-n{n}-g{g}", "sim", n, g)


TCGA_WL = Workload("tcga-breast", "tcga", 150, 200)


# --------------------------------------------------------------------------- machine
def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                if ln.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next((int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines()
                    if ln.startswith("MemTotal:")), 0)
    os_name = next((ln.split("=", 1)[1].strip('"') for ln in _read("/etc/os-release").splitlines()
                    if ln.startswith("PRETTY_NAME=")), platform.system())
    pkgs = ["cohortctl", "numpy", "scipy", "scikit-learn", "polars", "pyarrow", "umap-learn",
            "pynndescent", "hdbscan", "numba", "scanpy", "anndata", "leidenalg", "igraph"]
    blas: list[dict[str, Any]] = []
    try:
        import numpy  # noqa: F401
        from threadpoolctl import threadpool_info

        blas = [{k: d.get(k) for k in ("internal_api", "version", "architecture",
                                       "num_threads")} for d in threadpool_info()]
    except Exception:  # noqa: BLE001 - informative only
        pass
    git = {}
    try:
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip()
        git["dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                                           capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_kib / 2**20, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in pkgs},
        "r": r_versions(),
        "blas": blas,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                               "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
                if os.environ.get(k)},
        "git": git,
        "disk_free_gib_workdir": None,
    }


def r_versions() -> dict[str, Any]:
    if not shutil.which("Rscript"):
        return {"available": False, "error": "Rscript not found"}
    expr = ('suppressMessages(library(ConsensusClusterPlus)); cat(paste(R.version$major, '
            'R.version$minor, sep="."), as.character(packageVersion("ConsensusClusterPlus")))')
    p = subprocess.run(["Rscript", "-e", expr], capture_output=True, text=True)
    if p.returncode != 0:
        return {"available": False, "error": p.stderr.strip()[-500:]}
    r, ccp = p.stdout.split()
    return {"available": True, "R": r, "ConsensusClusterPlus": ccp}


def ensure_ccp() -> dict[str, Any]:
    """ConsensusClusterPlus from Debian's packages (root only); the error is recorded."""
    info = r_versions()
    if info.get("available"):
        return info
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        info["error"] = (info.get("error", "") + "; not root or no apt-get: cannot install "
                         "r-bioc-consensusclusterplus").strip("; ")
        return info
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update", "-qq"],
             ["apt-get", "install", "-y", "-qq", "r-bioc-consensusclusterplus"]]
    for cmd in steps:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            return {"available": False,
                    "error": f"{' '.join(cmd)} failed: {(p.stderr or p.stdout)[-800:]}"}
    return r_versions()


# --------------------------------------------------------------------------- data
def ensure_sim(wl: Workload, workdir: Path, log_dir: Path, timeout: float) -> tuple[Path, Any]:
    """Simulated cohort (reused when truth.json shows the same parameters)."""
    d = workdir / "data" / wl.name
    tj = d / "truth.json"
    if tj.exists():
        params = json.loads(tj.read_text())["parameters"]
        if params.get("patients") == wl.n and params.get("genes") == wl.genes:
            return d, {"status": "REUSED", "note": "existing simulated data reused"}
    code = ("import sys; from pathlib import Path; from cohortctl.simulate import "
            "simulate_cohort; simulate_cohort(Path(sys.argv[1]), patients=int(sys.argv[2]), "
            "genes=int(sys.argv[3]), mutation_genes=200, methylation_features=200, seed=0)")
    m, _ = run_measured([PY, "-c", code, str(d), str(wl.n), str(wl.genes)], log_dir=log_dir,
                        name="simulate", timeout=timeout)
    return d, m.to_dict()


def inputs(wl: Workload, data: Path) -> dict[str, Any]:
    """Ingest arguments, the expression-like matrix for single-matrix peers and the truth."""
    if wl.kind == "tcga":
        return {
            "ingest": ["--clinical", str(TCGA / "clinical.parquet"),
                       "--molecular", f"mrna={TCGA / 'mrna_train.parquet'}",
                       "--molecular", f"mirna={TCGA / 'mirna_train.parquet'}",
                       "--molecular", f"protein={TCGA / 'protein_train.parquet'}",
                       "--reference", "subtype"],
            "matrix": TCGA / "mrna_train.parquet",
            "matrix_modality": "mrna",
            "truth": (TCGA / "clinical.parquet", "subtype"),
        }
    return {
        "ingest": ["--clinical", str(data / "clinical.parquet"),
                   "--genetic", f"mutations={data / 'mutations.maf'}",
                   "--molecular", f"expression={data / 'expression.parquet'}",
                   "--maf-covers-clinical"],
        "matrix": data / "expression.parquet",
        "matrix_modality": "expression",
        "truth": (data / "truth.parquet", "subtype"),
    }


def ari(labels_path: Path, truth: tuple[Path, str]) -> dict[str, Any]:
    """ARI of a labelling against the truth; noise (-1) counts as one label of its own."""
    import numpy as np
    import polars as pl
    from sklearn.metrics import adjusted_rand_score

    lab = (pl.read_parquet(labels_path) if labels_path.suffix == ".parquet"
           else pl.read_csv(labels_path))
    ref = pl.read_parquet(truth[0]).select("patient_id", pl.col(truth[1]).alias("_truth"))
    j = lab.select("patient_id", pl.col("cluster").cast(pl.Int64)).join(
        ref.drop_nulls(), on="patient_id", how="inner")
    if j.height == 0:
        return {"ari": None, "note": "no patient in common with the truth"}
    c, t = j["cluster"].to_numpy(), j["_truth"].cast(pl.String).to_numpy()
    assigned = c >= 0
    out = {
        "ari": round(float(adjusted_rand_score(t, c)), 4),
        "ari_assigned_only": (round(float(adjusted_rand_score(t[assigned], c[assigned])), 4)
                              if assigned.sum() > 1 else None),
        "n_scored": int(j.height),
        "unassigned": int((~assigned).sum()),
        "unassigned_frac": round(float((~assigned).mean()), 4),
        "n_clusters": int(len(set(c[assigned].tolist()))),
        "cluster_sizes": sorted(np.bincount(c[assigned]).tolist(), reverse=True)[:20]
        if assigned.any() else [],
    }
    return out


def ccp_matrix(matrix: Path, out: Path) -> tuple[Path, Path, int, int]:
    """Top-variance genes (NaN -> gene median) as float32 row-major + ids, for Rscript."""
    import numpy as np
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(matrix)
    names = [c for c in pf.schema_arrow.names if c != "patient_id"]
    n = pf.metadata.num_rows
    X = np.empty((n, len(names)), dtype=np.float32)
    ids: list[str] = []
    row = 0
    for batch in pf.iter_batches(batch_size=2000):
        ids.extend(batch.column("patient_id").to_pylist())
        for j, name in enumerate(names):
            X[row:row + batch.num_rows, j] = batch.column(name).to_numpy(zero_copy_only=False)
        row += batch.num_rows
    var = np.nanvar(X, axis=0)
    keep = np.sort(np.argsort(-np.nan_to_num(var), kind="stable")[:CCP_FEATURES])
    X = X[:, keep]
    nan = np.isnan(X)
    if nan.any():
        X[nan] = np.take(np.nanmedian(X, axis=0), np.nonzero(nan)[1])
    out.mkdir(parents=True, exist_ok=True)
    mpath, ipath = out / "matrix.f32", out / "ids.txt"
    np.ascontiguousarray(X, dtype="<f4").tofile(mpath)
    ipath.write_text("\n".join(ids) + "\n")
    return mpath, ipath, n, X.shape[1]


# --------------------------------------------------------------------------- one workload
def source_digest() -> str:
    """Digest of cohortctl's sources now (the tree may change between measurements)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((ROOT / "cohortctl").rglob("*.py")):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def report_available() -> tuple[bool, str]:
    p = subprocess.run([PY, "-c", "import cohortctl.report.build"], capture_output=True,
                       text=True, cwd=ROOT)
    if p.returncode == 0:
        return True, ""
    return False, (p.stderr.strip().splitlines() or ["import failed"])[-1]


def run_workload(wl: Workload, args: argparse.Namespace, machine_budget_mib: float,
                 res: dict[str, Any]) -> None:
    """Measure one workload, filling ``res`` in place (saved after every measurement)."""
    wdir = args.workdir / "runs" / wl.name
    if wdir.exists():
        shutil.rmtree(wdir)
    log_dir = wdir / "logs"
    log_dir.mkdir(parents=True)
    res["started"] = datetime.now(UTC).isoformat(timespec="seconds")
    if wl.kind == "sim":
        data, gen = ensure_sim(wl, args.workdir, log_dir, args.timeout)
        if not (args.peers_only and res.get("generate")):
            res["generate"] = gen
        if gen.get("status") not in ("OK", "REUSED"):
            for s in ("ingest", "cluster", "report"):
                res["stages"][s] = not_run("SKIPPED", "data generation failed").to_dict()
            return
    else:
        data = TCGA
    inp = inputs(wl, data)
    store = wdir / "store.cohort"
    timeout = args.timeout
    cap = args.mem_cap_gib * 1024

    def stage(name: str, cmd: list[str]) -> Measurement:
        print(f"  {wl.name}: {name} ...", flush=True)
        digest = source_digest()
        m, out = run_measured(cmd, log_dir=log_dir, name=name, timeout=timeout,
                              mem_cap_mib=cap, cwd=ROOT)
        res["stages"][name] = m.to_dict()
        res["stages"][name]["cohortctl_source_digest"] = digest
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if lines:
            with contextlib.suppress(json.JSONDecodeError):
                res["stages"][name]["summary"] = json.loads(lines[-1])
        _progress(wl, name, m)
        args.save()
        return m

    if args.peers_only and res["stages"].get("ingest"):
        ingested = res["stages"]["ingest"]["status"] == "OK"
        if ingested and "snf" in args.peers:  # SNF reads the store: re-ingest, not recorded
            m, _ = run_measured([COHORTCTL, "ingest", "-o", str(store), "--force",
                                 *inp["ingest"]], log_dir=log_dir, name="ingest-for-peers",
                                timeout=timeout, mem_cap_mib=cap, cwd=ROOT)
            ingested = m.ok
        run_peers(wl, args, inp, store, wdir, log_dir, machine_budget_mib, ingested, res)
        return
    m_ing = stage("ingest", [COHORTCTL, "ingest", "-o", str(store), "--force", "--json",
                             *inp["ingest"]])
    if m_ing.ok:
        m_cl = stage("cluster", [COHORTCTL, "cluster", str(store), "--seed", "0",
                                 "--run", "bench", "--json"])
    else:
        m_cl = not_run("SKIPPED", "ingest did not succeed")
        res["stages"]["cluster"] = m_cl.to_dict()
    if m_cl.ok:
        res["cohortctl_ari"] = ari(store / "runs" / "bench" / "assignments.parquet", inp["truth"])
        avail, why = report_available()
        if avail:
            stage("report", [COHORTCTL, "report", str(store), "--run", "bench", "-o",
                             str(wdir / "report.html"), "--force"])
        else:
            res["stages"]["report"] = not_run(
                "MISSING", f"`cohortctl report` not available yet ({why})").to_dict()
    else:
        res["stages"]["report"] = not_run("SKIPPED", "cluster did not succeed").to_dict()
    args.save()
    if m_ing.ok:  # a cohortctl measurement: taken whether or not peers run now
        same_matrix(wl, args, inp, store, log_dir, res)
    run_peers(wl, args, inp, store, wdir, log_dir, machine_budget_mib, m_ing.ok, res)


def same_matrix(wl: Workload, args: argparse.Namespace, inp: dict[str, Any], store: Path,
                log_dir: Path, res: dict[str, Any]) -> None:
    """`cohortctl cluster` restricted to the one matrix the single-matrix peers read.

    The main run integrates every modality (and places patients who lack the expression
    table); scanpy and ConsensusClusterPlus see only the expression matrix. This run gives
    the like-for-like comparison: same patients, same matrix, same seed.
    """
    print(f"  {wl.name}: cluster on the peers' matrix ...", flush=True)
    modality = inp["matrix_modality"]
    digest = source_digest()
    m, _out = run_measured([COHORTCTL, "cluster", str(store), "--seed", "0", "--run",
                           "same-matrix", "--modalities", modality, "--json"],
                          log_dir=log_dir, name="cluster-same-matrix", timeout=args.timeout,
                          mem_cap_mib=args.mem_cap_gib * 1024, cwd=ROOT)
    entry = m.to_dict()
    entry["modality"] = modality
    entry["cohortctl_source_digest"] = digest
    if m.ok:
        entry["ari"] = ari(store / "runs" / "same-matrix" / "assignments.parquet", inp["truth"])
    res["same_matrix"] = entry
    _progress(wl, "cluster (peers' matrix)", m)
    args.save()


def run_peers(wl: Workload, args: argparse.Namespace, inp: dict[str, Any], store: Path,
              wdir: Path, log_dir: Path, machine_budget_mib: float, ingested: bool,
              res: dict[str, Any]) -> None:
    for peer in args.peers:
        print(f"  {wl.name}: peer {peer} ...", flush=True)
        out = wdir / f"peer-{peer}"
        out.mkdir()
        m, extra = run_peer(peer, wl, inp, store, out, log_dir, args, machine_budget_mib,
                            ingested)
        entry = m.to_dict()
        entry.update(extra)
        entry["measured_by_invocation"] = len(args.invocations)
        if m.ok:
            labels = out / ("labels.csv" if peer == "ccp" else "labels.parquet")
            entry["ari"] = ari(labels, inp["truth"])
        for fname in ("steps.json", "steps_partial.json"):
            if (out / fname).exists() and "detail" not in entry:
                with contextlib.suppress(json.JSONDecodeError):
                    entry["detail"] = json.loads((out / fname).read_text())
        res["peers"][peer] = entry
        _progress(wl, peer, m)
        args.save()
    if not args.keep_stores and store.exists():
        shutil.rmtree(store)
    res["finished"] = datetime.now(UTC).isoformat(timespec="seconds")


def run_peer(peer: str, wl: Workload, inp: dict[str, Any], store: Path, out: Path,
             log_dir: Path, args: argparse.Namespace, budget_mib: float, ingested: bool
             ) -> tuple[Measurement, dict[str, Any]]:
    cap = args.mem_cap_gib * 1024
    timeout = args.peer_timeout
    extra: dict[str, Any] = {"timeout_s": timeout}
    if peer == "scanpy":
        need = wl.n * wl.genes * 4 * 2 / 2**20  # float32 matrix + one full-size HVG temporary
        extra["estimated_mib"] = round(need)
        if need > cap:  # attempted up to the memory cap (killed there: MEMCAP)
            return not_run("DOES_NOT_FIT", f"~{need / 1024:.0f} GiB estimated > "
                           f"{cap / 1024:.0f} GiB memory cap"), extra
        cmd = [PY, str(BENCH / "peer_scanpy.py"), str(inp["matrix"]), str(out)]
    elif peer == "snf":
        from cohortctl.cluster.snf import snf_memory_bytes

        need = snf_memory_bytes(wl.n, wl.views, missing=wl.kind == "sim") / 2**20
        extra["estimated_mib"] = round(need)
        if need > budget_mib:
            return not_run("DOES_NOT_FIT", f"dense n x n SNF needs ~{need / 1024:.0f} GiB "
                           f"(> {budget_mib / 1024:.0f} GiB budget)"), extra
        if not ingested:
            return not_run("SKIPPED", "needs the cohortctl store (ingest failed)"), extra
        cmd = [PY, str(BENCH / "peer_snf.py"), str(store), str(out),
               "--max-gib", f"{budget_mib / 1024:.1f}"]
    elif peer == "ccp":
        if not args.r_info.get("available"):
            return not_run("UNAVAILABLE", f"R/ConsensusClusterPlus unavailable: "
                           f"{args.r_info.get('error', '')}"), extra
        # consensus matrices for k = 2..maxK, the count matrix, the distance matrix: 8 n^2 each
        need = 8.0 * wl.n**2 * (CCP_MAX_K + 2) / 2**20
        extra["estimated_mib"] = round(need)
        if need > budget_mib:
            return not_run("DOES_NOT_FIT", f"dense n x n consensus matrices need "
                           f"~{need / 1024:.0f} GiB (> {budget_mib / 1024:.0f} GiB)"), extra
        t = time.monotonic()
        mpath, ipath, n, p = ccp_matrix(inp["matrix"], out / "input")
        extra["prepare_s"] = round(time.monotonic() - t, 3)
        extra["features"] = p
        cmd = ["Rscript", str(BENCH / "peer_ccp.R"), str(mpath), str(ipath), str(n), str(p),
               str(out)]
    else:
        raise ValueError(peer)
    m, _ = run_measured(cmd, log_dir=log_dir, name=f"peer-{peer}", timeout=timeout,
                        mem_cap_mib=cap, cwd=out)
    if peer == "ccp":
        shutil.rmtree(out / "input", ignore_errors=True)
    return m, extra


def _progress(wl: Workload, what: str, m: Measurement) -> None:
    mem = m.peak_mib
    print(f"  {wl.name}: {what}: {m.status} wall={m.wall_s}s peak={mem and round(mem)}MiB"
          + (f" -- {m.note}" if m.note else ""), flush=True)


# --------------------------------------------------------------------------- driver
def warm_up(args: argparse.Namespace) -> None:
    """Fill numba's on-disk cache (first-ever invocation compiles umap/pynndescent kernels):
    what every later user invocation sees.  Not recorded."""
    d = args.workdir / "warmup"
    from cohortctl.simulate import simulate_cohort

    simulate_cohort(d / "data", patients=200, genes=200, mutation_genes=50,
                    methylation_features=50, seed=1)
    ing = inputs(sim_workload(200, 200), d / "data")["ingest"]
    subprocess.run([COHORTCTL, "-q", "ingest", "-o", str(d / "s"), "--force", *ing],
                   check=False, capture_output=True)
    subprocess.run([COHORTCTL, "-q", "cluster", str(d / "s"), "--bootstrap", "4"],
                   check=False, capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def _terminate(signum: int, _frame: Any) -> None:
    """SIGTERM -> SystemExit, so the measured process group is killed on the way out."""
    raise SystemExit(128 + signum)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        n, g = part.lower().split("x")
        out.append((int(n), int(g)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--json", type=Path, default=None,
                    help="raw figures (default: --out with .json)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--smoke", action="store_true", help="small sizes only (< 3 min)")
    ap.add_argument("--sizes", type=parse_sizes, default=None,
                    help="simulated sizes, e.g. 1000x2000,10000x2000 (default: the full grid)")
    ap.add_argument("--no-tcga", action="store_true", help="skip the TCGA breast workload")
    ap.add_argument("--only", default=None, help="comma-separated workload names to run")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="comma-separated peers (scanpy,snf,ccp) or 'none'")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="time bound per cohortctl stage, seconds (default 1800)")
    ap.add_argument("--peer-timeout", type=float, default=600.0,
                    help="time bound per peer run, seconds (default 600)")
    ap.add_argument("--mem-cap-gib", type=float, default=20.0,
                    help="kill a run whose process tree exceeds this (default 20 GiB)")
    ap.add_argument("--budget-gib", type=float, default=14.0,
                    help="estimated need above which a dense peer is 'does not fit'")
    ap.add_argument("--merge", action="store_true",
                    help="keep workloads of the existing JSON that are not re-run")
    ap.add_argument("--peers-only", action="store_true",
                    help="with --merge: keep the cohortctl figures of the JSON, run peers only")
    ap.add_argument("--keep-stores", action="store_true", help="keep the cohort stores")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="JSON -> markdown, no runs")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    args.json = args.json or args.out.with_suffix(".json")
    args.peers = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    bad = [p for p in args.peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peer(s): {', '.join(bad)}")

    if args.render_only:
        results = json.loads(args.json.read_text())
        args.out.write_text(render_markdown(results))
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
        print(f"wrote {args.out}")
        return 0

    sizes = args.sizes or (SIZES_SMOKE if args.smoke else SIZES_FULL)
    workloads = ([] if args.no_tcga else [TCGA_WL]) + [sim_workload(n, g) for n, g in sizes]
    if args.only:
        names = set(args.only.split(","))
        workloads = [w for w in workloads if w.name in names] + [
            sim_workload(*map(int, nm[5:].split("-g"))) for nm in sorted(names)
            if nm.startswith("sim-n") and nm not in {w.name for w in workloads}]
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.r_info = ensure_ccp() if "ccp" in args.peers else r_versions()

    results: dict[str, Any] = {"workloads": {}}
    if args.merge and args.json.exists():
        results = json.loads(args.json.read_text())
    results["machine"] = machine_info()
    results["machine"]["r"] = args.r_info
    results["machine"]["disk_free_gib_workdir"] = round(
        shutil.disk_usage(args.workdir).free / 2**30, 1)
    results["config"] = {
        "smoke": args.smoke, "timeout_s": args.timeout, "peer_timeout_s": args.peer_timeout,
        "mem_cap_gib": args.mem_cap_gib, "budget_gib": args.budget_gib, "peers": args.peers,
        "workdir": str(args.workdir), "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    results.setdefault("invocations", []).append(results["config"])
    args.invocations = results["invocations"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)

    current: dict[str, Any] = {}

    def save() -> None:
        results["workloads"].update(current)
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")

    args.save = save
    if not args.no_warmup:
        print("warm-up (numba cache) ...", flush=True)
        warm_up(args)
    budget = args.budget_gib * 1024
    for wl in workloads:
        print(f"{wl.name}", flush=True)
        t = time.monotonic()
        res: dict[str, Any] = {"name": wl.name, "kind": wl.kind, "n": wl.n, "genes": wl.genes,
                               "stages": {}, "peers": {}}
        prev = results["workloads"].get(wl.name)
        if args.peers_only and prev:
            res = prev
            res.pop("error", None)
        elif prev:  # peers not re-run now keep their earlier measurement
            for p, entry in prev.get("peers", {}).items():
                if p not in args.peers:
                    entry.setdefault("measured_by_invocation",
                                     prev.get("measured_by_invocation"))
                    res["peers"][p] = entry
        res["measured_by_invocation"] = len(results["invocations"])
        current[wl.name] = res
        try:
            run_workload(wl, args, budget, res)
        except Exception as exc:  # noqa: BLE001 - a harness bug must not lose other workloads
            res["error"] = f"harness error: {type(exc).__name__}: {exc}"
            print(f"  {wl.name}: {res['error']}", flush=True)
        res["harness_wall_s"] = round(time.monotonic() - t, 1)
        save()
    md = render_markdown(results)  # also stores the derived figures in results
    save()
    args.out.write_text(md)
    print(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

