"""Fault injection: SIGKILL and Ctrl-C at random moments, concurrent writers, full or
read-only disks. Every check is on the real CLI in separate processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cohortctl.store import Store, verify_run

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "breast_tcga"
INPUTS = [SAMPLE / "mrna_train.parquet", SAMPLE / "mirna_train.parquet",
          SAMPLE / "clinical.parquet"]
INGEST_ARGS = [f"--molecular=mrna={INPUTS[0]}", f"--molecular=mirna={INPUTS[1]}",
               f"--clinical={INPUTS[2]}"]
FAST_CLUSTER = ["--method", "kmeans", "--k", "3", "--bootstrap", "0"]
TRIALS = 30

# Loaded through PYTHONPATH before cohortctl: pauses a writer once its temporary is
# complete (just before it is published) until the file named by COHORTCTL_TEST_GO
# exists, after announcing itself with COHORTCTL_TEST_READY.<pid>.
PAUSE_HOOK = """
import os, time
import cohortctl.store as _store
_orig = _store.fsync_tree
def _paused(root):
    _orig(root)
    ready = os.environ.get("COHORTCTL_TEST_READY")
    if ready:
        open(f"{ready}.{os.getpid()}", "w").close()
        go = os.environ.get("COHORTCTL_TEST_GO", "")
        end = time.time() + 60
        while time.time() < end and not (go and os.path.exists(go)):
            time.sleep(0.01)
_store.fsync_tree = _paused
"""


def cli() -> list[str]:
    """The installed console script (or the same entry point through this interpreter)."""
    exe = Path(sys.executable).parent / "cohortctl"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from cohortctl.cli import run; run()"]


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli(), "-q", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hidden_temps(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and ".tmp" in p.name)


def check_store(root: Path, earlier: dict[str, str] | None = None) -> list[str]:
    """Open + verify every table and run; earlier runs (name -> assignments SHA-256) must
    be present and unchanged; every visible run directory must be complete."""
    st = Store.open(root)
    for entry in st.tables:
        st.verify(entry)
    names = st.run_names()
    if st.runs_dir.is_dir():
        for p in st.runs_dir.iterdir():
            if not p.name.startswith("."):
                assert p.name in names, f"{p}: visible run without a valid run.json"
    for name in names:
        meta = verify_run(st.runs_dir / name)
        assert meta["name"] == name
        assert pl.read_parquet(st.runs_dir / name / "assignments.parquet").height > 0
    for name, digest in (earlier or {}).items():
        assert name in names, f"earlier run {name} lost"
        assert sha(st.runs_dir / name / "assignments.parquet") == digest
    if names:
        latest = st.resolve_run("latest")
        assert latest.name == names[-1] and not latest.name.startswith(".")
    return names


def run_digests(root: Path) -> dict[str, str]:
    st = Store.open(root)
    return {n: sha(st.runs_dir / n / "assignments.parquet") for n in st.run_names()}


def pause_env(tmp: Path, go: bool = True) -> dict[str, str]:
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(PAUSE_HOOK)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COHORTCTL_TEST_READY"] = str(tmp / "ready")
    if go:
        env["COHORTCTL_TEST_GO"] = str(tmp / "go")
    return env


def wait_ready(tmp: Path, procs: list[subprocess.Popen[str]], timeout: float = 120) -> None:
    end = time.time() + timeout
    want = {f"ready.{p.pid}" for p in procs}
    while not want <= {p.name for p in tmp.iterdir()}:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"exited early ({p.returncode}): {p.communicate()[1]}")
        assert time.time() < end, "writers never reached the publication point"
        time.sleep(0.02)


def _temps(watch: Path) -> set[str]:
    return {n for n in os.listdir(watch) if n.startswith(".") and "tmp" in n}


def kill_after(cmd: list[str], delay: float, watch: Path | None = None) -> int | None:
    """Start ``cmd``; SIGKILL it ``delay`` s after its start or, with ``watch``, after a new
    hidden temporary appears there (the writing phase). Its exit status if it finished
    first."""
    before = _temps(watch) if watch is not None and watch.is_dir() else set()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    start = time.monotonic() if watch is None else None
    while True:
        if p.poll() is not None:
            return p.returncode
        now = time.monotonic()
        if start is None and watch is not None and watch.is_dir() and _temps(watch) - before:
            start = now
        if start is not None and now - start >= delay:
            break
        time.sleep(0.0005)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)  # forked bootstrap workers, if any survive
    return None


def calibrate(cmd: list[str], watch: Path) -> tuple[float, float]:
    """Run ``cmd`` once: (seconds until a hidden temporary appears in ``watch``, total)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while p.poll() is None:
        if first is None and watch.is_dir() and any(n.startswith(".") and "tmp" in n
                                                    for n in os.listdir(watch)):
            first = time.monotonic() - t0
        time.sleep(0.001)
    total = time.monotonic() - t0
    assert p.returncode == 0, p.communicate()[1]
    return (first if first is not None else 0.85 * total), total


