"""Tests for cohortctl.assign: new patients placed into an existing run's clusters."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import adjusted_rand_score

from cohortctl.assign import (
    MAX_ABSENT_FEATURES,
    Reference,
    RunModel,
    _read_inputs,
    _result_table,
    assign,
    load_run,
    place,
)
from cohortctl.cli import main
from cohortctl.cluster.placement import PlacementRule
from cohortctl.cluster.placement import place as place_by_vote
from cohortctl.errors import EXIT_CANTCREAT, EXIT_DATA, EXIT_USAGE, CohortError
from cohortctl.io.readers import TableSpec
from cohortctl.store import sha256_file

BREAST = Path(__file__).resolve().parents[1] / "sample_data" / "breast_tcga"
MIN_AGREEMENT = 0.85


def _cli(*args: str) -> None:
    code = main(["-q", *args])
    assert code == 0, f"cohortctl {' '.join(args)} exited {code}"


@pytest.fixture(scope="session")
def breast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 150 TCGA breast training patients, ingested and clustered (defaults, seed 0)."""
    store = tmp_path_factory.mktemp("breast") / "breast.cohort"
    _cli("ingest", "-o", str(store), "--clinical", str(BREAST / "clinical.parquet"),
         "--molecular", f"mrna={BREAST / 'mrna_train.parquet'}",
         "--molecular", f"mirna={BREAST / 'mirna_train.parquet'}",
         "--molecular", f"protein={BREAST / 'protein_train.parquet'}",
         "--reference", "subtype")
    _cli("cluster", str(store), "--seed", "0")
    return store


@pytest.fixture(scope="session")
def breast_test_assigned(breast: Path, tmp_path_factory: pytest.TempPathFactory
                         ) -> tuple[pl.DataFrame, dict]:
    """The 70 held-out patients assigned from mRNA + miRNA only (no protein)."""
    out = tmp_path_factory.mktemp("assign") / "test.parquet"
    summary = assign(breast, molecular=[f"mrna={BREAST / 'mrna_test.parquet'}",
                                        TableSpec("mirna", BREAST / "mirna_test.parquet")],
                     out=out)
    return pl.read_parquet(out), summary


def _training_assignments(store: Path) -> pl.DataFrame:
    run = load_run(store)
    return pl.DataFrame({"patient_id": run.patient_ids, "train_cluster": run.clusters,
                         "train_confidence": run.confidence})


def test_breast_held_out_patients_match_reference_subtype(breast: Path,
                                                          breast_test_assigned, capsys) -> None:
    table, summary = breast_test_assigned
    clin = pl.read_parquet(BREAST / "clinical.parquet").select("patient_id", "subtype")
    train = _training_assignments(breast).join(clin, on="patient_id")
    majority = (train.filter(pl.col("train_cluster") >= 0)
                .group_by("train_cluster", "subtype").len()
                .sort(["len", "subtype"], descending=[True, False])
                .unique("train_cluster", keep="first"))
    mapping = dict(zip(majority["train_cluster"], majority["subtype"], strict=True))
    scored = table.join(clin, on="patient_id").with_columns(
        pl.col("cluster").replace_strict(mapping, default=None).alias("predicted"))
    assert scored.height == 70 and table.height == 70
    hits = int((scored["predicted"] == scored["subtype"]).sum())
    agreement = hits / scored.height
    with capsys.disabled():
        print(f"\n[assign] breast held-out agreement with reference subtype: "
              f"{agreement:.1%} ({hits}/{scored.height}); novel: {summary['novel']}")
    assert agreement >= MIN_AGREEMENT, f"agreement {agreement:.1%} < {MIN_AGREEMENT:.0%}"
    # Protein was never given: every patient placed from mRNA + miRNA, and told so.
    assert set(table["modalities_used"]) == {"mrna,mirna"}
    assert set(table["modalities_missing"]) == {"protein"}
    assert summary["patients_missing_block"]["protein"] == 70
    assert summary["placed"] == 70 and summary["patients_also_in_run"] == 0


