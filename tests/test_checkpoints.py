"""`load_method`: one reader that rebuilds a method from every checkpoint the project writes (a local run, a
multi-worker run, a sweep trial), what `pointtune train finetune --from` and the SVM bench use (fine-tuned
checkpoints without their pretraining run: test_standalone_checkpoints)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from conftest import TINY
from helpers import mlflow_runs, one_line_error, pointtune, tiny_sets, warm_started
from pointtune.config import ConfigError, build_config
from pointtune.train.checkpoint import CheckpointNotFoundError, load_state
from pointtune.train.load import find_checkpoint, load_method


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """A 1-epoch tiny CEDR run in local mode (``checkpoints/best`` and ``checkpoints/latest``)."""
    out = tmp_path_factory.mktemp("local") / "run"
    proc = pointtune("train", "cedr", "--epochs", "1", "--no-progress", "--output", str(out), *tiny_sets())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


#: GBNet small enough for a CPU test: CAA is built for one num_points (conftest.TINY's 128).
GBNET = {"method.backbone.name": "gbnet", "method.backbone.k": 8, "method.backbone.num_points": 128}


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory) -> Path:
    """A 1-epoch tiny CEDR run with GBNet on 2 Ray Train workers (DDP over gloo; checkpoints only under
    ``train/checkpoint_*``): the 2-worker run of GBNet (issue 20) and of the checkpoint tests at once."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = pointtune("train", "cedr", "--workers", "2", "--epochs", "1", "--output", str(out),
                     *tiny_sets(**GBNET))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "checkpoints" / "best").exists()
    return out


_BATCHES: dict[str, dict[str, torch.Tensor]] = {}


def _batch(exp) -> dict[str, torch.Tensor]:
    """The first 8 validation clouds of ``exp``'s dataset (built once per data config)."""
    from pointtune.data import build_datasets

    key = exp.data.model_dump_json()
    if key not in _BATCHES:
        _BATCHES[key] = next(iter(DataLoader(build_datasets(exp.data).val, batch_size=8)))
    return _BATCHES[key]


