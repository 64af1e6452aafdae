"""The Optuna samplers a sweep offers (``--sampler``) on a real conditional space: each draws only active
parameters inside their bounds, is reproducible from its seed, and the model-based ones (TPE, GP) leave their
random start-up and move towards what scored well."""

import math

import optuna
import pytest

from pointtune.search.space import load_search_space
from pointtune.search.spec import SAMPLERS
from pointtune.search.sweep import make_sampler

SPACE = "search_spaces/cedr.yaml"


def _objective(space):
    """A deterministic function of the CEDR space that peaks at lr = 0.05 with EAA off."""
    def objective(trial):
        space.define_by_run(trial)
        lr = trial.params["optim.lr.start"]
        return -abs(math.log(lr / 0.05)) - (0.5 if trial.params["method.use_eaa"] else 0.0)
    return objective


def _study(name: str, seed: int, trials: int):
    space = load_search_space(SPACE, "cedr")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed))
    study.optimize(_objective(space), n_trials=trials)
    return space, study


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_draws_active_parameters_within_bounds_reproducibly(name):
    space, study = _study(name, seed=1, trials=12)
    by_key = {p.key: p for p in space.params}
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        for key, value in trial.params.items():
            param = by_key[key]
            assert param.active(trial.params), (name, key, trial.params)
            if param.type in ("float", "int"):
                assert param.low <= value <= param.high, (name, key, value)
            else:
                assert value in param.choices, (name, key, value)
        assert ("method.eaa_mode" in trial.params) == trial.params["method.use_eaa"]
    _, again = _study(name, seed=1, trials=12)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_model_based_samplers_beat_random_after_their_start_up(name):
    """After Optuna's 10 random start-up trials, the next 15 of TPE and GP score better on average than
    random search's trials 11-25 with the same seed (median over 3 seeds, on a smooth objective)."""
    gains = []
    for seed in range(3):
        model = [t.value for t in _study(name, seed, 25)[1].trials[10:]]
        random = [t.value for t in _study("random", seed, 25)[1].trials[10:]]
        gains.append(sum(model) / len(model) - sum(random) / len(random))
    assert sorted(gains)[1] > 0, gains


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_start_up_trials_are_random_searchs_first_trials(name):
    """With one seed, a model-based sampler's start-up trials are exactly random search's first trials (the
    strategies of bench/search.py share their start), and it departs from them after ``startup_trials``."""
    space = load_search_space(SPACE, "cedr")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = {}
    for sampler in (name, "random"):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, 4, startup_trials=3))
        study.optimize(_objective(space), n_trials=5)
        runs[sampler] = [t.params for t in study.trials]
    assert runs[name][:3] == runs["random"][:3] and runs[name][3:] != runs["random"][3:]


def test_unknown_sampler():
    from pointtune.config import ConfigError

    with pytest.raises(ConfigError, match="--sampler must be one of tpe, random, gp, got 'cmaes'"):
        make_sampler("cmaes", 0)