def test_output_schema_and_values(breast: Path, breast_test_assigned) -> None:
    table, summary = breast_test_assigned
    assert table.columns == ["patient_id", "cluster", "confidence", "nearest_cluster", "novel",
                             "distance", "modalities_used", "modalities_missing"]
    assert table["patient_id"].is_unique().all()
    assert table["confidence"].is_between(0, 1).all()
    assert (table["distance"] >= 0).all()
    assert table["novel"].dtype == pl.Boolean
    assert table["novel"].mean() <= 0.1  # in-distribution patients are rarely novel
    # Placed patients without a majority for one cluster are unassigned (-1), like the
    # run's own unassigned patients; they still have a nearest cluster.
    assert set(table["cluster"].to_list()) - {-1} <= {int(c) for c in summary["clusters"]}
    unassigned = table.filter(pl.col("cluster") == -1)
    assert unassigned["nearest_cluster"].null_count() == 0
    assert summary["unassigned"] == unassigned.height
    assert summary["assigned"] == sum(summary["clusters"].values()) == table.height - \
        unassigned.height
    assert summary["placed"] == summary["assigned"] + summary["unassigned"] == 70
    assert summary["rules"]["k_vote"] >= 1 and summary["rules"]["novel_threshold"] > 0
    rm = load_run(breast)
    assert summary["rules"]["placement_rule"] == rm.rule.to_dict()
    assert summary["rules"]["noise_training_patients"] == "vote as unassigned (-1)"
    assert summary["rules"]["k_impute"] == rm.k_impute


def test_training_patients_assigned_back_land_in_their_cluster(breast: Path, tmp_path: Path,
                                                               capsys) -> None:
    out = tmp_path / "self.parquet"
    summary = assign(breast, molecular=[f"mrna={BREAST / 'mrna_train.parquet'}",
                                        f"mirna={BREAST / 'mirna_train.parquet'}",
                                        f"protein={BREAST / 'protein_train.parquet'}"], out=out)
    got = pl.read_parquet(out).join(_training_assignments(breast), on="patient_id")
    assert got.height == 150 and summary["patients_also_in_run"] == 150
    assigned = got.filter(pl.col("train_cluster") >= 0)
    same = float((assigned["cluster"] == assigned["train_cluster"]).mean())
    with capsys.disabled():
        print(f"\n[assign] training patients back in their own cluster: {same:.1%} of "
              f"{assigned.height} assigned (noise patients: {got.height - assigned.height})")
    assert same >= 0.99
    # Confidently assigned training patients come back exactly where the run put them.
    sure = got.filter((pl.col("train_cluster") >= 0) & (pl.col("train_confidence") >= 0.8))
    assert sure.height > 0.5 * got.height
    assert (sure["cluster"] == sure["train_cluster"]).all()
    assert set(got["modalities_missing"]) == {""}


def _with_noise(rm: RunModel, size: int = 12) -> tuple[RunModel, int]:
    """The run as if HDBSCAN had left one patient and its nearest neighbours unassigned."""
    centre = int(np.argmax(rm.confidence))
    d = np.linalg.norm(rm.matrix - rm.matrix[centre], axis=1)
    noise = np.argsort(d, kind="stable")[:size]
    clusters, conf = rm.clusters.copy(), rm.confidence.copy()
    clusters[noise], conf[noise] = -1, 0.5
    return dataclasses.replace(rm, clusters=clusters, confidence=conf), centre


def test_unassigned_training_patients_vote_like_in_cluster(breast: Path) -> None:
    """Training patients the run left unassigned vote as -1 (the shared placement rule):
    a new patient amid them stays unassigned but still gets a nearest cluster, and the
    confidently assigned training patients are reproduced."""
    rm, centre = _with_noise(load_run(breast))
    ref = Reference.from_run(rm)
    assert ref.matrix.shape[0] == len(rm.patient_ids)  # noise patients are in the vote
    assert -1 not in ref.labels
    res = ref.classify(rm.matrix)
    assert res["cluster"][centre] == -1
    assert res["nearest_cluster"][centre] >= 0
    new = ref.classify(rm.matrix[centre:centre + 1] + 1e-6)
    assert new["cluster"].tolist() == [-1] and new["nearest_cluster"][0] >= 0
    sure = (rm.clusters >= 0) & (rm.confidence >= 0.8)
    assert float((res["cluster"][sure] == rm.clusters[sure]).mean()) >= 0.98
    # The same vote as the cluster side's shared rule, on the same reference.
    labels, _conf, _share = place_by_vote(rm.matrix, rm.clusters, rm.confidence, rm.matrix,
                                          PlacementRule())
    assert np.array_equal(labels, res["cluster"])


