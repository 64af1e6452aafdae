"""Population-based training (`pointtune sweep --scheduler pbt`, pointtune.search.pbt): the space marks what
PBT may perturb; a 4-trial sweep exploits at every epoch, every store records what Tune received, each trial's
MLflow run holds the values it followed per epoch, and a killed PBT sweep is finished by `resume`."""

import csv
import json
import sys

import pytest

from helpers import check_records, kill_after_first_report, mlflow_runs, offending, pointtune, write_space
from pointtune.config import ConfigError
from pointtune.search.pbt import pbt_scheduler
from pointtune.search.space import load_search_space

EPOCHS = 3
TINY = {"method.backbone.name": {"type": "fixed", "value": "pointnet"},
        "method.backbone.emb_dims": {"type": "fixed", "value": 64},
        "data.num_points": {"type": "fixed", "value": 128},
        "data.synthetic_per_class": {"type": "fixed", "value": 16},
        "train.batch_size": {"type": "fixed", "value": 16}}
PERTURBED = {
    "optim.lr.start": {"type": "float", "low": 0.005, "high": 0.3, "log": True, "perturb": {"factor": [0.8, 1.2]}},
    "method.lambda_con.shape": {"type": "categorical", "choices": ["constant", "linear"]},
    "method.lambda_con.end": {"type": "float", "low": 0.1, "high": 0.4, "perturb": {"factor": [0.8, 1.2]},
                              "when": {"method.lambda_con.shape": "linear"}},
    "method.temperature": {"type": "categorical", "choices": [0.1, 0.5, 1.0], "perturb": "resample"},
}


def _space(root, params=PERTURBED):
    return write_space(root / "space.yaml", {**TINY, **params})


@pytest.mark.parametrize("params, message", [
    ({"optim.lr.start": {"type": "float", "low": 0.01, "high": 0.2}}, "no parameter is marked `perturb:`"),
    ({"optim.lr.start": {"type": "float", "low": 0.01, "high": 0.2, "perturb": {"factor": [0.8, 1.2]}},
      "method.lambda_con.start": {"type": "float", "low": 0.05, "high": 0.3, "perturb": {"factor": [0.5, 2]}}},
     "one pair of factors for every parameter"),
])
def test_what_pbt_perturbs_is_checked(tmp_path, params, message):
    space = load_search_space(_space(tmp_path, params))
    with pytest.raises(ConfigError, match=message):
        pbt_scheduler(space, 1, EPOCHS)


class _Trial:
    """The parts of a Tune trial that the synchronous PBT scheduler reads."""

    def __init__(self, status):
        self.status, self.experiment_tag, self.config = status, "0", {}

    def is_finished(self):
        return False


class _Controller:
    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    get_live_trials = get_trials


