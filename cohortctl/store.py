"""The cohort store: a directory with ``manifest.json``, typed Parquet tables and ``runs/``.

Writes are atomic: everything is written into a hidden sibling directory and renamed
into place, so a reader sees either the previous store/run or the complete new one.
Every file carries a SHA-256 in its manifest, verified when it is loaded, and no path
from a manifest is followed outside the store.

Crash and concurrency rules (see :func:`atomic_directory`): publication refuses an
existing target atomically (``renameat2(RENAME_NOREPLACE)``, under an advisory lock on
the parent), ``--force`` swaps atomically (``RENAME_EXCHANGE``) so the target never goes
missing, write failures (disk full, read-only) become exit 73, and hidden temporaries left
by a SIGKILL are removed by the next writer in the same directory once their owner is
provably gone (:func:`clean_stale`). Outputs get ``0666/0777 & ~umask``, never wider.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import stat as stat_mod
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from cohortctl import __version__
from cohortctl.errors import (
    InputDataError,
    InputMissingError,
    OutputError,
    raise_if_interrupted,
)

STORE_FORMAT = 1
RUN_FORMAT = 1
MANIFEST = "manifest.json"
RUN_MANIFEST = "run.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Deterministic Parquet (same frame -> same bytes): zstd, statistics, no timestamps."""
    pq.write_table(
        df.to_arrow(), path, compression="zstd", write_statistics=True,
        row_group_size=max(1, min(65536, df.height or 1)),
    )


def write_json(obj: Any, path: Path) -> None:
    """Stable JSON (sorted keys, fixed indentation, trailing newline)."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def safe_join(root: Path, rel: str, what: str) -> Path:
    """Resolve a manifest-relative path, refusing anything that leaves ``root``."""
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or "\x00" in rel:
        raise InputDataError(f"{root / MANIFEST}: {what} path {rel!r} is not inside the store")
    root_real = root.resolve()
    target = (root / rel).resolve()
    if target != root_real and root_real not in target.parents:
        raise InputDataError(f"{root / MANIFEST}: {what} path {rel!r} points outside the store")
    return target


# -- atomic publication ----------------------------------------------------------------
# Temporary siblings are named ``.<final>.tmp-<host>-<pid>-<random>`` (``-old`` appended
# for a store moved aside by the fallback publication path). <host> is a hash of the host
# name and boot id, so a directory is only ever judged stale by a process that can see
# the PID that owns it. A temporary is removed as stale only when (1) it belongs to this
# host and user, (2) its PID is dead, a zombie, or was reused (the process now holding
# the PID started after the directory was last modified), and (3) nobody holds the
# advisory lock every writer keeps on its temporary (this guards PID namespaces).
_TMP_NAME = re.compile(
    r"^\.(?P<final>.+)\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<rand>[a-z0-9_]+)(?P<old>-old)?$"
)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_HELD_LOCKS: dict[tuple[int, int], int] = {}


@functools.cache
def _host_tag() -> str:
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return hashlib.sha256(f"{os.uname().nodename}\0{boot}".encode()).hexdigest()[:8]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _flock(fd: int, *, blocking: bool) -> bool | None:
    """True: locked; False: held by someone else; None: locking unsupported here."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


@contextlib.contextmanager
def dir_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on a directory; re-entrant within a process, best effort.

    Serialises publication (and stale-temporary cleaning) among cohortctl processes; on
    file systems without ``flock`` it degrades to no lock (renames stay atomic).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in _HELD_LOCKS:
            _HELD_LOCKS[key] += 1
            try:
                yield
            finally:
                _HELD_LOCKS[key] -= 1
            return
        locked = _flock(fd, blocking=True)
        if locked:
            _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            if locked:
                del _HELD_LOCKS[key]
    finally:
        os.close(fd)  # closing releases the flock


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False when the kernel, libc or file system lacks it."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


@functools.cache
def _libc_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a live process; None if a zombie or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] in ("Z", "X"):
            return None
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return float("-inf")  # unknown: treat as the original owner (never stale)


def _owner_alive(pid: int, mtime: float) -> bool:
    """Could process ``pid`` still be writing a temporary last modified at ``mtime``?"""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    start = _process_start(pid)
    if start is None:
        return False  # zombie: it will never write again
    return start <= mtime + 2.0  # started after the last write: the PID was reused