def test_run_attaching_noise_gets_new_unassigned_attached_too(breast: Path) -> None:
    rm = load_run(breast)
    strict = dataclasses.replace(rm, rule=PlacementRule(majority=0.99))
    specs = [TableSpec("mrna", BREAST / "mrna_test.parquet")]
    frames, _maf = _read_inputs(rm, specs, [], None, id_column=None, fmt=None, layout="auto",
                                tcga_barcodes=None, maf_classes=None, maf_covers_clinical=False)
    placement = place(rm, frames)
    table = _result_table(strict, placement, Reference.from_run(strict))
    lonely = table.filter(pl.col("cluster") == -1)
    assert lonely.height > 0 and lonely["nearest_cluster"].null_count() == 0
    attach = dataclasses.replace(strict, params={**rm.params, "assign_noise": True})
    attached = _result_table(attach, placement, Reference.from_run(attach))
    assert (attached["cluster"] >= 0).all()
    back = attached.join(lonely.select("patient_id", "nearest_cluster"), on="patient_id",
                         suffix="_lonely")
    assert (back["cluster"] == back["nearest_cluster_lonely"]).all()


def _rechecksum(run: Path, *names: str) -> None:
    meta = json.loads((run / "run.json").read_text())
    for name in names:
        meta["files"][name] = sha256_file(run / name)
    (run / "run.json").write_text(json.dumps(meta))


def test_recorded_placement_rule_and_imputation_are_reused(breast_copy: Path,
                                                           tmp_path: Path) -> None:
    """``assign`` places by the rule and imputes with the ``k_impute`` the run recorded
    (defaults when an older run records neither)."""
    run = _run_dir(breast_copy)
    params = json.loads((run / "params.json").read_text())
    integ = json.loads((run / "model" / "integration.json").read_text())
    params.setdefault("resolved", {})["placement_rule"] = {"k": 5, "majority": 0.9}
    (run / "params.json").write_text(json.dumps(params))
    (run / "model" / "integration.json").write_text(json.dumps({**integ, "k_impute": 2}))
    _rechecksum(run, "params.json", "model/integration.json")
    rm = load_run(breast_copy)
    assert rm.rule == PlacementRule(k=5, floor_fraction=0.1, majority=0.9)
    assert rm.k_impute == 2
    specs = [TableSpec("mrna", BREAST / "mrna_test.parquet")]
    frames, _maf = _read_inputs(rm, specs, [], None, id_column=None, fmt=None, layout="auto",
                                tcga_barcodes=None, maf_classes=None, maf_covers_clinical=False)
    two = place(rm, frames).matrix
    ten = place(dataclasses.replace(rm, k_impute=10), frames).matrix
    s0, s1 = rm.slices["mrna"]
    assert np.allclose(two[:, s0:s1], ten[:, s0:s1])  # the given block is not imputed
    assert not np.allclose(two, ten)  # the missing ones are, with the recorded k
    summary = assign(breast_copy, molecular=specs, out=tmp_path / "a.parquet")
    assert summary["rules"]["placement_rule"] == {"k": 5, "floor_fraction": 0.1,
                                                  "majority": 0.9}
    assert summary["rules"]["k_vote"] == 5 and summary["rules"]["k_impute"] == 2
    # An older run that records neither gets the defaults.
    del params["resolved"]["placement_rule"]
    (run / "params.json").write_text(json.dumps(params))
    (run / "model" / "integration.json").write_text(
        json.dumps({k: v for k, v in integ.items() if k != "k_impute"}))
    _rechecksum(run, "params.json", "model/integration.json")
    rm = load_run(breast_copy)
    assert rm.rule == PlacementRule() and rm.k_impute == 10


def _training_tables_replaced(rm: RunModel, specs: list[TableSpec] | None = None
                              ) -> np.ndarray:
    """The training patients re-read (default: the 150 breast patients) and placed with the
    run's stored model, in the run's patient order."""
    specs = specs or [TableSpec(n, BREAST / f"{n}_train.parquet")
                      for n in ("mrna", "mirna", "protein")]
    frames, _maf = _read_inputs(rm, specs, [], None, id_column=None, fmt=None, layout="auto",
                                tcga_barcodes=None, maf_classes=None, maf_covers_clinical=False)
    placement = place(rm, frames)
    return placement.matrix[[placement.patient_ids.index(p) for p in rm.patient_ids]]


