"""Random whole-report scan (cluster x arm x survival x response), integer LP attacker.
Usage: python bench/disclosure_scan.py FIRST_SEED LAST_SEED [MIN_CELL]; prints, per cohort,
the withheld counts an attacker pins (a folded line's single group is its size by design).
Covers: shown unassigned group, folded small clusters, rare arms pooled in Table 1,
missing treatment/follow-up/response, response without treatment, --min-cell, strict."""
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disclosure_attack import LP, build, report, truth_frame  # noqa: E402


def cohort(seed):
    rng = np.random.default_rng(seed)
    G = int(rng.integers(2, 4))
    sizes = [int(rng.integers(12, 40)) for _ in range(G)]
    groups = [g for g, s in enumerate(sizes) for _ in range(s)]
    n = len(groups)
    cl = np.array(groups)
    labels = cl.copy()
    # unassigned: 0, small (folded) or >= min_cell (shown)
    n_un = int(rng.choice([0, 3, 5, 6, 8]))
    labels[rng.choice(n, n_un, replace=False)] = -1
    # maybe a small extra cluster label (folded) carved out of group 0
    if rng.random() < 0.4:
        idx = np.flatnonzero(labels == 0)[: int(rng.integers(2, 5))]
        labels[idx] = G
    arms = ["A", "B", "C", "D"][: int(rng.integers(2, 5))]
    p = rng.dirichlet(np.ones(len(arms)) * 2)
    arm = rng.choice(arms, n, p=p).astype(object)
    # rare arm overall (pooled in Table 1), small arm in one cluster
    if rng.random() < 0.5:
        arm[arm == arms[-1]] = arms[0]
        arm[rng.choice(n, int(rng.integers(1, 5)), replace=False)] = arms[-1]
    arm[rng.choice(n, int(rng.integers(0, 6)), replace=False)] = None
    time = (np.round(rng.exponential(600, n), 1) + 1).astype(float)
    time[rng.choice(n, int(rng.integers(0, 7)), replace=False)] = np.nan
    event = rng.integers(0, 2, n)
    resp = rng.choice(["CR", "PD"], n).astype(object)
    resp[rng.choice(n, int(rng.integers(0, 8)), replace=False)] = None
    return groups, labels.tolist(), {"arm": arm.tolist(), "best_response": resp.tolist(),
                                     "os_days": time, "os_event": event.tolist()}


