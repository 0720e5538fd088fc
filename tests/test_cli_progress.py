"""Progress of long commands on stderr (issue 16): one line per stage when stderr is not a
terminal (not one per bootstrap), nothing with -q; data stay on stdout."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohortctl.cli import main
from tests.test_disclosure_whole_report import _cohort


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cohort(tmp_path_factory.mktemp("progress"), 3, [40, 30], {})


def test_one_line_per_stage_when_not_a_terminal(store: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", str(store), "--seed", "1", "--bootstrap", "6"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith(str(store))  # the path for the next command, only
    assert err.count("bootstrap re-clustering") == 1
    assert "no-structure reference" in err
    assert "1/6" not in err and "2/6" not in err


def test_quiet_prints_no_progress(store: Path, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    assert main(["-q", "cluster", str(store), "--seed", "2", "--bootstrap", "6"]) == 0
    assert main(["-q", "report", str(store), "-o", str(tmp_path / "r.json")]) == 0
    _, err = capsys.readouterr()
    assert err == ""
