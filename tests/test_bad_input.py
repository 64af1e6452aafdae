"""Bad input fails before anything starts: one ``pointtune: error: ...`` line naming the file, key or value,
exit status 2, no Ray, no MLflow database, no run directory.

Every CLI case runs in-process through ``pointtune.cli.main`` (``ray.init`` and ``train()`` replaced by
functions that fail the test), and one case of each class also as a subprocess (``helpers.pointtune``),
several at once: a module fixture starts the selected ones in a thread pool and each test waits for its
own (each subprocess spends about a second importing torch). The checks behind them are also tested
directly (config keys, search spaces, objective metrics, URIs, numbers, checkpoints, preflight).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY
from helpers import pointtune, tiny_sets, warm_started
from pointtune.config import ConfigError, build_config, config_from_file, parse_override
from pointtune.data import DatasetError
from pointtune.method import Task
from pointtune.preflight import (
    check_gpus,
    check_numbers,
    check_tracking_uri,
    load_sweep_yaml_checked,
    preflight,
)
from pointtune.search.space import check_objective, load_search_space
from pointtune.protocols import evaluate, protocol_metrics

LEFTOVERS = ("mlflow.db", "config.yaml", "sweep.yaml", "optuna.db", "tune", "checkpoints")

SPACE = {"method": "cedr", "params": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}}

# (id, argv with {tmp} for the module's files, fragments the error line must contain)
CASES = [
    # 1. search-space files
    ("space-when-list", ["sweep", "cedr", "--space", "{tmp}/when_list.yaml"], ["when_list.yaml", "method.ent_high",
                                                                               "'when' must be a mapping"]),
    ("space-objective-str", ["sweep", "cedr", "--space", "{tmp}/objective_str.yaml"], ["objective_str.yaml",
                                                                                       "objective:"]),
    ("space-extends-number", ["sweep", "cedr", "--space", "{tmp}/extends_number.yaml"], ["extends_number.yaml",
                                                                                         "extends", "got 3"]),
    ("space-extends-missing", ["sweep", "cedr", "--space", "{tmp}/extends_missing.yaml"],
     ["extends_missing.yaml", "extends", "nothere.yaml"]),
    ("space-objective-metric", ["sweep", "cedr", "--space", "{tmp}/objective_metric.yaml"],
     ["objective_metric.yaml", "objective.metric", "'val/accuracy'", "val/OA", "val/mAcc", "val/F1"]),
    # 2. --set values and config keys
    ("set-bad-yaml-train", ["train", "cedr", "--set", "optim.lr=[0.1"], ["--set 'optim.lr=[0.1'", "not valid YAML"]),
    ("set-bad-yaml-sweep", ["sweep", "cedr", "--set", "optim.lr=[0.1"], ["--set 'optim.lr=[0.1'"]),
    ("set-unknown-key", ["train", "cedr", "--set", "optim.lrr=0.1"], ["optim.lrr", "closest valid keys: optim.lr"]),
    ("config-unknown-key", ["train", "cedr", "--config", "{tmp}/config_typo.yaml"],
     ["config_typo.yaml", "data.normals", "data.use_normals"]),
    # 3. CLI numbers, before Ray
    ("sweep-grace-period-0", ["sweep", "cedr", "--grace-period", "0"], ["--grace-period", "got 0"]),
    ("sweep-startup-trials", ["sweep", "cedr", "--startup-trials", "-1"], ["--startup-trials", "got -1"]),
    ("sweep-sampler-of-pbt", ["sweep", "cedr", "--scheduler", "pbt", "--sampler", "gp"],
     ["--sampler gp", "--scheduler pbt has none"]),
    ("sweep-seed-negative", ["sweep", "cedr", "--seed", "-1"], ["--seed", "got -1"]),
    ("sweep-trials-0", ["sweep", "cedr", "--trials", "0"], ["--trials", "got 0"]),
    ("sweep-workers-0", ["sweep", "cedr", "--workers", "0"], ["--workers", "got 0"]),
    ("sweep-max-concurrent-0", ["sweep", "cedr", "--max-concurrent", "0"], ["--max-concurrent", "got 0"]),
    ("sweep-gpus-negative", ["sweep", "cedr", "--gpus-per-worker", "-1"], ["--gpus-per-worker", "got -1"]),
    ("sweep-cpus-negative", ["sweep", "cedr", "--cpus-per-worker", "-2"], ["--cpus-per-worker", "got -2"]),
    ("sweep-memory-0", ["sweep", "cedr", "--memory-per-worker", "0"], ["--memory-per-worker", "GB > 0", "got 0"]),
    ("sweep-max-concurrent-too-many", ["sweep", "cedr", "--workers", "2", "--max-concurrent", "1000",
                                       "--trials", "1000"], ["--max-concurrent 1000 trials of 2 workers do not fit"]),
    ("sweep-storage-scheme", ["sweep", "cedr", "--storage", "foo://bar"], ["--storage 'foo://bar'",
                                                                        "unknown filesystem 'foo'"]),
    ("sweep-pbt-one-trial", ["sweep", "dcglr", "--space", "search_spaces/dcglr_quick.yaml", "--scheduler", "pbt",
                             "--trials", "1", "--epochs", "4"], ["--trials 1", "at least 2 trials"]),
    ("sweep-pbt-interval", ["sweep", "dcglr", "--space", "search_spaces/dcglr_quick.yaml", "--scheduler", "pbt",
                            "--epochs", "2", "--pbt-interval", "2"], ["--pbt-interval 2", "never reach"]),
    ("train-limit-batches-0", ["train", "cedr", "--limit-batches", "0"], ["--limit-batches", "got 0"]),
    ("train-workers-negative", ["train", "cedr", "--workers", "-1"], ["--workers", "got -1"]),
    # 4. tracking URI
    ("mlflow-uri-scheme", ["train", "cedr", "--mlflow-uri", "bogus://nowhere"], ["--mlflow-uri", "bogus://nowhere",
                                                                                "sqlite:"]),
    ("mlflow-uri-sqlite-dir", ["sweep", "cedr", "--mlflow-uri", "sqlite:///{tmp}/no/such/dir/mlflow.db"],
     ["--mlflow-uri", "/no/such/dir", "does not exist"]),
    # 5. --from something that is not a checkpoint
    ("from-text-state-pt", ["train", "finetune", "--from", "{tmp}/text_ckpt/state.pt"],
     ["text_ckpt/state.pt", "not a pointtune checkpoint"]),
    ("from-text-state-dir", ["train", "finetune", "--from", "{tmp}/text_ckpt"], ["text_ckpt/state.pt"]),
    ("from-random-file", ["train", "finetune", "--from", "{tmp}/random.bin"], ["random.bin", "not a checkpoint"]),
    ("from-torch-not-checkpoint", ["train", "finetune", "--from", "{tmp}/dict_ckpt"],
     ["method.pretrained", "dict_ckpt/state.pt", "no 'model' entry"]),
    # 6-8. train validates everything (preflight included) before its run directory exists
    ("train-unknown-backbone", ["train", "cedr", "--set", "method.backbone.name=resnet"],
     ["method.backbone.name", "'resnet'", "pointnet"]),
    ("train-backbone-argument", ["train", "cedr", *tiny_sets(), "--set", "method.backbone.kk=3"],
     ["method.backbone", "'kk'"]),
    ("train-one-class", ["train", "cedr", *tiny_sets(), "--set", "data.classes=[sphere]"],
     ["data.classes", "1 class", "at least 2"]),
    ("train-unknown-class", ["train", "cedr", "--set", "data.classes=[airplane]"], ["data.classes", "'airplane'"]),
    ("train-k-above-points", ["train", "cedr", "--set", "data.num_points=16"], ["method.backbone", "k=20"]),
    ("train-batch-too-large", ["train", "cedr", *tiny_sets(), "--set", "train.batch_size=512"],
     ["train.batch_size", "512"]),
    ("train-gpu-without-cuda", ["train", "cedr", "--gpu"], ["--gpu", "GPUs, but the cluster has 0"]),
    ("sweep-gpu-without-cuda", ["sweep", "cedr", "--gpus-per-worker", "0.5"],
     ["--gpus-per-worker 0.5", "GPUs, but the cluster has 0"]),
    ("train-normals-missing", ["train", "cedr", *tiny_sets(**{"data.num_points": 32}), "--dataset", "modelnet40",
                               "--data-root", "{tmp}/mn40_no_normals", "--set", "data.use_normals=true"],
     ["data.use_normals", "'modelnet40' has no normals"]),
    # resume / best of a sweep.yaml with a misspelled key
    ("resume-misspelled-key", ["resume", "{tmp}/sweep_typo"], ["sweep_typo/sweep.yaml", "'trails'", "trials"]),
    ("best-misspelled-key", ["best", "{tmp}/sweep_typo"], ["sweep.yaml", "'trails'"]),
]


def _write_inputs(tmp: Path) -> None:
    """Every file the CLI cases name."""
    def space(name: str, **changes) -> None:
        (tmp / name).write_text(yaml.safe_dump({**SPACE, **changes}, sort_keys=False))

    params = {"method.use_eaa": {"type": "categorical", "choices": [True, False]},
              "method.ent_high": {"type": "float", "low": 1.5, "high": 3.0, "when": ["method.use_eaa"]}}
    space("when_list.yaml", params=params)
    space("objective_str.yaml", objective="val/OA")
    space("extends_number.yaml", extends=3)
    space("extends_missing.yaml", extends="nothere.yaml")
    space("objective_metric.yaml", objective={"metric": "val/accuracy"})
    (tmp / "config_typo.yaml").write_text("optim: {lr: 0.05}\ndata: {normals: true}\n")
    (tmp / "text_ckpt").mkdir()
    (tmp / "text_ckpt" / "state.pt").write_text("not a checkpoint\n")
    (tmp / "random.bin").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp / "dict_ckpt").mkdir()
    torch.save({"weights": [1, 2, 3]}, tmp / "dict_ckpt" / "state.pt")
    root = tmp / "mn40_no_normals"
    root.mkdir()
    (root / "shape_names.txt").write_text("a\nb\n")
    rng = np.random.default_rng(0)
    for split, m in (("train", 40), ("test", 8)):
        with h5py.File(root / f"ply_data_{split}0.h5", "w") as f:
            f.create_dataset("data", data=rng.normal(size=(m, 64, 3)).astype(np.float32))
            f.create_dataset("label", data=(np.arange(m) % 2).astype(np.uint8)[:, None])
    (tmp / "sweep_typo").mkdir()
    (tmp / "sweep_typo" / "sweep.yaml").write_text(yaml.safe_dump(
        {"method": "cedr", "space_file": str(tmp / "objective_str.yaml"), "sweep_dir": str(tmp / "sweep_typo"),
         "trails": 4}))


def _argv(case_id: str, args: list[str], tmp: Path) -> list[str]:
    argv = [a.replace("{tmp}", str(tmp)) for a in args]
    if argv[0] in ("train", "sweep"):
        argv += ["--output", str(tmp / f"out-{case_id}")]
    return argv


# One case of each class, also run as a subprocess.
SUBPROCESS = ["space-objective-metric", "set-bad-yaml-train", "sweep-grace-period-0", "mlflow-uri-scheme",
              "from-text-state-pt", "train-unknown-backbone", "train-gpu-without-cuda", "train-normals-missing",
              "resume-misspelled-key"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The module's directory holding every file the CLI cases name."""
    tmp = tmp_path_factory.mktemp("bad_input")
    _write_inputs(tmp)
    return tmp


