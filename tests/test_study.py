"""Seed studies (issue 19 §1): the statistics, the rows, and a study of a sweep's top trials with data-parallel
runs, killed and resumed, whose records equal what Tune received and whose tables equal its runs."""

import csv
import math
import sys

import numpy as np
import pytest
import yaml
from scipy import stats

from helpers import check_records, kill_after_first_report, mlflow_runs, pointtune, tiny_sets, write_space
from pointtune.config import ConfigError
from pointtune.search.spec import SweepSpec
from pointtune.search.study import config_rows, plan_study, sweep_rows
from pointtune.search.study_report import paired_difference, seed_stats

VALUES = [0.80, 0.82, 0.79, 0.85, 0.81]
REFERENCE = [0.78, 0.80, 0.80, 0.82, 0.79]


def test_seed_stats_by_hand_and_scipy():
    s = seed_stats(VALUES)
    deviations = np.array(VALUES) - 0.814
    std = math.sqrt((deviations**2).sum() / 4)  # 0.02302
    assert s.n == 5 and s.mean == pytest.approx(0.814) and s.std == pytest.approx(std)
    half = 2.7764451051977987 * std / math.sqrt(5)  # t(0.975, df 4)
    assert (s.low, s.high) == pytest.approx((0.814 - half, 0.814 + half))
    assert (s.low, s.high) == pytest.approx(stats.t.interval(0.95, 4, loc=np.mean(VALUES), scale=stats.sem(VALUES)))
    assert seed_stats([0.5, float("nan")]).n == 1 and math.isnan(seed_stats([0.5]).std)
    assert seed_stats([]).n == 0


def test_paired_difference_by_hand():
    delta, p, pairs = paired_difference(dict(enumerate(VALUES)), dict(enumerate(REFERENCE)))
    d = np.array(VALUES) - np.array(REFERENCE)  # 0.02, 0.02, -0.01, 0.03, 0.02
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))  # 2.359
    assert pairs == 5 and delta == pytest.approx(0.016)
    assert p == pytest.approx(2 * stats.t.sf(abs(t), 4)) and p == pytest.approx(0.0778, abs=1e-4)
    # only the seeds both rows finished are paired
    delta, _, pairs = paired_difference({0: 0.9, 1: 0.8, 2: 0.7}, {1: 0.7, 2: 0.6, 3: 0.1})
    assert pairs == 2 and delta == pytest.approx(0.1)
    assert math.isnan(paired_difference({0: 0.9}, {0: 0.8})[1])  # one pair: no test


def test_rows_and_plan_refuse_bad_input(tmp_path):
    spec = SweepSpec(method="cedr", space_file="", sweep_dir=str(tmp_path / "study"))
    with pytest.raises(ConfigError, match="--seeds 1"):
        plan_study(spec, {"a": {}}, 1, ("val/OA", "max"))
    with pytest.raises(ConfigError, match="at least one config"):
        plan_study(spec, {}, 3, ("val/OA", "max"))
    (tmp_path / "a").mkdir()
    for path in (tmp_path / "paper.yaml", tmp_path / "a" / "paper.yaml"):
        path.write_text(yaml.safe_dump({"method": {"temperature": 0.1}}))
    assert config_rows([str(tmp_path / "paper.yaml")], "cedr") == {"paper": {"method": {"temperature": 0.1}}}
    with pytest.raises(ConfigError, match="a row named 'paper' exists already"):
        config_rows([str(tmp_path / "paper.yaml"), str(tmp_path / "a" / "paper.yaml")], "cedr")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"method": {"temperatur": 0.1}}))
    with pytest.raises(ConfigError, match="bad.yaml.*method.temperatur"):
        config_rows([str(tmp_path / "bad.yaml")], "cedr")


