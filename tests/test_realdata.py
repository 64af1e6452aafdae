"""The documented real-data sweep: CEDR on the ModelNet40 sample's complete classes (airplane, bathtub, bench).
Skipped only where ../shared/data is absent."""

import csv

import pytest

from conftest import REPO
from helpers import mlflow_runs, pointtune
from pointtune.config import config_from_file

pytestmark = pytest.mark.slow


def test_cedr_sweep_on_modelnet40_sample(shared_data, tmp_path):
    out = tmp_path / "mn40"
    proc = pointtune(
        "sweep", "cedr", "--space", str(REPO / "search_spaces" / "cedr_quick.yaml"), "--trials", "2",
        "--epochs", "2", "--dataset", "modelnet40", "--data-root", str(shared_data / "modelnet40_subset"),
        "--set", "data.classes=[airplane,bathtub,bench]", "--output", str(out),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 2 and all(r["status"] in ("FINISHED", "STOPPED") for r in rows)
    # 3 classes with 626/106/173 training shapes: a trained model beats the uniform guess.
    assert max(float(r["best_objective"]) for r in rows) > 1 / 3
    best = config_from_file("cedr", out / "best_config.yaml")
    assert best.data.name == "modelnet40" and best.data.classes == ["airplane", "bathtub", "bench"]
    client, runs = mlflow_runs(out)
    parent = next(r for r in runs if r.data.tags.get("pointtune.kind") == "sweep")
    assert parent.data.params["dataset"] == "modelnet40"
    assert parent.data.params["data_root"].endswith("modelnet40_subset")
