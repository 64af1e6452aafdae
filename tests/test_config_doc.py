"""`pointtune config METHOD` (pointtune.config_doc): every key listed with its type, the value a run gets and
a one-line meaning, for every method and backbone."""

import pytest
import yaml

from helpers import pointtune
from pointtune.backbones import backbone_names
from pointtune.config import build_config, config_keys
from pointtune.config_doc import config_rows, schedule_rows, type_name
from pointtune.method import method_names
from pointtune.schedules import Schedule


@pytest.mark.parametrize("method", method_names())
def test_every_key_is_listed_with_a_meaning(method):
    rows = config_rows(build_config(method))
    listed = {r.key for r in rows}
    schedules = {r.key for r in rows if r.type == "schedule"}
    for key in config_keys(method):
        if key == "method.name" or key.rpartition(".")[0] in schedules or key.startswith("protocol.data."):
            continue   # the fixed name; a schedule's parts are listed once; protocol.data.* are data.* keys
        assert key in listed, key
    undocumented = [r.key for r in rows if r.type != "section" and not r.meaning]
    assert not undocumented, f"fields without a description: {undocumented}"
    assert all(r.meaning for r in schedule_rows())


@pytest.mark.parametrize("backbone", backbone_names())
def test_every_backbone_argument_is_documented(backbone):
    rows = config_rows(build_config("cedr", overrides={"method.backbone.name": backbone}))
    args = [r for r in rows if r.key.startswith("method.backbone.") and r.key not in
            ("method.backbone.name", "method.backbone.inputs")]
    assert args, backbone
    assert not [r.key for r in args if r.meaning.startswith("argument of backbone")], "no Args: entry in the docstring"


def test_values_are_what_a_run_gets():
    exp = build_config("conclu", overrides={"optim.lr": 0.002, "method.backbone.k": 16})
    rows = {r.key: r for r in config_rows(exp)}
    # the recipe's step decay is kept
    assert rows["optim.lr"].default == "{start: 0.002, shape: step, step_epochs: 0.1, gamma: 0.7, unit: fraction}"
    assert rows["optim.name"].default == "adamw" and rows["optim.name"].type == "sgd|adamw"
    assert rows["method.backbone.k"].default == "16" and rows["method.backbone.pooling"].default == "max"
    assert rows["train.threads"].type == "int | null (>= 1)" and rows["train.threads"].default == "null"
    assert rows["data.augment.scale_low"].default == "1"


def test_methods_with_their_own_encoders_list_no_backbone_arguments():
    scl = {r.key for r in config_rows(build_config("scl"))}
    assert "method.backbone.inputs" in scl and "method.backbone.emb_dims" not in scl   # SCL rejects them
    assert "method.backbone.emb_dims" in {r.key for r in config_rows(build_config("conclu"))}
    rows = {r.key: r for r in config_rows(build_config("scl", overrides={"method.b_l.delta": 0.1}))}
    assert rows["method.b_l"].default == ("{start: 0, end: 0.5, shape: stairs, warmup_epochs: 0.585938, "
                                          "step_epochs: 0.0390625, delta: 0.1, unit: fraction}")


def test_type_names():
    from typing import Literal
    assert type_name(Literal["a", "b"]) == "a|b" and type_name(float | None) == "float | null"
    assert type_name(list[str] | None) == "list[str] | null" and type_name(Schedule) == "schedule"


@pytest.mark.slow  # three CLI runs
def test_cli_lists_and_writes_yaml(tmp_path):
    out = pointtune("config", "cedr", "--set", "method.use_scc=false")
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.strip().startswith("method.use_scc "))
    assert "false" in line and "plain cross-entropy" in line
    assert "<schedule>.warmup_epochs" in out.stdout
    out = pointtune("config", "cedr", "--yaml", "--set", "optim.lr.warmup_epochs=2")
    tree = yaml.safe_load(out.stdout)
    assert build_config("cedr", tree).optim.lr.warmup_epochs == 2
    bad = pointtune("config", "cedr", "--set", "method.use_sc=false")
    assert bad.returncode == 2 and "closest valid keys: method.use_scc" in bad.stderr


def _protocol_keys(rows) -> set[str]:
    return {r.key for r in rows if r.key.startswith("protocol.")}


def test_only_the_chosen_protocols_keys_are_listed():
    assert _protocol_keys(config_rows(build_config("conclu"))) == {
        "protocol.name", "protocol.data", "protocol.c", "protocol.folds", "protocol.max_iter", "protocol.seed"}
    assert _protocol_keys(config_rows(build_config("cedr"))) == {"protocol.name", "protocol.data"}
    for method, name in (("conclu", None), ("conclu", "few_shot"), ("conclu", "part_seg"), ("seg", None)):
        listed = _protocol_keys(config_rows(build_config(method, overrides={"protocol.name": name})))
        assert listed == {k for k in config_keys(method, name) if k.startswith("protocol.")
                          and not k.startswith("protocol.data.")}, (method, name)
    out = pointtune("config", "conclu", "--set", "protocol.name=few_shot")
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.strip().startswith("protocol.")}
    assert {"protocol.ways", "protocol.shots", "protocol.queries", "protocol.c"} <= listed
    assert not listed & {"protocol.head", "protocol.render", "protocol.whole"}