def read(data, lp, arms_all, shown):
    for c in data["groups"]["clusters"]:
        lp.pub(lp.mask(k={c["cluster"]}), c["n"], f"size c{c['cluster']}", c["suppressed"])
    if data["groups"]["not_clustered_or_withheld"] is not None:
        folded = [c["cluster"] for c in data["groups"]["clusters"] if c["suppressed"]]
        lp.pub(lp.mask(k=set(folded)), data["groups"]["not_clustered_or_withheld"], "folded")
    lp.pub(lp.mask(k={-1}), data["groups"]["unassigned"], "groups.unassigned")
    lp.pub(lp.mask(k=lambda k: k >= 0), data["groups"]["n_assigned"], "groups.n_assigned")
    # The policy withholds zeros too in two places: the events/responders of a group whose
    # n is below min-cell (or withheld, so possibly below), and a Table 1 release column in
    # a cluster where fewer than min-cell patients have a value.
    min_cell = data["min_cell"]

    def big(n: int | None) -> bool:
        return n is not None and n >= min_cell

    sizes = {c["cluster"]: c["n"] for c in data["groups"]["clusters"]}
    for var in data.get("clinical", {}).get("variables", []):
        if var["variable"] != "arm":
            continue
        missing = {c["cluster"]: c["n"] for lv in var["levels"] if lv["is_missing"]
                   for c in lv["cells"]}
        named = {lv["level"] for lv in var["levels"]}
        for lev in var["levels"]:
            a = {None} if lev["is_missing"] else {lev["level"]}
            if lev["level"] == "other (rare levels)" or lev["level"].endswith(" or other"):
                a = {lev["level"].removesuffix(" or other")} | (set(arms_all) - named)
            for cell in lev["cells"]:
                k = cell["cluster"]
                thin = missing.get(k) is not None and sizes[k] - missing[k] < min_cell
                lp.pub(lp.mask(k={k}, a=a), cell["n"], f"T1 {lev['level']} c{k}",
                       cell["n_suppressed"], zero_shown=not thin)
    surv = data.get("survival", {})
    for c in surv.get("clusters", []):
        k = {c["cluster"]}
        lp.pub(lp.mask(k=k, s={"E", "C"}), c["n"], f"surv n c{c['cluster']}", c["n_suppressed"])
        lp.pub(lp.mask(k=k, s={"E"}), c["events"], f"surv ev c{c['cluster']}",
               c["events_suppressed"], zero_shown=big(c["n"]))
        lp.pub(lp.mask(k=k, s={"C"}), c["censored"], f"surv cens c{c['cluster']}",
               c["censored_suppressed"])
    if surv:
        ex = surv["excluded"]
        lp.pub(lp.mask(k=shown, s={"X"}), ex["n_excluded"], "surv excl",
               ex["n_excluded_suppressed"])
    bt = data.get("survival_by_treatment", {})
    for c in bt.get("clusters", []):
        for g in c["groups"]:
            m = dict(k={c["cluster"]}, a={g["treatment"]})
            lp.pub(lp.mask(**m, s={"E", "C"}), g["n"],
                   f"st n c{c['cluster']} {g['treatment']}", g["n_suppressed"])
            lp.pub(lp.mask(**m, s={"E"}), g["events"],
                   f"st ev c{c['cluster']} {g['treatment']}", g["events_suppressed"],
                   zero_shown=big(g["n"]))
    if bt:
        ex = bt["excluded"]
        lp.pub(lp.mask(k=shown, s={"X"}), ex["n_excluded"], "st excl",
               ex["n_excluded_suppressed"])
        lp.pub(lp.mask(k=shown, a={None}, s={"E", "C"}), ex["n_missing_treatment"], "st no trt",
               ex["n_missing_treatment_suppressed"])
    resp = data.get("response", {})
    for c in resp.get("cells", []):
        m = dict(k={c["cluster"]}, a={c["treatment"]})
        lp.pub(lp.mask(**m, r={"R", "N"}), c["n"],
               f"resp n c{c['cluster']} {c['treatment']}", c["n_suppressed"])
        lp.pub(lp.mask(**m, r={"R"}), c["responders"],
               f"resp r c{c['cluster']} {c['treatment']}", c["responders_suppressed"],
               zero_shown=big(c["n"]))
        if c.get("rate") is not None and c["n"] is None:
            print("!! rate shown with n withheld", c)
    if resp:
        ex = resp["excluded"]
        m = np.maximum(lp.mask(k=shown, r={None}), lp.mask(k=shown, a={None}))
        # A cluster with too few analysed patients is not broken down: all excluded.
        thin = {k for k in shown if not any(c["cluster"] == k for c in resp["cells"])}
        if thin:
            m = np.maximum(m, lp.mask(k=thin))
        lp.pub(m, ex["n_excluded"], "resp excl", ex["n_excluded_suppressed"])


def run(seed, min_cell=5, profile="standard"):
    groups, labels, clin = cohort(seed)
    tmp = Path(tempfile.gettempdir()) / "cohortctl-disclosure-scan" / f"s{seed}"
    store = build(tmp, groups, clin, seed=seed, labels=labels,
                  roles={"treatment": "arm", "response": "best_response", "time": "os_days",
                         "event": "os_event"})
    rep, data = report(store, min_cell=min_cell, profile=profile)
    df = truth_frame(store)
    pats = []
    for r in df.iter_rows(named=True):
        t = r["os_days"]
        s = "X" if t is None or not np.isfinite(t) else ("E" if r["os_event"] else "C")
        rr = r["best_response"]
        rc = None if rr is None else ("R" if rr == "CR" else "N")
        pats.append({"k": r["cluster"], "a": r["arm"], "s": s, "r": rc})
    ks = sorted({p["k"] for p in pats})
    arms_all = sorted({p["a"] for p in pats if p["a"] is not None})
    lp = LP(pats, {"k": ks, "a": arms_all + [None], "s": ["E", "C", "X"], "r": ["R", "N", None]})
    shown = {c["cluster"] for c in data["groups"]["clusters"] if not c["suppressed"]}
    read(data, lp, arms_all, shown)
    res = lp.attack(integer=True)
    res = [r for r in res if not r.endswith("true=0")]
    sizes = [labels.count(k) for k in ks]
    print(f"seed {seed} sizes {sizes} ks {ks} min_cell {min_cell}: "
          f"withheld {len(lp.withheld)}; pinned: {res}", flush=True)
    return res


if __name__ == "__main__":
    a, b = int(sys.argv[1]), int(sys.argv[2])
    mc = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    for s in range(a, b):
        try:
            run(s, mc)
        except Exception as e:
            print(f"seed {s}: ERROR {type(e).__name__}: {e}", flush=True)
