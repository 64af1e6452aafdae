"""Comparisons (issue 19 §2): the spec and its fairness checks, the leaderboard from studies' tables, the shipped
examples, and a compare of two CEDR entries run, rerun (skipped) and resumed, whose records equal what Tune
received and whose leaderboard equals each study's table."""

import csv
import math

import pytest
import yaml

from conftest import REPO, TINY
from helpers import check_records, mlflow_runs, one_line_error, pointtune, write_space
from pointtune.config import ConfigError
from pointtune.search.compare import load_compare, plan_entries
from pointtune.search.compare_report import EntryDirs, leaderboard, write_leaderboard
from pointtune.search.report import TrialSummary
from pointtune.search.spec import SweepSpec
from pointtune.search.study import plan_study
from pointtune.search.study_report import write_study


def _spec(tmp_path, entries, **top):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "epochs": 2, "set": dict(TINY), "entries": entries, **top}))
    return path


def _refused(path, *fragments):
    with pytest.raises(ConfigError) as info:
        plan_entries(load_compare(path))
    return one_line_error(info, str(path), *fragments)


@pytest.mark.parametrize("example, methods, objective", [
    ("supervised_classification", {"cedr-pointnet": "cedr", "ce-pointnet": "cedr", "cedr-dgcnn": "cedr",
                                   "ce-dgcnn": "cedr"}, ("val/OA", "max")),
    ("ssl_svm_modelnet40", {"conclu": "conclu", "dcglr": "dcglr", "scl": "scl"}, ("val/svm_acc", "max")),
    ("cedr_searched_vs_recipe", {"cedr-recipe": "cedr", "cedr-searched": "cedr", "ce": "cedr"}, ("val/OA", "max")),
])
def test_examples_parse_and_compare_the_same_data(example, methods, objective):
    spec = load_compare(REPO / "studies" / f"{example}.yaml")
    plans = plan_entries(spec)
    assert {n: p.method for n, p in plans.items()} == methods
    root = str((REPO.parent / "shared" / "data" / "modelnet40_subset").resolve())  # relative to the spec file
    for plan in plans.values():
        exp = plan.experiment
        assert plan.objective == objective and exp.train.epochs == spec.epochs
        assert (exp.data.name, exp.data.root, exp.data.classes) == ("modelnet40", root, ["airplane", "bathtub", "bench"])
        assert exp.method.backbone.name == ("dgcnn" if "dgcnn" in plan.name or example.startswith("ssl") else "pointnet")
        if example == "ssl_svm_modelnet40":
            assert plan.space is not None and spec.budget.trials == 4
        else:
            assert exp.method.use_scc == plan.name.startswith("cedr")
            assert (plan.space is not None) == (plan.name == "cedr-searched")


def test_bad_spec_keys_are_one_line_errors(tmp_path):
    _refused(_spec(tmp_path, {"a": {"metod": "cedr"}, "b": {"method": "cedr"}}), "entries.a.metod: unknown key")
    _refused(_spec(tmp_path, {"a": {"method": "cedr"}}), "entries: ")  # one entry compares nothing
    _refused(_spec(tmp_path, {"a": {"method": "cedr"}, "b": {"method": "cedr", "set": {"method.temperatur": 1}}}),
             "entries.b", "method.temperatur")
    _refused(_spec(tmp_path, {"a": {"method": "cedr", "set": {"train.seed": 3}}, "b": {"method": "cedr"}}),
             "entries.a.set: train.seed")
    _refused(_spec(tmp_path, {"a": {"method": "cedr", "space": "nowhere.yaml"}, "b": {"method": "cedr"}},
                   budget={"trials": 2}), "entries.a", "nowhere.yaml")
    write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2}})
    _refused(_spec(tmp_path, {"a": {"method": "cedr", "space": "space.yaml"}, "b": {"method": "cedr"}}),
             "budget: entry a has a space")
    _refused(_spec(tmp_path, {"a": {"method": "scl"}, "b": {"method": "scl"}}, set={}), "entries.a",
             "method.stage1_from: this config needs its stage1 run first")


