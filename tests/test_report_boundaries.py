"""Report outputs at the trust boundary (issue 18), through the real CLI: --tables --force
never deletes what cohortctl did not write; TSV text cells cannot run as spreadsheet
formulas; Markdown values cannot inject HTML, headings or remote images; -o and --tables
that name the wrong kind of thing are one-line errors with the documented status."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cohortctl.cluster.run import ClusterOptions, cluster
from cohortctl.features import FeatureSettings
from cohortctl.store import Store

HOSTILE = {
    "formula": ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "@SUM(1)",
                "-2+3"],
    "html": ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"],
    "break": ["a\r# injected\r![x](http://evil/x.png)"],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two groups of 40; a clinical column whose two common levels are hostile strings."""
    tmp = tmp_path_factory.mktemp("boundary")
    rng = np.random.default_rng(2)
    ids = [f"B{i:03d}" for i in range(80)]
    X = rng.normal(size=(80, 6))
    X[:40, 0] += 8
    pl.DataFrame({"patient_id": ids, **{f"g{j}": X[:, j] for j in range(6)}}).write_parquet(
        tmp / "mol.parquet")
    levels = ["=HYPERLINK(\"http://evil\",\"x\")", "<script>alert(1)</script>",
              "a\r# injected\r![x](http://evil/x.png)", "+1+cmd|' /C calc'!A0"]
    pl.DataFrame({"patient_id": ids, "site": [levels[i % 4] for i in range(80)]}).write_parquet(
        tmp / "clin.parquet")
    from cohortctl.cli import main

    assert main(["-q", "ingest", "-o", str(tmp / "s"), "--molecular",
                 f"expr={tmp / 'mol.parquet'}", "--clinical", str(tmp / "clin.parquet"),
                 "--allow-columns", "site"]) == 0
    cluster(Store.open(tmp / "s"), ClusterOptions(
        method="ward", k=2, bootstrap=5, features=FeatureSettings(components="variance")))
    return tmp / "s"


def test_tables_force_never_replaces_a_users_directory(store: Path, tmp_path: Path,
                                                       cli: Callable) -> None:
    mine = tmp_path / "my_inputs"
    mine.mkdir()
    (mine / "expression.tsv").write_text("patient_id\tg1\nP1\t1\n")
    (mine / "clinical.parquet").write_bytes(b"PAR1")
    before = sorted(p.name for p in mine.iterdir())
    res = cli("report", store, "-o", tmp_path / "r.json", "--tables", mine, "--force")
    assert res.code == 73 and len(res.err.strip().splitlines()) == 1
    assert "not a --tables directory written by cohortctl" in res.err
    assert sorted(p.name for p in mine.iterdir()) == before
    assert (mine / "expression.tsv").read_text().startswith("patient_id")
    # A directory cohortctl wrote is replaced with --force (and only with it).
    out = tmp_path / "tables"
    assert cli("report", store, "-o", tmp_path / "a.json", "--tables", out).code == 0
    assert (out / ".cohortctl-tables.json").is_file()
    res = cli("report", store, "-o", tmp_path / "b.json", "--tables", out)
    assert res.code == 73 and "use --force" in res.err
    assert cli("report", store, "-o", tmp_path / "c.json", "--tables", out, "--force").code == 0


def test_tables_or_out_of_the_wrong_kind(store: Path, tmp_path: Path, cli: Callable) -> None:
    a_file = tmp_path / "tables.txt"
    a_file.write_text("keep me")
    res = cli("report", store, "-o", tmp_path / "r.json", "--tables", a_file, "--force")
    assert res.code == 73 and len(res.err.strip().splitlines()) == 1
    assert a_file.read_text() == "keep me"
    res = cli("report", store, "-o", tmp_path / "r.pdf")
    assert res.code == 2 and ".pdf" in res.err and not (tmp_path / "r.pdf").exists()
    res = cli("report", store, "-o", tmp_path / "r.json", "--format", "html")
    assert res.code == 2 and not (tmp_path / "r.json").exists()
    assert cli("report", store, "-o", tmp_path / "r.md").code == 0  # format from the name
    assert (tmp_path / "r.md").read_text().startswith("# Patient stratification report")


