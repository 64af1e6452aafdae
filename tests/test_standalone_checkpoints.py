"""Checkpoints that stand alone (issue 18 §2): a run that started from another run's weights (``finetune`` and
``seg`` from ``method.pretrained``, SCL's stage 2 from ``method.stage1_from``) copies that run's checkpoint into
``<run dir>/sources/`` and builds its architecture from its own config, so that once the original run is
deleted its checkpoints still load with the same predictions, ``pointtune robustness`` still judges it and its
``config.yaml`` still trains; the source's weights are applied on a fresh start only, never on a resume or by
``load_method``.

Every run here is trained in this process (local mode) for one epoch with tiny settings, once per module."""

from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import default_collate

from conftest import SHARED_DATA, TINY
from helpers import one_line_error
from pointtune.config import ConfigError, build_config, config_from_file
from pointtune.method import Task
from pointtune.methods.finetune import PretrainedEncoderMethod
from pointtune.train.checkpoint import load_state
from pointtune.train.load import load_method
from pointtune.train.launch import train
from pointtune.train.sources import resolve_sources

pytestmark = pytest.mark.slow  # each case trains a pretraining run and the run that starts from it

# SCL small enough for a second per epoch on the synthetic clouds (as tests/test_scl.py).
TINY_SCL = {"method.num_patches": 8, "method.patch_k": 6, "method.edgeconv_k": 8, "method.e1_widths": [16, 16],
            "method.sim_dim": 8, "method.e2_widths": [16, 16, 16], "method.point_dim": 24,
            **{k: v for k, v in TINY.items() if not k.startswith("method.")}}
# seg on the ScanNet sample: 1024-point crops, two per scene, a small head (as tests/test_seg.py).
TINY_SEG = {"data.name": "scannet", "data.num_points": 1024, "data.loop": 2, "train.batch_size": 2,
            "train.eval_batch_size": 2, "protocol.val": "crops", "method.head_hidden": [32, 16],
            "method.backbone.inputs": []}


def _train(method: str, run_dir: Path, overrides: dict) -> Path:
    """Train ``method`` with ``overrides`` (dotted keys) for 1 epoch in this process into ``run_dir``."""
    train(build_config(method, overrides={**overrides, "train.epochs": 1}), run_dir, progress=False)
    return run_dir


def _probe(loaded) -> dict[str, torch.Tensor]:
    """The first two validation items of the run's own data (the one crop of a one-scene validation split)."""
    from pointtune.protocols import build_eval_splits

    val = build_eval_splits(loaded.experiment).val
    return default_collate([val[i] for i in range(min(2, len(val)))])


def _outputs(method, batch) -> torch.Tensor:
    """What a run is judged on: logits of a classifier or segmenter, embeddings of a pretraining method."""
    return method.embed(batch) if method.task is Task.PRETRAIN else method.predict(batch)


@dataclass
class Standalone:
    """A run whose source run was deleted after training: its directory, its method, the source's key, and the
    outputs its best checkpoint gave on ``probe`` while the source still existed."""

    run: Path
    method: str
    key: str
    probe: dict[str, torch.Tensor]
    before: torch.Tensor


def _delete_source(run: Path, key: str, source: Path) -> Standalone:
    """Record ``run``'s outputs on a probe batch, then delete its source run ``source``."""
    loaded = load_method(run)
    probe = _probe(loaded)
    before = _outputs(loaded.method, probe)
    shutil.rmtree(source)
    return Standalone(run, loaded.experiment.method.name, key, probe, before)


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory) -> Path:
    """A 1-epoch tiny CEDR run (PointNet encoder): the pretraining run of ``finetune`` and ``seg``; never deleted
    (each of them starts from its own copy)."""
    return _train("cedr", tmp_path_factory.mktemp("pretrain") / "cedr", TINY)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, pretrain_run) -> Standalone:
    root = tmp_path_factory.mktemp("finetune")
    source = shutil.copytree(pretrain_run, root / "pretrain")
    run = _train("finetune", root / "tuned", {**TINY, "method.pretrained": str(source)})
    return _delete_source(run, "method.pretrained", source)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, pretrain_run) -> Standalone:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    root = tmp_path_factory.mktemp("seg")
    source = shutil.copytree(pretrain_run, root / "pretrain")
    run = _train("seg", root / "seg", {**TINY_SEG, "data.root": str(SHARED_DATA / "scannet_subset"),
                                       "method.pretrained": str(source)})
    return _delete_source(run, "method.pretrained", source)


