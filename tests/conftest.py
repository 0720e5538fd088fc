"""Shared fixtures: run the CLI in-process or as a subprocess, and hash directory trees."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
DOCUMENTED_EXITS = {0, 1, 2, 65, 66, 73, 130}


@dataclass
class CliResult:
    """Exit status and captured streams of one ``cohortctl`` invocation."""

    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("cohortctl: error:")]


@pytest.fixture
def sample_data() -> Path:
    """The bundled sample cohorts (read-only)."""
    return SAMPLE_DATA


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``cohortctl ARGS`` in-process (fast); streams are captured per call."""
    from cohortctl.cli import main

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


@pytest.fixture
def cli_process() -> Callable[..., CliResult]:
    """Run the installed ``cohortctl`` console script (real exit statuses)."""
    exe = Path(sys.executable).parent / "cohortctl"

    def run(*args: str | Path, env: dict[str, str] | None = None) -> CliResult:
        proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                              timeout=120, env=env)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative POSIX path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def digest() -> Callable[[Path], dict[str, str]]:
    """:func:`tree_digest` as a fixture."""
    return tree_digest
