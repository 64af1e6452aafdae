"""Schedules (pointtune.schedules): every shape against its formula, and how a schedule is given in a config
(whole, in part, or as a number over a method's recipe)."""

import math

import pytest

from pointtune.config import ConfigError, build_config
from pointtune.schedules import Schedule, schedule_values


def test_shapes_against_their_formulas():
    epochs, warm = 10, 2.0
    cos = Schedule(start=0.5, end=0.01, shape="cosine", warmup_epochs=warm, warmup_start=0.1)
    lin = Schedule(start=0.5, end=0.01, shape="linear", warmup_epochs=warm, warmup_start=0.1)
    for i in range(101):
        t = i / 10
        if t < warm:
            ramp = 0.1 + (0.5 - 0.1) * t / warm
            assert cos.at(t, epochs) == pytest.approx(ramp) and lin.at(t, epochs) == pytest.approx(ramp)
            continue
        r = (t - warm) / (epochs - warm)
        assert cos.at(t, epochs) == pytest.approx(0.01 + 0.5 * (1 + math.cos(math.pi * r)) * (0.5 - 0.01))
        assert lin.at(t, epochs) == pytest.approx(0.5 + (0.01 - 0.5) * r)
    assert cos.at(12.5, epochs) == pytest.approx(0.01)            # past the end: the end value
    step = Schedule(start=0.1, shape="step", step_epochs=2, gamma=0.5)
    assert [step.at(e, 8) for e in range(6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert Schedule(start=0.3, end=0.9).at(5, 10) == 0.3           # constant ignores end
    assert Schedule(start=0.3, shape="cosine").at(5, 10) == 0.3     # no end: start throughout


def test_momentum_schedule_is_dinos_cosine():
    """DCGLR / DINO teacher momentum: 1 - (1 - 0.996) * (cos(pi k / K) + 1) / 2 (spec 2.6)."""
    momentum = Schedule(start=0.996, end=1.0, shape="cosine")
    for k in range(0, 41):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * k / 40) + 1) / 2
        assert momentum.at(k / 4, 10) == pytest.approx(expected)


def test_a_schedule_given_in_part_or_as_a_number():
    # a number sets start and keeps the rest of the recipe's schedule (conclu: step decay)
    exp = build_config("conclu", {"optim": {"lr": 0.002}})
    assert (exp.optim.lr.start, exp.optim.lr.shape, exp.optim.lr.step_epochs) == (0.002, "step", 20)
    exp = build_config("conclu", {}, {"optim.lr": 0.003, "optim.lr.step_epochs": 5})
    assert (exp.optim.lr.start, exp.optim.lr.shape, exp.optim.lr.step_epochs) == (0.003, "step", 5)
    # a part over the default
    exp = build_config("cedr", {"method": {"lambda_con": {"shape": "linear"}}})
    assert (exp.method.lambda_con.start, exp.method.lambda_con.end, exp.method.lambda_con.shape) == (0.1, 0.2, "linear")
    # the whole config round-trips
    assert build_config("cedr", exp.to_dict()).to_dict() == exp.to_dict()


@pytest.mark.parametrize("override, message", [
    ({"optim.lr.end": -1}, "optim.lr: Value error, end must be >= 0"),
    ({"method.lambda_con": -0.5}, "method.lambda_con: Value error, start must be >= 0"),
    ({"optim.lr.shape": "exp"}, "optim.lr.shape: Input should be 'constant', 'linear', 'cosine' or 'step'"),
    ({"optim.lr.warmup": 3},
     "optim.lr.warmup: unknown key; closest valid keys: optim.lr.warmup_start, optim.lr.warmup_epochs"),
])
def test_bad_schedules_name_their_key(override, message):
    with pytest.raises(ConfigError, match="^--set: " + message.replace("(", r"\(").replace(")", r"\)")):
        build_config("cedr", {}, override, source="--set")


def test_schedule_values_walks_the_whole_config():
    exp = build_config("cedr", {}, {"method.lambda_con.shape": "linear", "optim.lr.warmup_epochs": 1})
    values = schedule_values(exp, 2.0, 4)
    assert set(values) == {"optim.lr", "optim.weight_decay", "method.lambda_con"}
    assert values["method.lambda_con"] == pytest.approx(0.15)
    assert values["optim.lr"] == pytest.approx(exp.optim.lr.at(2.0, 4))
