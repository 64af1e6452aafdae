"""`pointtune train`: local in-process mode with checkpoints and resume (2 Ray Train CPU workers: test_checkpoints)."""

import json

import pytest

from helpers import mlflow_runs, pointtune, tiny_sets
from pointtune.train.checkpoint import load_state

pytestmark = pytest.mark.slow  # every test trains or judges through the CLI


def test_local_train_one_epoch_then_resume(tmp_path):
    out = tmp_path / "run"
    proc = pointtune("train", "cedr", "--epochs", "1", "--output", str(out), "--no-progress", *tiny_sets())
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_state(out / "checkpoints" / "latest")
    assert state["epoch"] == 0 and 0.0 <= state["metrics"]["val/OA"] <= 1.0
    assert {"model", "optimizer", "scaler", "rng", "metrics"} <= set(state)
    assert (out / "checkpoints" / "best" / "state.pt").is_file()
    client, runs = mlflow_runs(out)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/OA")] == [1]
    assert runs[0].data.params["method.lambda_con.start"] == "0.1"
    per_class = [k for k in runs[0].data.metrics if k.startswith("val/acc/")]
    assert len(per_class) >= 2 and all(0 <= runs[0].data.metrics[k] <= 1 for k in per_class)
    # The run directory holds its numbers; the console ends with one short line.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] == 1 and summary["best"] == state["metrics"]["val/OA"]
    assert summary["test"]["epoch"] == 1 and 0 <= summary["test"]["OA"] <= 1
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("[pointtune] done: 1 epochs") and len(last) < 160, last
    assert "[pointtune] data synthetic val:" in proc.stdout
    assert {"confusion_matrix.png", "config.yaml", "best_checkpoint"} <= {
        a.path for a in client.list_artifacts(runs[0].info.run_id)}

    # The same command with a longer budget continues from the checkpoint instead of starting over.
    proc = pointtune("train", "cedr", "--epochs", "2", "--output", str(out), "--no-progress", *tiny_sets())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed after epoch 1" in proc.stdout + proc.stderr
    assert load_state(out / "checkpoints" / "latest")["epoch"] == 1
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and json.loads((out / "summary.json").read_text())["epochs"] == 2
    # Once more: the run is complete; nothing is trained or recorded twice.
    proc = pointtune("train", "cedr", "--epochs", "2", "--output", str(out), "--no-progress", *tiny_sets())
    assert proc.returncode == 0 and "the run is complete" in proc.stdout, proc.stderr[-3000:]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_zero_epochs_judges_the_untrained_model(tmp_path):
    # The random-initialisation baseline, without faking training: the protocol on the initial weights.
    out = tmp_path / "baseline"
    proc = pointtune("train", "cedr", "--epochs", "0", "--output", str(out), "--no-progress", *tiny_sets())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 0 and 0 <= record["val/OA"] <= 1 and record["test/epoch"] == 0
    assert not any(k.startswith("train/") for k in record)  # nothing was trained
    assert "epoch 0 (untrained)" in proc.stdout


def test_fast_dev_run_checks_a_whole_run_in_seconds_and_leaves_nothing(tmp_path, monkeypatch):
    """--fast-dev-run: one epoch of 1 batch of 2, a checkpoint written and read back, the temporary run
    directory removed; with --output the run stays, cut short; --epochs with it is refused in one line."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))                       # where the temporary run directory goes
    proc = pointtune("train", "cedr", "--fast-dev-run", "--no-progress", "--set", "method.backbone.name=pointnet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("[pointtune] fast-dev-run passed in") and "1 training batch of 2" in last, last
    assert "checkpoint written and read back" in last and "temporary run directory is removed" in last
    assert not list(tmp_path.glob("pointtune-fast-dev-run-*"))
    out = tmp_path / "kept"
    proc = pointtune("train", "cedr", "--fast-dev-run", "--no-progress", "--output", str(out),
                     "--set", "method.backbone.name=pointnet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1] and "val/OA" in epochs[0]
    config = load_state(out / "checkpoints" / "best")["experiment"]["train"]
    assert (config["limit_batches"], config["batch_size"], config["epochs"]) == (1, 2, 1)
    bad = pointtune("train", "cedr", "--fast-dev-run", "--epochs", "3")
    assert bad.returncode == 2 and "--fast-dev-run trains one short epoch; drop --epochs" in bad.stderr


def test_a_default_batch_larger_than_the_data_is_lowered_with_one_line(shared_data, tmp_path):
    """The ShapeNetPart sample's split variant has 14 training clouds: the default batch of 32 becomes 14, said
    in one line; a batch the user set is refused instead (one line, exit 2)."""
    from helpers import real

    data = ["--dataset", "shapenetpart", "--data-root", str(real(shared_data / "shapenetpart_subset")),
            "--set", "data.variant=split", "--set", "data.num_points=256"]
    proc = pointtune("train", "cedr", "--limit-batches", "1", "--epochs", "1", "--no-progress", *data,
                     "--set", "method.backbone.name=pointnet", "--output", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[pointtune] train.batch_size 32 -> 14: each of the 1 worker(s) gets only 14 training items" in proc.stdout
    assert load_state(tmp_path / "run" / "checkpoints" / "best")["experiment"]["train"]["batch_size"] == 14
    bad = pointtune("train", "cedr", "--epochs", "1", *data, "--set", "train.batch_size=32",
                    "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "train.batch_size: 32 clouds per worker" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad").exists()


def test_ui_names_each_runs_table_and_refuses_a_taken_port(tmp_path):
    """pointtune ui: a port in use is one line and exit 2 before MLflow starts (it used to print the URL, fail
    inside MLflow and exit 0); the experiments' links open on their runs tables."""
    import socket

    from pointtune import tracking

    out = tmp_path / "run"
    assert pointtune("train", "cedr", "--epochs", "0", "--output", str(out), *tiny_sets()).returncode == 0
    [(experiment_id, name)] = tracking.experiments(f"sqlite:///{out}/mlflow.db")
    assert name == "pointtune-cedr"
    assert tracking.runs_table_url("http://h:1", experiment_id) == \
        f"http://h:1/#/experiments/{experiment_id}?workflowType=machine_learning"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = pointtune("ui", str(out), "--port", str(port))
    assert proc.returncode == 2 and "\n" not in proc.stderr.strip(), proc.stderr
    assert proc.stderr.startswith(f"pointtune: error: --port {port}: 127.0.0.1:{port} is not free") and \
        "--port 0" in proc.stderr
    assert "MLflow UI on" not in proc.stdout
