"""The records reconciled with what Tune received after a fault (issue 22 §1, §2): trials Optuna closed that
Tune then carried on (a PRUNED trial that resume trained to the end, a FAIL trial that resume finished) are
recorded again, linked from the study's attributes, and trials on which both agree are left alone; a restarted
run's old outcome moves aside; a searcher state cut short by a kill is rebuilt from the study."""

import re
from types import SimpleNamespace

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from helpers import write_space
from pointtune.search.records import StudySearch
from pointtune.search.report import SUPERSEDED, TrialSummary, reconcile_study
from pointtune.search.space import load_search_space
from pointtune.search.spec import STUDY_NAME, study_storage

LR = {"optim.lr": FloatDistribution(0.01, 0.2, log=True)}
FULL = {1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5}


def _closed(state, tune_id, lr, value=None, steps=None, **attrs):
    return create_trial(state=state, value=value, params={"optim.lr": lr}, distributions=LR,
                        intermediate_values=steps or {}, user_attrs={"tune_trial_id": tune_id, **attrs})


def _row(tune_id, status, history, error=None):
    return TrialSummary(trial_id=tune_id, status=status, params={}, epochs=max(history), best=max(history.values()),
                        history=dict(history), error=error)


def test_closed_trials_that_tune_carried_on_are_recorded_again_and_linked(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(tmp_path), direction="maximize")
    # 0: ASHA pruned it after epoch 1, the driver was killed before Tune saved that, resume trained it to epoch 4
    study.add_trial(_closed(TrialState.PRUNED, "a", 0.1, steps={1: 0.2}, stopped_at_epoch=1, last_value=0.2,
                            mlflow_run_id="run-a"))
    study.add_trial(_closed(TrialState.PRUNED, "b", 0.02, steps={1: 0.1}, stopped_at_epoch=1))  # Tune agrees
    # 2: failed (a worker killed), then resume finished it
    study.add_trial(_closed(TrialState.FAIL, "c", 0.05, steps={1: 0.2, 2: 0.3}, failure="worker died"))
    study.add_trial(_closed(TrialState.FAIL, "d", 0.03, failure="NaN loss"))  # Tune agrees
    study.add_trial(_closed(TrialState.COMPLETE, "f", 0.15, value=0.45, steps={1: 0.45}))
    running = study.ask(LR)  # 5: the searcher never saw its end (a resumed run)
    running.set_user_attr("tune_trial_id", "e")
    rows = [_row("a", "FINISHED", FULL), _row("b", "STOPPED", {1: 0.1}), _row("c", "FINISHED", FULL),
            _row("d", "FAILED", {1: 0.1}, error="NaN loss"), _row("e", "STOPPED", {1: 0.3, 2: 0.35}),
            _row("f", "FINISHED", {1: 0.45})]
    spec = SimpleNamespace(root=tmp_path)
    space = SimpleNamespace(multi_objective=False)

    reconcile_study(spec, space, rows)
    trials = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(tmp_path)).get_trials()
    assert [t.state for t in trials[:6]] == [TrialState.PRUNED, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL,
                                              TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[5].user_attrs["stopped_at_epoch"] == 2 and trials[5].intermediate_values == {1: 0.3, 2: 0.35}
    assert len(trials) == 8
    for new, old in ((trials[6], trials[0]), (trials[7], trials[2])):
        assert new.state == TrialState.COMPLETE and new.value == 0.5 and new.intermediate_values == FULL
        assert new.params == old.params and new.user_attrs["resumes"] == old.number
        assert new.user_attrs["tune_trial_id"] == old.user_attrs["tune_trial_id"]
        assert not {"stopped_at_epoch", "last_value", "failure"} & set(new.user_attrs)  # the old outcome is gone
    assert trials[6].user_attrs["mlflow_run_id"] == "run-a"
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(tmp_path))
    assert study.user_attrs[SUPERSEDED] == {"0": 6, "2": 7}
    assert [r.optuna_trial for r in rows] == [6, None, 7, None, None, None]
    assert study.best_trial.number == 6  # Optuna's best is the trial that trained to the end, as summary.csv says

    reconcile_study(spec, space, rows)  # a second pass (a sweep resumed again) changes nothing
    assert len(study.get_trials()) == 8 and study.user_attrs[SUPERSEDED] == {"0": 6, "2": 7}