@pytest.fixture(scope="module")
def cli_runs(request, inputs):
    """``{case id: Future of the CompletedProcess}`` for the selected subprocess cases, run a few at a time."""
    selected = {item.callspec.params["case_id"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_cli_bad_input_subprocess"}
    pool = ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1))
    futures = {case_id: pool.submit(pointtune, *_argv(case_id, args, inputs), timeout=120)
               for case_id, args, _ in CASES if case_id in selected}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def _check_error(returncode: int, stderr: str, fragments: list[str], out: Path) -> None:
    assert returncode == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("pointtune: error: "), stderr[-3000:]
    assert not any(line.startswith("Traceback") for line in lines), stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    assert not out.exists() or not [n for n in LEFTOVERS if (out / n).exists()], sorted(os.listdir(out))


@pytest.mark.parametrize("case_id,args,fragments", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(inputs, monkeypatch, capsys, case_id, args, fragments):
    from pointtune import cli

    def started(*_, **__):
        raise AssertionError("bad input got as far as starting Ray or training")

    monkeypatch.setattr("ray.init", started)
    monkeypatch.setattr("pointtune.train.launch.train", started)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on GPU machines (cached device count)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = cli.main(_argv(case_id, args, inputs))
    _check_error(code, capsys.readouterr().err, fragments, inputs / f"out-{case_id}")


@pytest.mark.slow  # nine CLI runs; test_cli_bad_input checks every case in this process
@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_cli_bad_input_subprocess(inputs, cli_runs, case_id):
    proc = cli_runs[case_id].result()
    fragments = next(c[2] for c in CASES if c[0] == case_id)
    _check_error(proc.returncode, proc.stderr, fragments, inputs / f"out-{case_id}")
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


# --------------------------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("key,close", [
    ("optim.lrr", ["optim.lr"]),
    ("lr", ["optim.lr"]),
    ("data.normals", ["data.use_normals", "data.normalize"]),
    ("optimizer.lr", ["optim"]),
    ("method.lambda_conn", ["method.lambda_con"]),
    ("data.augment.jiter_sigma", ["data.augment.jitter_sigma"]),
])
def test_unknown_keys_name_the_closest_valid_ones(key, close):
    with pytest.raises(ConfigError) as info:
        build_config("cedr", overrides={key: 1}, source="--set")
    msg = str(info.value)
    assert "\n" not in msg and "unknown key; closest valid keys: " in msg
    assert msg.split("closest valid keys: ")[1].split(", ")[:len(close)] == close


