"""Search spaces: YAML -> validated Param list -> Optuna define-by-run with conditions."""

from pathlib import Path

import optuna
import pytest

from conftest import REPO
from pointtune.config import ConfigError
from pointtune.search.space import load_search_space

SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_spaces_are_valid(path):
    space = load_search_space(path)
    assert space.metric and space.mode in ("max", "min") and space.searched()


def test_conditions_sample_only_when_switch_on():
    space = load_search_space(REPO / "search_spaces" / "cedr.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen_on = seen_off = 0
    for _ in range(40):
        trial = study.ask()
        space.define_by_run(trial)
        params = trial.params
        if params["method.use_eaa"]:
            seen_on += 1
            assert {"method.ent_low", "method.ent_high", "method.eaa_mode"} <= set(params)
            assert ("method.unstable_offset" in params) == (params["method.eaa_mode"] == "varying")
        else:
            seen_off += 1
            assert not {"method.ent_low", "method.ent_high", "method.unstable_offset"} & set(params)
        assert ("method.cpcm_method" in params) == params["method.use_cpcm"]
        assert 0.01 <= params["optim.lr.start"] <= 0.2
        study.tell(trial, 0.0)
    assert seen_on and seen_off


def test_fixed_values_are_returned_not_sampled():
    space = load_search_space(REPO / "search_spaces" / "cedr_quick.yaml")
    trial = optuna.create_study().ask()
    fixed = space.define_by_run(trial)
    assert fixed["method.backbone.name"] == "pointnet" and fixed["data.num_points"] == 256
    assert "method.backbone.name" not in trial.params


def test_tied_keys_take_their_sources_value():
    """SCL's bounds share their warm-up and period: `type: same` copies what the earlier key sampled."""
    from pointtune.search.pbt import population_space
    from pointtune.search.spec import SweepSpec, trial_config

    space = load_search_space(REPO / "search_spaces" / "scl.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        fixed = space.define_by_run(trial)
        for part in ("warmup_epochs", "step_epochs"):
            assert f"method.b_u.{part}" not in trial.params                      # not searched on its own
            assert fixed[f"method.b_u.{part}"] == trial.params[f"method.b_l.{part}"]
        study.tell(trial, 0.0)
    assert "method.b_u.step_epochs" not in space.searched()
    assert "method.b_u.step_epochs" not in population_space(space)               # PBT draws the source only
    spec = SweepSpec(method="scl", space_file=str(REPO / "search_spaces" / "scl.yaml"), sweep_dir="unused",
                     scheduler="pbt")
    exp = trial_config(spec, {"method.b_l.step_epochs": 0.05, "method.b_l.warmup_epochs": 0.3,
                              "method.stage1_from": "/nowhere"}, space)
    assert exp.method.b_u.step_epochs == 0.05 and exp.method.b_u.warmup_epochs == 0.3
    assert space.first_corner()["method.b_u.step_epochs"] == space.first_corner()["method.b_l.step_epochs"]


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("method: cedr\nparams:\n" + body)
    return path


@pytest.mark.parametrize("body,match", [
    ("  method.lambda_conn: {type: float, low: 0.1, high: 0.2}\n", "method.lambda_conn"),
    ("  optim.lr: {type: float, low: 0.2, high: 0.1}\n", r"optim.lr: low 0.2 > high 0.1"),
    ("  optim.lr: {type: float, low: a, high: 0.1}\n", r"optim.lr: 'low' must be a number"),
    ("  method.use_eaa: {type: float, low: 0.1, high: 0.2}\n", "method.use_eaa"),
    ("  method.ent_low: {type: float, low: 0.5, high: 1.0, when: {method.use_eaa: true}}\n",
     "condition on 'method.use_eaa'"),
    ("  optim.lr: {type: uniform, low: 0.1, high: 0.2}\n", "unknown type 'uniform'"),
    ("  optim.lr: {type: float, low: 0.0, high: 0.2, log: true}\n", "log scale needs low > 0"),
    ("  method.temperature: {type: categorical, choices: [0.1, -1.0]}\n", "method.temperature"),
    ("  optim.lr: {type: float, low: 0.01, high: 0.2, scale: log}\n", "unknown field 'scale'"),
    ("  optim.lr.start: {type: same, as: optim.weight_decay.start}\n",
     "same: 'as' must name a parameter defined before it, got 'optim.weight_decay.start'"),
    ("  optim.lr.start: {type: float, low: 0.1, high: 0.2}\n  method.use_eaa: {type: same, as: optim.lr.start}\n",
     "method.use_eaa"),
    ("  optim.lr: {type: float, low: 0.01, high: 0.1}\n  optim.lr.start: {type: float, low: 0.1, high: 0.2}\n",
     "optim.lr.start: a part of optim.lr, which the space also sets; give optim.lr whole or its parts, not both"),
])
def test_bad_spaces_fail_with_file_and_key(tmp_path, body, match):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError, match=match) as info:
        load_search_space(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_protocol_keys_are_those_of_the_protocol_the_space_runs(tmp_path):
    """A space's ``protocol.*`` keys are checked against the protocol it fixes (``protocol.name``), else the
    task's default one."""
    path = tmp_path / "space.yaml"
    path.write_text("method: conclu\nparams:\n  protocol.c: {type: float, low: 0.01, high: 10, log: true}\n")
    assert load_search_space(path).metric == "val/svm_acc"
    path.write_text("method: conclu\nparams:\n  protocol.queries: {type: int, low: 5, high: 20}\n")
    with pytest.raises(ConfigError, match=r"protocol.queries: not a key of protocol linear_svm \(few_shot has it; "
                                          r"set protocol.name=few_shot\)"):
        load_search_space(path)
    path.write_text("method: conclu\nparams:\n  protocol.name: {type: fixed, value: few_shot}\n"
                    "  protocol.queries: {type: int, low: 5, high: 20}\n")
    assert load_search_space(path).metric == "val/fewshot/5way10shot"
    path.write_text("method: conclu\nparams:\n  protocol.svm_c: {type: float, low: 0.01, high: 10}\n")
    with pytest.raises(ConfigError, match=r"protocol.svm_c: unknown key; closest valid keys: protocol.c"):
        load_search_space(path)


def test_extends_overrides_and_deletes(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "method: cedr\nparams:\n  optim.lr: {type: float, low: 0.01, high: 0.1}\n"
        "  method.temperature: {type: categorical, choices: [0.1, 1.0]}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nparams:\n  optim.lr: {type: fixed, value: 0.05}\n  method.temperature: null\n"
        "  method.lambda_con: {type: float, low: 0.05, high: 0.2}\n")
    space = load_search_space(tmp_path / "child.yaml")
    assert [p.key for p in space.params] == ["optim.lr", "method.lambda_con"]
    assert space.params[0].type == "fixed"


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    """YAML 1.1 (PyYAML) reads 1.0e-4 and 5e-3 as strings; spaces, config files and --set read them as floats."""
    from pointtune.config import config_from_file

    space = load_search_space(_write(tmp_path, "  optim.lr: {type: float, low: 1.0e-4, high: 5e-3, log: true}\n"
                                               "  method.temperature: {type: categorical, choices: [1e-1, 2E-1]}\n"))
    lr, tau = space.params
    assert (lr.low, lr.high) == (1e-4, 5e-3) and tau.choices == (0.1, 0.2)
    config = tmp_path / "config.yaml"
    config.write_text("optim:\n  lr: 1e-3\n  weight_decay: 1.0e6\n")
    exp = config_from_file("cedr", config, ["train.grad_clip=1E+1"])
    assert (exp.optim.lr.start, exp.optim.weight_decay.start, exp.train.grad_clip) == (1e-3, 1e6, 10.0)