def test_a_pruned_trial_that_resume_trained_until_it_failed_is_recorded_as_failed(tmp_path):
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(tmp_path), direction="maximize")
    study.add_trial(_closed(TrialState.PRUNED, "a", 0.1, steps={1: 0.2}, stopped_at_epoch=1))
    rows = [_row("a", "FAILED", {1: 0.2, 2: 0.25}, error="RuntimeError: worker died")]
    reconcile_study(SimpleNamespace(root=tmp_path), SimpleNamespace(multi_objective=False), rows)
    old, new = study.get_trials()
    assert new.state == TrialState.FAIL and new.user_attrs["failure"] == "RuntimeError: worker died"
    assert new.intermediate_values == {1: 0.2, 2: 0.25} and "stopped_at_epoch" not in new.user_attrs
    assert study.user_attrs[SUPERSEDED] == {"0": 1}


def test_a_multi_objective_study_is_told_each_objective_at_the_selected_epoch(tmp_path):
    """Several objectives: a trial that ASHA pruned and resume trained on, and a trial whose end the searcher
    never saw, are told every objective's value at the selected epoch (``row.values``), with no per-epoch
    values (Optuna keeps none for several objectives); a PRUNED outcome keeps its values."""
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(tmp_path),
                                directions=["maximize", "minimize"])
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"optim.lr": 0.1}, distributions=LR,
                                 user_attrs={"tune_trial_id": "a", "stopped_at_epoch": 1}))
    running = study.ask(LR)
    running.set_user_attr("tune_trial_id", "b")
    rows = [_row("a", "FINISHED", FULL), _row("b", "STOPPED", {1: 0.3, 2: 0.35})]
    rows[0].values = {"val/OA": 0.5, "cost/params": 1200.0}
    rows[1].values = {"val/OA": 0.35, "cost/params": 800.0}
    space = SimpleNamespace(multi_objective=True, objectives=(SimpleNamespace(metric="val/OA"),
                                                              SimpleNamespace(metric="cost/params")))

    reconcile_study(SimpleNamespace(root=tmp_path), space, rows)
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(tmp_path))
    old, ended, new = study.get_trials()
    assert old.state == TrialState.PRUNED and new.state == TrialState.COMPLETE
    assert new.values == [0.5, 1200.0] and new.intermediate_values == {} and new.user_attrs["resumes"] == 0
    assert ended.state == TrialState.PRUNED and ended.user_attrs["stopped_at_epoch"] == 2
    assert ended.user_attrs["last_value"] == [0.35, 800.0] and ended.intermediate_values == {}
    assert study.user_attrs[SUPERSEDED] == {"0": 2} and [r.optuna_trial for r in rows] == [2, None]
    assert [t.number for t in study.best_trials] == [2]


def _trial_run(tmp_path):
    """A sweep's MLflow store in ``tmp_path`` with its parent run and the child run of trial ``t1``, as a driver
    leaves them: ``(uri, client, experiment id, parent run id, trial run id)``."""
    from mlflow.tracking import MlflowClient

    from pointtune import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    parent = tracking.start_run(uri, experiment, "sweep", {}, {})
    run_id = tracking.start_run(uri, experiment, "trial_t1", {tracking.PARENT_TAG: parent, tracking.TRIAL_TAG: "t1",
                                                              tracking.KIND_TAG: "trial"}, {})
    return uri, client, experiment, parent, run_id


