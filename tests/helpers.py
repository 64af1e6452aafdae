"""Helpers for tests that run the `pointtune` CLI and read what a run leaves behind (MLflow, Optuna)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, TINY

# A line Ray forwards from a trial actor or a Train worker starts with "(run_trial pid=123)" (", ip=..." on
# another node), coloured.
RAY_PREFIX = r"(\x1b\[\d+m)?\(\w+ pid=\d+(, ip=\S+)?\)(\x1b\[0m)? "
# The console contract (pointtune.console): every line a sweep, study or resume prints without --verbose is of
# one of these kinds.
CONSOLE_KINDS = [re.compile(kind) for kind in (
    r"",
    r"\[pointtune\] .*",
    r"pointtune: .*",  # the one line of an error or an interrupted sweep (exit 2, 130)
    RAY_PREFIX + r"\[pointtune\] .*",
    # Tune's status box (pointtune.search.status.StatusTable) and its trial table
    r"== Status ==", r"Current time: .*", r"Using (AsyncHyperBand|FIFO scheduling algorithm)\b.*", r"Bracket: .*",
    r"PopulationBasedTraining: .*", r"Logical resource usage: .*", r"Memory usage on this node: .*",
    r"Number of trials: .*",
    r"[+|].*",  # Tune's trial table; a study's table
    # the summary table: its header and one row per trial
    r"trial +optuna +status .*", r"[0-9a-f]{5,8}(_\d{5})? +\S+ +(FINISHED|STOPPED|FAILED) .*",
)]


def offending(*outputs: str) -> list[str]:
    """The lines of ``outputs`` (a command's stdout, stderr) that are of none of the :data:`CONSOLE_KINDS`."""
    return [line for text in outputs for line in text.splitlines()
            if not any(kind.fullmatch(line) for kind in CONSOLE_KINDS)]


def tiny_sets(**extra) -> list[str]:
    """``--set`` flags for the tiny CEDR experiment of conftest.TINY plus ``extra`` (dotted keys)."""
    out = []
    for key, value in {**TINY, **extra}.items():
        out += ["--set", f"{key}={value}"]
    return out


def scaled(seconds: float) -> float:
    """A bound on waiting for an event, stretched by how busy the machine is now: ``seconds`` times the
    1-minute load average per CPU when that is above 1. Tests hold on a busy machine (a load of 20 on 2 cores
    makes a sweep's start-up ten times slower) and still never wait without a bound."""
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def pointtune(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m pointtune.cli ARGS`` from the repository root, for at most :func:`scaled` ``(timeout)``
    seconds; returns the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "pointtune.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=scaled(timeout), env=env, **kwargs)


def mlflow_runs(run_dir: Path):
    """All MLflow runs (any experiment) of the SQLite store in ``run_dir``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, max_results=1000)


def write_space(path: Path, params: dict, objective: str | list[dict] = "val/OA", method: str = "cedr") -> Path:
    """Write a search space of ``method`` (CEDR or a method built on it) whose ``params`` map dotted keys to
    specs; TINY keys are fixed. ``objective``: a metric to maximise, or a list of objectives as the file
    holds them (``[{metric: val/OA, mode: max}, {metric: cost/params, mode: min}]``)."""
    import yaml

    fixed = {k: {"type": "fixed", "value": v} for k, v in TINY.items()}
    objective = {"metric": objective, "mode": "max"} if isinstance(objective, str) else objective
    path.write_text(yaml.safe_dump({"method": method, "objective": objective,
                                    "params": {**fixed, **params}}, sort_keys=False))
    return path


def real(path: Path) -> Path:
    """``path`` under ../shared/data; skips the test only where ../shared/data is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return path


def one_line_error(exc_info, *fragments: str) -> str:
    """The message of a ``pytest.raises`` error, asserted to be one line containing every fragment."""
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def warm_started(exp, num_classes: int, total_epochs: int = 1):
    """The method of ``exp`` as a fresh run starts it: the architecture of the runs it starts from filled in from
    their checkpoints (``resolve_sources`` without copying), built, and warm-started from their weights."""
    from pointtune.config import build_config
    from pointtune.train.sources import load_sources, resolve_sources

    exp = build_config(exp.method.name, exp.to_dict(), resolve_sources(exp))
    method = exp.method_cls(exp.method, num_classes, total_epochs)
    method.warm_start(load_sources(method))
    return method


def tune_results(sweep_dir: Path, tune_dir: Path | None = None) -> dict:
    """What Tune received, per trial id: ``{trial_id: (ResultGrid Result, metrics DataFrame)}``."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    grid = ResultGrid(ExperimentAnalysis(str(tune_dir or sweep_dir / "tune")))
    return {Path(r.path).name.removeprefix("trial_"): (r, r.metrics_dataframe) for r in grid}


def check_records(sweep_dir: Path, epochs: int, metric: str = "val/OA", tune_dir: Path | None = None,
                  tracking_uri: str | None = None, study: bool = True, others: tuple[str, ...] = ()) -> dict:
    """Assert that MLflow, the Optuna study and summary.csv hold, trial by trial and epoch by epoch, exactly
    what Tune received; returns ``{trial_id: status}`` (FINISHED, STOPPED or FAILED).

    - every epoch Tune received is in the trial's MLflow run at step ``epoch`` with the same value, once, and no
      other;
    - the run is FINISHED (all epochs), KILLED with ``pointtune.stopped_by`` (ASHA) or FAILED with
      ``pointtune.failure``; no failure tag otherwise; it ended within seconds of the trial's last result;
    - the Optuna trial is COMPLETE with the last value, PRUNED with the epoch it reached, or FAIL, its
      intermediate values are the per-epoch objective, and it names the Tune trial and the MLflow run; one
      per Tune trial, besides those the study's ``superseded`` attribute replaced;
    - the run keeps no tag of an outcome it no longer has (``pointtune.stopped_by`` on a finished run);
    - no ``progress.csv`` (``result.json`` is the trial's one record of results);
    - summary.csv names the same Optuna trial and MLflow run; params are logged once (no ``sampled.*``);
    - the run's params are the config the trial built and trained with (its first result carries it), and
      the ``config.yaml`` artifact (the best checkpoint's) is that config;
    - one best epoch (issue 18): summary.csv's ``best_epoch`` and ``best_objective`` are what the trial last
      reported as ``best/epoch`` and ``best/<metric>`` (and MLflow's last values), the run's ``best_checkpoint``
      artifact is that epoch's checkpoint, and a trial that scored the test split scored it there.

    ``study=False``: a PBT sweep or a seed study, which have no Optuna study (and no ``optuna.db``).
    ``others``: the metrics of a multi-objective sweep's objectives after ``metric``: then a COMPLETE Optuna
    trial holds every objective's ``best/<metric>`` as the trial last reported it (values at the selected
    epoch), no intermediate values, and summary.csv's ``best/<metric>`` columns are those values.
    """
    import csv
    import math

    import optuna
    import yaml
    from mlflow.tracking import MlflowClient

    from pointtune.search.report import SUPERSEDED

    client = MlflowClient(tracking_uri=tracking_uri or f"sqlite:///{sweep_dir}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    # Runs and Optuna trials marked lost (started after Tune last saved its state, then interrupted) are
    # outside what Tune received.
    parent = yaml.safe_load((sweep_dir / "runtime.yaml").read_text())["parent_run_id"]  # a store may hold others
    runs = {r.data.tags["pointtune.trial_id"]: r for r in client.search_runs(experiments, max_results=1000)
            if r.data.tags.get("pointtune.kind") == "trial" and r.data.tags.get("pointtune.status") != "LOST"
            and r.data.tags.get("mlflow.parentRunId") == parent}
    if study:
        optuna_study = optuna.load_study(study_name="pointtune", storage=f"sqlite:///{sweep_dir}/optuna.db")
        trials = optuna_study.trials
        # A trial Optuna closed that Tune carried on (a FAIL trial resume finished, a PRUNED one resume trained
        # on) is recorded again: the study's attribute `superseded` links the old number to the new one.
        superseded = {int(old): new for old, new in optuna_study.user_attrs.get(SUPERSEDED, {}).items()}
        assert all(trials[new].user_attrs["resumes"] == old for old, new in superseded.items()), superseded
        current = [t for t in trials if "lost" not in t.user_attrs and t.number not in superseded]
        studied = {t.user_attrs["tune_trial_id"]: t for t in current}
        assert len(studied) == len(current), "one Optuna trial per Tune trial"
    else:
        assert not (sweep_dir / "optuna.db").exists()
    summary = {row["trial_id"]: row for row in csv.DictReader((sweep_dir / "summary.csv").open())}
    results = tune_results(sweep_dir, tune_dir)
    # one per-trial record of results, restored on resume: Tune's progress.csv, which it is not, is not written
    assert not list((tune_dir or sweep_dir / "tune").glob("*/progress.csv"))
    assert set(runs) == set(results) == set(studied if study else runs) == set(summary), (set(runs), set(results))
    statuses = {}
    for trial_id, (result, df) in results.items():
        run, ot, row = runs[trial_id], studied[trial_id] if study else None, summary[trial_id]
        tags = run.data.tags
        last_seen = None if df is None or not len(df) else float(df["timestamp"].iloc[-1])  # its very last result
        if df is not None and "epoch" in df:  # an epoch Tune received twice (a trial that resume restarted before
            df = df.drop_duplicates("epoch", keep="first")  # its first checkpoint, or restored at its last) is one record
        received = [] if df is None or "epoch" not in df else list(zip(df["epoch"].astype(int), df[metric]))
        for key in (metric, "train/loss", "lr"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            expected = [] if df is None or key not in df else [(int(e), float(v)) for e, v in zip(df["epoch"], df[key])]
            assert [s for s, _ in history] == [s for s, _ in expected], (trial_id, key, history, expected)
            assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(history, expected)), (trial_id, key)
        assert run.info.run_id == row["mlflow_run_id"]
        selected = [(result.metrics or {}).get(f"best/{m}") for m in (metric, *others)]
        if study:
            per_epoch = {} if others else {e: float(v) for e, v in received}  # none in a multi-objective study
            assert dict(ot.intermediate_values) == per_epoch, (trial_id, ot.intermediate_values)
            assert ot.user_attrs["mlflow_run_id"] == run.info.run_id
            assert row["optuna_trial"] == str(ot.number) == tags["pointtune.optuna_trial"]
        else:
            assert row["optuna_trial"] == "" and "pointtune.optuna_trial" not in tags
        assert not any(k.startswith("sampled") for k in run.data.params)
        experiment = _check_params(run, df)
        last_epoch = received[-1][0] if received else 0
        if result.error is not None:
            status = "FAILED"
            assert run.info.status == "FAILED" and tags["pointtune.failure"], tags
            assert "pointtune.stopped_by" not in tags, tags
            assert not study or ot.state == optuna.trial.TrialState.FAIL
        elif last_epoch < epochs:
            status = "STOPPED"
            assert run.info.status == "KILLED" and f"after epoch {last_epoch} of {epochs}" in tags["pointtune.stopped_by"]
            assert not study or (ot.state == optuna.trial.TrialState.PRUNED
                                 and ot.user_attrs["stopped_at_epoch"] == last_epoch)
            assert "pointtune.failure" not in tags
        else:
            status = "FINISHED"
            assert run.info.status == "FINISHED" and not {"pointtune.failure", "pointtune.stopped_by"} & set(tags), tags
            if study:
                told, expected = (ot.values, selected) if others else ([ot.value], [received[-1][1]])
                assert ot.state == optuna.trial.TrialState.COMPLETE and all(
                    math.isclose(a, b) for a, b in zip(told, expected, strict=True)), (told, expected)
        for m, value in zip((metric, *others) if others else (), selected):
            reported = value is not None and math.isfinite(value)
            assert math.isclose(float(row[f"best/{m}"]), value) if reported else row[f"best/{m}"] == "", (m, row)
        assert row["status"] == status, (row["status"], status)
        _check_best_epoch(client, run, result, row, metric, kept_best=study, experiment=experiment)
        if received:  # the run ended when the trial did, not when the sweep did
            ended_after_last_result = run.info.end_time / 1000 - last_seen
            assert -2 <= ended_after_last_result <= 20, ended_after_last_result
        statuses[trial_id] = status
    ranked = sorted((r for r in summary.values() if r["best_objective"]), key=lambda r: -float(r["best_objective"]))
    if ranked:
        assert runs[ranked[0]["trial_id"]].data.tags["pointtune.rank"] == "1"
    return statuses


def _check_params(run, df) -> dict | None:
    """The experiment the trial announced in its first result (``None``: it reported nothing), asserting that
    the run's params are exactly that experiment, flattened."""
    import json

    from pointtune.tracking import flatten

    announced = [] if df is None or "experiment" not in df else [v for v in df["experiment"] if isinstance(v, str)]
    if not announced:
        return None
    experiment = json.loads(announced[0])
    assert run.data.params == {k: str(v)[:6000] for k, v in flatten(experiment).items()}, run.data.params
    assert run.data.params["train.threads"] not in ("", "None"), "the trial's threads are recorded"
    return experiment


def _check_best_epoch(client, run, result, row: dict, metric: str, kept_best: bool,
                      experiment: dict | None = None) -> None:
    """One best epoch across the stores: what the loop last reported = summary.csv = MLflow (= ``test/epoch``
    where the test split was scored) = the checkpoint logged as ``best_checkpoint`` (``kept_best``: the trial
    kept its best checkpoint; a PBT trial keeps its latest ones), whose ``config.yaml`` is ``experiment``."""
    import json
    import tempfile

    import yaml

    last = result.metrics or {}
    if not isinstance(last.get("best/epoch"), (int, float)) or not last["best/epoch"]:
        assert row["best_epoch"] == "", row
        return
    selected = int(last["best/epoch"])
    assert row["best_epoch"] == str(selected) and float(row["best_objective"]) == last[f"best/{metric}"], row
    for key, value in (("best/epoch", selected), (f"best/{metric}", last[f"best/{metric}"])):
        history = client.get_metric_history(run.info.run_id, key)
        assert history and max(history, key=lambda m: m.step).value == value, (key, history)
    if "test/epoch" in last:
        assert int(last["test/epoch"]) == selected, last
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")}
    if kept_best and "best_checkpoint/metrics.json" in artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            kept = json.loads(Path(client.download_artifacts(run.info.run_id, "best_checkpoint/metrics.json",
                                                             tmp)).read_text())
            config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml",
                                                                   tmp)).read_text())
        assert int(kept["epoch"]) == selected, (kept["epoch"], selected)
        assert experiment is None or config == experiment, "the config.yaml artifact is the trial's config"


def wait_until(condition, what: str, timeout: float = 120):
    """Return what ``condition()`` returns once that is true, checking it every 50 ms; fail the test naming
    ``what`` (the event waited for) if it is not within :func:`scaled` ``(timeout)`` seconds. ``condition``
    may itself fail the test (e.g. when the process that was to cause the event has ended)."""
    import time

    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)
    return value


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def reaper_notes(path: Path) -> dict:
    """The latest note of the ``pointtune.reaper`` watcher told to write to ``path`` ($POINTTUNE_REAPER_NOTES):
    ``{"driver": pid, "reaper": pid, "noted": [pids]}``; ``{}`` before its first."""
    import json

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def sweep_until_reported(cmd: list[str], out: Path, timeout: float = 300, notes: Path | None = None
                         ) -> subprocess.Popen:
    """Start the sweep ``cmd`` (writing to ``out``) in its own session, its output captured, and return once a
    trial has reported an epoch and Tune has saved its experiment state after that: an interruption then
    comes after a state that references a checkpoint that exists. (Killed between Tune deleting a superseded
    checkpoint and saving the state that forgets it, the restored trial cannot find its checkpoint: Tune's
    window, narrowed here on purpose.) Tune saves its state at every step here (``TUNE_GLOBAL_CHECKPOINT_S=0``;
    by default at most every ~10 s, so a short sweep could end before any save followed a report). With
    ``notes``, the driver's ``pointtune.reaper`` writes what it notes there (:func:`reaper_notes`)."""
    from pointtune.reaper import NOTES_ENV

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    if notes is not None:
        env[NOTES_ENV] = str(notes)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def reported() -> bool:
        assert proc.poll() is None, "the sweep ended before it could be interrupted: " + proc.stderr.read()[-3000:]
        results = [p for p in out.glob("tune/*/result.json") if p.stat().st_size]
        states = list(out.glob("tune/experiment_state-*.json"))
        return bool(results and states) and max(s.stat().st_mtime for s in states) >= max(
            r.stat().st_mtime for r in results)

    wait_until(reported, "a trial's first report and Tune's state saved after it", timeout)
    return proc


