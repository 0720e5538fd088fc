"""The cohort store: a directory with ``manifest.json``, typed Parquet tables and ``runs/``.

Writes are atomic: everything is written into a hidden sibling directory and renamed
into place, so a reader sees either the previous store/run or the complete new one.
Every file carries a SHA-256 in its manifest, verified when it is loaded, and no path
from a manifest is followed outside the store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from cohortctl import __version__
from cohortctl.errors import InputDataError, InputMissingError, OutputError

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


@contextlib.contextmanager
def atomic_directory(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``final`` on success.

    On any failure (or Ctrl-C) the temporary directory is removed and ``final`` is
    untouched. Without ``force`` an existing ``final`` is refused; two writers racing
    for the same path: the first rename wins, the second is refused.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    if final.exists() and not force:
        raise OutputError(f"{final}: already exists (use --force to replace it)")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    except OSError as exc:
        raise OutputError(f"{final}: cannot create output ({exc.strerror or exc})") from None
    # mkdtemp makes 0700; match what a plain mkdir would give under the user's umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        _publish(tmp, final, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, final: Path, force: bool) -> None:
    old: Path | None = None
    if final.exists():
        if not force:
            raise OutputError(f"{final}: already exists (another process created it)")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if old is not None:
            os.rename(old, final)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise OutputError(f"{final}: already exists (another process created it)") from None
        raise OutputError(f"{final}: cannot create output ({exc.strerror or exc})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """Flush every file of a freshly written directory before it is published."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


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
            raise InputDataError(f"{mpath}: corrupt manifest (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != "cohortctl-store":
            raise InputDataError(f"{mpath}: not a cohortctl store manifest")
        if manifest.get("format_version") != STORE_FORMAT:
            raise InputDataError(
                f"{mpath}: store format {manifest.get('format_version')!r} is not supported "
                f"(this cohortctl reads format {STORE_FORMAT})"
            )
        for entry in manifest.get("tables", []):
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

    def read(self, entry: dict[str, Any], columns: list[str] | None = None) -> pl.DataFrame:
        path = self.verify(entry)
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
        return self.root / "runs"

    def run_names(self) -> list[str]:
        """Complete runs, oldest first (by creation order recorded in run.json)."""
        if not self.runs_dir.is_dir():
            return []
        found = []
        for p in self.runs_dir.iterdir():
            if p.name.startswith(".") or not (p / RUN_MANIFEST).is_file():
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
                raise InputMissingError(f"{self.root}: no cluster run yet (run `cohortctl cluster`)")
            run = names[-1]
        if not _SAFE_NAME.match(run) or run not in names:
            raise InputMissingError(f"{self.root}: no run named {run!r} (have: {', '.join(names) or 'none'})")
        return self.runs_dir / run


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
    try:
        meta = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{mpath}: unreadable run manifest ({exc})") from None
    if meta.get("format") != "cohortctl-run" or meta.get("format_version") != RUN_FORMAT:
        raise InputDataError(
            f"{mpath}: run format {meta.get('format_version')!r} not supported (need {RUN_FORMAT})"
        )
    files = meta.get("files", {})
    for rel, digest in files.items():
        path = safe_join(run_dir, rel, "run file")
        if not path.is_file():
            raise InputDataError(f"{path}: missing from run (truncated or tampered)")
        if sha256_file(path) != digest:
            raise InputDataError(f"{path}: checksum mismatch (tampered or corrupt artefact)")
    for p in run_dir.rglob("*"):
        if p.is_file() and p.name != RUN_MANIFEST and p.relative_to(run_dir).as_posix() not in files:
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