@pytest.fixture(scope="module")
def scl_stage2(tmp_path_factory) -> Standalone:
    root = tmp_path_factory.mktemp("scl")
    stage1 = _train("scl", root / "stage1", {**TINY_SCL, "method.stage": 1})
    run = _train("scl", root / "stage2", {**TINY_SCL, "method.stage": 2, "method.stage1_from": str(stage1)})
    return _delete_source(run, "method.stage1_from", stage1)


CASES = ["finetuned", pytest.param("segmented", marks=pytest.mark.realdata), "scl_stage2"]


@pytest.mark.parametrize("case", CASES)
def test_a_checkpoint_loads_without_its_source_run(case, request):
    done: Standalone = request.getfixturevalue(case)
    leaf = done.key.rsplit(".", 1)[-1]
    copy = done.run / "sources" / leaf
    config = yaml.safe_load((done.run / "config.yaml").read_text())
    assert config["method"][leaf] == str(copy)
    kept = load_state(copy)
    assert {"model", "experiment", "class_names"} <= set(kept) and "optimizer" not in kept and "rng" not in kept
    hidden = done.run / "sources.hidden"   # the checkpoint alone rebuilds the model: not even the copy is read
    (done.run / "sources").rename(hidden)
    try:
        loaded = load_method(done.run)
    finally:
        hidden.rename(done.run / "sources")
    assert loaded.experiment.method.name == done.method
    assert getattr(loaded.experiment.method, leaf) == str(copy)
    assert torch.equal(_outputs(loaded.method, done.probe), done.before)