def clean_stale(parent: Path) -> list[Path]:
    """Remove temporaries in ``parent`` left by killed cohortctl writers (see above).

    A store moved aside (``-old``) is only removed when the store it was replaced by is in
    place; otherwise it is left for the user (it may be the only copy).
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_NAME.match(entry.name)
        if not m or m["host"] != _host_tag():
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        if st.st_uid != os.getuid() or not (is_dir or stat_mod.S_ISREG(st.st_mode)):
            continue
        if _owner_alive(int(m["pid"]), st.st_mtime):
            continue
        if m["old"] and not os.path.lexists(os.path.join(parent, m["final"])):
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if is_dir else 0))
        except OSError:
            continue
        try:
            if _flock(fd, blocking=False) is not True:
                continue
            _remove(path)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _remove(path: Path) -> None:
    """Remove a file or directory tree (never following a symlink)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(exc: OSError) -> str:
    """Short cause ("No space left on device"), also for pyarrow's wordier errors."""
    if isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


def _is_write_error(exc: OSError, tmp: Path) -> bool:
    """An OSError met while filling ``tmp`` that is about the output, not an input."""
    if exc.errno in _WRITE_ERRNOS:
        return True
    for name in (exc.filename, exc.filename2):
        if name and (Path(os.fsdecode(name)) == tmp or tmp in Path(os.fsdecode(name)).parents):
            return True
    return False


def _check_replaceable(final: Path, replace_only: Callable[[Path], bool] | None) -> None:
    """Refuse to replace a directory that obviously is not ours to replace."""
    real = final.resolve()
    cwd = Path.cwd().resolve()
    protected = {Path(real.anchor), cwd, *cwd.parents}
    with contextlib.suppress(RuntimeError, KeyError):
        protected.add(Path.home().resolve())
    if real in protected:
        raise OutputError(f"{final}: refusing to replace this directory (choose a new path)")
    if replace_only is not None and final.is_dir() and not replace_only(final):
        raise OutputError(f"{final}: exists and is not a cohortctl output; refusing to replace it")


def is_store(path: Path) -> bool:
    """A directory that looks like a cohort store (or is empty): safe for ``--force``."""
    try:
        if not any(path.iterdir()):
            return True
        return json.loads((path / MANIFEST).read_text()).get("format") == "cohortctl-store"
    except (OSError, ValueError, AttributeError):
        return False


def _new_temp(final: Path, parent: Path, *, directory: bool) -> tuple[Path, int]:
    """Create the temporary sibling (after cleaning stale ones) and lock it."""
    prefix = f".{final.name}.tmp-{_host_tag()}-{os.getpid()}-"
    with dir_lock(parent):
        clean_stale(parent)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: honour the umask
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=parent)
            tmp = Path(name)
            os.fchmod(fd, 0o666 & ~_umask())
    _flock(fd, blocking=False)
    return tmp, fd


@contextlib.contextmanager
def atomic_directory(final: Path, *, force: bool = False,
                     replace_only: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``final`` on success.

    On any failure (or Ctrl-C) the temporary directory is removed and ``final`` is
    untouched; a SIGKILL leaves only a hidden temporary, removed by a later writer in the
    same directory (:func:`clean_stale`). Without ``force`` an existing ``final`` is
    refused, also when another process creates it meanwhile (``RENAME_NOREPLACE``); with
    ``force`` it is swapped atomically (``RENAME_EXCHANGE``) so ``final`` never goes
    missing. ``replace_only`` limits what ``force`` may replace (e.g. :func:`is_store`).
    Write failures (disk full, read-only) become :class:`OutputError` (exit 73).
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    if os.path.lexists(final):
        if not force:
            raise OutputError(f"{final}: already exists (use --force to replace it)")
        _check_replaceable(final, replace_only)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _new_temp(final, parent, directory=True)
    except FileExistsError as exc:
        where = exc.filename or parent
        raise OutputError(f"{final}: cannot create output ({where} is not a directory)") from None
    except OSError as exc:
        raise OutputError(f"{final}: cannot create output ({_reason(exc)})") from None
    try:
        try:
            yield tmp
            _publish(tmp, final, parent, force, replace_only)
        except OSError as exc:
            if not _is_write_error(exc, tmp):
                raise
            raise OutputError(f"{final}: cannot create output ({_reason(exc)})") from None
    except BaseException:
        _remove(tmp)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling file that is renamed to ``final`` on success.

    Same guarantees as :func:`atomic_directory`; the file gets ``0666 & ~umask``.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    if os.path.lexists(final) and (not force or final.is_dir()):
        raise OutputError(f"{final}: already exists" + ("" if final.is_dir() else
                                                       " (use --force to replace it)"))
    try:
        tmp, fd = _new_temp(final, parent, directory=False)
    except OSError as exc:
        raise OutputError(f"{final}: cannot create output ({_reason(exc)})") from None
    try:
        try:
            yield tmp
            raise_if_interrupted()
            fd2 = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd2)
            finally:
                os.close(fd2)
            with dir_lock(parent):
                if force:
                    os.replace(tmp, final)
                elif not _renameat2(tmp, final, _RENAME_NOREPLACE):
                    if os.path.lexists(final):
                        raise OutputError(f"{final}: already exists (another process created it)")
                    os.rename(tmp, final)
                _fsync_dir(parent)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise OutputError(f"{final}: already exists (another process created it)") from None
            raise OutputError(f"{final}: cannot create output ({_reason(exc)})") from None
    except BaseException:
        _remove(tmp)
        raise
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path, parent: Path, force: bool,
             replace_only: Callable[[Path], bool] | None) -> None:
    raise_if_interrupted()
    try:
        with dir_lock(parent):
            if not os.path.lexists(final):
                if not _renameat2(tmp, final, _RENAME_NOREPLACE):
                    os.rename(tmp, final)  # refuses a non-empty target; we hold the lock
            elif not force:
                raise OutputError(f"{final}: already exists (another process created it)")
            else:
                _check_replaceable(final, replace_only)
                if _renameat2(tmp, final, _RENAME_EXCHANGE):
                    _remove(tmp)  # now holds the replaced content
                else:
                    old = tmp.with_name(tmp.name + "-old")
                    os.rename(final, old)
                    try:
                        os.rename(tmp, final)
                    except OSError:
                        os.rename(old, final)
                        raise
                    _remove(old)
            _fsync_dir(parent)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise OutputError(f"{final}: already exists (another process created it)") from None
        raise OutputError(f"{final}: cannot create output ({_reason(exc)})") from None