def test_a_restarted_trial_run_moves_every_outcome_tag_aside_and_logs_each_epoch_once(tmp_path):
    """A run that ASHA stopped in a killed driver, whose trial resume then trains on: its old outcome
    (``pointtune.status``, ``pointtune.stopped_by``) moves to ``<tag>.previous``; the epoch it holds already is
    not logged again, the next ones are."""
    from pointtune import tracking
    from pointtune.search.records import MlflowRecorder
    from pointtune.search.spec import SweepRuntime, SweepSpec

    uri, client, experiment, parent, run_id = _trial_run(tmp_path)
    tracking.log_metrics({"tracking_uri": uri, "run_id": run_id}, {"epoch": 1, "val/OA": 0.2}, step=1)
    stopped = "ASHA stopped it after epoch 1 of 4 (val/OA = 0.2000)"
    tracking.set_tags(uri, run_id, {"pointtune.status": "STOPPED", "pointtune.stopped_by": stopped})
    tracking.end_run(uri, run_id, "KILLED")

    recorder = MlflowRecorder(SweepSpec("cedr", "x", str(tmp_path), epochs=4),
                              SweepRuntime({}, uri, experiment, parent), "val/OA", "max")
    trial = SimpleNamespace(trial_id="t1", config={})
    recorder.on_trial_start(0, [], trial)
    for epoch, value in ((1, 0.25), (2, 0.3)):  # resume reports epoch 1 again (restored before its checkpoint)
        recorder.on_trial_result(0, [], trial, {"epoch": epoch, "val/OA": value})
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["pointtune.stopped_by.previous"] == stopped
    assert run.data.tags["pointtune.status.previous"] == "STOPPED"
    assert not {"pointtune.stopped_by", "pointtune.status"} & set(run.data.tags)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/OA")] == [(1, 0.2), (2, 0.3)]


def test_params_a_killed_driver_logged_in_part_are_completed_by_the_restarted_trial(tmp_path):
    """The driver logs a trial's params in batches of 90; killed in between (seen under load in the killed PBT
    sweep test), the run holds only the first batch. The restarted trial's first result announces its config
    again: the missing params are added, and a config announced again adds nothing."""
    import json

    from mlflow.entities import Param

    from pointtune import tracking
    from pointtune.search.records import MlflowRecorder
    from pointtune.search.spec import SweepRuntime, SweepSpec
    from pointtune.train.session import EXPERIMENT_KEY

    uri, client, experiment, parent, run_id = _trial_run(tmp_path)
    config = {"method": {f"key{i:03d}": i / 7 for i in range(150)}, "train": {"epochs": 4, "threads": 1}}
    flat = {k: str(v) for k, v in tracking.flatten(config).items()}
    client.log_batch(run_id, params=[Param(k, v) for k, v in list(flat.items())[:90]])  # then the kill

    recorder = MlflowRecorder(SweepSpec("cedr", "x", str(tmp_path), epochs=4),
                              SweepRuntime({}, uri, experiment, parent), "val/OA", "max")
    trial = SimpleNamespace(trial_id="t1", config={})
    recorder.on_trial_start(0, [], trial)
    recorder.on_trial_result(0, [], trial, {"epoch": 1, "val/OA": 0.2, EXPERIMENT_KEY: json.dumps(config)})
    assert client.get_run(run_id).data.params == flat and len(flat) == 152
    assert tracking.log_params(uri, run_id, config) == 0


