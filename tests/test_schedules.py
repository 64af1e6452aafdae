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


def test_stairs_hold_then_step_by_delta_until_end():
    """stairs: start for the warm-up, then start + delta floor((t - W) / T), stopping at end."""
    up = Schedule(start=0.0, end=0.5, shape="stairs", delta=0.05, warmup_epochs=300, step_epochs=20)
    down = Schedule(start=1.0, end=0.75, shape="stairs", delta=-0.025, warmup_epochs=300, step_epochs=20)
    for t in [x / 4 for x in range(0, 4 * 600)]:
        n = 0 if t < 300 else math.floor((t - 300) / 20)
        assert up.at(t, 512) == pytest.approx(min(0.5, 0.05 * n), abs=1e-12)
        assert down.at(t, 512) == pytest.approx(max(0.75, 1.0 - 0.025 * n), abs=1e-12)
    # the step lands on its epoch despite rounding; warmup_start plays no part (a hold, not a ramp)
    assert up.at(320 - 1e-12, 512) == pytest.approx(0.05)
    assert Schedule(start=2.0, shape="stairs", delta=1.0, warmup_epochs=3, warmup_start=7.0).at(1.5, 10) == 2.0
    # no end: no limit
    assert Schedule(start=0.0, shape="stairs", delta=1.0, step_epochs=1).at(100, 10) == 100


def test_fraction_unit_scales_warmup_and_period_with_the_run():
    frac = Schedule(start=0.0, end=0.5, shape="stairs", delta=0.05, warmup_epochs=300 / 512, step_epochs=20 / 512,
                    unit="fraction")
    epochs = Schedule(**{**frac.model_dump(), "unit": "epochs", "warmup_epochs": 300, "step_epochs": 20})
    for t in (0, 299.9, 300, 319.99, 320, 340, 480, 500, 511):
        assert frac.at(t, 512) == pytest.approx(epochs.at(t, 512), abs=1e-12)
    # a 10-epoch proxy run: warm-up 5.86 epochs, one step every 0.39 epochs
    assert frac.at(5.8, 10) == 0.0 and frac.at(300 / 51.2 + 20 / 51.2, 10) == pytest.approx(0.05)
    lr = Schedule(start=1.0, shape="step", step_epochs=0.25, gamma=0.5, unit="fraction", warmup_epochs=0.1,
                  warmup_start=0.0)
    assert lr.at(0.5, 10) == pytest.approx(0.5)                    # warm-up of 1 epoch: half-way
    assert [lr.at(e, 8) for e in (1, 2, 3.9, 4, 6, 8)] == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.125, 0.0625])
    assert lr.at(3, 0) == 1.0                                      # a run of 0 epochs: no step, no warm-up


def test_value_range_bounds_every_value_of_a_run():
    cases = [Schedule(start=0.0, end=0.5, shape="stairs", delta=0.05, warmup_epochs=3, step_epochs=2),
             Schedule(start=1.0, end=0.75, shape="stairs", delta=-0.025, warmup_epochs=0.5, unit="fraction",
                      step_epochs=0.02),
             Schedule(start=0.5, end=0.01, shape="cosine", warmup_epochs=2, warmup_start=0.1),
             Schedule(start=0.1, shape="step", step_epochs=2, gamma=0.5),
             Schedule(start=0.3, end=0.9)]
    for sched in cases:
        lo, hi = sched.value_range()
        values = [sched.at(t / 10, 40) for t in range(0, 500)]
        assert lo <= min(values) + 1e-12 and max(values) <= hi + 1e-12
        assert min(values) == pytest.approx(lo) or sched.shape == "step"      # step only tends to its bound
    assert Schedule(start=0.0, shape="stairs", delta=-1.0).value_range() == (-math.inf, 0.0)
    with pytest.raises(ValueError, match="stairs: delta 0.1 moves away from end 0.2"):
        Schedule(start=0.5, end=0.2, shape="stairs", delta=0.1)


def test_momentum_schedule_is_dinos_cosine():
    """DCGLR / DINO teacher momentum: 1 - (1 - 0.996) * (cos(pi k / K) + 1) / 2 (spec 2.6)."""
    momentum = Schedule(start=0.996, end=1.0, shape="cosine")
    for k in range(0, 41):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * k / 40) + 1) / 2
        assert momentum.at(k / 4, 10) == pytest.approx(expected)


def test_a_schedule_given_in_part_or_as_a_number():
    # a number sets start and keeps the rest of the recipe's schedule (conclu: x0.7 every tenth of the run)
    exp = build_config("conclu", {"optim": {"lr": 0.002}})
    assert (exp.optim.lr.start, exp.optim.lr.shape, exp.optim.lr.step_epochs, exp.optim.lr.unit) == \
        (0.002, "step", 0.1, "fraction")
    exp = build_config("conclu", {}, {"optim.lr": 0.003, "optim.lr.step_epochs": 5, "optim.lr.unit": "epochs"})
    assert (exp.optim.lr.start, exp.optim.lr.shape, exp.optim.lr.step_epochs) == (0.003, "step", 5)
    with pytest.raises(ConfigError, match=r"optim.lr.*step_epochs \(5.0\) must be <= 1 with unit=fraction"):
        build_config("conclu", {}, {"optim.lr.step_epochs": 5})
    # a part over the default
    exp = build_config("cedr", {"method": {"lambda_con": {"shape": "linear"}}})
    assert (exp.method.lambda_con.start, exp.method.lambda_con.end, exp.method.lambda_con.shape) == (0.1, 0.2, "linear")
    # the whole config round-trips
    assert build_config("cedr", exp.to_dict()).to_dict() == exp.to_dict()