def fsync_tree(root: Path) -> None:
    """Flush every file and directory of a freshly written tree before it is published."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


@dataclass
class Store:
    """An opened, verified cohort store."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: Path | str) -> Store:
        """Open a store, checking its manifest is readable and of a known format."""
        root = Path(root)
        if not root.exists():
            raise InputMissingError(f"{root}: no such cohort store")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise InputMissingError(f"{root}: not a cohort store (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise InputMissingError(f"{mpath}: cannot read ({exc})") from None
        except json.JSONDecodeError as exc:
            raise InputDataError(
                f"{mpath}: corrupt manifest (line {exc.lineno}: {exc.msg})"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != "cohortctl-store":
            raise InputDataError(f"{mpath}: not a cohortctl store manifest")
        if manifest.get("format_version") != STORE_FORMAT:
            raise InputDataError(
                f"{mpath}: store format {manifest.get('format_version')!r} is not supported "
                f"(this cohortctl reads format {STORE_FORMAT})"
            )
        tables = manifest.get("tables", [])
        if not isinstance(tables, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("name", "kind"))
            for e in tables
        ):
            raise InputDataError(f"{mpath}: malformed table list in the manifest")
        for entry in tables:
            safe_join(root, entry.get("store_path", ""), f"table {entry.get('name')!r}")
        return cls(root, manifest)

    # -- tables -------------------------------------------------------------
    @property
    def tables(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("tables", []))

    def table_entry(self, kind: str, name: str | None = None) -> dict[str, Any] | None:
        for entry in self.tables:
            if entry["kind"] == kind and (name is None or entry["name"] == name):
                return entry
        return None

    def feature_tables(self) -> list[dict[str, Any]]:
        """Genetic and molecular tables: the only possible clustering inputs."""
        return [t for t in self.tables if t["kind"] in ("genetic", "molecular")]

    def table_path(self, entry: dict[str, Any]) -> Path:
        path = safe_join(self.root, entry["store_path"], f"table {entry['name']!r}")
        if not path.is_file():
            raise InputMissingError(f"{path}: table listed in the manifest is missing")
        return path

    def verify(self, entry: dict[str, Any]) -> Path:
        """Path of a table after checking its checksum against the manifest."""
        path = self.table_path(entry)
        if sha256_file(path) != entry.get("store_sha256"):
            raise InputDataError(f"{path}: checksum mismatch (store modified or corrupt)")
        return path

    def read(self, entry: dict[str, Any], columns: list[str] | None = None, *,
             verified: bool = False) -> pl.DataFrame:
        """The table of ``entry`` (checksum verified unless the caller just did)."""
        path = self.table_path(entry) if verified else self.verify(entry)
        try:
            return pl.read_parquet(path, columns=columns)
        except Exception as exc:  # noqa: BLE001 - any decode failure is corrupt data
            raise InputDataError(f"{path}: corrupt table ({exc})") from None

    def clinical(self) -> pl.DataFrame | None:
        entry = self.table_entry("clinical")
        return self.read(entry) if entry else None

    @property
    def roles(self) -> dict[str, Any]:
        return dict(self.manifest.get("roles", {}))

    # -- runs ---------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        """``STORE/runs``, refused when it is a symlink or leads outside the store: runs hold
        patient-level assignments, which must never be written (or read) elsewhere."""
        runs = self.root / "runs"
        if runs.is_symlink() or (runs.exists()
                                 and runs.resolve().parent != self.root.resolve()):
            raise InputDataError(f"{runs}: is a symbolic link or leads outside the store; "
                                 "refusing to read or write runs there")
        return runs

    def run_names(self) -> list[str]:
        """Complete runs, oldest first (by creation order recorded in run.json)."""
        if not self.runs_dir.is_dir():
            return []
        found = []
        for p in self.runs_dir.iterdir():
            # Hidden names are temporaries of runs being written (or killed).
            if p.name.startswith(".") or p.is_symlink() or not (p / RUN_MANIFEST).is_file():
                continue
            try:
                meta = json.loads((p / RUN_MANIFEST).read_text())
                found.append((meta.get("sequence", 0), meta.get("created", ""), p.name))
            except (OSError, json.JSONDecodeError):
                continue
        return [name for *_k, name in sorted(found)]

    def resolve_run(self, run: str = "latest") -> Path:
        names = self.run_names()
        if run == "latest":
            if not names:
                raise InputMissingError(
                    f"{self.root}: no cluster run yet (run `cohortctl cluster`)"
                )
            run = names[-1]
        if not _SAFE_NAME.match(run) or run not in names:
            raise InputMissingError(
                f"{self.root}: no run named {run!r} (have: {', '.join(names) or 'none'})"
            )
        return self.runs_dir / run

    def run_lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock on ``runs/``: hold it while numbering and publishing a run.

        Re-entrant with the lock :func:`atomic_directory` takes on the same directory, so
        ``with store.run_lock(): seq = store.next_sequence(); with atomic_directory(...)``
        gives concurrent runs distinct, ordered sequence numbers.
        """
        return dir_lock(self.runs_dir)

    def next_sequence(self) -> int:
        """1 + the highest ``sequence`` of the complete runs (1 for the first run)."""
        seqs = [0]
        for name in self.run_names():
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                seq = json.loads((self.runs_dir / name / RUN_MANIFEST).read_text())["sequence"]
                seqs.append(int(seq))
        return max(seqs) + 1


def valid_name(name: str) -> bool:
    return bool(_SAFE_NAME.match(name))


def manifest_files(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (relative POSIX paths), for run manifests."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != RUN_MANIFEST:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def verify_run(run_dir: Path) -> dict[str, Any]:
    """Load a run's manifest and check every file's checksum; refuse unknown files."""
    mpath = run_dir / RUN_MANIFEST
    if run_dir.is_symlink():
        raise InputDataError(f"{run_dir}: a run directory may not be a symbolic link")
    try:
        meta = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{mpath}: unreadable run manifest ({exc})") from None
    if meta.get("format") != "cohortctl-run" or meta.get("format_version") != RUN_FORMAT:
        raise InputDataError(
            f"{mpath}: run format {meta.get('format_version')!r} not supported (need {RUN_FORMAT})"
        )
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise InputDataError(f"{mpath}: malformed file list")
    for rel, digest in files.items():
        path = safe_join(run_dir, rel, "run file")
        if not path.is_file():
            raise InputDataError(f"{path}: missing from run (truncated or tampered)")
        if sha256_file(path) != digest:
            raise InputDataError(f"{path}: checksum mismatch (tampered or corrupt artefact)")
    for p in run_dir.rglob("*"):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and p.name != RUN_MANIFEST and rel not in files:
            raise InputDataError(f"{p}: unexpected file in run (not in {RUN_MANIFEST})")
    return meta


def version_info() -> dict[str, str]:
    """Versions of cohortctl and the libraries that shape results."""
    import importlib.metadata as md

    out = {"cohortctl": __version__}
    for pkg in ("numpy", "scipy", "scikit-learn", "umap-learn", "hdbscan", "numba", "polars",
                "pyarrow", "lifelines", "statsmodels"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out
