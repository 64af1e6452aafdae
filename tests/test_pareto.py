"""Accuracy versus cost (issue 19 §4): a search space's objective may be a list; the first objective selects
each trial's epoch, the others are read there; Optuna's study is multi-objective; summary.csv marks the Pareto
front, which must be what a brute-force dominance check over summary.csv finds."""

from __future__ import annotations

import csv
import random

import optuna
import pytest

from helpers import check_records, one_line_error, pointtune, write_space
from pointtune.config import ConfigError
from pointtune.objective import BestEpoch, Objective, dominates, pareto_front
from pointtune.search.space import load_search_space

ACCURACY_VS_PARAMS = [{"metric": "val/OA", "mode": "max"}, {"metric": "cost/params", "mode": "min"}]
SEARCHED = {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}}


def _brute_force_front(points: list[list[float]], modes: list[str]) -> list[bool]:
    """On the front: no other point is at least as good everywhere and strictly better somewhere."""
    signs = [1 if m == "max" else -1 for m in modes]
    front = []
    for p in points:
        dominated = False
        for q in points:
            no_worse = all(s * b >= s * a for a, b, s in zip(p, q, signs))
            better = any(s * b > s * a for a, b, s in zip(p, q, signs))
            dominated |= no_worse and better
        front.append(not dominated)
    return front


def test_a_list_objective_is_parsed_in_order(tmp_path):
    space = load_search_space(write_space(tmp_path / "space.yaml", SEARCHED, ACCURACY_VS_PARAMS))
    assert space.objectives == (Objective("val/OA", "max"), Objective("cost/params", "min"))
    assert (space.metric, space.mode, space.secondary) == ("val/OA", "max", ("cost/params",))
    assert space.multi_objective and space.describe_objective() == "max val/OA, min cost/params"
    one = load_search_space(write_space(tmp_path / "one.yaml", SEARCHED, [{"metric": "val/mAcc", "mode": "max"}]))
    assert one.objectives == (Objective("val/mAcc", "max"),) and not one.multi_objective and one.secondary == ()


@pytest.mark.parametrize("objective,fragments", [
    ([], ["objective:", "non-empty list"]),
    (["val/OA"], ["objective[0]:", "names its metric and mode"]),
    ([{"metric": "val/OA", "mode": "max"}, {"metric": "cost/epoch_s"}], ["objective[1]:", "metric and mode"]),
    ([{"metric": "val/OA", "mode": "max"}, {"metric": "cost/epoch_s", "mode": "least"}],
     ["objective[1].mode:", "'least'"]),
    ([{"metric": "val/OA", "mode": "max"}, {"metric": "cost/epoch_s", "mode": "min", "weight": 2}],
     ["objective[1]:", "unknown key 'weight'"]),
    ([{"metric": "val/OA", "mode": "max"}, {"metric": "cost/flops", "mode": "min"}],
     ["objective[1].metric:", "'cost/flops'", "cost/epoch_s"]),
    ([{"metric": "val/OA", "mode": "max"}, {"metric": "val/OA", "mode": "min"}],
     ["objective[1].metric:", "'val/OA' is an objective already"]),
])
def test_bad_objective_lists_fail_in_one_line_naming_file_and_key(tmp_path, objective, fragments):
    path = write_space(tmp_path / "space.yaml", SEARCHED, objective)
    with pytest.raises(ConfigError) as info:
        load_search_space(path)
    one_line_error(info, str(path), *fragments)


def test_pbt_refuses_a_list_objective(tmp_path):
    from pointtune.search.spec import SweepSpec
    from pointtune.search.sweep import prepare_sweep

    params = {"optim.lr.start": {"type": "float", "low": 0.01, "high": 0.2, "perturb": {"factor": [0.8, 1.2]}}}
    path = write_space(tmp_path / "space.yaml", params, ACCURACY_VS_PARAMS)
    spec = SweepSpec(method="cedr", space_file=str(path), sweep_dir=str(tmp_path / "run"), scheduler="pbt", epochs=2)
    with pytest.raises(ConfigError) as info:
        prepare_sweep(spec)
    one_line_error(info, str(path), "objective:", "--scheduler pbt", "one objective")


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_equals_brute_force_dominance(seed):
    """Random points on a coarse grid (many ties, duplicate points), 1 to 4 objectives of random modes."""
    rng = random.Random(seed)
    k = rng.randint(1, 4)
    modes = [rng.choice(["max", "min"]) for _ in range(k)]
    points = [[float(rng.randint(0, 3)) for _ in range(k)] for _ in range(rng.randint(1, 25))]
    assert pareto_front(points, modes) == _brute_force_front(points, modes)


def test_pareto_front_ties_and_missing_values():
    modes = ["max", "min"]
    # equal points are both on the front; a point equal in one objective and worse in the other is not
    assert pareto_front([[0.5, 10], [0.5, 10], [0.5, 11], [0.4, 5]], modes) == [True, True, False, True]
    # a trial without a value is never on the front and dominates nothing
    assert pareto_front([[0.9, 1], None, [float("nan"), 0], [0.1, 5]], modes) == [True, False, False, False]
    assert not dominates([1, 1], [1, 1], modes) and dominates([1, 1], [1, 2], modes)
    with pytest.raises(ValueError, match="modes must be max or min"):
        pareto_front([[1, 2], [2, 1]], ["max", "least"])


