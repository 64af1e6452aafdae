"""One rule for "best" (issue 18 §1): a run whose objective ties at two epochs (epochs 2 and 3 of the tie_stub
plugin method) selects the later one everywhere: the loop's ``best/epoch`` and ``test/epoch``, the checkpoint
kept as best, summary.json / summary.csv, MLflow, best.json and ``pointtune best``; in ``pointtune train``, a
1-worker sweep and a 2-worker sweep. The method is found as a plugin: an entry point of ``pointtune.methods``
declared by a temporary distribution (README: Adding a method)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import check_records, mlflow_runs, pointtune
from pointtune.train.checkpoint import load_state

SELECTED = 3  # val/OA per epoch: 0, 1, 1, 0
DATA = ["--set", "data.synthetic_per_class=8", "--set", "data.num_points=64", "--set", "train.batch_size=8"]


@pytest.fixture(scope="module")
def plugin(plugin_path):
    """The test-only methods are plugins (conftest.plugin_path) for the CLI processes and their Ray workers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", plugin_path)
        yield


def test_a_plugin_method_is_found_by_its_entry_point(plugin):
    proc = pointtune("config", "tie_stub")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "method.correct" in proc.stdout and "method.scale" in proc.stdout
    assert "tie_stub" in pointtune("train", "--help").stdout  # listed among the methods


@pytest.mark.slow  # trains through the CLI
def test_train_selects_the_later_of_two_equal_epochs(plugin, tmp_path):
    out = tmp_path / "run"
    proc = pointtune("train", "tie_stub", "--epochs", "4", "--output", str(out), *DATA)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] == SELECTED and summary["best"] == 1.0 and summary["test"]["epoch"] == SELECTED
    assert summary["test"]["OA"] == 1.0  # scored on the selected epoch's weights, not the last (all wrong)
    assert load_state(out / "checkpoints" / "best")["metrics"]["epoch"] == SELECTED
    client, runs = mlflow_runs(out)
    (run,) = runs
    assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "best/epoch"), key=lambda m: m.step)] \
        == [1, 2, 3, 3]


def _sweep(tmp_path: Path, workers: int) -> Path:
    space = tmp_path / "space.yaml"
    space.write_text("method: tie_stub\nobjective: {metric: val/OA, mode: max}\n"
                     "params:\n  method.scale: {type: float, low: 0.5, high: 2.0}\n")
    out = tmp_path / "sweep"
    proc = pointtune("sweep", "tie_stub", "--space", str(space), "--trials", "1", "--epochs", "4",
                     "--workers", str(workers), "--grace-period", "4", "--output", str(out), *DATA, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"at epoch {SELECTED}" in proc.stdout, proc.stdout[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_sweep_selects_the_later_of_two_equal_epochs(plugin, tmp_path, workers):
    out = _sweep(tmp_path, workers)
    assert set(check_records(out, 4).values()) == {"FINISHED"}  # summary.csv = MLflow = Tune = the checkpoint
    best = json.loads((out / "best.json").read_text())
    assert best["epoch"] == SELECTED and best["value"] == 1.0
    assert load_state(best["checkpoint"])["metrics"]["epoch"] == SELECTED
    proc = pointtune("best", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = proc.stdout.splitlines()[1].split()
    assert row[4:6] == ["1.0000", str(SELECTED)], proc.stdout  # the objective and its epoch
