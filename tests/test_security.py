"""Security and privacy: no pickles in stores, no paths outside the store, permissions
that honour the umask, and no network access at run time."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cohortctl.errors import EXIT_DATA, InputDataError, InputMissingError
from cohortctl.store import MANIFEST, RUN_MANIFEST, Store, verify_run

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "breast_tcga"
INGEST_ARGS = [f"--molecular=mrna={SAMPLE / 'mrna_train.parquet'}",
               f"--molecular=mirna={SAMPLE / 'mirna_train.parquet'}",
               f"--clinical={SAMPLE / 'clinical.parquet'}"]
FAST_CLUSTER = ["--method", "kmeans", "--k", "3", "--bootstrap", "0"]
STORE_EXTENSIONS = {".parquet", ".json"}
REPORT_EXTENSIONS = {".html", ".md", ".json", ".tsv", ".parquet"}
PICKLE_MAGIC = re.compile(rb"\A\x80[\x02-\x05]")

# Loaded through PYTHONPATH: any Internet socket or name lookup is logged and refused.
NET_GUARD = """
import os, socket
_LOG = os.environ["COHORTCTL_NET_LOG"]
def _refuse(what):
    with open(_LOG, "a") as fh:
        fh.write(f"{os.getpid()} {what}\\n")
    raise OSError(f"network access attempted ({what}); disabled in this test")
class _GuardedSocket(socket.socket):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
            _refuse(f"socket({family})")
        super().__init__(family, type, proto, fileno)
socket.socket = _GuardedSocket
socket.getaddrinfo = lambda *a, **k: _refuse(f"getaddrinfo{a[:2]}")
socket.create_connection = lambda *a, **k: _refuse(f"create_connection{a[:1]}")
"""


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "cohortctl"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from cohortctl.cli import run; run()"]


def run_cli(*args: str, env: dict[str, str] | None = None,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), *cli(), "-q", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def report_available() -> bool:
    return run_cli("report", "--help").returncode == 0


def unshare_net() -> list[str] | None:
    """``unshare -rn`` (new user + network namespace: loopback only, down) if permitted."""
    if shutil.which("unshare") is None:
        return None
    ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    return ["unshare", "-rn"] if ok else None


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The full pipeline (default clustering) with networking disabled twice over: an
    empty network namespace when available, and a socket guard in every process."""
    tmp = tmp_path_factory.mktemp("offline")
    guard = tmp / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NET_GUARD)
    log = tmp / "net.log"
    env = dict(os.environ, COHORTCTL_NET_LOG=str(log),
               PYTHONPATH=os.pathsep.join(filter(None, [str(guard),
                                                        os.environ.get("PYTHONPATH")])))
    prefix = unshare_net()
    store = tmp / "cohort"
    out: dict[str, Any] = {"store": store, "log": log, "namespace": prefix is not None,
                           "steps": {}}
    steps = [("ingest", ["ingest", "-o", str(store), *INGEST_ARGS]),
             ("cluster", ["cluster", str(store), "--bootstrap", "3"])]
    if report_available():
        out["report"] = tmp / "report.html"
        out["tables"] = tmp / "tables"
        steps.append(("report", ["report", str(store), "-o", str(out["report"]),
                                 "--tables", str(out["tables"])]))
    for name, args in steps:
        p = run_cli(*args, env=env, prefix=prefix)
        out["steps"][name] = (p.returncode, p.stderr)
        if p.returncode != 0:
            break
    return out


def test_pipeline_runs_offline(offline: dict[str, Any]) -> None:
    """ingest -> cluster -> report succeed with no network, and never try to use it."""
    for name, (rc, err) in offline["steps"].items():
        assert rc == 0, (name, err)
    assert set(offline["steps"]) >= {"ingest", "cluster"}
    attempts = offline["log"].read_text() if offline["log"].exists() else ""
    assert attempts == "", f"network access attempted:\n{attempts}"
    print(f"\n[security] offline pipeline: steps {sorted(offline['steps'])}, network namespace "
          f"{'yes (unshare -rn)' if offline['namespace'] else 'unavailable'}, socket guard yes")


def test_report_loads_nothing_remote(offline: dict[str, Any]) -> None:
    """Opening a report must not contact a CDN (scripts/styles are inline)."""
    if "report" not in offline:
        pytest.skip("cohortctl report is not available")
    html = offline["report"].read_text()
    tag = r"<(?:script|link|img|iframe)[^>]+(?:src|href)=[\"']?(?:https?:)?//[^\"' >]+"
    remote = re.findall(tag, html, flags=re.I)
    assert remote == []