def delays(rng: random.Random, window: tuple[float, float], n: int) -> list[float]:
    """Even trials: uniform over the whole measured run (from the start). Odd trials: up to
    the measured writing time after the temporary appears (the most dangerous phase)."""
    write, total = window
    return [rng.uniform(0, 1.05 * total) if i % 2 == 0
            else rng.uniform(0, max(0.01, 1.2 * (total - write))) for i in range(n)]


def summary(name: str, outcomes: Counter[str], record: Callable[[str, Any], None],
            window: tuple[float, float]) -> None:
    n = sum(outcomes.values())
    line = (f"[faults] {name}: {n} SIGKILL trials (run {window[1]:.2f} s, writing from "
            f"{window[0]:.2f} s): " +
            ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + "; lost: nothing")
    print("\n" + line)
    record(f"{name}_trials", n)
    record(f"{name}_outcomes", dict(outcomes))
    assert n >= TRIALS


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small breast cohort (mRNA + miRNA + clinical) with one fast run."""
    root = tmp_path_factory.mktemp("base") / "cohort"
    p = run_cli("ingest", "-o", str(root), *INGEST_ARGS)
    assert p.returncode == 0, p.stderr
    p = run_cli("cluster", str(root), *FAST_CLUSTER)
    assert p.returncode == 0, p.stderr
    return root


@pytest.fixture()
def store(base_store: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cohort"
    shutil.copytree(base_store, dst)
    return dst


# -- SIGKILL ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_ingest(base_store: Path, tmp_path: Path,
                        record_property: Callable[[str, Any], None]) -> None:
    """Killed ingest: a fresh path holds nothing or a complete store; --force over an
    existing store leaves the old store (runs intact) or the complete new one, never none."""
    rng = random.Random(20240611)
    parent = tmp_path / "stores"
    parent.mkdir()
    inputs_before = {p: sha(p) for p in INPUTS}
    window = calibrate([*cli(), "-q", "ingest", "-o", str(parent / "probe"), *INGEST_ARGS],
                       parent)
    old_runs = run_digests(base_store)
    outcomes: Counter[str] = Counter()
    for i, delay in enumerate(delays(rng, window, TRIALS)):
        force = i % 4 >= 2
        target = parent / ("replaced" if force else f"fresh-{i}")
        if force:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(base_store, target)
        cmd = [*cli(), "-q", "ingest", "-o", str(target), *INGEST_ARGS] + (["--force"] if force
                                                                          else [])
        stale = set(hidden_temps(parent))
        rc = kill_after(cmd, delay, parent if i % 2 else None)
        assert rc in (0, None)
        left = set(hidden_temps(parent)) - stale
        published = False
        if target.exists():
            names = check_store(target)
            if force and names:
                assert run_digests(target) == old_runs  # the old store, untouched
            published = not names  # a new store has no runs yet
        else:
            assert not force, "store missing after a killed --force ingest"
        kind = "force" if force else "fresh"
        outcomes[f"{kind}-finished" if rc == 0 else f"{kind}-killed-after-publish" if published
                 else f"{kind}-killed-temp-left" if left else f"{kind}-killed"] += 1
    assert {p: sha(p) for p in INPUTS} == inputs_before
    # Stale temporaries must not break a later ingest, which also removes them.
    p = run_cli("ingest", "-o", str(parent / "final"), *INGEST_ARGS)
    assert p.returncode == 0, p.stderr
    assert hidden_temps(parent) == []
    check_store(parent / "final")
    summary("ingest", outcomes, record_property, window)


@pytest.mark.slow
def test_sigkill_cluster(store: Path, tmp_path: Path,
                         record_property: Callable[[str, Any], None]) -> None:
    """Killed cluster: earlier runs stay intact, no partial run is ever visible.

    K-means with a small bootstrap keeps each trial short; the run is written by the same
    code whatever the method (the default method is killed in test_sigint_cluster)."""
    rng = random.Random(7)
    cmd = [*cli(), "-q", "cluster", str(store), "--method", "kmeans", "--k", "3",
           "--bootstrap", "3"]
    window = calibrate(cmd, store / "runs")
    outcomes: Counter[str] = Counter()
    for i, delay in enumerate(delays(rng, window, TRIALS)):
        earlier = run_digests(store)
        stale = set(hidden_temps(store / "runs"))
        rc = kill_after(cmd, delay, store / "runs" if i % 2 else None)
        left = set(hidden_temps(store / "runs")) - stale
        names = check_store(store, earlier)
        if rc == 0:
            assert len(names) == len(earlier) + 1
            outcomes["finished"] += 1
        else:
            assert rc is None
            new = set(names) - set(earlier)
            assert len(new) <= 1 and set(earlier) <= set(names)
            outcomes["killed-after-publish" if new else
                     "killed-temp-left" if left else "killed"] += 1
    earlier = run_digests(store)
    p = run_cli("cluster", str(store), *FAST_CLUSTER)
    assert p.returncode == 0, p.stderr
    assert hidden_temps(store / "runs") == []
    check_store(store, earlier)
    summary("cluster", outcomes, record_property, window)


def _report_available() -> bool:
    p = subprocess.run([*cli(), "report", "--help"], capture_output=True, text=True)
    return p.returncode == 0


@pytest.mark.slow
def test_sigkill_report(store: Path, tmp_path: Path,
                        record_property: Callable[[str, Any], None]) -> None:
    """Killed report: the store is untouched; the report is absent, the previous one, or
    complete; leftovers do not stop the next report."""
    if not _report_available():
        pytest.skip("cohortctl report is not available")
    rng = random.Random(11)
    out = tmp_path / "out" / "r.html"
    out.parent.mkdir()
    cmd = [*cli(), "-q", "report", str(store), "-o", str(out), "--force"]
    window = calibrate(cmd, out.parent)
    complete = out.read_text()
    assert complete.rstrip().endswith("</html>")
    earlier = run_digests(store)
    tables = {e["name"]: e["store_sha256"] for e in Store.open(store).tables}
    outcomes: Counter[str] = Counter()
    for i, delay in enumerate(delays(rng, window, TRIALS)):
        if i % 4 < 2:
            out.unlink(missing_ok=True)
        stale = set(hidden_temps(out.parent))
        rc = kill_after(cmd, delay, out.parent if i % 2 else None)
        check_store(store, earlier)
        assert {e["name"]: e["store_sha256"] for e in Store.open(store).tables} == tables
        if out.exists():
            text = out.read_text()
            assert text.rstrip().endswith("</html>"), "truncated report visible"
        left = set(hidden_temps(out.parent)) - stale
        fresh_report = i % 4 < 2 and out.exists()
        outcomes["finished" if rc == 0 else "killed-after-publish" if fresh_report
                 else "killed-temp-left" if left else "killed"] += 1
    stale_before = len([p for p in out.parent.iterdir() if p.name.startswith(".")])
    p = run_cli("report", str(store), "-o", str(out), "--force")
    assert p.returncode == 0, p.stderr
    stale = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    record_property("report_stale_temps_left", len(stale))
    print(f"\n[faults] report: hidden temporaries in the output dir: {stale_before} before the "
          f"last report, {len(stale)} after")
    summary("report", outcomes, record_property, window)


# -- Ctrl-C ----------------------------------------------------------------------------
def _interrupt_while_writing(tmp_path: Path, args: list[str], parent: Path) -> None:
    env = pause_env(tmp_path, go=False)
    proc = subprocess.Popen([*cli(), "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_ready(tmp_path, [proc])
        assert hidden_temps(parent), "no temporary while writing"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["cohortctl: error: interrupted"]
    assert hidden_temps(parent) == []


def test_sigint_ingest_cleans_up(tmp_path: Path) -> None:
    """Ctrl-C while the store is being written: exit 130, nothing left behind."""
    out = tmp_path / "stores" / "cohort"
    out.parent.mkdir()
    _interrupt_while_writing(tmp_path, ["ingest", "-o", str(out), *INGEST_ARGS], out.parent)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_sigint_cluster_cleans_up(store: Path, tmp_path: Path) -> None:
    """Ctrl-C while a run is being written, and during the computation: exit 130, no
    temporary and no new run."""
    earlier = run_digests(store)
    _interrupt_while_writing(tmp_path, ["cluster", str(store), *FAST_CLUSTER], store / "runs")
    check_store(store, earlier)
    assert set(Store.open(store).run_names()) == set(earlier)
    # A terminal's Ctrl-C goes to the whole process group (bootstrap workers included).
    proc = subprocess.Popen([*cli(), "-q", "cluster", str(store), "--bootstrap", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    time.sleep(1.8)
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert _group_gone(proc.pid), "worker processes outlived an interrupted cluster"
    assert proc.returncode == 130, err
    assert hidden_temps(store / "runs") == []
    check_store(store, earlier)
    assert set(Store.open(store).run_names()) == set(earlier)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_swallowed_interrupt_still_refuses_to_publish(tmp_path: Path) -> None:
    """A Ctrl-C that lands in a finaliser is printed as "ignored" by Python and lost (seen
    in CI inside numba's ``__del__``). The recorded interrupt must still stop publication."""
    from cohortctl.errors import install_interrupt_handler, interrupted
    from cohortctl.store import atomic_file

    class InterruptedWhileFinalised:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs here, inside __del__: exception ignored

    restore = install_interrupt_handler()
    try:
        obj = InterruptedWhileFinalised()
        del obj  # swallowed: execution simply continues
        assert interrupted()
        final = tmp_path / "out.json"
        with pytest.raises(KeyboardInterrupt), atomic_file(final) as tmp:
            tmp.write_text("{}")
        assert not final.exists()
        assert list(tmp_path.iterdir()) == []
    finally:
        restore()
        install_interrupt_handler()()  # reset the flag for later in-process tests


def _group_gone(pgid: int, timeout: float = 10) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return False


# -- concurrency ----------------------------------------------------------------------
def test_concurrent_cluster_runs(store: Path, tmp_path: Path) -> None:
    """Four runs with one seed published at (nearly) the same instant. Two with default names: both
    succeed into distinct complete runs with identical assignments (a same-second name
    clash gets a '-2' suffix). Two racing for one --run name: one wins, the other exits 73
    with one line. Nothing partial is left."""
    earlier = run_digests(store)
    env = pause_env(tmp_path)
    argsets = [[*FAST_CLUSTER, "--json"]] * 2 + [[*FAST_CLUSTER, "--run", "shared"]] * 2
    procs = [subprocess.Popen([*cli(), "-q", "cluster", str(store), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for args in argsets]
    # Publication is serialised by the run lock: the first writer pauses at the
    # publication point while holding it and the others queue behind it. Release it once
    # it is there; everyone then publishes in turn.
    end = time.time() + 120
    while not any(p.name.startswith("ready.") for p in tmp_path.iterdir()):
        assert time.time() < end, "no writer reached the publication point"
        time.sleep(0.02)
    (tmp_path / "go").touch()
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    for _out, err, rc in results[:2]:
        assert rc == 0, err
    runs = [json.loads(out)["run"] for out, _e, _rc in results[:2]]
    assert len(set(runs)) == 2
    if runs[0][:15] == runs[1][:15]:  # same second: one of them took the '-2' name
        assert sorted(runs)[1].endswith("-2"), runs
    shared = sorted((rc, err) for _o, err, rc in results[2:])
    assert [rc for rc, _e in shared] == [0, 73], shared
    err = shared[1][1].strip().splitlines()
    assert len(err) == 1 and "shared" in err[0] and "already exists" in err[0], err
    names = check_store(store, earlier)
    assert set(names) == set(earlier) | set(runs) | {"shared"}
    digests = {sha(store / "runs" / r / "assignments.parquet") for r in [*runs, "shared"]}
    assert len(digests) == 1
    assert hidden_temps(store / "runs") == []


@pytest.mark.parametrize("force", [False, True])
def test_concurrent_ingest_same_path(tmp_path: Path, force: bool) -> None:
    """Two ingests publishing into one path at once: without --force one wins and the
    other exits 73; with --force both succeed atomically. Never a mixed store."""
    out = tmp_path / "stores" / "cohort"
    out.parent.mkdir()
    env = pause_env(tmp_path)
    extra = ["--force"] if force else []
    procs = [subprocess.Popen([*cli(), "-q", "ingest", "-o", str(out), *INGEST_ARGS, *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    wait_ready(tmp_path, procs)
    (tmp_path / "go").touch()
    results = sorted((p.wait(timeout=120), p.communicate()[1]) for p in procs)
    if force:
        assert [rc for rc, _e in results] == [0, 0], results
    else:
        assert [rc for rc, _e in results] == [0, 73], results
        assert "already exists" in results[1][1]
    check_store(out)
    assert [p.name for p in out.parent.iterdir()] == ["cohort"]


# -- full, read-only and unwritable outputs -------------------------------------------
def test_unwritable_output_path(tmp_path: Path) -> None:
    """A file where a directory is expected, or a non-writable directory: exit 73, one
    line, nothing created, inputs untouched."""
    before = {p: sha(p) for p in INPUTS}
    blocker = tmp_path / "file"
    blocker.write_text("x")
    targets = [blocker / "cohort"]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        targets.append(ro / "cohort")
    else:
        targets.append(Path("/proc/cohortctl-test-store"))  # root ignores permissions
    for target in targets:
        p = run_cli("ingest", "-o", str(target), *INGEST_ARGS)
        assert p.returncode == 73, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cohortctl: error: {target}"), lines
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["file"] + (["ro"] if os.geteuid() != 0 else []))
    assert {p: sha(p) for p in INPUTS} == before


def test_disk_full_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC simulated while the store is written (portable): exit 73, no partial store."""
    import errno

    import cohortctl.ingest as ingest_mod
    from cohortctl.cli import main

    def full(root: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root / "manifest.json"))

    monkeypatch.setattr(ingest_mod, "fsync_tree", full)
    out = tmp_path / "cohort"
    assert main(["-q", "ingest", "-o", str(out), *INGEST_ARGS]) == 73
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cohortctl: error: {out}: cannot create output (No space left on device)"]
    assert list(tmp_path.iterdir()) == []


TMPFS_DRIVER = r"""
import json, os, subprocess, sys
from pathlib import Path
mnt = Path(sys.argv[1])
cli = json.loads(os.environ["T_CLI"])
ingest = json.loads(os.environ["T_INGEST"])
fast = json.loads(os.environ["T_FAST"])
res = {}

def mount(opts):
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "none", str(mnt)], check=True)

def run(*args):
    p = subprocess.run(cli + ["-q", *args], capture_output=True, text=True)
    return [p.returncode, p.stderr.strip().splitlines()]

def listing():
    return sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*"))

def fill(left):
    vfs = os.statvfs(mnt)
    with open(mnt / "fill", "wb") as fh:
        fh.write(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - left))

try:
    mount("size=300k")
except Exception as exc:
    print(json.dumps({"skip": f"cannot mount tmpfs: {exc}"}))
    sys.exit(0)
res["ingest_full"] = run("ingest", "-o", str(mnt / "s"), *ingest)
res["after_ingest_full"] = listing()
subprocess.run(["umount", str(mnt)], check=True)
mount("size=1500k")
res["ingest_ok"] = run("ingest", "-o", str(mnt / "s"), *ingest)
first = run("cluster", str(mnt / "s"), *fast)
res["runs_before"] = sorted(os.listdir(mnt / "s" / "runs"))
fill(24 * 1024)
res["cluster_full"] = run("cluster", str(mnt / "s"), *fast)
res["runs_after_cluster_full"] = sorted(os.listdir(mnt / "s" / "runs"))
res["report_full"] = run("report", str(mnt / "s"), "-o", str(mnt / "r.html"))
res["top_after_report_full"] = sorted(os.listdir(mnt))
from cohortctl.store import Store, verify_run
st = Store.open(mnt / "s")
for e in st.tables:
    st.verify(e)
for name in st.run_names():
    verify_run(st.runs_dir / name)
res["store_ok"] = st.run_names()
os.unlink(mnt / "fill")
subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
res["ingest_ro"] = run("ingest", "-o", str(mnt / "s2"), *ingest)
res["cluster_ro"] = run("cluster", str(mnt / "s"), *fast)
res["listing_ro"] = listing()
print(json.dumps(res))
"""


@pytest.mark.slow
def test_disk_full_and_read_only_tmpfs(tmp_path: Path) -> None:
    """Real ENOSPC / EROFS on a small tmpfs (private mount namespace): exit 73 with one
    line, no partial store, run or report, the store and inputs untouched."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespace (unshare -rm) to mount a small tmpfs")
    before = {p: sha(p) for p in INPUTS}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, T_CLI=json.dumps(cli()), T_INGEST=json.dumps(INGEST_ARGS),
               T_FAST=json.dumps(FAST_CLUSTER))
    p = subprocess.run(["unshare", "-rm", sys.executable, "-c", TMPFS_DRIVER, str(mnt)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(res["skip"])

    def one_line(key: str, reason: str) -> None:
        rc, lines = res[key]
        assert rc == 73, (key, lines)
        assert len(lines) == 1 and reason in lines[0], (key, lines)

    one_line("ingest_full", "No space left on device")
    assert res["after_ingest_full"] == []
    assert res["ingest_ok"][0] == 0
    one_line("cluster_full", "No space left on device")
    assert res["runs_after_cluster_full"] == res["runs_before"]
    assert len(res["runs_before"]) == 1
    one_line("report_full", "No space left on device")
    assert res["top_after_report_full"] == ["fill", "s"]
    assert res["store_ok"] == res["runs_before"]
    one_line("ingest_ro", "Read-only file system")
    one_line("cluster_ro", "Read-only file system")
    assert not any(n.startswith(".") or "/." in n for n in res["listing_ro"])
    assert {p: sha(p) for p in INPUTS} == before


# -- stale temporaries: what may be cleaned --------------------------------------------
def test_clean_stale_only_removes_dead_writers(tmp_path: Path) -> None:
    """Only this host's, this user's, unlocked temporaries of dead (or reused) PIDs go;
    live writers, locked ones, foreign hosts, symlinks and orphaned '-old' copies stay."""
    from cohortctl.store import _host_tag, clean_stale

    dead = subprocess.Popen(["true"])
    dead.wait()
    sleeper = subprocess.Popen(["sleep", "60"])
    tag = _host_tag()
    try:
        made = {
            "dead": tmp_path / f".a.tmp-{tag}-{dead.pid}-x1",
            "dead_file": tmp_path / f".r.html.tmp-{tag}-{dead.pid}-x2",
            "dead_old_with_final": tmp_path / f".b.tmp-{tag}-{dead.pid}-x3-old",
            "live": tmp_path / f".c.tmp-{tag}-{sleeper.pid}-x4",
            "self": tmp_path / f".d.tmp-{tag}-{os.getpid()}-x5",
            "other_host": tmp_path / f".e.tmp-00000000-{dead.pid}-x6",
            "dead_but_locked": tmp_path / f".f.tmp-{tag}-{dead.pid}-x7",
            "dead_old_no_final": tmp_path / f".g.tmp-{tag}-{dead.pid}-x8-old",
            "unrelated": tmp_path / ".h.tmp-notours",
        }
        for key, path in made.items():
            if key == "dead_file":
                path.write_text("partial")
            else:
                path.mkdir()
                (path / "data").write_text("x")
        (tmp_path / "b").mkdir()  # the store that replaced '.b...-old'
        link = tmp_path / f".i.tmp-{tag}-{dead.pid}-x9"
        link.symlink_to(made["live"])
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys, time; "
             "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
             "print('locked', flush=True); time.sleep(60)", str(made["dead_but_locked"])],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            removed = {p.name for p in clean_stale(tmp_path)}
        finally:
            holder.kill()
            holder.wait()
        gone = {k for k, p in made.items() if not os.path.lexists(p)}
        assert gone == {"dead", "dead_file", "dead_old_with_final"}
        assert removed == {made[k].name for k in gone}
        assert link.is_symlink() and made["live"].is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_force_refuses_home_and_working_directory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--force never replaces $HOME, the working directory or its ancestors, and with
    ``replace_only=is_store`` never a directory that is not a store."""
    from cohortctl.errors import OutputError
    from cohortctl.store import atomic_directory, is_store

    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    for target in (Path.home(), work, work / "sub", Path(".")):
        with pytest.raises(OutputError, match="refusing"), atomic_directory(target, force=True):
            pass
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("precious")
    with pytest.raises(OutputError, match="not a cohortctl output"), \
            atomic_directory(docs, force=True, replace_only=is_store):
        pass
    assert (docs / "thesis.txt").read_text() == "precious"
    with atomic_directory(tmp_path / "new", force=True, replace_only=is_store) as tmp:
        (tmp / "manifest.json").write_text('{"format": "cohortctl-store"}')
    with atomic_directory(tmp_path / "new", force=True, replace_only=is_store) as tmp:
        (tmp / "manifest.json").write_text('{"format": "cohortctl-store", "v": 2}')
    assert "v" in json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents", "new", "work"]


def test_run_lock_is_reentrant_with_publication(store: Path) -> None:
    """Holding Store.run_lock() while publishing a run does not deadlock, and numbering
    under it gives the next sequence."""
    import threading

    from cohortctl.store import atomic_directory

    st = Store.open(store)
    seq = st.next_sequence()
    assert seq == len(st.run_names()) + 1
    done = threading.Event()

    def publish() -> None:
        with st.run_lock(), atomic_directory(st.runs_dir / ".probe-run") as tmp:
            (tmp / "x.json").write_text("{}")
        done.set()

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    t.join(timeout=20)
    assert done.is_set(), "deadlock between run_lock() and atomic_directory()"
    shutil.rmtree(st.runs_dir / ".probe-run")


def test_atomic_file(tmp_path: Path) -> None:
    """atomic_file (for single-file outputs): no clobber without force, replace with it,
    nothing left on failure, mode 0666 & ~umask."""
    from cohortctl.errors import OutputError
    from cohortctl.store import atomic_file

    target = tmp_path / "r.html"
    old = os.umask(0o027)
    try:
        with atomic_file(target) as tmp:
            tmp.write_text("one")
    finally:
        os.umask(old)
    assert target.read_text() == "one" and stat_mode(target) == 0o640
    with pytest.raises(OutputError, match="already exists"), atomic_file(target) as tmp:
        tmp.write_text("two")
    with atomic_file(target, force=True) as tmp:
        tmp.write_text("three")
    assert target.read_text() == "three"
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "x.md") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