@pytest.mark.parametrize("override, message", [
    ({"optim.lr.end": -1}, "optim.lr: Value error, end must be >= 0"),
    ({"method.lambda_con": -0.5}, "method.lambda_con: Value error, start must be >= 0"),
    ({"optim.lr.shape": "exp"},
     "optim.lr.shape: Input should be 'constant', 'linear', 'cosine', 'step', 'multistep' or 'stairs'"),
    ({"optim.lr.unit": "fraction", "optim.lr.warmup_epochs": 2},
     "optim.lr: Value error, warmup_epochs (2.0) must be <= 1 with unit=fraction"),
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


@pytest.mark.parametrize("method", ["cedr", "conclu", "dcglr", "scl", "amcontrast3d", "seg"])
def test_every_recipe_decays_its_learning_rate_within_the_default_run(method):
    """A recipe's warm-up and step period are kept in proportion to the run (issue 20 §3): at the default epoch
    count the learning rate rises no longer than a fifth of the run, and ends lower than its peak."""
    exp = build_config(method, {})
    lr, epochs = exp.optim.lr, exp.train.epochs
    values = [lr.at(e / 4, epochs) for e in range(4 * epochs + 1)]
    peak = values.index(max(values)) / 4
    assert peak <= epochs / 5 and values[-1] < max(values), (method, epochs, lr)


def test_naming_a_shape_resets_the_shape_parts_it_does_not_name():
    """Issue 20 §3: ``{shape: constant, start: 0.3}`` is constant 0.3, although SCL's b_l default warms up over
    300/512 of the run; a part without a shape keeps the rest; naming the parts too keeps them."""
    default = build_config("scl", {}).method.b_l
    assert default.warmup_epochs > 0 and default.unit == "fraction"
    for overrides in ({"method.b_l": {"shape": "constant", "start": 0.3}},
                      {"method.b_l.shape": "constant", "method.b_l.start": 0.3}):
        b_l = build_config("scl", {}, overrides).method.b_l
        assert [b_l.at(e, 10) for e in (0, 3, 9.9)] == [0.3, 0.3, 0.3], overrides
        assert (b_l.warmup_epochs, b_l.unit, b_l.end) == (0.0, "epochs", default.end)
    b_l = build_config("scl", {"method": {"b_l": {"shape": "constant", "start": 0.3}}}).method.b_l  # a file
    assert (b_l.warmup_epochs, b_l.start) == (0.0, 0.3)
    b_l = build_config("scl", {}, {"method.b_l.start": 0.1}).method.b_l  # no shape named: the warm-up stays
    assert b_l.model_dump() == {**default.model_dump(), "start": 0.1}
    b_l = build_config("scl", {}, {"method.b_l": {"start": 0.1}}).method.b_l  # a mapping without a shape, too
    assert b_l.model_dump() == {**default.model_dump(), "start": 0.1}
    b_l = build_config("scl", {}, {"method.b_l": {"shape": "linear", "end": 0.6, "warmup_epochs": 0.2,
                                                  "unit": "fraction"}}).method.b_l
    assert (b_l.start, b_l.warmup_epochs, b_l.unit) == (default.start, 0.2, "fraction")
    # a recipe's warm-up (DCGLR's lr) goes with a new shape, its values stay
    lr = build_config("dcglr", {}, {"optim.lr.shape": "linear"}).optim.lr
    assert (lr.start, lr.end, lr.warmup_epochs, lr.unit) == (5e-4, 1e-6, 0.0, "epochs")


def test_multistep_is_pytorchs_multisteplr():
    """``multistep``: x gamma at each milestone (PyTorch's MultiStepLR), in epochs or as fractions of the run."""
    import torch

    sched = Schedule(start=1e-3, shape="multistep", milestones=[70, 90], gamma=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    torch_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[70, 90], gamma=0.1)
    for epoch in range(100):
        assert sched.at(epoch, 100) == pytest.approx(opt.param_groups[0]["lr"]), epoch
        opt.step()
        torch_sched.step()
    frac = Schedule(start=1e-3, shape="multistep", milestones=[0.7, 0.9], gamma=0.1, unit="fraction")
    assert [frac.at(e, 10) for e in (6.9, 7, 8.9, 9)] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-5])
    assert frac.value_range() == pytest.approx((1e-5, 1e-3))
    for bad in ({"milestones": [90, 70]}, {"milestones": [0.7, 1.5], "unit": "fraction"}):
        with pytest.raises(ValueError, match="milestones"):
            Schedule(start=1.0, shape="multistep", **bad)