def test_secondary_objectives_are_read_at_the_selected_epoch():
    """The primary objective alone selects (ties: the later epoch); the others follow that epoch, even where a
    later epoch is better for them."""
    best = BestEpoch("val/OA", "max", secondary=("cost/epoch_s",))
    epochs = [{"val/OA": 0.5, "cost/epoch_s": 3.0}, {"val/OA": 0.7, "cost/epoch_s": 2.0},
              {"val/OA": 0.6, "cost/epoch_s": 1.0}, {"val/OA": 0.7, "cost/epoch_s": 4.0}]
    assert best.as_metrics()["best/cost/epoch_s"] != best.as_metrics()["best/cost/epoch_s"]  # NaN before any
    for epoch, metrics in enumerate(epochs, start=1):
        best.update(metrics, epoch)
    assert best.as_metrics() == {"best/val/OA": 0.7, "best/epoch": 4, "best/cost/epoch_s": 4.0}


def test_study_search_tells_every_objective_and_prunes_stopped_trials(tmp_path):
    """StudySearch on a multi-objective study: no intermediate values, a finished trial told the
    ``best/<metric>`` values of its last result, a stopped one PRUNED with its epoch and those values."""
    from pointtune.search.records import StudySearch

    space = load_search_space(write_space(tmp_path / "space.yaml", SEARCHED, ACCURACY_VS_PARAMS))
    search = StudySearch(space=space.define_by_run, metric=["best/val/OA", "best/cost/params"], mode=["max", "min"],
                         max_epochs=2, sampler=optuna.samplers.RandomSampler(seed=0))
    results = {"done": [(1, 0.4, 100.0), (2, 0.6, 100.0)], "stopped": [(1, 0.2, 50.0)]}
    for trial_id, epochs in results.items():
        assert search.suggest(trial_id)["optuna_trial"] is not None
        for epoch, accuracy, params in epochs:
            result = {"epoch": epoch, "val/OA": accuracy, "best/val/OA": accuracy, "best/cost/params": params}
            search.on_trial_result(trial_id, result)
        search.on_trial_complete(trial_id, result)
    done, stopped = search._ot_study.get_trials()
    assert done.state == optuna.trial.TrialState.COMPLETE and done.values == [0.6, 100.0]
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.user_attrs["stopped_at_epoch"] == 1
    assert stopped.user_attrs["last_value"] == [0.2, 50.0]
    assert done.intermediate_values == stopped.intermediate_values == {}
    assert search._ot_study.metric_names == ["best/val/OA", "best/cost/params"]   # optuna-dashboard's labels
    single = StudySearch(space=space.define_by_run, metric="val/OA", mode="max", max_epochs=2)
    assert single._ot_study.metric_names == ["val/OA"]


@pytest.mark.slow
def test_two_objective_sweep_marks_the_pareto_front(tmp_path):
    """4 trials x 2 epochs of tiny CEDR (32 clouds a class, batches of 8: enough steps for val/OA to move),
    maximising val/OA and minimising the parameter count, with the embedding width searched: a 2-wide PointNet
    feature is the cheapest and stays near chance, a 256-wide one costs more and learns, so the front holds
    both. ``--grace-period 2``: ASHA stops nobody, so every trial is a candidate for the front."""
    params = {"optim.lr": {"type": "float", "low": 0.03, "high": 0.1, "log": True},
              "method.backbone.emb_dims": {"type": "categorical", "choices": [2, 256]},
              "data.synthetic_per_class": {"type": "fixed", "value": 32},
              "train.batch_size": {"type": "fixed", "value": 8}}
    space = write_space(tmp_path / "space.yaml", params, ACCURACY_VS_PARAMS)
    out = tmp_path / "run"
    proc = pointtune("sweep", "cedr", "--space", str(space), "--trials", "4", "--epochs", "2", "--grace-period", "2",
                     "--output", str(out), "--seed", "0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    statuses = check_records(out, 2, others=("cost/params",))
    assert len(statuses) == 4

    rows = list(csv.DictReader((out / "summary.csv").open()))
    finished = [r for r in rows if r["status"] == "FINISHED"]
    points = [[float(r["best/val/OA"]), float(r["best/cost/params"])] for r in finished]
    assert [r["pareto"] == "True" for r in finished] == _brute_force_front(points, ["max", "min"])
    assert all(r["pareto"] == "False" for r in rows if r["status"] != "FINISHED")
    front = {r["optuna_trial"] for r in rows if r["pareto"] == "True"}
    assert 2 <= len(front) < len(finished), rows  # a trade-off: neither every trial nor one dominating all

    study = optuna.load_study(study_name="pointtune", storage=f"sqlite:///{out}/optuna.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert {str(t.number) for t in study.best_trials} == front  # Optuna's front is the same
    assert (out / "pareto_front.png").stat().st_size > 1000
    assert "Pareto front (max val/OA, min cost/params)" in proc.stdout

    best = pointtune("best", str(out), "--output", str(tmp_path / "best.yaml"))
    assert best.returncode == 0, best.stderr[-3000:]
    listed = [line for line in best.stdout.splitlines() if line.startswith("  trial ")]
    assert len(listed) == len(front) and all(f"Optuna #{n})" in "".join(listed) for n in front)
    assert (tmp_path / "best.yaml").read_text().startswith(f"# best trial {rows[0]['trial_id']}: val/OA")
    header = next(csv.reader((out / "summary.csv").open()))
    assert header[5:10] == ["best_objective", "best_epoch", "best/val/OA", "best/cost/params", "pareto"]