def _scan(root: Path, allowed: set[str]) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    for p in files:
        assert not p.is_symlink(), f"{p}: symlink in output"
        assert p.suffix in allowed, f"{p}: unexpected file type"
        head = p.read_bytes()[:8]
        assert not PICKLE_MAGIC.match(head), f"{p}: pickle data"
        if p.suffix == ".parquet":
            data = p.read_bytes()
            assert data[:4] == b"PAR1" and data[-4:] == b"PAR1", p
        elif p.suffix == ".json":
            json.loads(p.read_text())
    return files


def test_no_pickles_in_store_or_report(offline: dict[str, Any]) -> None:
    """Only Parquet and JSON in the store (HTML/MD/TSV for reports); no pickle bytes."""
    files = _scan(offline["store"], STORE_EXTENSIONS)
    assert any(p.name == "assignments.parquet" for p in files)
    assert any("/model/" in p.as_posix() for p in files)
    if "report" in offline:
        _scan(offline["report"].parent / "tables", REPORT_EXTENSIONS)
        assert not PICKLE_MAGIC.match(offline["report"].read_bytes()[:8])


def test_no_pickle_in_source() -> None:
    """Nothing in cohortctl can write or read a pickle (or joblib/numpy object arrays)."""
    bad = re.compile(r"\b(?:import (?:c?pickle|joblib|dill|cloudpickle)|from (?:c?pickle|joblib|"
                     r"dill|cloudpickle) import|pickle\.(?:dumps?|loads?)|joblib\.(?:dump|load)|"
                     r"np\.save[z]?\(|allow_pickle\s*=\s*True|torch\.(?:save|load))")
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
            for p in sorted((REPO / "cohortctl").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert hits == []


# -- paths outside the store -----------------------------------------------------------
@pytest.fixture()
def copy(offline: dict[str, Any], tmp_path: Path) -> Path:
    dst = tmp_path / "cohort"
    shutil.copytree(offline["store"], dst, symlinks=True)
    return dst


def _edit_manifest(store: Path, rel: str) -> None:
    m = json.loads((store / MANIFEST).read_text())
    m["tables"][0]["store_path"] = rel
    (store / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd",
                                 "tables/../../../../../../etc/passwd"])
def test_manifest_path_outside_store_refused(copy: Path, rel: str) -> None:
    _edit_manifest(copy, rel)
    with pytest.raises(InputDataError, match="store"):
        Store.open(copy)


def test_manifest_traversal_exit_65(copy: Path) -> None:
    """The CLI refuses such a store with one line and exit 65."""
    _edit_manifest(copy, "../../etc/passwd")
    p = run_cli("cluster", str(copy), *FAST_CLUSTER)
    assert p.returncode == EXIT_DATA, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "outside the store" in lines[0], lines
    assert not (copy / "runs").exists() or len(list((copy / "runs").iterdir())) == 1


def test_symlink_escapes_refused(copy: Path, tmp_path: Path) -> None:
    """A table that is a symlink leaving the store, or a symlinked tables directory."""
    st = Store.open(copy)
    entry = st.tables[0]
    table = copy / entry["store_path"]
    table.unlink()
    table.symlink_to("/etc/passwd")
    with pytest.raises(InputDataError, match="outside the store"):
        Store.open(copy)
    p = run_cli("cluster", str(copy), *FAST_CLUSTER)
    assert p.returncode == EXIT_DATA and "outside the store" in p.stderr, p.stderr
    # whole directory swapped for a symlink to a look-alike outside the store
    outside = tmp_path / "outside"
    shutil.copytree(copy / "tables", outside, symlinks=False, ignore_dangling_symlinks=True)
    shutil.rmtree(copy / "tables")
    (copy / "tables").symlink_to(outside)
    with pytest.raises(InputDataError, match="outside the store"):
        Store.open(copy)


def test_run_manifest_traversal_refused(copy: Path, tmp_path: Path) -> None:
    """run.json naming ../../etc/passwd, and a run directory symlinked from outside."""
    st = Store.open(copy)
    name = st.run_names()[0]
    run = copy / "runs" / name
    meta = json.loads((run / RUN_MANIFEST).read_text())
    meta["files"]["../../../../etc/passwd"] = "0" * 64
    (run / RUN_MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="not inside the store|outside the store"):
        verify_run(run)
    if report_available():
        p = run_cli("report", str(copy), "-o", str(tmp_path / "r.html"))
        assert p.returncode == EXIT_DATA, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "r.html").exists()
    outside = tmp_path / "evil-run"
    shutil.copytree(copy / "runs" / name, outside)
    (copy / "runs" / "evil").symlink_to(outside)
    assert "evil" not in Store.open(copy).run_names()
    with pytest.raises(InputMissingError):
        Store.open(copy).resolve_run("evil")
    with pytest.raises(InputDataError):
        verify_run(copy / "runs" / "evil")


