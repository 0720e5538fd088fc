"""Derived figures (growth exponents, bars) and the markdown report of bench/run.py."""

from __future__ import annotations

import math
from typing import Any

STAGES = ("ingest", "cluster", "report")
PEER_NAMES = {"scanpy": "scanpy (PCA-kNN-UMAP-Leiden)", "snf": "SNF + spectral",
              "ccp": "ConsensusClusterPlus (R)"}
BAR_N, BAR_G = 100000, 20000
BAR_WALL_S, BAR_MEM_GIB, BAR_ARI = 600.0, 8.0, 0.9


def _peak(m: dict[str, Any]) -> float | None:
    vals = [m.get("max_rss_mib"), m.get("tree_pss_peak_mib")]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def _cpu(m: dict[str, Any] | None) -> float | None:
    """CPU seconds: the larger of /usr/bin/time's user+sys and the sampled process-tree sum
    (the former misses workers that were never waited for)."""
    if not m or m.get("user_s") is None:
        return None
    return max(m["user_s"] + (m.get("sys_s") or 0.0), m.get("tree_cpu_s") or 0.0)


def _ok(m: dict[str, Any] | None) -> bool:
    return bool(m) and m.get("status") == "OK"


def _sims(results: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((w for w in results["workloads"].values() if w.get("kind") == "sim"),
                  key=lambda w: (w["genes"], w["n"]))


def nlogn_slope(n1: int, n2: int) -> float:
    """log-log slope of n log n between n1 and n2 (the 'no worse than n log n' reference)."""
    return math.log((n2 * math.log(n2)) / (n1 * math.log(n1))) / math.log(n2 / n1)


def growth(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Log-log slopes of wall time and peak memory in n, per stage, between adjacent sizes
    with the same number of genes (both runs OK)."""
    rows = []
    by_g: dict[int, list[dict[str, Any]]] = {}
    for w in _sims(results):
        by_g.setdefault(w["genes"], []).append(w)
    for g, ws in sorted(by_g.items()):
        for a, b in zip(ws, ws[1:], strict=False):
            for stage in (*STAGES, "pipeline"):
                ma, mb = _stage_or_total(a, stage), _stage_or_total(b, stage)
                if not (ma and mb):
                    continue
                r = math.log(b["n"] / a["n"])
                rows.append({
                    "stage": stage, "genes": g, "n_from": a["n"], "n_to": b["n"],
                    "time_from_s": ma["wall_s"], "time_to_s": mb["wall_s"],
                    "time_slope": round(math.log(mb["wall_s"] / ma["wall_s"]) / r, 3),
                    "mem_slope": round(math.log(mb["peak"] / ma["peak"]) / r, 3)
                    if ma["peak"] and mb["peak"] else None,
                    "cpu_slope": round(math.log(mb["cpu"] / ma["cpu"]) / r, 3)
                    if ma["cpu"] and mb["cpu"] else None,
                    "nlogn_slope": round(nlogn_slope(a["n"], b["n"]), 3),
                })
    return rows


def _stage_or_total(w: dict[str, Any], stage: str) -> dict[str, float] | None:
    if stage != "pipeline":
        m = w["stages"].get(stage)
        if not _ok(m):
            return None
        return {"wall_s": m["wall_s"], "peak": _peak(m), "cpu": _cpu(m)}
    ms = [w["stages"].get(s) for s in ("ingest", "cluster")]
    if not all(_ok(m) for m in ms):
        return None
    cpus = [_cpu(m) for m in ms]
    return {"wall_s": sum(m["wall_s"] for m in ms), "peak": max(_peak(m) or 0 for m in ms),
            "cpu": sum(cpus) if all(c is not None for c in cpus) else None}


def pipeline(w: dict[str, Any]) -> dict[str, Any]:
    """Total wall time, peak memory and dominating stage over the stages that ran OK."""
    ok = {s: w["stages"][s] for s in STAGES if _ok(w["stages"].get(s))}
    total = sum(m["wall_s"] for m in ok.values())
    peak = max((_peak(m) or 0 for m in ok.values()), default=None)
    dominant = max(ok, key=lambda s: ok[s]["wall_s"]) if ok else None
    complete = len(ok) == len(STAGES)
    return {"total_s": round(total, 1), "peak_mib": peak, "dominant": dominant,
            "complete": complete, "ok_stages": list(ok)}


def bars(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    big = results["workloads"].get(f"sim-n{BAR_N}-g{BAR_G}")
    target = (f"{BAR_N:,} x {BAR_G:,} + mutations + clinical: full pipeline < "
              f"{BAR_WALL_S / 60:.0f} min, peak < {BAR_MEM_GIB:.0f} GiB, ARI >= {BAR_ARI}")
    if not big:
        out.append({"bar": target, "measured": "not run", "verdict": "NOT MEASURED"})
    else:
        p = pipeline(big)
        ari = (big.get("cohortctl_ari") or {}).get("ari")
        states = ", ".join(f"{s} {big['stages'].get(s, {}).get('status', '-')}"
                           for s in STAGES)
        meas = (f"{states}; OK stages total {p['total_s']:.0f} s, peak "
                f"{(p['peak_mib'] or 0) / 1024:.1f} GiB, ARI {ari if ari is not None else '-'}")
        failed = any(big["stages"].get(s, {}).get("status") in ("FAILED", "TIMEOUT", "MEMCAP")
                     for s in STAGES)
        over = (p["total_s"] > BAR_WALL_S or (p["peak_mib"] or 0) > BAR_MEM_GIB * 1024
                or (ari is not None and ari < BAR_ARI))
        if failed or over:
            verdict = "FAIL"
        elif not p["complete"]:
            verdict = "INCOMPLETE (a stage is missing)"
        else:
            verdict = "PASS"
        out.append({"bar": target, "measured": meas, "verdict": verdict})
    for g in sorted({w["genes"] for w in _sims(results) if w["n"] == 10000}):
        w = results["workloads"].get(f"sim-n10000-g{g}")
        target = f"10,000 x {g:,}: cohortctl cluster at least as fast as scanpy, ARI >= scanpy's"
        cl, sc = w["stages"].get("cluster"), w["peers"].get("scanpy")
        if not (_ok(cl) and _ok(sc)):
            out.append({"bar": target, "verdict": "NOT MEASURED", "measured":
                        f"cluster {cl and cl.get('status')}, scanpy {sc and sc.get('status')}"})
            continue
        same = w.get("same_matrix")
        full_ari = (w.get("cohortctl_ari") or {}).get("ari")
        if _ok(same):  # like-for-like: cohortctl on the very matrix scanpy reads
            cl = same
            a1 = (same.get("ari") or {}).get("ari")
            what = f"cohortctl cluster --modalities {same.get('modality')}"
            extra = f"; all modalities: {w['stages']['cluster']['wall_s']:.1f} s, ARI {full_ari}"
        else:
            a1, what, extra = full_ari, "cohortctl cluster (all modalities)", ""
        a2 = (sc.get("ari") or {}).get("ari")
        fast = cl["wall_s"] <= sc["wall_s"]
        good = a1 is not None and a2 is not None and a1 >= a2
        c1, c2 = _cpu(cl), _cpu(sc)
        out.append({"bar": target, "verdict": "PASS" if fast and good else "FAIL",
                    "measured": f"{what} {cl['wall_s']:.1f} s wall / {_f(c1)} s "
                                f"CPU, ARI {a1}; scanpy {sc['wall_s']:.1f} s wall / {_f(c2)} s "
                                f"CPU, ARI {a2} (wall ratio {cl['wall_s'] / sc['wall_s']:.2f}x; "
                                f"other load {_f(cl.get('other_load_cores'), 2)} / "
                                f"{_f(sc.get('other_load_cores'), 2)} cores){extra}"})
    big_rows = [r for r in rows if r["n_from"] >= 10000 and r["stage"] in (*STAGES, "pipeline")]
    use = big_rows or [r for r in rows if r["stage"] in (*STAGES, "pipeline")]
    if use:
        worst = max(use, key=lambda r: r["time_slope"] - r["nlogn_slope"])
        worst_m = max((r for r in use if r["mem_slope"] is not None),
                      key=lambda r: r["mem_slope"] - r["nlogn_slope"], default=None)
        ok = worst["time_slope"] <= worst["nlogn_slope"] + 0.15 and (
            worst_m is None or worst_m["mem_slope"] <= worst_m["nlogn_slope"] + 0.15)
        meas = (f"worst time slope {worst['time_slope']} ({worst['stage']}, genes "
                f"{worst['genes']}, n {worst['n_from']}->{worst['n_to']}; n log n = "
                f"{worst['nlogn_slope']})")
        if worst_m:
            meas += (f"; worst memory slope {worst_m['mem_slope']} ({worst_m['stage']}, "
                     f"n {worst_m['n_from']}->{worst_m['n_to']})")
        note = "" if big_rows else " (only sizes below 10,000 measured: startup costs flatten)"
        out.append({"bar": "cost grows no worse than ~n log n (slope <= n log n slope + 0.15)",
                    "measured": meas + note, "verdict": "PASS" if ok else "FAIL"})
    else:
        out.append({"bar": "cost grows no worse than ~n log n", "measured":
                    "fewer than two OK sizes with equal genes", "verdict": "NOT MEASURED"})
    return out


# --------------------------------------------------------------------------- markdown
def _f(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _cell(m: dict[str, Any] | None, what: str = "wall") -> str:
    if not m:
        return "-"
    if m.get("status") != "OK":
        st = m.get("status", "?")
        if st == "TIMEOUT" and m.get("wall_s"):
            return f"TIMEOUT (>{m['wall_s']:.0f} s)"
        return st
    if what == "wall":
        return _f(m.get("wall_s"))
    return _f(_peak(m), 0)


def _sizes(a: dict[str, Any] | None) -> str:
    if not a or a.get("n_clusters") is None:
        return "-"
    sz = a.get("cluster_sizes") or []
    shown = ", ".join(str(x) for x in sz[:6]) + (", ..." if len(sz) > 6 else "")
    return f"{a['n_clusters']}" + (f" ({shown})" if sz else "")


def _ari(a: dict[str, Any] | None) -> str:
    return "-" if not a or a.get("ari") is None else f"{a['ari']:.3f}"


def _tool_row(workload: str, tool: str, m: dict[str, Any] | None,
              cluster: dict[str, Any] | None, note: str = "") -> str:
    """One row of the peers table; time ratio against the workload's `cohortctl cluster`."""
    ar = (m or {}).get("ari") or {}
    ratio = f"{m['wall_s'] / cluster['wall_s']:.2f}" if _ok(m) and _ok(cluster) else "-"
    return (f"| {workload} | {tool} | {(m or {}).get('status', '-')} | {_cell(m)} | "
            f"{_f(_cpu(m))} | {_cell(m, 'mem')} | {ratio} | {_ari(ar)} | "
            f"{_f(ar.get('ari_assigned_only'), 3)} | {_sizes(ar)} | "
            f"{_f((m or {}).get('other_load_cores'), 2)} | {note} |")


def render_markdown(results: dict[str, Any]) -> str:
    rows = growth(results)
    bar_rows = bars(results, rows)
    results["derived"] = {"growth": rows, "bars": bar_rows}
    m = results.get("machine", {})
    cfg = results.get("config", {})
    L: list[str] = []
    a = L.append
    a("# Benchmarks")
    a("")
    a("Generated by `bench/run.py` (`make bench`; raw figures in the JSON file next to this "
      "one). Every number below was measured on the machine described at the end; nothing "
      "is extrapolated. Rerun: see [bench/README.md](../bench/README.md).")
    a("")
    invs = results.get("invocations") or [cfg]
    a("Invocations that produced these figures (later ones re-measured or added the workloads "
      "they name; `measured_by_invocation` in the JSON says which one measured what):")
    a("")
    for i, c in enumerate(invs, 1):
        a(f"{i}. {c.get('generated', '?')}: `{c.get('command', '?')}` -- time bound "
          f"{_f(c.get('timeout_s'), 0)} s per cohortctl stage, {_f(c.get('peer_timeout_s'), 0)} s "
          f"per peer, memory cap {_f(c.get('mem_cap_gib'), 0)} GiB per run")
    a("")
    a("## Bars")
    a("")
    a("| Bar | Measured | Verdict |")
    a("| --- | --- | --- |")
    for b in bar_rows:
        a(f"| {b['bar']} | {b['measured']} | **{b['verdict']}** |")
    a("")
    a("## cohortctl: pipeline per workload")
    a("")
    a("Wall time in seconds; peak memory in MiB = the larger of `/usr/bin/time -v`'s maximum "
      "RSS and the sampled PSS of the whole process tree (see notes). ARI against the planted "
      "truth (simulated) or the `subtype` reference (TCGA), computed from "
      "`runs/<run>/assignments.parquet`; unassigned patients (cluster -1) count as one label of "
      "their own. 'ARI assigned' leaves them out.")
    a("")
    a("| Workload | n | genes | ingest s | cluster s | report s | total s | peak MiB "
      "(ingest / cluster / report) | ARI | ARI assigned | unassigned | clusters (sizes) | "
      "dominant |")
    a("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    ws = sorted(results["workloads"].values(),
                key=lambda w: (w.get("kind") != "tcga", w["genes"], w["n"]))
    for w in ws:
        st = w["stages"]
        p = pipeline(w)
        ar = w.get("cohortctl_ari") or {}
        peaks = " / ".join(_cell(st.get(s), "mem") for s in STAGES)
        total = _f(p["total_s"]) + ("" if p["complete"] else "*")
        un = "-" if ar.get("unassigned") is None else f"{ar['unassigned_frac']:.1%}"
        a(f"| {w['name']} | {w['n']:,} | {w['genes']:,} | {_cell(st.get('ingest'))} | "
          f"{_cell(st.get('cluster'))} | {_cell(st.get('report'))} | {total} | {peaks} | "
          f"{_ari(ar)} | {_f(ar.get('ari_assigned_only'), 3)} | "
          f"{un} | "
          f"{_sizes(ar)} | {p['dominant'] or '-'} |")
    a("")
    a("\\* total over the stages that completed (a stage failed, timed out or is missing).")
    a("")
    a("### Per stage, both memory figures")
    a("")
    a("CPU s = the larger of `/usr/bin/time`'s user+sys and the sampled CPU time of every "
      "process of the tree (the former misses worker processes that are never waited for, "
      "e.g. a reusable loky pool at `os._exit`; runs measured before that sampling existed "
      "may under-count CPU and so over-state 'other load').")
    a("")
    a("'other load' = mean number of cores busy with processes outside the measured run "
      "(from /proc/stat): above ~0.3 the wall time was inflated by other work on the machine. "
      "'code' = digest of `cohortctl/**/*.py` when the stage started ('-': not recorded): "
      "rows with different digests measured different versions of cohortctl.")
    a("")
    a("| Workload | stage | status | wall s | CPU s (user+sys) | max RSS MiB (/usr/bin/time) "
      "| tree PSS peak MiB | tree RSS peak MiB | other load | code |")
    a("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for w in ws:
        gen = w.get("generate")
        if gen and gen.get("status") == "OK":
            a(f"| {w['name']} | (simulate) | OK | {_f(gen.get('wall_s'))} | "
              f"{_f((gen.get('user_s') or 0) + (gen.get('sys_s') or 0))} | "
              f"{_f(gen.get('max_rss_mib'), 0)} | {_f(gen.get('tree_pss_peak_mib'), 0)} | "
              f"{_f(gen.get('tree_rss_peak_mib'), 0)} | {_f(gen.get('other_load_cores'), 2)} | |")
        for s in STAGES:
            mm = w["stages"].get(s)
            if not mm:
                continue
            cpu = _cpu(mm)
            a(f"| {w['name']} | {s} | {mm['status']} | {_f(mm.get('wall_s'))} | {_f(cpu)} | "
              f"{_f(mm.get('max_rss_mib'), 0)} | {_f(mm.get('tree_pss_peak_mib'), 0)} | "
              f"{_f(mm.get('tree_rss_peak_mib'), 0)} | {_f(mm.get('other_load_cores'), 2)} | "
              f"{mm.get('cohortctl_source_digest', '-')} |")
    a("")
    a("## Peers on the same matrices")
    a("")
    a("Time ratio = peer wall time / `cohortctl cluster` wall time on the same workload "
      "(> 1: cohortctl is faster). Each peer runs as its own subprocess, wall time includes "
      "reading its input and starting Python/R. The main `cohortctl cluster` run uses every "
      "modality and places patients who lack the expression table; the single-matrix peers "
      "(scanpy, ConsensusClusterPlus) read the expression matrix only, so the row "
      "`cohortctl cluster --modalities ...` clusters exactly that matrix (same patients, same "
      "seed) and is the like-for-like comparison used for the 10,000-patient bar.")
    a("")
    a("| Workload | tool | status | wall s | CPU s | peak MiB | time ratio | ARI | "
      "ARI assigned | clusters (sizes) | other load | note |")
    a("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for w in ws:
        cl = w["stages"].get("cluster")
        a(_tool_row(w["name"], "cohortctl cluster",
                    cl and {**cl, "ari": w.get("cohortctl_ari")}, cl))
        same = w.get("same_matrix")
        if same:
            a(_tool_row(w["name"], f"cohortctl cluster --modalities {same.get('modality')}",
                        same, cl, "the peers' matrix only"))
        for peer in PEER_NAMES:
            if peer not in w.get("peers", {}):
                a(f"| {w['name']} | {PEER_NAMES[peer]} | NOT RUN | - | - | - | - | - | - | - | "
                  "- | not requested in the invocations that measured this workload |")
        for peer, pm in w.get("peers", {}).items():
            note = pm.get("note", "")
            if peer == "ccp" and pm.get("features"):
                note = (note + f" top {pm['features']} genes").strip()
            a(_tool_row(w["name"], PEER_NAMES.get(peer, peer), pm, cl, note))
    a("")
    a("## Growth in n (log-log slopes between adjacent sizes, same genes)")
    a("")
    a("A slope of 1 is linear; the n log n column is the slope n log n itself has over the "
      "same interval. Small-n slopes are flattened by fixed start-up costs (imports, numba "
      "cache loading: ~2-4 s per process).")
    a("")
    a("| stage | genes | n | wall s | wall-time slope | CPU-time slope | memory slope | "
      "n log n slope |")
    a("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        a(f"| {r['stage']} | {r['genes']:,} | {r['n_from']:,} -> {r['n_to']:,} | "
          f"{_f(r['time_from_s'])} -> {_f(r['time_to_s'])} | {r['time_slope']:.2f} | "
          f"{_f(r.get('cpu_slope'), 2)} | {_f(r['mem_slope'], 2)} | {r['nlogn_slope']:.2f} |")
    if not rows:
        a("| (fewer than two completed sizes with equal genes) | | | | | | | |")
    a("")
    fails = []
    for w in ws:
        for label, mm in [*((f"cohortctl {s}", w["stages"].get(s)) for s in STAGES),
                          *((f"peer {p}", pm) for p, pm in w.get("peers", {}).items())]:
            if mm and mm.get("status") not in ("OK", None):
                fails.append((w["name"], label, mm))
        if w.get("error"):
            fails.append((w["name"], "harness", {"status": "ERROR", "note": w["error"]}))
    a("## Not completed")
    a("")
    if not fails:
        a("Everything completed.")
    for name, label, mm in fails:
        a(f"- **{name} / {label}: {mm['status']}**" + (f" -- {mm['note']}" if mm.get("note")
                                                       else ""))
        if mm.get("stderr_tail"):
            a("")
            a("  ```text")
            for ln in mm["stderr_tail"].splitlines()[-8:]:
                a("  " + ln[:200])
            a("  ```")
    a("")
    a("## Method")
    a("")
    a("- **Simulated workloads**: `cohortctl.simulate.simulate_cohort(patients=n, genes=g, "
      "mutation_genes=200, methylation_features=200, seed=0)`: 4 planted subtypes, 10% of "
      "patients lack expression (they are clustered from mutations and placed by cohortctl's "
      "block imputation), expression + MAF + clinical ingested (`--maf-covers-clinical`); "
      "the methylation table the simulator also writes is not ingested. Truth: "
      "`truth.parquet`.")
    a("- **TCGA breast**: `sample_data/breast_tcga` training patients (150; mRNA, miRNA, "
      "protein) with the 220-patient clinical table, `--reference subtype`; ARI against "
      "`subtype` on the 150 clustered patients.")
    a("- **cohortctl**: `cohortctl ingest ... -o STORE`, `cohortctl cluster STORE --seed 0` "
      "(all defaults, i.e. `--method auto`), `cohortctl report STORE -o report.html`; "
      "each a separate process. A warm-up run on 200 patients fills numba's on-disk cache "
      "first (as after any user's first invocation).")
    a("- **Memory**: `/usr/bin/time -v` reports `ru_maxrss`, the peak of the *largest single "
      "process*; `cohortctl cluster` forks bootstrap workers, so the harness also samples the "
      "summed PSS (shared copy-on-write pages counted once) and RSS of the process tree every "
      "0.25 s. 'peak MiB' is the larger of the max RSS and the tree PSS.")
    a("- **scanpy**: expression matrix (TCGA: mRNA), gene-median fill of missing values (the "
      "data are already log-scale, so no `normalize_total`/`log1p`), "
      "`highly_variable_genes(n_top_genes=2000)` when there are more genes, `scale"
      "(max_value=10)`, `pca` (50 comps), `neighbors` (15), `umap`, `leiden(resolution=1.0, "
      "flavor='igraph', n_iterations=2)`: scanpy's defaults and recommended Leiden flavour; "
      "the resolution is scanpy's default 1.0, not tuned to the truth. Patients without "
      "expression are not in its input; it uses no mutations.")
    a("- **SNF**: cohortctl's `snf_from_blocks` (K=20, mu=0.5, t=20) on the blocks "
      "`cohortctl cluster` builds (`build_blocks`: filtering, imputation, scaling, per-block "
      "PCA), number of clusters by SNFtool's eigen-gap (2..8), `spectral_labels`. Dense n x n: "
      "runs only when `snf_memory_bytes` is under the budget; otherwise 'DOES_NOT_FIT'.")
    a("- **ConsensusClusterPlus**: Debian's `r-bioc-consensusclusterplus`, vignette settings "
      "(hc, Pearson, reps=50, pItem=0.8, maxK=6), on the 2000 most variable expression genes "
      "(gene-median fill, median-centred), K with the lowest PAC; 'DOES_NOT_FIT' when "
      "(maxK+2) dense n x n double matrices exceed the budget.")
    a("")
    a("## Machine")
    a("")
    a(f"- CPU: {m.get('cpu_model')} -- {m.get('cores')} cores ({m.get('cores_usable')} usable)")
    a(f"- RAM: {m.get('ram_gib')} GiB; OS: {m.get('os')} (kernel {m.get('kernel')})")
    a(f"- Python {m.get('python')}; " + ", ".join(
        f"{k} {v}" for k, v in (m.get("packages") or {}).items() if v))
    r = m.get("r") or {}
    a("- R: " + (f"{r.get('R')}, ConsensusClusterPlus {r.get('ConsensusClusterPlus')}"
                 if r.get("available") else f"unavailable ({r.get('error', '')[:200]})"))
    if m.get("blas"):
        a("- BLAS/OpenMP: " + "; ".join(
            f"{b.get('internal_api')} {b.get('version') or ''} {b.get('architecture') or ''} "
            f"({b.get('num_threads')} threads)".replace("  ", " ") for b in m["blas"]))
    if m.get("env"):
        a("- Environment: " + ", ".join(f"{k}={v}" for k, v in m["env"].items()))
    g = m.get("git") or {}
    if g:
        a(f"- cohortctl at commit {g.get('commit')}"
          + (" with uncommitted changes" if g.get("dirty") else ""))
    a("")
    return "\n".join(L)