def test_unknown_key_without_a_close_one_lists_its_section():
    with pytest.raises(ConfigError, match=r"train.zzz: unknown key; valid keys under train: epochs, batch_size"):
        build_config("cedr", overrides={"train.zzz": 1}, source="--set")


def test_errors_name_set_or_the_file_they_come_from(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text("optim: {lr: 0.05}\n")
    with pytest.raises(ConfigError, match=r"^--set: optim.lrr: unknown key"):
        config_from_file("cedr", path, ["optim.lrr=0.1"])
    path.write_text("optim: {lrr: 0.05}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: optim.lrr: unknown key"):
        config_from_file("cedr", path, ["optim.lr=0.1"])


@pytest.mark.parametrize("text", ["optim.lr=[0.1", "data.classes={a", "method.temperature=: x: y"])
def test_set_values_that_are_not_yaml(text):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert str(info.value).startswith(f"--set {text!r}: ") and "\n" not in str(info.value)


def _space(tmp_path: Path, **tree) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, **tree}, sort_keys=False))
    return path


@pytest.mark.parametrize("tree,fragments", [
    ({"objective": {"metric": "val/OA", "mode": "max", "direction": "up"}}, ["objective", "'direction'"]),
    ({"objective": ["val/OA"]}, ["objective[0]:", "names its metric and mode"]),  # a list is of mappings
    ({"extends": ""}, ["extends"]),
    ({"extends": "space.yaml"}, ["extends: cycle"]),
    ({"objective": {"metric": "test/OA"}}, ["'test/OA'", "val/OA"]),
    ({"method": "conclu", "objective": {"metric": "val/OA"}}, ["'val/OA'", "linear_svm", "val/svm_acc"]),
])
def test_bad_space_files(tmp_path, tree, fragments):
    path = _space(tmp_path, **tree)
    with pytest.raises(ConfigError) as info:
        load_search_space(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    assert all(f in msg for f in fragments), msg


def test_extends_params_must_be_a_mapping(tmp_path):
    (tmp_path / "base.yaml").write_text("method: cedr\nparams: [optim.lr]\n")
    path = _space(tmp_path, extends="base.yaml")
    with pytest.raises(ConfigError, match=r"base.yaml: params: expected a mapping"):
        load_search_space(path)


@pytest.mark.parametrize("metric", ["val/OA", "val/F1", "val/acc/cube", "train/loss", "train/scc", "lr", "epoch"])
def test_reported_metrics_are_valid_objectives(tmp_path, metric):
    assert load_search_space(_space(tmp_path, objective={"metric": metric, "mode": "max"})).metric == metric


def test_objective_checked_against_classes_and_loss_terms():
    check_objective("val/acc/cube", Task.CLASSIFICATION, "x", class_names=["sphere", "cube"], loss_terms=["loss"])
    with pytest.raises(ConfigError, match=r"'val/acc/dog'.*val/acc/sphere, val/acc/cube"):
        check_objective("val/acc/dog", Task.CLASSIFICATION, "x", class_names=["sphere", "cube"])
    with pytest.raises(ConfigError, match=r"'train/nope'.*train/ce, train/scc, train/acc"):
        check_objective("train/nope", Task.CLASSIFICATION, "x", loss_terms=["loss", "ce", "scc", "logits"])
    check_objective("val/svm_mAcc", Task.PRETRAIN, "x")


class _Toy(torch.nn.Module):
    """A stand-in method: logits and features straight from the clouds' mean coordinates."""

    task = Task.CLASSIFICATION

    def predict(self, batch):
        return torch.cat([batch["points"].mean(1), -batch["points"].mean(1)], -1)[:, :2]

    def embed(self, batch):
        return batch["points"].mean(1)


@pytest.mark.parametrize("task", [Task.CLASSIFICATION, Task.PRETRAIN])
def test_declared_protocol_metrics_are_what_the_protocols_return(task):
    gen = torch.Generator().manual_seed(0)
    items = [{"points": torch.randn(16, 3, generator=gen), "label": torch.tensor(i % 2)} for i in range(16)]
    method = _Toy()
    method.task = task
    scores, _ = evaluate(method, {"eval": items, "fit": items}, torch.device("cpu"), ["a", "b"])
    assert set(scores) == set(protocol_metrics(task)) | {"acc/a", "acc/b"}


@pytest.mark.parametrize("values,fragment", [
    ({"trials": 0}, "--trials must be an integer >= 1, got 0"),
    ({"workers": 1.5}, "--workers must be an integer"),
    ({"seed": 2**32}, "--seed must be in [0, 4294967295]"),
    ({"gpus_per_worker": 1.5}, "--gpus-per-worker must be a fraction <= 1 or a whole number, got 1.5"),
    ({"cpus_per_worker": 0}, "--cpus-per-worker must be > 0"),
    ({"memory_per_worker": -2.5}, "--memory-per-worker must be a number of GB > 0, got -2.5"),
    ({"wait_for_resources": -1}, "--wait-for-resources must be a number of seconds >= 0"),
    ({"epochs": 0}, "--epochs must be an integer >= 1, got 0"),
])
def test_sweep_numbers(values, fragment):
    with pytest.raises(ConfigError) as info:
        check_numbers(values, "sweep")
    assert fragment in str(info.value)


def test_numbers_of_a_file_name_the_file_and_field():
    with pytest.raises(ConfigError, match=r"^s.yaml: grace_period must be an integer >= 1, got 'x'$"):
        check_numbers({"grace_period": "x"}, "sweep", source="s.yaml")
    check_numbers({"workers": 0, "epochs": None, "trials": 0}, "train")  # train: 0 workers = local; no trials


@pytest.mark.parametrize("uri,fragment", [
    ("http://", "no host"),
    ("sqlite://", "in-memory"),
    ("file:///tmp/mlruns", "MLFLOW_ALLOW_FILE_STORE"),
    ("/tmp/mlruns", "MLFLOW_ALLOW_FILE_STORE"),
    ("mlflow://x", "unknown tracking URI scheme 'mlflow'"),
])
def test_bad_tracking_uris(monkeypatch, uri, fragment):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError) as info:
        check_tracking_uri(uri)
    assert str(info.value).startswith(f"--mlflow-uri {uri!r}: ") and fragment in str(info.value)