def test_stored_preprocessing_reproduces_training_coordinates(breast: Path) -> None:
    """Re-applying the saved JSON/Parquet model gives the run's integrated matrix."""
    rm = load_run(breast)
    assert np.allclose(_training_tables_replaced(rm), rm.matrix, atol=1e-8)


def test_equal_component_weights_are_reapplied_to_new_patients(breast: Path,
                                                               tmp_path: Path) -> None:
    """A run clustered in the equal-variance geometry stores its weights: re-applying the
    model gives that run's coordinates, not the variance-weighted ones."""
    store = tmp_path / "copy.cohort"
    shutil.copytree(breast, store)
    _cli("cluster", str(store), "--seed", "0", "--run", "eq", "--component-weight", "equal",
         "--bootstrap", "6")
    rm = load_run(store, "eq")
    assert json.loads((rm.run_dir / "params.json").read_text())["component_weight_used"] == "equal"
    assert np.allclose(_training_tables_replaced(rm), rm.matrix, atol=1e-8)
    base = load_run(breast)
    if json.loads((base.run_dir / "params.json").read_text())["component_weight_used"] != "equal":
        assert not np.allclose(rm.matrix, base.matrix, atol=1e-3)


def test_far_away_patient_is_novel(breast: Path, tmp_path: Path) -> None:
    rm = load_run(breast)
    ref = Reference.from_run(rm)
    inside = ref.classify(rm.matrix[rm.clusters >= 0][:5])
    assert not inside["novel"].any()
    far = rm.matrix[:1] + 10 * rm.matrix.std(axis=0)
    assert ref.classify(far)["novel"].all()
    # End to end: a patient whose expression is wildly off is flagged.
    mrna = pl.read_parquet(BREAST / "mrna_test.parquet").head(3)
    odd = mrna.with_columns(pl.exclude("patient_id") * -3 + 40)
    odd = odd.with_columns(pl.lit("ODD-1").alias("patient_id")).head(1)
    pl.concat([mrna, odd]).write_parquet(tmp_path / "mrna.parquet")
    assign(breast, molecular=[f"mrna={tmp_path / 'mrna.parquet'}"], out=tmp_path / "o.parquet")
    res = pl.read_parquet(tmp_path / "o.parquet")
    assert res.filter(pl.col("patient_id") == "ODD-1")["novel"].item() is True
    assert set(res["modalities_missing"]) == {"mirna,protein"}