def _saved_predictions(checkpoint_dir: Path, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions of the weights in checkpoint_dir/state.pt loaded into a fresh method, predictions of
    that fresh method before loading them)``."""
    state = load_state(checkpoint_dir)
    exp = build_config(state["experiment"]["method"]["name"], state["experiment"])
    fresh = exp.method_cls(exp.method, len(state["class_names"]), exp.train.epochs).eval()
    untrained = fresh.predict(batch)
    fresh.load_state_dict(state["model"])
    return fresh.eval().predict(batch), untrained


def _check_rebuilds(path: Path, checkpoint_dir: Path, epoch: int) -> None:
    """``load_method(path)`` reads ``checkpoint_dir`` and predicts what the saved weights predict."""
    loaded = load_method(path)
    assert loaded.path == checkpoint_dir
    assert loaded.epoch == epoch and loaded.metrics["epoch"] == epoch and "val/OA" in loaded.metrics
    assert loaded.experiment.method.name == "cedr" and not loaded.method.training
    assert loaded.class_names == load_state(checkpoint_dir)["class_names"]
    assert loaded.method.num_classes == len(loaded.class_names)
    batch = _batch(loaded.experiment)
    expected, untrained = _saved_predictions(checkpoint_dir, batch)
    got = loaded.method.predict(batch)
    assert torch.equal(got, expected)
    assert not torch.equal(got, untrained)  # the weights were loaded, not left at initialisation


@pytest.mark.slow  # its fixture trains through the CLI
def test_load_method_from_local_run(local_run):
    best = local_run / "checkpoints" / "best"
    for path in (local_run, best, best / "state.pt"):
        _check_rebuilds(path, best, 1)


@pytest.mark.slow
def test_two_cpu_workers_gloo(two_worker_run):
    client, runs = mlflow_runs(two_worker_run)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["method.backbone.name"] == "gbnet"
    oa = client.get_metric_history(runs[0].info.run_id, "val/OA")
    assert len(oa) == 1 and 0.0 <= oa[0].value <= 1.0
    assert list((two_worker_run / "train").glob("checkpoint_*/state.pt")), "Ray Train kept no checkpoint"


@pytest.mark.slow
def test_load_method_from_two_worker_run(two_worker_run):
    (checkpoint,) = [p for p in (two_worker_run / "train").glob("checkpoint_*") if p.is_dir()]  # not the
    # checkpoint_manager_snapshot.json beside it
    for path in (two_worker_run, two_worker_run / "train", checkpoint, checkpoint / "state.pt"):
        _check_rebuilds(path, checkpoint, 1)


@pytest.mark.slow
def test_finetune_from_two_worker_run(two_worker_run, tmp_path):
    out = tmp_path / "finetune"
    proc = pointtune("train", "finetune", "--from", str(two_worker_run), "--epochs", "1", "--no-progress",
                     "--output", str(out), *tiny_sets(**GBNET))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"--from: method.pretrained = {two_worker_run / 'train'}/checkpoint_" in proc.stdout
    tuned = load_method(out)  # a fine-tuned method rebuilds too, from its own checkpoint
    assert tuned.experiment.method.name == "finetune" and tuned.path == out / "checkpoints" / "best"
    assert tuned.method.source_method == "cedr"
    assert tuned.experiment.method.pretrained == str(out / "sources" / "pretrained")


def _fake_checkpoint(source: Path, target: Path, metrics: dict) -> Path:
    """A copy of the checkpoint ``source`` at ``target`` whose ``metrics.json`` says ``metrics``."""
    shutil.copytree(source, target)
    (target / "metrics.json").write_text(json.dumps(metrics))
    return target


@pytest.mark.slow  # its fixture trains through the CLI
def test_multi_worker_run_picks_the_checkpoint_of_the_selected_epoch(local_run, tmp_path):
    best = local_run / "checkpoints" / "best"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(local_run / "config.yaml", run / "config.yaml")
    train = run / "train"
    kept = _fake_checkpoint(best, train / "checkpoint_a", {"epoch": 3, "val/OA": 0.9, "best/val/OA": 0.9,
                                                            "best/epoch": 3})
    _fake_checkpoint(best, train / "checkpoint_b", {"epoch": 5, "val/OA": 0.4, "best/val/OA": 0.9, "best/epoch": 3})
    (train / "checkpoint_c").mkdir()  # being written: no metrics.json
    assert find_checkpoint(run) == kept
    assert load_method(run).path == kept
    _fake_checkpoint(best, train / "checkpoint_d", {"epoch": 6, "val/OA": 0.9, "best/val/OA": 0.9, "best/epoch": 6})
    assert find_checkpoint(run) == train / "checkpoint_d"  # the loop selected the later of two equal epochs


@pytest.mark.slow  # its fixture trains through the CLI
def test_sweep_trial_directories_resolve_to_the_selected_epoch(local_run, tmp_path):
    from pointtune.search.spec import SweepSpec

    best = local_run / "checkpoints" / "best"
    sweep = tmp_path / "sweep"
    space = {"method": "cedr", "objective": {"metric": "train/loss", "mode": "min"},
             "params": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1},
                        **{k: {"type": "fixed", "value": v} for k, v in TINY.items()}}}
    sweep.mkdir()
    (sweep / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    SweepSpec(method="cedr", space_file=str(sweep / "space.yaml"), sweep_dir=str(sweep)).save()
    # a single-process trial: checkpoints in its Tune trial directory; the objective is minimised
    trial = sweep / "tune" / "trial_aaa"
    _fake_checkpoint(best, trial / "checkpoint_000000", {"epoch": 1, "train/loss": 2.0, "best/train/loss": 2.0,
                                                                   "best/epoch": 1})
    lowest = _fake_checkpoint(best, trial / "checkpoint_000001", {"epoch": 2, "train/loss": 1.0,
                                                                     "best/train/loss": 1.0, "best/epoch": 2})
    assert find_checkpoint(trial) == lowest
    # a data-parallel trial: its Tune trial directory holds no checkpoint, its Ray Train run does
    (sweep / "tune" / "trial_bbb").mkdir()
    dp = _fake_checkpoint(best, sweep / "train" / "trial_bbb" / "checkpoint_x", {"epoch": 1, "train/loss": 3.0,
                                                                                  "best/train/loss": 3.0,
                                                                                  "best/epoch": 1})
    assert find_checkpoint(sweep / "tune" / "trial_bbb") == dp
    assert find_checkpoint(sweep / "train" / "trial_bbb") == dp
    assert load_method(sweep / "tune" / "trial_bbb").path == dp


@pytest.mark.slow  # its fixture trains through the CLI
def test_finetune_warm_starts_from_a_run_directory(local_run):
    tuned = warm_started(build_config("finetune", overrides={**TINY, "method.pretrained": str(local_run)}), 3)
    state = load_state(local_run / "checkpoints" / "best")
    saved = {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    assert tuned.source_method == "cedr" and saved
    assert all(torch.equal(tuned.encoder().state_dict()[k], v) for k, v in saved.items())


def test_bad_paths_give_one_line_config_errors(tmp_path):
    from pointtune.search.best import resolve_checkpoint

    exp = build_config("cedr", overrides=TINY)

    def state_dir(name: str, content) -> Path:
        (tmp_path / name).mkdir()
        if isinstance(content, bytes):
            (tmp_path / name / "state.pt").write_bytes(content)
        else:
            torch.save(content, tmp_path / name / "state.pt")
        return tmp_path / name

    (tmp_path / "random.bin").write_bytes(bytes(range(256)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("method: {name: cedr}\n")
    cases = [
        (tmp_path / "nope", "no such file"),
        (tmp_path / "random.bin", "not a checkpoint"),
        (tmp_path / "empty", "not a checkpoint"),
        (tmp_path / "run", "holds no checkpoint"),
        (state_dir("text", b"not a checkpoint\n"), "not a pointtune checkpoint (torch cannot load it"),
        (state_dir("truncated", b"PK\x03\x04 truncated"), "not a pointtune checkpoint (torch cannot load it"),
        (state_dir("dict", {"weights": [1, 2, 3]}), "no 'model' entry"),
        (state_dir("unknown", {"model": {}, "experiment": {"method": {"name": "nosuch"}}, "class_names": ["a"]}),
         "cannot rebuild its 'nosuch' model (no such method here"),
        (state_dir("mismatch", {"model": {"bogus.weight": torch.zeros(1)}, "experiment": exp.to_dict(),
                                "class_names": ["a", "b"]}), "cannot rebuild its 'cedr' model"),
    ]
    for path, fragment in cases:
        with pytest.raises(ConfigError) as info:
            load_method(path)
        one_line_error(info, str(path), fragment)
        if path.name != "nope":
            continue
        assert isinstance(info.value, CheckpointNotFoundError) and isinstance(info.value, FileNotFoundError)
        with pytest.raises(FileNotFoundError) as info:
            warm_started(build_config("finetune", overrides={**TINY, "method.pretrained": str(path)}), 2)
        assert one_line_error(info, f"{path}/state.pt: no such file").startswith("method.pretrained: ")
    with pytest.raises(ConfigError) as info:
        resolve_checkpoint(tmp_path / "random.bin")
    assert one_line_error(info, "random.bin", "not a checkpoint").startswith("--from ")
    with pytest.raises(ConfigError) as info:
        warm_started(build_config("finetune", overrides={**TINY, "method.pretrained": str(tmp_path / "mismatch")}), 2)
    one_line_error(info, f"method.pretrained: {tmp_path}/mismatch/state.pt: cannot rebuild its 'cedr' model")