@pytest.mark.slow  # a CLI run each
@pytest.mark.parametrize("args,error", [
    (["--seeds", "2"], "pointtune study: give a SWEEP_DIR, or --method and at least one --config"),
    (["--method", "cedr", "--config", "{paper}", "--set", "train.seed=3"],
     "--set train.seed: a study sets it itself; use --seeds"),
])
def test_bad_study_input_is_a_one_line_error(tmp_path, args, error):
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump({"method": {"temperature": 0.1}}))
    proc = pointtune("study", *[str(paper) if a == "{paper}" else a for a in args], "--output", str(tmp_path / "s"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"pointtune: error: {error}"
    assert not (tmp_path / "s" / "tune").exists()


EPOCHS = 2


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 3-trial sweep, then a study of its best config and the reference with 2 seeds, 2 Ray Train workers per run,
    its driver SIGKILLed after the first report and the study finished by `pointtune resume`."""
    root = tmp_path_factory.mktemp("study")
    space = write_space(root / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
                                              "method.temperature": {"type": "categorical", "choices": [0.1, 0.5]}})
    sweep = root / "sweep"
    proc = pointtune("sweep", "cedr", "--space", str(space), "--trials", "3", "--epochs", str(EPOCHS),
                     "--output", str(sweep), "--seed", "1", *tiny_sets())
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = sweep / "study"
    kill_after_first_report([sys.executable, "-m", "pointtune.cli", "study", str(sweep), "--top-k", "1", "--seeds", "2",
                             "--workers", "2", "--max-concurrent", "1"], out, timeout=420)
    assert not (out / "study.csv").exists()
    resumed = pointtune("resume", str(out), timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    return sweep, out, resumed


def _csv(path):
    return list(csv.DictReader(path.open()))


@pytest.mark.slow
def test_top_k_rows_are_the_sweeps_trials_best_first(study):
    """``--top-k 3`` of the sweep (its study trains ``--top-k 1``): top<r> is the config of a trial whose best
    objective is the r-th highest in summary.csv (trials that tie may come in either order)."""
    sweep, _, _ = study
    trials = sorted(_csv(sweep / "summary.csv"), key=lambda r: -float(r["best_objective"]))
    _, rows = sweep_rows(sweep, 3, reference=False)
    assert list(rows) == ["top1", "top2", "top3"]
    for rank, trial in enumerate(trials, start=1):
        config = rows[f"top{rank}"]
        same = [t for t in trials if t["best_objective"] == trial["best_objective"]
                and float(t["optim.lr"]) == config["optim"]["lr"]["start"]
                and float(t["method.temperature"]) == config["method"]["temperature"]]
        assert same, (rank, config["optim"], trials)
    with pytest.raises(ConfigError, match="--top-k 4: the sweep .* has 3 trial"):
        sweep_rows(sweep, 4, reference=False)


@pytest.mark.slow
def test_study_records_equal_what_tune_received(study):
    _, out, _ = study
    statuses = check_records(out, EPOCHS, tracking_uri=f"sqlite:///{out.parent}/mlflow.db", study=False)
    assert sorted(statuses.values()) == ["FINISHED"] * 4


@pytest.mark.slow
def test_every_row_and_seed_runs_once(study):
    sweep, out, _ = study
    runs = _csv(out / "runs.csv")
    assert sorted((r["row"], r["seed"]) for r in runs) == sorted(
        (row, seed) for row in ("reference", "top1") for seed in ("0", "1"))
    assert all(r["status"] == "FINISHED" and r["epochs"] == str(EPOCHS) for r in runs), [
        (r["row"], r["seed"], r["status"], r["epochs"], r["error"]) for r in runs]
    # top1 is the sweep's best trial, as it trained; the reference is the sweep's config without the search
    spec = SweepSpec.load(out)
    best = yaml.safe_load((sweep / "best_config.yaml").read_text())
    assert best["train"].pop("threads") == 1 and spec.rows["top1"]["train"].pop("threads") is None  # planned anew
    assert spec.rows["top1"] == best
    assert spec.rows["reference"]["optim"]["lr"]["start"] != best["optim"]["lr"]["start"]
    assert spec.of == str(sweep) and spec.seeds == [0, 1]


@pytest.mark.slow
def test_seeds_change_the_run(study):
    _, out, _ = study
    client, runs = mlflow_runs(out.parent)
    trials = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial" and "pointtune.row" in r.data.tags]
    assert len(trials) == 4
    for row in ("reference", "top1"):
        pair = [r for r in trials if r.data.tags["pointtune.row"] == row]
        assert sorted(r.data.params["train.seed"] for r in pair) == ["0", "1"]
        losses = [[m.value for m in client.get_metric_history(r.info.run_id, "train/loss")] for r in pair]
        assert losses[0] != losses[1]


@pytest.mark.slow
def test_study_tables_equal_its_runs(study):
    _, out, _ = study
    runs = _csv(out / "runs.csv")
    table = {r["row"]: r for r in _csv(out / "study.csv")}
    assert list(table) == ["reference", "top1"]
    test = {(r["row"], int(r["seed"])): float(r["test/OA"]) for r in runs}
    for row, line in table.items():
        values = [test[(row, s)] for s in (0, 1)]
        assert int(line["seeds"]) == 2
        assert float(line["test/OA mean"]) == pytest.approx(np.mean(values))
        assert float(line["test/OA std"]) == pytest.approx(np.std(values, ddof=1))
        assert float(line["val/OA mean"]) == pytest.approx(np.mean([float(r["val/OA"]) for r in runs if r["row"] == row]))
        if row != "reference":
            diffs = [test[(row, s)] - test[("reference", s)] for s in (0, 1)]
            assert float(line["test/OA delta"]) == pytest.approx(np.mean(diffs))
            if diffs[0] != diffs[1]:
                assert float(line["p (paired t)"]) == pytest.approx(
                    stats.ttest_rel([test[(row, s)] for s in (0, 1)], [test[("reference", s)] for s in (0, 1)]).pvalue)
            assert "optim.lr.start=" in line["differs"]
        assert float(line["params"]) > 0 and float(line["epoch_s"]) > 0 and float(line["peak_memory_mb"]) > 0
    markdown = (out / "study.md").read_text()
    assert all(f"| {row} | 2 |" in markdown for row in table)
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_study_parent_run_links_the_sweep(study):
    sweep, out, _ = study
    client, runs = mlflow_runs(sweep)
    parents = {r.data.tags["pointtune.kind"]: r for r in runs if r.data.tags.get("pointtune.kind") in ("sweep", "study")}
    assert parents["study"].data.tags["pointtune.sweep_run"] == parents["sweep"].info.run_id
    assert parents["study"].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parents["study"].info.run_id)}
    assert {"study.md", "study.csv", "runs.csv", "study.png"} <= artifacts
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents["study"].info.run_id]
    assert len(kids) == 4 and {r.data.tags["pointtune.row"] for r in kids} == {"reference", "top1"}
    assert parents["study"].data.params["seeds"] == "0,1"
    assert parents["study"].data.params["rows"] == "reference,top1"
    from pointtune.cli import _store_dir

    assert _store_dir(out) == sweep  # `pointtune ui STUDY_DIR` opens the sweep's store, which holds the study