def test_a_searcher_state_cut_short_by_a_kill_is_rebuilt_from_the_study(tmp_path, capsys):
    """The driver killed while Tune copied the searcher's pickle: `resume` rebuilds the searcher's trials from
    the Optuna study (the running one goes on with its values, the closed one stays closed) instead of failing
    with EOFError; an intact file restores as it was."""
    space = load_search_space(write_space(tmp_path / "space.yaml", {
        "optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}}))

    def searcher():
        return StudySearch(space=space.define_by_run, metric="val/OA", mode="max", max_epochs=2,
                           storage=study_storage(tmp_path), study_name=STUDY_NAME,
                           sampler=optuna.samplers.RandomSampler(seed=0))

    first = searcher()
    for trial_id in ("running", "done"):
        first.suggest(trial_id)
        first.on_trial_result(trial_id, {"epoch": 1, "val/OA": 0.5})
    first.on_trial_complete("done", {"epoch": 2, "val/OA": 0.6})
    saved = tmp_path / "searcher-state.pkl"
    first.save(str(saved))
    intact = searcher()
    intact.restore(str(saved))
    assert set(intact._ot_trials) == {"running", "done"} and intact._completed_trials == {"done"}

    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    again = searcher()
    again.restore(str(saved))
    assert re.search(r"searcher-state.pkl: unreadable \(.*\); the searcher's state is rebuilt from the Optuna study",
                     capsys.readouterr().out)
    assert set(again._ot_trials) == {"running"} and again._completed_trials == {"done"}
    again.on_trial_result("running", {"epoch": 1, "val/OA": 0.5})  # reported again after the restart: once
    again.on_trial_complete("running", {"epoch": 2, "val/OA": 0.7})
    trials = {t.user_attrs["tune_trial_id"]: t for t in again._ot_study.get_trials()}
    assert trials["running"].state == TrialState.COMPLETE and trials["running"].value == 0.7
    assert trials["running"].intermediate_values == {1: 0.5, 2: 0.7}
    assert trials["done"].value == 0.6 and len(trials) == 2


def test_a_tune_state_cut_short_by_a_kill_is_repaired_before_resume(tmp_path, monkeypatch):
    """The driver killed while Tune wrote its experiment state (CI: `resume` then failed with a JSONDecodeError)
    or copied its search state to the storage (CI: an EOFError in Tune's `has_checkpoint`): the newest file of
    each kind is replaced by Tune's complete staging copy under Ray's session directory; without one it is set
    aside for the previous session's; with neither, one line names the file."""
    import json
    import pickle

    import pytest

    from pointtune.config import ConfigError
    from pointtune.search.tune_state import repair_tune_state

    tune_dir = tmp_path / "sweep" / "tune"
    tune_dir.mkdir(parents=True)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    staging = tmp_path / "raytmp" / "ray" / "session_1" / "artifacts" / "2026-12-07_16-39-00" / "tune" / "driver_artifacts"
    staging.mkdir(parents=True)
    whole = json.dumps({"trial_data": [], "runner_data": {"x": 1}})
    state = tune_dir / "experiment_state-2026-12-07_16-39-00.json"

    state.write_text(whole)
    assert repair_tune_state(tune_dir) == [] and state.read_text() == whole  # whole: untouched
    assert repair_tune_state(tmp_path / "remote-or-missing") == []

    state.write_text(whole[:10])                                               # cut short by the kill
    (staging / state.name).write_text(whole)
    (done,) = repair_tune_state(tune_dir)
    assert "restored from Tune's copy" in done and state.read_text() == whole

    state.write_text("")
    (staging / state.name).write_text("")                                      # both cut short
    with pytest.raises(ConfigError, match=f"{state.name}: Tune's experiment state was cut short"):
        repair_tune_state(tune_dir)
    older = tune_dir / "experiment_state-2026-12-07_15-00-00.json"
    older.write_text(whole)
    (done,) = repair_tune_state(tune_dir)
    assert "resuming from the previous state, " + older.name in done
    assert not state.exists() and state.with_name(state.name + ".cut-short").exists()
    assert repair_tune_state(tune_dir) == []

    search = tune_dir / "search_gen_state-2026-12-07_16-39-00.json"           # a pickle, whatever its name
    pickled = pickle.dumps({"counter": 3, "total_samples": 3, "finished": True})
    search.write_bytes(pickled[:7])
    (staging / search.name).write_bytes(pickled)
    (done,) = repair_tune_state(tune_dir)
    assert done.startswith(f"{search} was cut short") and search.read_bytes() == pickled
    search.write_bytes(b"")
    (staging / search.name).write_bytes(b"")
    with pytest.raises(ConfigError, match=f"{search.name}: Tune's search state was cut short"):
        repair_tune_state(tune_dir)