def test_tampered_table_exit_65(copy: Path) -> None:
    st = Store.open(copy)
    path = copy / st.tables[-1]["store_path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    p = run_cli("cluster", str(copy), *FAST_CLUSTER)
    assert p.returncode == EXIT_DATA and "checksum mismatch" in p.stderr, p.stderr


# -- permissions -----------------------------------------------------------------------
def _modes(root: Path) -> dict[str, int]:
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {str(p): stat.S_IMODE(p.lstat().st_mode) for p in paths}


@pytest.fixture(scope="module")
def umask_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[Path]]:
    """ingest -> cluster -> report (with --tables) under umask 077 and 022, the two
    pipelines side by side."""
    from concurrent.futures import ThreadPoolExecutor

    with_report = report_available()

    def pipeline(mask: int) -> list[Path]:
        tmp = tmp_path_factory.mktemp(f"umask{mask:03o}")
        store, html, tables = tmp / "cohort", tmp / "r.html", tmp / "tables"
        steps = [["ingest", "-o", str(store), *INGEST_ARGS],
                 ["cluster", str(store), *FAST_CLUSTER]]
        if with_report:
            steps.append(["report", str(store), "-o", str(html), "--tables", str(tables)])
        for args in steps:
            p = run_cli(*args, prefix=["sh", "-c", f'umask {mask:03o} && exec "$@"', "sh"])
            assert p.returncode == 0, (mask, args[0], p.stderr)
        return [store, html, tables] if with_report else [store]

    with ThreadPoolExecutor(2) as pool:
        masks = (0o077, 0o022)
        return dict(zip(masks, pool.map(pipeline, masks), strict=True))


@pytest.mark.parametrize("mask", [0o077, 0o022])
def test_outputs_honour_umask(umask_outputs: dict[int, list[Path]], mask: int) -> None:
    """umask 077 -> files 0600, directories 0700; umask 022 -> no group/other write."""
    modes: dict[str, int] = {}
    for out in umask_outputs[mask]:
        modes.update(_modes(out))
    assert any("/runs/" in k for k in modes)
    for path, mode in modes.items():
        is_dir = Path(path).is_dir()
        if mask == 0o077:
            assert mode == (0o700 if is_dir else 0o600), (path, oct(mode))
        else:
            assert mode & 0o022 == 0, (path, oct(mode))


def _retamper(run: Path, rel: str, text: str) -> None:
    """Rewrite a run file *and* its checksum (a deliberate tamperer can: checksums catch
    accidents, not attacks), so that only the loader's own checks stand in the way."""
    import hashlib

    (run / rel).write_text(text)
    meta = json.loads((run / RUN_MANIFEST).read_text())
    meta["files"][rel] = hashlib.sha256((run / rel).read_bytes()).hexdigest()
    (run / RUN_MANIFEST).write_text(json.dumps(meta))


def test_runs_directory_symlink_refused(copy: Path, tmp_path: Path) -> None:
    """STORE/runs swapped for a symlink: cluster must not write patient-level assignments
    there, nor report read from it."""
    outside = tmp_path / "elsewhere"
    shutil.copytree(copy / "runs", outside)
    shutil.rmtree(copy / "runs")
    (copy / "runs").symlink_to(outside)
    before = sorted(p.name for p in outside.iterdir())
    p = run_cli("cluster", str(copy), *FAST_CLUSTER)
    assert p.returncode == EXIT_DATA and "symbolic link" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in outside.iterdir()) == before
    if report_available():
        p = run_cli("report", str(copy), "-o", str(tmp_path / "r.html"))
        assert p.returncode == EXIT_DATA and not (tmp_path / "r.html").exists()


def test_model_block_name_traversal_refused(copy: Path, tmp_path: Path) -> None:
    from cohortctl.assign import load_run

    run = copy / "runs" / Store.open(copy).run_names()[0]
    integ = json.loads((run / "model" / "integration.json").read_text())
    first = integ["blocks"][0]
    evil = "x/../../../../outside/evil"
    integ["blocks"][0] = evil
    integ["block_slices"][evil] = integ["block_slices"].pop(first)
    _retamper(run, "model/integration.json", json.dumps(integ))
    with pytest.raises(InputDataError, match="not a plain name"):
        load_run(copy)


def test_non_finite_model_number_refused(copy: Path) -> None:
    from cohortctl.assign import load_run

    run = copy / "runs" / Store.open(copy).run_names()[0]
    block = sorted((run / "model").glob("block-*.json"))[0]
    meta = json.loads(block.read_text())
    meta["center"][0] = float("nan")
    _retamper(run, f"model/{block.name}", json.dumps(meta))
    with pytest.raises(InputDataError, match="non-finite"):
        load_run(copy)