def test_good_tracking_uris_and_the_environment(monkeypatch, tmp_path):
    for uri in (f"sqlite:///{tmp_path}/mlflow.db", "postgresql+psycopg2://u@db/mlflow", "https://mlflow.example",
                "databricks"):
        check_tracking_uri(uri)
    monkeypatch.chdir(tmp_path)
    check_tracking_uri("sqlite:///mlflow.db")  # relative to the working directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    with pytest.raises(ConfigError, match=r"^\$MLFLOW_TRACKING_URI 'bogus://x'"):
        check_tracking_uri(None)


def test_gpus_asked_of_a_machine_without_them(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_gpus(4, 0.0, "--gpus-per-worker 0")
    with pytest.raises(ConfigError, match=r"^--gpu: 1 worker\(s\) x 1 GPU = 1 GPUs, but the cluster has 0"):
        check_gpus(0, 1.0, "--gpu")


def test_sweep_yaml_keys(tmp_path):
    fields, required = ["method", "space_file", "sweep_dir", "trials"], ["method", "space_file", "sweep_dir"]
    path = tmp_path / "sweep.yaml"
    with pytest.raises(ConfigError, match=r"not a pointtune sweep directory \(no sweep.yaml\)"):
        load_sweep_yaml_checked(path, fields, required)
    path.write_text("method: cedr\nspace_file: s.yaml\nsweep_dir: d\ntrails: 3\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: unknown key 'trails'; closest valid key: trials"):
        load_sweep_yaml_checked(path, fields, required)
    path.write_text("method: cedr\nsweep_dir: d\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: missing key 'space_file'"):
        load_sweep_yaml_checked(path, fields, required)
    path.write_text("- a\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: expected a mapping"):
        load_sweep_yaml_checked(path, fields, required)
    path.write_text("method: cedr\nspace_file: s.yaml\nsweep_dir: d\ntrials: 0\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: trials must be an integer >= 1"):
        load_sweep_yaml_checked(path, fields, required)


def test_checkpoint_whose_model_does_not_match_its_config(tmp_path):
    exp = build_config("cedr", overrides=TINY)
    torch.save({"model": {"bogus.weight": torch.zeros(1)}, "experiment": exp.to_dict(), "class_names": ["a", "b"]},
               tmp_path / "state.pt")
    tuned = build_config("finetune", overrides={**TINY, "method.pretrained": str(tmp_path)})
    with pytest.raises(ConfigError, match=rf"method.pretrained: {tmp_path}/state.pt: cannot rebuild its 'cedr' model"):
        warm_started(tuned, 2)
    (tmp_path / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match=r"^method.pretrained: .*not a pointtune checkpoint \(torch cannot load it"):
        warm_started(tuned, 2)


def test_preflight_passes_tiny_configs_and_reports_loss_terms():
    exp = build_config("cedr", overrides={**TINY, "data.use_normals": True})  # synthetic clouds have normals
    state = torch.get_rng_state()
    result = preflight(exp, objective="train/scc")
    assert torch.equal(torch.get_rng_state(), state)
    assert {"loss", "ce", "scc", "acc"} <= set(result.loss_terms) and result.data.num_classes == 8
    assert "normals" in result.data.train[0]
    conclu = build_config("conclu", overrides={**TINY, "method.view_points": 64, "method.projector_hidden": 32,
                                                "method.projection_dim": 16, "method.predictor_hidden": 16})
    assert "loss" in preflight(conclu, objective="val/svm_acc").loss_terms


def test_preflight_measures_a_training_step_and_scales_it_to_the_batch():
    """The memory estimate per worker: what the process held, the step's peak (forward and backward on 2
    items: activations and gradients) scaled linearly to the batch, and the optimizer's state."""
    from pointtune.preflight import TINY_BATCH

    exp = build_config("cedr", overrides={**TINY, "method.backbone.name": "dgcnn", "method.backbone.emb_dims": 256,
                                          "data.num_points": 512})
    result = preflight(exp)
    assert result.held_bytes > 50e6 and result.step_bytes > 1e6          # torch alone holds more than 50 MB
    params = sum(p.numel() for p in exp.method_cls(exp.method, 8, 1).parameters())
    assert result.optimizer_bytes == params * 4                      # SGD momentum, float32
    at = result.memory_per_worker
    assert at(2 * TINY_BATCH) - at(TINY_BATCH) == result.step_bytes
    assert at(32) == result.held_bytes + 16 * result.step_bytes + result.optimizer_bytes
    line = result.describe_memory(32)
    assert line.startswith(f"[pointtune] memory: ~{at(32) / 1e9:.1f} GB per worker at train.batch_size 32") and \
        "\n" not in line


def test_preflight_without_the_step_checks_data_and_model_but_runs_no_forward(monkeypatch):
    """``step=False`` (``--fast-dev-run``, whose run takes the step itself): the splits and the model are
    still checked in one line; the method's forward is never called."""
    exp = build_config("cedr", overrides=TINY)
    monkeypatch.setattr(exp.method_cls, "forward", lambda *a, **k: pytest.fail("preflight ran a forward pass"))
    result = preflight(exp, step=False)
    assert result.loss_terms == () and result.step_bytes == 0 and result.data.num_classes == 8
    with pytest.raises(ConfigError, match=r"^method.backbone.name: .*unknown backbone"):
        preflight(build_config("cedr", overrides={**TINY, "method.backbone.name": "nope"}), step=False)
    with pytest.raises(ConfigError, match="each of the 2 worker"):
        preflight(build_config("cedr", overrides={**TINY, "train.batch_size": 64}), workers=2, step=False)


@pytest.mark.parametrize("overrides,error,fragment", [
    ({"data.val_fraction": 0.0}, DatasetError, "data.val_fraction"),
    ({"train.batch_size": 64}, ConfigError, "each of the 2 worker(s) gets 56 of the 112"),
    ({"train.drop_last": False, "train.batch_size": 11}, ConfigError, "train.drop_last"),
    ({"data.synthetic_num_classes": 2, "data.classes": ["cube"]}, DatasetError, "data.classes"),
])
def test_preflight_rejects_splits_the_loop_cannot_use(overrides, error, fragment):
    exp = build_config("cedr", overrides={**TINY, **overrides})
    with pytest.raises(error) as info:
        preflight(exp, workers=2)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_preflight_names_a_missing_pretrained_checkpoint(tmp_path):
    exp = build_config("finetune", overrides={**TINY, "method.pretrained": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=rf"^method.pretrained: {tmp_path}/nope/state.pt: no such file"):
        preflight(exp)


def test_preflight_objective_needs_a_reported_loss_term():
    exp = build_config("cedr", overrides=TINY)
    with pytest.raises(ConfigError, match=r"objective.metric: 'train/swap'.*train/scc"):
        preflight(exp, objective="train/swap")


def test_recorded_paths_are_relative_to_the_checkout(tmp_path, monkeypatch):
    """sweep.yaml and the parent run's search_space name the space inside the working directory relative to
    it (inside a Ray job that directory is a temporary copy: its absolute path would be recorded otherwise)."""
    from pointtune.cli import recorded_path

    (tmp_path / "search_spaces").mkdir()
    space = tmp_path / "search_spaces" / "cedr.yaml"
    space.write_text("method: cedr\n")
    monkeypatch.chdir(tmp_path)
    assert recorded_path(space) == "search_spaces/cedr.yaml"
    elsewhere = tmp_path.parent / "space.yaml"
    assert recorded_path(elsewhere) == str(elsewhere.resolve())