def kill_after_first_report(cmd: list[str], out: Path, timeout: float = 300) -> tuple[str, str]:
    """SIGKILL the driver of the sweep ``cmd`` once it has reported (:func:`sweep_until_reported`) and its
    ``pointtune.reaper`` has noted every process it had started (the Ray instance, its trial actors and Train
    workers), as a crash or the OOM killer would; assert that they are all gone within 120 s: killed by the
    reaper, not by the test. Returns what the driver printed until then (stdout, stderr)."""
    import signal

    from pointtune.reaper import descendants

    notes = out.with_name(f"{out.name}-reaper.json")
    notes.unlink(missing_ok=True)
    proc = sweep_until_reported(cmd, out, timeout, notes)
    family = descendants({proc.pid})

    def noted() -> bool:
        note = reaper_notes(notes)
        return bool(note) and {p for p in family - {note["reaper"]} if running(p)} <= set(note["noted"])

    wait_until(noted, "the reaper to note every process of the sweep")
    os.kill(proc.pid, signal.SIGKILL)
    printed = proc.communicate()
    wait_until(lambda: not any(running(p) for p in family), f"the killed sweep's processes {sorted(family)} to end")
    return printed


def start_other_ray(tmp_path: Path, num_cpus: int = 1) -> str:
    """Start a second, unrelated Ray instance with ``ray start --head`` (as a user may have left one running);
    returns its GCS address. Stop it with :func:`stop_ray_instance`."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    ray = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.run([ray, "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}",
                           "--disable-usage-stats"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return f"127.0.0.1:{port}"


def stop_ray_instance(address: str) -> None:
    """Kill every process of the Ray instance at ``address`` (and only of it: `ray stop` would stop every
    instance on the machine). Processes are found by the GCS address or port on their command line."""
    import signal

    import re

    port = address.rsplit(":", 1)[1]
    # Its processes name the GCS by the node's IP or by 127.0.0.1: match the port.
    mark = re.compile(rf"(--gcs[-_]address=\S+:{port}|--gcs_server_port={port}|--port={port})(\s|$)")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmdline and mark.search(cmdline):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


def _gloo_worker(rank: int, fn, init_file: str, result_file: str, world: int) -> None:
    """One process of :func:`on_gloo_workers`: join the group, save ``fn(rank)`` (or the traceback)."""
    import datetime
    import traceback

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(fn(rank), f"{result_file}.{rank}")
    except Exception:
        torch.save({"error": traceback.format_exc()}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def on_gloo_workers(fn, tmp_path: Path, world: int = 2) -> list:
    """Run ``fn(rank)`` (a module-level function) in ``world`` spawned gloo processes of one torch.distributed
    group (1 thread each) and return what each returned, by rank; a worker's error fails the test with its
    traceback."""
    import torch
    import torch.multiprocessing as mp

    init_file, result_file = str(tmp_path / "init"), str(tmp_path / "result")
    mp.spawn(_gloo_worker, args=(fn, init_file, result_file, world), nprocs=world, join=True)
    parts = [torch.load(f"{result_file}.{r}", weights_only=False) for r in range(world)]
    for part in parts:
        assert "error" not in part, part.get("error")
    return parts