@pytest.mark.parametrize("restored_epoch", [1, 2, 5])
def test_a_resumed_synchronous_pbt_runs_its_paused_trials_again(tmp_path, restored_epoch):
    """Resumed, the scheduler is as created (next synchronisation at epoch 1) while the trials come back at
    a later epoch; once they have synchronised and paused, one must still be runnable (Tune 2.60's own
    scheduler sets the next point to the latest epoch itself and never runs one again: `resume` spun for
    ever). One trial, so that no exploit (which needs a live Tune controller) takes place."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers.pbt import _PBTTrialState

    scheduler = pbt_scheduler(load_search_space(_space(tmp_path)), 1, 10)
    scheduler.set_search_properties("val/OA", "max")
    trial = _Trial(Trial.RUNNING)
    controller = _Controller([trial])
    scheduler._trial_state[trial] = _PBTTrialState(trial)
    assert scheduler.on_trial_result(controller, trial, {"epoch": restored_epoch + 1, "val/OA": 0.5}) == "PAUSE"
    trial.status = Trial.PAUSED
    assert scheduler.choose_trial_to_run(controller) is trial
    assert scheduler._next_perturbation_sync == restored_epoch + 2


@pytest.mark.parametrize("spec, message", [
    ({"type": "categorical", "choices": [1, 2], "perturb": {"factor": [0.8, 1.2]}}, "perturb: expected resample,"),
    ({"type": "float", "low": 0.1, "high": 1.0, "perturb": {"factor": [0.8]}},
     r"perturb: expected resample or \{factor: \[0.8, 1.2\]\}"),
    ({"type": "float", "low": 0.1, "high": 1.0, "perturb": "shift"}, "perturb: expected"),
])
def test_bad_perturb_names_the_key(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=r"method.temperature: " + message):
        load_search_space(_space(tmp_path, {"method.temperature": spec}))


@pytest.mark.slow  # two CLI runs
def test_pbt_refuses_what_it_cannot_run(tmp_path):
    space = str(_space(tmp_path))
    workers = pointtune("sweep", "cedr", "--space", space, "--scheduler", "pbt", "--workers", "2",
                        "--output", str(tmp_path / "a"))
    assert workers.returncode == 2 and "data-parallel trials (--workers > 1)" in workers.stderr
    every = pointtune("sweep", "cedr", "--space", space, "--scheduler", "pbt", "--pbt-interval", "3",
                      "--set", "train.checkpoint_every=2", "--output", str(tmp_path / "b"))
    assert every.returncode == 2 and "train.checkpoint_every: PBT exploits" in every.stderr


@pytest.mark.slow
def test_pbt_sweep_exploits_and_records_what_it_followed(tmp_path):
    out = tmp_path / "run"
    proc = pointtune("sweep", "cedr", "--space", str(_space(tmp_path)), "--trials", "4", "--epochs", str(EPOCHS),
                     "--scheduler", "pbt", "--pbt-interval", "1", "--output", str(out), "--seed", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    statuses = check_records(out, EPOCHS, study=False)
    assert set(statuses.values()) == {"FINISHED"} and len(statuses) == 4    # PBT stops nobody
    assert offending(proc.stdout, proc.stderr) == []  # the console contract (test_console), PBT's box included
    started = [line for line in proc.stdout.splitlines() if line.startswith("[pointtune] trial ")
               and " started " in line]
    assert len(started) == len(set(started)) == 4  # once per trial, though PBT restarts trials at every exploit
    client, runs = mlflow_runs(out)
    trials = {r.data.tags["pointtune.trial_id"]: r for r in runs if r.data.tags.get("pointtune.kind") == "trial"}
    exploited = 0
    for run in trials.values():
        flags = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "pbt/exploit")}
        assert sorted(flags) == list(range(1, EPOCHS + 1))
        lrs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "param/optim.lr.start")}
        sched = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "sched/optim.lr")}
        assert sorted(lrs) == sorted(sched) == sorted(flags)
        for epoch, flag in flags.items():
            if flag:   # it took another trial's values: they differ from its previous epoch's
                exploited += 1
                params = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
                          for k in ("param/optim.lr.start", "param/method.temperature")}
                assert any(p[epoch] != p[epoch - 1] for p in params.values())
    assert exploited >= 1 and _exploits_reported(out) == exploited
    assert f"PBT: {exploited} exploit(s)" in proc.stdout
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len({r["trial_id"] for r in rows}) == 4 and all(r["optuna_trial"] == "" for r in rows)


@pytest.mark.slow
def test_killed_pbt_sweep_is_finished_by_resume(tmp_path):
    space = _space(tmp_path, {**PERTURBED, "data.synthetic_per_class": {"type": "fixed", "value": 96}})
    out = tmp_path / "run"
    kill_after_first_report([sys.executable, "-m", "pointtune.cli", "sweep", "cedr", "--space", str(space),
                             "--trials", "4", "--epochs", str(EPOCHS), "--scheduler", "pbt", "--output", str(out)],
                            out)
    assert not (out / "summary.csv").exists()
    assert len(list(out.glob("tune/trial_*"))) == 4  # the population exists whole before its first report
    resumed = pointtune("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    statuses = check_records(out, EPOCHS, study=False)
    assert len(statuses) == 4 and set(statuses.values()) == {"FINISHED"}
    # the exploits made before the kill count too: each trial reported its own (Tune's pbt_global.txt lost them)
    client, runs = mlflow_runs(out)
    flagged = sum(m.value for r in runs if r.data.tags.get("pointtune.kind") == "trial"
                  for m in client.get_metric_history(r.info.run_id, "pbt/exploit"))
    assert flagged == _exploits_reported(out) and f"PBT: {int(flagged)} exploit(s)" in resumed.stdout


def _exploits_reported(out) -> int:
    """The exploits the trials of sweep ``out`` reported (epochs with ``pbt/exploit`` = 1 in Tune's result.json),
    each naming a donor that is another trial of the sweep."""
    trials = {p.parent.name.removeprefix("trial_"): [json.loads(line) for line in p.read_text().splitlines()]
              for p in out.glob("tune/trial_*/result.json")}
    exploits = {(trial_id, r["epoch"], r["pbt/donor"]) for trial_id, results in trials.items() for r in results
                if r.get("pbt/exploit") == 1}  # an epoch a resumed trial reported again is one exploit
    assert all(donor in trials and donor != trial_id for trial_id, _, donor in exploits), exploits
    return len(exploits)