def test_entries_on_other_data_protocols_or_objectives_are_refused(tmp_path):
    _refused(_spec(tmp_path, {"a": {"method": "cedr"}, "b": {"method": "cedr", "set": {
        "data.name": "modelnet40", "data.root": "mn40"}}}), "entries a and b differ in data.name (synthetic vs modelnet40)")
    _refused(_spec(tmp_path, {"a": {"method": "cedr"}, "b": {"method": "cedr", "set": {"data.split_seed": 7}}}),
             "differ in data.split_seed (0 vs 7)")
    _refused(_spec(tmp_path, {"a": {"method": "cedr"}, "b": {"method": "conclu"}}),
             "differ in protocol.name (classification vs linear_svm)")
    write_space(tmp_path / "macc.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2}}, objective="val/mAcc")
    _refused(_spec(tmp_path, {"a": {"method": "cedr"}, "b": {"method": "cedr", "space": "macc.yaml"}},
                   budget={"trials": 2}), "differ in objective (max val/OA vs max val/mAcc)")
    write_space(tmp_path / "data.yaml", {"data.split_seed": {"type": "categorical", "choices": [0, 1]}})
    _refused(_spec(tmp_path, {"a": {"method": "cedr"}, "b": {"method": "cedr", "space": "data.yaml"}},
                   budget={"trials": 2}), "entries.b.space: data.split_seed")
    # the same data and protocol, another method and backbone: accepted
    plans = plan_entries(load_compare(_spec(tmp_path, {"a": {"method": "cedr"}, "b": {"method": "cedr", "set": {
        "method.backbone.name": "dgcnn", "method.backbone.k": 8}}})))
    assert [p.experiment.method.backbone.name for p in plans.values()] == ["pointnet", "dgcnn"]
    # the synthetic dataset's own keys matter only on the synthetic dataset
    _refused(_spec(tmp_path, {"a": {"method": "cedr"}, "b": {"method": "cedr", "set": {"data.synthetic_per_class": 8}}}),
             "differ in data.synthetic_per_class (16 vs 8)")
    mn40 = {"data.name": "modelnet40", "data.root": "mn40"}
    plans = plan_entries(load_compare(_spec(tmp_path, {"a": {"method": "cedr", "set": mn40}, "b": {
        "method": "cedr", "set": {**mn40, "data.synthetic_per_class": 8}}})))
    assert [p.experiment.data.synthetic_per_class for p in plans.values()] == [16, 8]


def _study(root, name, tests, epochs=2):
    """A study directory of one row ``name`` whose seeds scored ``tests`` (NaN: the run failed), written by the
    study's own writer (pointtune.search.study_report)."""
    spec = plan_study(SweepSpec(method="cedr", space_file="", sweep_dir=str(root / name / "study"), epochs=epochs),
                      {name: {}}, len(tests), ("val/OA", "max"))
    trials = [TrialSummary(f"{name}{seed}", "FAILED" if math.isnan(t) else "FINISHED", {"row": name, "train.seed": seed},
                           epochs, None if math.isnan(t) else t - 0.1, 1,
                           {} if math.isnan(t) else {"test/OA": t, "cost/epoch_s": 2.0 + seed, "cost/params": 1000.0,
                                                     "cost/peak_memory_mb": 100.0 + seed})
              for seed, t in enumerate(tests)]
    write_study(spec, spec.space(), trials)
    return spec.root


def _csv(path):
    return list(csv.DictReader(path.open()))


def test_leaderboard_is_the_studies_tables(tmp_path):
    a = _study(tmp_path, "a", [0.70, 0.72, 0.74])
    b = _study(tmp_path, "b", [0.80, 0.84, float("nan")])
    (tmp_path / "b" / "sweep").mkdir()
    with (tmp_path / "b" / "sweep" / "summary.csv").open("w") as fh:
        fh.write("trial_id,status,epochs\nx,FINISHED,2\ny,STOPPED,1\nz,FAILED,\n")
    entries = [EntryDirs("a", "cedr", a), EntryDirs("b", "cedr", b, tmp_path / "b" / "sweep")]
    rows, written, markdown = write_leaderboard(tmp_path, "t", entries, "val/OA", "max")
    assert [r["entry"] for r in rows] == ["b", "a"] and [r["rank"] for r in rows] == [1, 2]  # best test mean first
    for row in rows:
        study = _csv(tmp_path / row["entry"] / "study" / "study.csv")[0]
        for key in ("test/OA mean", "test/OA std", "test/OA ci95 low", "test/OA ci95 high", "val/OA mean",
                    "epoch_s", "params", "peak_memory_mb"):
            assert row[key] == float(study[key]), key
        assert row["seeds"] == int(study["seeds"])
    assert rows[0]["test/OA mean"] == pytest.approx(0.82) and rows[0]["seeds"] == 2
    assert (rows[0]["sweep trial-epochs"], rows[0]["study trial-epochs"], rows[0]["trial-epochs"]) == (3, 6, 9)
    assert (rows[1]["sweep trial-epochs"], rows[1]["trial-epochs"]) == (0, 6)
    assert [r["entry"] for r in _csv(tmp_path / "compare.csv")] == ["b", "a"]
    assert "| 1 | b | cedr | 2 | 0.8200 ± 0.0283 |" in markdown and "9 (3 + 6)" in markdown
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(written) == 3
    with pytest.raises(ConfigError, match="no row 'c'"):
        leaderboard([EntryDirs("c", "cedr", a)], "val/OA", "max")


@pytest.fixture(scope="module")
def compare(tmp_path_factory):
    """A compare of two tiny CEDR entries without spaces (temperatures 0.1 and 0.5), 2 seeds of 1 epoch: run,
    then run again after one study's table was removed (the other is skipped, that study resumed)."""
    root = tmp_path_factory.mktemp("compare")
    spec = root / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "seeds": 2, "epochs": 1, "set": dict(TINY), "entries": {
        "t01": {"method": "cedr", "set": {"method.temperature": 0.1}},
        "t05": {"method": "cedr", "set": {"method.temperature": 0.5}}}}))
    out = root / "out"
    first = pointtune("compare", str(spec), "--output", str(out), timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    _, runs = mlflow_runs(out)
    (out / "t05" / "study" / "study.csv").unlink()
    again = pointtune("compare", str(spec), "--output", str(out), timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    return out, again, len(runs)


@pytest.mark.slow
def test_compare_records_and_leaderboard(compare):
    out, again, count = compare
    for entry in ("t01", "t05"):
        statuses = check_records(out / entry / "study", 1, tracking_uri=f"sqlite:///{out}/mlflow.db", study=False)
        assert sorted(statuses.values()) == ["FINISHED"] * 2
    board = {r["entry"]: r for r in _csv(out / "compare.csv")}
    assert set(board) == {"t01", "t05"}
    for entry, row in board.items():
        study = _csv(out / entry / "study" / "study.csv")[0]
        assert study["row"] == entry and float(row["test/OA mean"]) == float(study["test/OA mean"])
        assert float(row["test/OA std"]) == float(study["test/OA std"]) and row["seeds"] == study["seeds"] == "2"
        assert row["trial-epochs"] == row["study trial-epochs"] == "2" and row["sweep trial-epochs"] == "0"
    # the rerun skipped t01, resumed t05's finished study (no run trained again) and rewrote its table
    assert f"{out / 't01' / 'study'} is finished; skipped" in again.stdout
    assert f"resuming sweep {out / 't05' / 'study'}" in again.stdout and (out / "t05" / "study" / "study.csv").is_file()
    client, runs = mlflow_runs(out)
    assert len(runs) == count
    parent = [r for r in runs if r.data.tags.get("pointtune.kind") == "compare"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    for entry in ("t01", "t05"):
        study_run = yaml.safe_load((out / entry / "study" / "runtime.yaml").read_text())["parent_run_id"]
        assert parent[0].data.tags[f"pointtune.study_run.{entry}"] == study_run
    assert {"compare.md", "compare.csv", "compare.png"} <= {a.path for a in client.list_artifacts(parent[0].info.run_id)}