def test_missing_features_error_above_threshold_warning_below(breast: Path, tmp_path: Path,
                                                              caplog) -> None:
    rm = load_run(breast)
    feats = rm.blocks["mrna"].features
    mrna = pl.read_parquet(BREAST / "mrna_test.parquet")
    too_many = feats[: int(len(feats) * (MAX_ABSENT_FEATURES + 0.1))]
    mrna.drop(too_many).write_parquet(tmp_path / "few.parquet")
    with pytest.raises(CohortError) as err:
        assign(breast, molecular=[f"mrna={tmp_path / 'few.parquet'}"], out=tmp_path / "a.parquet")
    assert err.value.exit_code == EXIT_DATA
    assert "absent" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "a.parquet").exists()
    some = feats[: max(1, len(feats) // 5)]
    mrna.drop(some).write_parquet(tmp_path / "some.parquet")
    with caplog.at_level(logging.WARNING, logger="cohortctl"):
        summary = assign(breast, molecular=[f"mrna={tmp_path / 'some.parquet'}"],
                         out=tmp_path / "b.parquet")
    assert summary["absent_features"]["mrna"] == len(some)
    assert any("absent" in r.getMessage() for r in caplog.records)


def test_bad_inputs_are_refused_with_exit_codes(breast: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    cases = [
        ({"molecular": [f"rna={BREAST / 'mrna_test.parquet'}"]}, EXIT_USAGE),  # unknown block
        ({"genetic": [f"mrna={BREAST / 'mrna_test.parquet'}"]}, EXIT_USAGE),  # wrong kind
        ({}, EXIT_USAGE),  # nothing to assign
        ({"molecular": [f"mrna={BREAST / 'mrna_test.parquet'}"], "out": breast / "runs" / "a.pq"},
         EXIT_USAGE),  # inside runs/: would break the run's checksums
    ]
    for kwargs, code in cases:
        kwargs = {"out": out, **kwargs}
        with pytest.raises(CohortError) as err:
            assign(breast, **kwargs)
        assert err.value.exit_code == code, (kwargs, err.value)
    dup = pl.concat([pl.read_parquet(BREAST / "mrna_test.parquet").head(2)] * 2)
    dup.write_parquet(tmp_path / "dup.parquet")
    with pytest.raises(CohortError) as err:
        assign(breast, molecular=[f"mrna={tmp_path / 'dup.parquet'}"], out=out)
    assert err.value.exit_code == EXIT_DATA and "duplicate patient ID" in str(err.value)


def test_never_overwrites_without_force(breast: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    spec = [f"mirna={BREAST / 'mirna_test.parquet'}"]
    assign(breast, molecular=spec, out=out)
    before = out.read_bytes()
    with pytest.raises(CohortError) as err:
        assign(breast, molecular=spec, out=out)
    assert err.value.exit_code == EXIT_CANTCREAT
    assert out.read_bytes() == before
    assign(breast, molecular=spec, out=out, force=True)
    assert pl.read_parquet(out).height == 70
    assert [p.name for p in tmp_path.iterdir()] == ["a.parquet"]  # no temporary left over


# -- artefact integrity -------------------------------------------------------------------
@pytest.fixture()
def breast_copy(breast: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy.cohort"
    shutil.copytree(breast, dst)
    return dst


def _run_dir(store: Path) -> Path:
    return load_run(store).run_dir


def _assign_exit(store: Path, tmp_path: Path) -> CohortError:
    with pytest.raises(CohortError) as err:
        assign(store, molecular=[f"mrna={BREAST / 'mrna_test.parquet'}"],
               out=tmp_path / "out.parquet")
    assert "\n" not in str(err.value)
    return err.value


@pytest.mark.parametrize("target", ["model/block-mrna-pca.parquet", "model/block-mirna.json",
                                    "model/integrated.parquet", "assignments.parquet"])
def test_flipped_byte_is_refused(breast_copy: Path, tmp_path: Path, target: str) -> None:
    path = _run_dir(breast_copy) / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    err = _assign_exit(breast_copy, tmp_path)
    assert err.exit_code == EXIT_DATA and "checksum mismatch" in str(err)


def test_truncated_or_missing_file_is_refused(breast_copy: Path, tmp_path: Path) -> None:
    run = _run_dir(breast_copy)
    path = run / "model" / "block-protein-pca.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert _assign_exit(breast_copy, tmp_path).exit_code == EXIT_DATA
    path.unlink()
    err = _assign_exit(breast_copy, tmp_path)
    assert err.exit_code == EXIT_DATA and "missing" in str(err)


def test_incompatible_format_is_refused(breast_copy: Path, tmp_path: Path) -> None:
    run = _run_dir(breast_copy)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "format_version": 99}))
    assert "format" in str(_assign_exit(breast_copy, tmp_path))


def test_consistently_rechecksummed_but_inconsistent_model_is_refused(breast_copy: Path,
                                                                      tmp_path: Path) -> None:
    """Even with matching checksums, a model whose shapes disagree is refused (exit 65)."""
    run = _run_dir(breast_copy)
    space = run / "model" / "integrated.parquet"
    pl.read_parquet(space).drop("dim1").write_parquet(space)
    meta = json.loads((run / "run.json").read_text())
    meta["files"]["model/integrated.parquet"] = sha256_file(space)
    (run / "run.json").write_text(json.dumps(meta))
    err = _assign_exit(breast_copy, tmp_path)
    assert err.exit_code == EXIT_DATA and "incompatible" in str(err)


def test_nothing_in_the_store_is_pickled(breast: Path, breast_test_assigned) -> None:
    files = [p for p in breast.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any("model" in p.parts for p in files)
    for p in files:
        assert p.suffix in {".parquet", ".json", ".html", ".md"}, p
        head = p.read_bytes()[:2]
        assert head not in (b"\x80\x04", b"\x80\x05", b"\x80\x03", b"\x80\x02"), p


# -- genetic (MAF) + missing modality -----------------------------------------------------
@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small simulated cohort (MAF + expression + methylation), K-means K=3."""
    from cohortctl.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("sim")
    simulate_cohort(root / "data", patients=160, subtypes=3, genes=120, methylation_features=60,
                    mutation_genes=30, seed=3)
    store = root / "sim.cohort"
    _cli("ingest", "-o", str(store), "--clinical", str(root / "data" / "clinical.parquet"),
         "--genetic", f"mut={root / 'data' / 'mutations.maf'}",
         "--molecular", f"expr={root / 'data' / 'expression.parquet'}",
         "--molecular", f"meth={root / 'data' / 'methylation.parquet'}")
    _cli("cluster", str(store), "--method", "kmeans", "--k", "3", "--bootstrap", "0")
    return store, root / "data"


def test_maf_and_missing_methylation(sim: tuple[Path, Path], tmp_path: Path) -> None:
    store, data = sim
    out = tmp_path / "a.parquet"
    summary = assign(store, genetic=[f"mut={data / 'mutations.maf'}"],
                     molecular=[f"expr={data / 'expression.parquet'}"], out=out)
    got = pl.read_parquet(out).join(_training_assignments(store), on="patient_id")
    assert summary["absent_features"]["mut"] == 0  # genes absent from a MAF = wild-type
    assert (got["modalities_missing"].str.contains("meth")).all()
    both = got.filter(pl.col("modalities_used") == "mut,expr")
    assert both.height > 100
    assert float((both["cluster"] == both["train_cluster"]).mean()) >= 0.9


def test_single_patient_from_csv(breast: Path, tmp_path: Path) -> None:
    """The everyday case: one new patient, one modality, as CSV."""
    row = pl.read_parquet(BREAST / "mirna_test.parquet").head(1)
    row.write_csv(tmp_path / "one.csv")
    summary = assign(breast, molecular=[f"mirna={tmp_path / 'one.csv'}"],
                     out=tmp_path / "one.parquet")
    got = pl.read_parquet(tmp_path / "one.parquet")
    assert summary["placed"] == 1 and got["patient_id"].to_list() == row["patient_id"].to_list()
    assert got["cluster"].item() >= 0 and got["modalities_missing"].item() == "mrna,protein"


# -- a run whose automatic geometry choice is the equal-variance one ----------------------
def _weak_axis_cohort(path: Path) -> np.ndarray:
    """Three groups on 60 weak genes under five strong group-free programmes (40 genes
    each): the variance-weighted PCA scores cannot separate them."""
    rng = np.random.default_rng(11)
    n, p = 400, 300
    groups = rng.integers(0, 3, n)
    X = rng.normal(size=(n, p))
    for m in range(5):
        X[:, m * 40:(m + 1) * 40] += 2.0 * rng.normal(size=n)[:, None]
    for g in range(3):
        X[np.ix_(groups == g, np.arange(200 + 20 * g, 220 + 20 * g))] += 1.5
    pl.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)],
                  **{f"G{j:03d}": X[:, j] for j in range(p)}}).write_parquet(path)
    return groups


def test_equal_geometry_is_saved_and_reapplied(tmp_path: Path) -> None:
    """The equal-variance geometry (chosen by `auto` only on landmark cohorts, see
    test_landmarks; asked for here) is stored with the run (weights on the block models,
    integrated.parquet in that space) so that placing the same patients again reproduces
    the run's coordinates and clusters."""
    table = tmp_path / "expr.parquet"
    groups = _weak_axis_cohort(table)
    store = tmp_path / "weak.cohort"
    _cli("ingest", "-o", str(store), "--molecular", f"expr={table}")
    _cli("cluster", str(store), "--seed", "0", "--bootstrap", "9", "--component-weight",
         "equal")
    rm = load_run(store)
    params = json.loads((rm.run_dir / "params.json").read_text())
    assert params["component_weight_used"] == "equal"
    assert params["resolved"]["space"] == "equal"
    order = {p: i for i, p in enumerate(pl.read_parquet(table)["patient_id"].to_list())}
    truth = groups[[order[p] for p in rm.patient_ids]]
    assert adjusted_rand_score(truth, rm.clusters) > 0.9
    again = _training_tables_replaced(rm, [TableSpec("expr", table)])
    assert np.allclose(again, rm.matrix, atol=1e-8)