@pytest.mark.parametrize("case", CASES)
def test_its_config_trains_again_from_the_run_copy(case, request, tmp_path, capsys):
    from pointtune.cli import main

    done: Standalone = request.getfixturevalue(case)
    leaf = done.key.rsplit(".", 1)[-1]
    out = tmp_path / "again"
    assert main(["train", done.method, "--config", str(done.run / "config.yaml"), "--epochs", "1", "--output",
                 str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"[pointtune] warm start: {done.key} <- {out / 'sources' / leaf}" in printed
    # the new run has its own copy of the same source, and stands alone as well
    assert yaml.safe_load((out / "config.yaml").read_text())["method"][leaf] == str(out / "sources" / leaf)
    source, copy = load_state(done.run / "sources" / leaf)["model"], load_state(out / "sources" / leaf)["model"]
    assert source.keys() == copy.keys() and all(torch.equal(copy[k], v) for k, v in source.items())


@pytest.mark.parametrize("case", ["finetuned", "scl_stage2"])   # robustness judges point clouds, not scenes
def test_robustness_judges_it_without_its_source_run(case, request, tmp_path):
    from pointtune.cli import main

    done: Standalone = request.getfixturevalue(case)
    assert main(["robustness", str(done.run), "--jitter", "0.01", "--points", "64", "--output", str(tmp_path),
                 "--no-mlflow"]) == 0
    with (tmp_path / "robustness.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["perturbation"] for r in rows] == ["clean", "jitter", "points"] and rows[0]["note"] == ""


def test_warm_start_runs_on_a_fresh_start_only(finetuned, tmp_path, monkeypatch, capsys):
    calls = []
    original = PretrainedEncoderMethod.warm_start

    def spy(self, sources):
        calls.append(sorted(sources))
        return original(self, sources)

    monkeypatch.setattr(PretrainedEncoderMethod, "warm_start", spy)
    load_method(finetuned.run)
    assert calls == []                                             # loading a checkpoint never warm-starts
    run = shutil.copytree(finetuned.run, tmp_path / "run", ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    capsys.readouterr()
    train(config_from_file("finetune", run / "config.yaml", ["train.epochs=2"]), run, progress=False)
    printed = capsys.readouterr().out
    assert "resumed after epoch 1" in printed and "warm start:" not in printed
    assert calls == []                                             # a resume takes every weight from its checkpoint
    assert load_state(run / "checkpoints" / "latest")["epoch"] == 1
    # the copy's config named the original run's copy of the source: the resumed run made its own
    exp = config_from_file("finetune", run / "config.yaml")
    assert exp.method.pretrained == str(run / "sources" / "pretrained")
    # which a rerun leaves where it is
    assert "method.pretrained" not in resolve_sources(exp, run) and "copied" not in capsys.readouterr().out
    # a fresh start does warm-start, once (0 epochs: the warm-started model is judged as it is)
    train(config_from_file("finetune", run / "config.yaml", ["train.epochs=0"]), tmp_path / "fresh", progress=False)
    assert calls == [["method.pretrained"]] and "warm start: method.pretrained <- " in capsys.readouterr().out


def test_resolve_sources_copies_the_checkpoint_and_fills_the_architecture(pretrain_run, tmp_path, capsys):
    exp = config_from_file("finetune", None, [f"method.pretrained={pretrain_run}"])
    assert exp.method.encoder_source is None
    checked = resolve_sources(exp)                                 # the preflight's: nothing is copied
    assert set(checked) == {"method.encoder_source"} and not (tmp_path / "sources").exists()
    saved = load_state(pretrain_run / "checkpoints" / "best")
    assert checked["method.encoder_source"] == {"method": saved["experiment"]["method"],
                                                "num_classes": len(saved["class_names"])}
    overrides = resolve_sources(exp, tmp_path)
    copy = tmp_path / "sources" / "pretrained"
    assert overrides == {"method.pretrained": str(copy), **checked}
    assert f"method.pretrained: {pretrain_run / 'checkpoints' / 'best'} copied to {copy}" in capsys.readouterr().out
    assert set(load_state(copy)) == {"model", "experiment", "class_names", "metrics", "epoch"}
    assert sorted(p.name for p in copy.iterdir()) == ["metrics.json", "state.pt"]


def test_a_config_without_the_architecture_of_its_source_is_refused():
    from pointtune.methods.finetune import FinetuneConfig

    with pytest.raises(ConfigError) as info:
        config_from_file("finetune", None, ["method.encoder_source={method: {name: cedr}, num_classes: 2}"])
    one_line_error(info, "encoder_source", "set pretrained too")
    with pytest.raises(ValueError, match=re.escape("expected {method: {name: ..., ...}, num_classes: n >= 0}")):
        FinetuneConfig(pretrained="/x", encoder_source={"method": {"name": "cedr"}})


def test_a_sweep_copies_its_source_once_for_every_trial(pretrain_run, tmp_path):
    from pointtune.search.space import load_search_space
    from pointtune.search.spec import SweepRuntime, SweepSpec, trial_config
    from pointtune.search.sweep import _check_sources, _copy_sources

    params = {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1},
              **{k: {"type": "fixed", "value": v} for k, v in TINY.items()}}
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({"method": "finetune", "objective": {"metric": "val/OA", "mode": "max"},
                                          "params": params}))
    spec = SweepSpec(method="finetune", space_file=str(space_file), sweep_dir=str(tmp_path / "sweep"),
                     overrides={"method.pretrained": str(pretrain_run)})
    space = load_search_space(space_file, "finetune")
    _check_sources(spec, space)
    decided = _copy_sources(spec, space, {})
    copy = tmp_path / "sweep" / "sources" / "pretrained"
    assert decided["method.pretrained"] == str(copy) and (copy / "state.pt").is_file()
    trial = trial_config(spec, {"optim.lr": 0.05}, space, SweepRuntime({}, "sqlite:///unused", "0", "run", decided))
    assert trial.method.pretrained == str(copy) and trial.method.encoder_source["method"]["name"] == "cedr"
    searched = {**params, "method.pretrained": {"type": "categorical", "choices": [str(pretrain_run), "/x"]}}
    space_file.write_text(yaml.safe_dump({"method": "finetune", "objective": {"metric": "val/OA", "mode": "max"},
                                          "params": searched}))
    with pytest.raises(ConfigError) as info:
        _check_sources(spec, load_search_space(space_file, "finetune"))
    one_line_error(info, "method.pretrained: the sweep copies the run its trials start from once")