def test_tsv_text_cells_cannot_run_as_formulas(store: Path, tmp_path: Path,
                                               cli: Callable) -> None:
    assert cli("report", store, "-o", tmp_path / "r.json", "--tables", tmp_path / "t").code == 0
    cells = []
    for tsv in (tmp_path / "t").glob("*.tsv"):
        df = pl.read_csv(tsv, separator="\t", infer_schema_length=0, quote_char='"')
        cells += [v for c in df.columns for v in df[c].to_list() if v is not None]
    assert any("HYPERLINK" in v for v in cells)  # the hostile level is in Table 1 ...
    for v in cells:  # ... but no cell starts a formula
        if re.match(r"^[=+@\t\r-]", v) and not re.match(r"^-?\d+(\.\d+)?$", v):
            pytest.fail(f"live formula in a TSV cell: {v!r}")
    neutral = [v for v in cells if v.startswith("'")]
    assert any(v.startswith("'=HYPERLINK") for v in neutral)
    assert any(v.startswith("'+1+cmd") for v in neutral)


def test_markdown_values_are_inert(store: Path, tmp_path: Path, cli: Callable) -> None:
    assert cli("report", store, "-o", tmp_path / "r.md").code == 0
    md = (tmp_path / "r.md").read_text()
    assert "<script" not in md and "<img" not in md
    assert "![x](" not in md  # no remote image
    assert not re.search(r"^# injected", md, re.M)  # no heading injected from a value
    headings = [ln for ln in md.splitlines() if ln.startswith("# ")]
    assert len(headings) == 1  # the report's own title only
    # Every Table 1 row keeps the header's number of cells (no value broke out of it).
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| variable | level"))
    width = len(re.findall(r"(?<!\\)\|", header))
    rows = [ln for ln in lines if ln.startswith("| site |")]
    assert rows and all(len(re.findall(r"(?<!\\)\|", ln)) == width for ln in rows)


def test_global_flags_accepted_after_the_subcommand(store: Path, tmp_path: Path,
                                                    cli: Callable) -> None:
    from cohortctl.cli import hoist_global_flags

    assert hoist_global_flags(["report", "S", "-q", "-o", "r.md"]) == [
        "-q", "report", "S", "-o", "r.md"]
    assert hoist_global_flags(["twins", "S", "--", "-q"]) == ["twins", "S", "--", "-q"]
    res = cli("report", store, "-o", tmp_path / "r.md", "-q")
    assert res.code == 0 and res.err == ""


def test_markdown_text_lines_cannot_start_a_heading_quote_or_list() -> None:
    from cohortctl.report.markdown import _line

    assert _line("# x: levels pooled") == "\\# x: levels pooled"
    assert _line(">quote").startswith("\\>") and _line("- a").startswith("\\-")
    assert _line("12. x") == "12\\. x" and _line("-0.5 is a value") == "-0.5 is a value"


def test_figure_labels_from_the_data_carry_no_markup() -> None:
    """Plotly renders <a href>, <b>, ... in labels; a treatment or feature name from the data
    must stay text, while the report's own <br> and <extra> keep working."""
    from cohortctl.report.html import _inert_labels

    fig = {"data": [{"name": '<a href="https://evil">arm</a>', "x": ["<b>g1</b>", 1.5],
                     "text": ["cluster 0: 7 patients in this area<br>median 3"],
                     "hovertemplate": "%{y}: %{x}<extra></extra>"}]}
    out = _inert_labels(fig)["data"][0]
    assert out["name"] == '&lt;a href="https://evil">arm&lt;/a>'
    assert out["x"] == ["&lt;b>g1&lt;/b>", 1.5]
    assert out["text"] == fig["data"][0]["text"]
    assert out["hovertemplate"] == fig["data"][0]["hovertemplate"]
