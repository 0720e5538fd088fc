"""Report: small-cell rules in every format, planted survival and interaction effects."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from cohortctl.cli import main
from cohortctl.cluster.run import ClusterOptions, cluster
from cohortctl.features import FeatureSettings
from cohortctl.report.build import gather, write_report
from cohortctl.store import Store

COUNT_KEYS = {"n", "events", "responders", "at_risk", "count", "patients", "unassigned",
              "n_excluded", "mutated", "n_mutated", "size"}


def _store_from_groups(tmp: Path, sizes: list[int], *, seed: int = 0,
                       clinical: dict[str, Any] | None = None) -> Path:
    """Well-separated groups of the given sizes in a 10-feature molecular table."""
    rng = np.random.default_rng(seed)
    ids, rows = [], []
    for g, size in enumerate(sizes):
        centre = np.zeros(10)
        centre[g % 10] = 12.0 * (1 + g // 10)
        for i in range(size):
            ids.append(f"P{g}-{i:03d}")
            rows.append(centre + rng.normal(0, 0.5, 10))
    mol = pl.DataFrame({"patient_id": ids, **{f"g{j}": [r[j] for r in rows] for j in range(10)}})
    mol_path = tmp / "mol.parquet"
    mol.write_parquet(mol_path)
    args = ["-q", "ingest", "-o", str(tmp / "store"), "--molecular", f"expr={mol_path}"]
    if clinical is not None:
        clin = pl.DataFrame({"patient_id": ids, **clinical})
        clin.write_parquet(tmp / "clin.parquet")
        args += ["--clinical", str(tmp / "clin.parquet")]
    assert main(args) == 0
    return tmp / "store"


def _walk_counts(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in COUNT_KEYS and isinstance(v, int) and not isinstance(v, bool):
                out.append((f"{path}.{k}", v))
            out.extend(_walk_counts(v, f"{path}.{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(_walk_counts(v, f"{path}[{i}]"))
    return out


@pytest.fixture(scope="module")
def small_cluster_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("small")
    sizes = [40, 30, 3]
    n = sum(sizes)
    rng = np.random.default_rng(1)
    clinical = {
        "sex": rng.choice(["F", "M"], n).tolist(),
        "age": rng.integers(30, 80, n).tolist(),
        "treatment": rng.choice(["A", "B"], n).tolist(),
        "response": rng.integers(0, 2, n).tolist(),
        "os_time": rng.exponential(500, n).round(1).tolist(),
        "os_event": rng.integers(0, 2, n).tolist(),
    }
    store = _store_from_groups(tmp, sizes, clinical=clinical)
    # The 3-patient group differs in one feature of ten: structure the permutation noise
    # floor cannot see (docs/methods.md), so this panel uses the variance rule.
    run = cluster(Store.open(store), ClusterOptions(
        method="ward", k=3, bootstrap=5, features=FeatureSettings(components="variance")))
    sizes_found = pl.read_parquet(run / "assignments.parquet")["cluster"].value_counts()
    assert sorted(sizes_found["count"].to_list()) == [3, 30, 40]
    return store


def test_cluster_of_three_never_shows_a_small_count(small_cluster_store: Path,
                                                    tmp_path: Path) -> None:
    st = Store.open(small_cluster_store)
    for fmt in ("json", "md", "html"):
        write_report(st, out=tmp_path / f"r.{fmt}", fmt=fmt, min_cell=5)
    rep = json.loads((tmp_path / "r.json").read_text())
    bad = [(p, v) for p, v in _walk_counts(rep) if 0 < v < 5]
    assert not bad, bad[:10]
    clusters = rep["groups"]["clusters"]
    assert any(c["suppressed"] and c["n"] is None for c in clusters)
    # The one structural exception: the folded line, which the public total gives anyway.
    assert rep["groups"]["not_clustered_or_withheld"] == 3
    md = (tmp_path / "r.md").read_text()
    assert "not clustered or withheld (cluster 2)" in md
    html = (tmp_path / "r.html").read_text()
    # Every "n (%)" cell in the rendered text is 0 or at least 5 ...
    for text in (md, html):
        cells = re.findall(r"(\d+) \(\d+(?:\.\d+)?%\)", text)
        small = [c for c in cells if 0 < int(c) < 5]
        assert not small, small[:10]
    # ... and so is every count column of the count tables behind all three formats.
    rep_obj = gather(st, min_cell=5)
    count_cols = {"n", "events", "responders", "patients"}
    for name in ("groups", "table1", "survival", "response", "survival_treatment"):
        table = rep_obj.tables.get(name)
        if table is None:
            continue
        if "cluster" in table.columns:
            table = table.filter(~pl.col("cluster").cast(pl.String).str.starts_with(
                "not clustered or withheld"))
        for col in count_cols & set(table.columns):
            ints = [int(v) for v in table[col].to_list() if v and str(v).isdigit()]
            assert all(v == 0 or v >= 5 for v in ints), (name, col, ints)


def test_min_cell_one_disables_suppression(small_cluster_store: Path, tmp_path: Path) -> None:
    write_report(Store.open(small_cluster_store), out=tmp_path / "r.json", fmt="json",
                 min_cell=1)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert sorted(c["n"] for c in rep["groups"]["clusters"]) == [3, 30, 40]


def _survival_store(tmp: Path, effect: bool) -> Path:
    rng = np.random.default_rng(5)
    sizes = [60, 60]
    t0 = rng.exponential(1000, 60)
    # The null fixture is exactly null: the second group has the same times, shuffled.
    t1 = rng.exponential(150, 60) if effect else rng.permutation(t0)
    clinical = {"os_time": np.concatenate([t0, t1]).round(1).tolist(),
                "os_event": [1] * 120}
    store = _store_from_groups(tmp, sizes, clinical=clinical, seed=3)
    cluster(Store.open(store), ClusterOptions(method="ward", k=2, bootstrap=3))
    return store


@pytest.mark.parametrize("effect", [True, False])
def test_logrank_detects_planted_survival_difference_only(tmp_path: Path, effect: bool) -> None:
    store = _survival_store(tmp_path, effect)
    write_report(Store.open(store), out=tmp_path / "r.json", fmt="json")
    p = json.loads((tmp_path / "r.json").read_text())["survival"]["logrank"]["p"]
    assert (p < 0.001) if effect else (p > 0.05), p


@pytest.mark.parametrize("interaction", [True, False])
def test_simulated_treatment_interaction(tmp_path: Path, interaction: bool) -> None:
    from cohortctl.simulate import simulate_cohort

    sim = simulate_cohort(tmp_path / "sim", patients=400, subtypes=4, genes=500,
                          mutation_genes=50, seed=11, interaction=interaction)
    p = sim.paths
    store = tmp_path / "store"
    assert main(["-q", "ingest", "-o", str(store), "--clinical", str(p["clinical"]),
                 "--molecular", f"expression={p['expression']}"]) == 0
    cluster(Store.open(store), ClusterOptions(seed=0, bootstrap=10))
    write_report(Store.open(store), out=tmp_path / "r.json", fmt="json")
    inter = json.loads((tmp_path / "r.json").read_text())["response"]["interaction"]
    print(f"interaction={interaction}: {inter}")
    if inter.get("p") is None:  # exact p withheld to protect a small cell: only a bound
        assert inter["p_coarsened"] and interaction
        assert inter["p_bound"] <= 0.001
    else:
        assert (inter["p"] < 0.001) if interaction else (inter["p"] > 0.05)


def test_html_is_self_contained(small_cluster_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    write_report(Store.open(small_cluster_store), out=out)
    html = out.read_text()
    # plotly.js itself mentions URLs in strings; the page's own markup must load nothing.
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", markup)
    assert "<link" not in markup and "@import" not in markup
    assert "connect-src 'none'" in html
    assert len(html.encode()) < 20 * 2**20
    for key in ("cohort", "groups", "clinical", "survival", "response", "markers", "methods"):
        assert f'id="{key}"' in html
    assert "P0-000" not in html  # identifiers only with --include-ids


def test_vendored_plotly_is_the_recorded_file_and_draws_every_trace(
        small_cluster_store: Path) -> None:
    """The inlined plotly.js is the file whose provenance report/vendor/README.md records,
    and its cartesian bundle has every trace type the report draws."""
    import hashlib
    from importlib import resources

    vendor = resources.files("cohortctl.report") / "vendor"
    data = (vendor / "plotly-cartesian.min.js").read_bytes()
    recorded = re.search(r"SHA256: ([0-9a-f]{64})", (vendor / "README.md").read_text())
    assert recorded and hashlib.sha256(data).hexdigest() == recorded.group(1)
    assert b"plotly.js (cartesian - minified) v4.1.1" in data[:200]
    rep = gather(Store.open(small_cluster_store))
    figures = [*rep.figures.values()]
    if "embedding" in rep.figures:
        figures += list(rep.figures["embedding"]["embedding"]["views"].values())
    kinds = {t.get("type", "scatter") for f in figures for t in f.get("data", [])}
    assert kinds and kinds <= {"scatter", "bar", "heatmap", "box"}, kinds


def test_include_ids_and_tables_dir(small_cluster_store: Path, tmp_path: Path) -> None:
    st = Store.open(small_cluster_store)
    write_report(st, out=tmp_path / "r.json", fmt="json", tables_dir=tmp_path / "t")
    names = {p.name for p in (tmp_path / "t").iterdir()}
    assert {"groups.tsv", "table1.tsv"} <= names
    # Patient-level coordinates only with identifiers asked for, and never in the page.
    assert not {"embedding.parquet", "assignments.parquet"} & names
    write_report(st, out=tmp_path / "r2.html", include_ids=True, tables_dir=tmp_path / "t2")
    assert "P0-000" not in (tmp_path / "r2.html").read_text()
    emb = pl.read_parquet(tmp_path / "t2" / "embedding.parquet")
    assert "patient_id" in emb.columns and emb["patient_id"].str.starts_with("P").all()


def test_tables_dir_holds_typed_numbers_with_a_dictionary(small_cluster_store: Path,
                                                          tmp_path: Path) -> None:
    """--tables: the protected numbers as typed columns (a count is an integer, a withheld
    one an empty cell beside its flag), every column described, no quoted empty strings."""
    out = tmp_path / "t"
    write_report(Store.open(small_cluster_store), out=tmp_path / "r.json", fmt="json",
                 tables_dir=out)
    data = json.loads((tmp_path / "r.json").read_text())
    t1 = pl.read_parquet(out / "data_table1.parquet")
    assert t1.schema["n"] == pl.Int64 and t1.schema["n_suppressed"] == pl.Boolean
    assert t1.schema["percent"] == pl.Float64
    assert t1.filter(pl.col("n_suppressed"))["n"].null_count() == t1["n_suppressed"].sum()
    groups = pl.read_parquet(out / "data_groups.parquet")
    shown = [c["n"] for c in data["groups"]["clusters"]]
    assert groups["n"].to_list() == shown
    assert pl.read_csv(out / "data_table1.tsv", separator="\t").schema["n"] == pl.Int64
    dictionary = pl.read_parquet(out / "data_dictionary.parquet")
    for path in out.glob("data_*.parquet"):
        if path.stem == "data_dictionary":
            continue
        cols = set(dictionary.filter(pl.col("table") == path.stem)["column"])
        assert cols == set(pl.read_parquet(path).columns), path.stem
    assert dictionary["description"].str.len_chars().min() > 10
    for tsv in out.glob("*.tsv"):
        assert '""' not in tsv.read_text(), tsv.name


def test_assignment_confidence_is_drawn_from_percentiles(small_cluster_store: Path) -> None:
    """Per displayed group a box from the 10th-90th percentiles of assignment confidence
    (groups of >= min-cell patients only); no patient-level value in the figure."""
    rep = gather(Store.open(small_cluster_store))
    rows = rep.data["groups"]["confidence"]
    shown = {c["cluster"] for c in rep.data["groups"]["clusters"] if not c["suppressed"]}
    assert {r["cluster"] for r in rows} == shown
    for r in rows:
        qs = [r[k] for k in ("p10", "p25", "p50", "p75", "p90")]
        assert qs == sorted(qs) and qs[0] >= 0 and qs[-1] <= 1
        assert all(round(q, 2) == q for q in qs)
    (box,) = rep.figures["confidence"]["data"]
    assert box["type"] == "box" and len(box["median"]) == len(rows)
    assert "x" not in box  # summaries only, no per-patient values


def test_summary_comes_first_and_repeats_only_protected_numbers(
        small_cluster_store: Path, tmp_path: Path) -> None:
    rep = gather(Store.open(small_cluster_store), min_cell=5)
    assert rep.sections[0]["key"] == "summary"
    table = rep.tables["summary"]
    assert sorted(int(v) for v in table["patients"].to_list()) == [30, 40]  # 3 folded
    assert any("not clustered or in groups too small" in s
               for s in rep.data["summary"]["sentences"])
    survival = {c["name"]: c for c in rep.data["survival"]["clusters"]}
    for row in table.iter_rows(named=True):
        c = survival[row["group"]]
        if c["median_withheld"]:
            assert "withheld" in row["survival"]
    write_report(Store.open(small_cluster_store), out=tmp_path / "r.md", fmt="md")
    md = (tmp_path / "r.md").read_text()
    assert md.index("## Summary") < md.index("## Cohort") < md.index("## Groups")


def test_no_section_is_a_bare_heading(tmp_path: Path) -> None:
    """Mutation calls only, no clinical table: Markers says why it is empty."""
    rng = np.random.default_rng(3)
    ids = [f"Q{i:03d}" for i in range(60)]
    calls = pl.DataFrame({"patient_id": ids,
                          **{f"G{j}": (rng.random(60) < 0.3).astype(int) for j in range(8)}})
    calls.write_parquet(tmp_path / "calls.parquet")
    assert main(["-q", "ingest", "-o", str(tmp_path / "s"), "--genetic",
                 f"calls={tmp_path / 'calls.parquet'}"]) == 0
    cluster(Store.open(tmp_path / "s"), ClusterOptions(bootstrap=5))
    rep = gather(Store.open(tmp_path / "s"), min_cell=5)
    for sec in rep.sections:
        assert sec["items"], sec["key"]
