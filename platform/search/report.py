"""After a sweep (or a resume): the summary table and CSV, the best config, the plots, the parent run's
closing records, and the commands that open the results. Also what ``pointtune best`` reads.

With several objectives, each trial's value for every objective is the one the loop reported at the epoch
the primary objective selected (``best/<metric>``), and ``summary.csv`` marks the Pareto front of the trials
that ran every epoch (``pareto``), plotted in ``pareto_front.png``.

Each trial's own MLflow run was closed by :class:`~pointtune.search.records.MlflowRecorder` when the trial
ended; here every child run only gains ``pointtune.rank`` (1 = best), so the best trial is found at a glance.
Idempotent: running it again (e.g. after ``pointtune resume``) updates the same runs and files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pointtune import tracking
from pointtune.schedules import Schedule
from pointtune.failures import failure_reason
from pointtune.objective import pareto_front
from pointtune.search.records import MlflowRecorder, metric_items, set_study_attr, stopped_early
from pointtune.search.space import SearchSpace
from pointtune.search.spec import OPTUNA_KEY, ROW_KEY, STUDY_NAME, SweepRuntime, SweepSpec, sampled_params, study_storage
from pointtune.train.checkpoint import best_checkpoint, checkpoints_of, experiment_of


@dataclass
class TrialSummary:
    """One trial as the sweep saw it.

    ``status``: FINISHED (ran every epoch), STOPPED (ASHA stopped it early; its MLflow run is KILLED, its
    Optuna trial PRUNED) or FAILED. ``best`` and ``best_epoch`` are the loop's model selection as the trial
    last reported it (``best/<metric>``, ``best/epoch``: :mod:`pointtune.objective`); ``best_checkpoint`` the
    checkpoint of that epoch (local path or storage URI). ``values``: every objective's value at that epoch
    (``best/<metric>``; ``None`` where not reported); ``pareto``: whether the trial is on the Pareto front of a
    multi-objective sweep (``None`` with one objective).
    """

    trial_id: str
    status: str
    params: dict[str, Any]
    epochs: int
    best: float | None
    best_epoch: int | None = None
    last: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    error: str | None = None
    optuna_trial: int | None = None
    mlflow_run_id: str | None = None
    history: dict[int, float] = field(default_factory=dict)
    values: dict[str, float | None] = field(default_factory=dict)
    pareto: bool | None = None


def _trial_id(result) -> str:
    if result.metrics and "trial_id" in result.metrics:
        return str(result.metrics["trial_id"])
    return Path(result.path).name.removeprefix("trial_")  # sweep._trial_name


def summarize(results, space: SearchSpace, spec: SweepSpec) -> list[TrialSummary]:
    """One :class:`TrialSummary` per trial of a Tune ``ResultGrid``, best first by the primary objective
    (failed trials last), the best value, epoch and every objective's value there read from the loop's last
    report of each trial; with several objectives, the Pareto front marked (:func:`mark_pareto_front`).

    Args:
        results: the ``ResultGrid`` of ``Tuner.fit`` or of the saved experiment.
        space: the sweep's search space (objective, searched keys).
        spec: the sweep (its epochs; where the checkpoints are).
    """
    rows = []
    started: dict[str, float] = {}  # trial id -> when it first reported (Tune's timestamp, s)
    searched = set(space.searched()) | ({ROW_KEY} if spec.rows else set())
    for result in results:
        df = result.metrics_dataframe
        history = {}
        if df is not None and space.metric in df and "epoch" in df:
            history = {int(e): float(v) for e, v in zip(df["epoch"], df[space.metric]) if v == v}
        metrics = result.metrics or {}
        trial_id = _trial_id(result)
        started[trial_id] = float(df["timestamp"].min()) if df is not None and "timestamp" in df and len(df) \
            else float("inf")
        if result.error is not None:
            status = "FAILED"
        else:
            status = "STOPPED" if stopped_early(metrics, spec.epochs) else "FINISHED"
        selected = metric_items(metrics)
        best = selected.get(f"best/{space.metric}")
        kept = best_checkpoint(checkpoints_of(spec.layout.trial_dirs(trial_id, result.path)))
        rows.append(TrialSummary(
            trial_id, status, {k: v for k, v in sampled_params(result.config).items() if k in searched},
            int(metrics.get("epoch", 0)), best, int(selected["best/epoch"]) if best is not None else None,
            {k: v for k, v in selected.items() if k.startswith(("val/", "train/", "test/", "cost/"))},
            kept.path if kept else None, failure_reason(result.error) if result.error is not None else None,
            (result.config or {}).get(OPTUNA_KEY), history=history,
            values={o.metric: selected.get(f"best/{o.metric}") for o in space.objectives},
        ))
    sign = 1 if space.mode == "max" else -1
    # Ties go to the earlier trial, whatever order Tune lists them in (the sweep's end and `pointtune best` agree):
    # the lower Optuna number (the order the study suggested them), else the earlier first report; Tune's trial
    # ids are random and only break what is left.
    rows.sort(key=lambda r: (r.best is None, -sign * (r.best if r.best is not None else 0),
                             r.optuna_trial if isinstance(r.optuna_trial, int) else float("inf"),
                             started[r.trial_id], r.trial_id))
    if space.multi_objective:
        mark_pareto_front(rows, space)
    return rows


def mark_pareto_front(rows: list[TrialSummary], space: SearchSpace) -> None:
    """Set ``pareto`` of every trial: whether it is on the Pareto front (:func:`pointtune.objective.pareto_front`)
    of the trials that ran every epoch and reported every objective. A stopped or failed trial never is: its
    values come from a shorter budget (and the Optuna study holds it as PRUNED or FAIL, without values)."""
    points = [[r.values.get(o.metric) for o in space.objectives] if r.status == "FINISHED" else None for r in rows]
    for row, on_front in zip(rows, pareto_front(points, [o.mode for o in space.objectives])):
        row.pareto = on_front


def format_table(rows: list[TrialSummary], space: SearchSpace) -> str:
    """A fixed-width text table of the trials (best first by the primary objective); with several objectives,
    the others' values at the selected epoch and ``*`` for the trials on the Pareto front."""
    keys = sorted({k for r in rows for k in r.params})
    others = space.secondary
    header = ["trial", "optuna", "status", "epochs", space.metric, "best epoch", *others,
              *(["pareto"] if space.multi_objective else [])] + short_names(keys)
    lines = [header]
    for r in rows:
        cells = [r.trial_id, _fmt(r.optuna_trial), r.status, str(r.epochs), "-" if r.best is None else f"{r.best:.4f}",
                 _fmt(r.best_epoch), *[_fmt(r.values.get(m)) for m in others]]
        cells += ["*" if r.pareto else ""] if space.multi_objective else []
        cells += [_fmt(r.params.get(k)) for k in keys]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def short_names(keys: list[str]) -> list[str]:
    """Column names for dotted ``keys``: the shortest trailing parts that tell them apart
    (``optim.lr.start``, ``method.lambda_con.start`` -> ``lr.start``, ``lambda_con.start``; a schedule's part is
    never shown alone)."""
    names = []
    for key in keys:
        parts = key.split(".")
        n = 2 if len(parts) > 2 and parts[-1] in Schedule.model_fields else 1
        while n < len(parts) and any(o != key and o.split(".")[-n:] == parts[-n:] for o in keys):
            n += 1
        names.append(".".join(parts[-n:]))
    return names


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_best(rows: list[TrialSummary], layout, metric: str, path: Path | None = None) -> dict[str, Any] | None:
    """Record the best trial: ``best.json`` (its id, value, epoch and checkpoint: what ``--from SWEEP_DIR``
    reads) and its full experiment config, from that checkpoint, as ``best_config.yaml`` (or ``path``) for
    ``pointtune train --config``. Returns the config, or ``None`` (and writes nothing) when no trial has a
    checkpoint."""
    import json
    import tempfile

    for row in rows:
        if row.best_checkpoint:
            with tempfile.TemporaryDirectory() as tmp:
                config = experiment_of(row.best_checkpoint, Path(tmp))
            layout.best.write_text(json.dumps({
                "trial_id": row.trial_id, "objective": metric, "value": row.best, "epoch": row.best_epoch,
                "checkpoint": row.best_checkpoint}, indent=2))
            header = f"# best trial {row.trial_id}: {metric} = {row.best} at epoch {row.best_epoch}\n"
            (path or layout.best_config).write_text(header + yaml.safe_dump(config, sort_keys=False))
            return config
    return None


def plot_study(sweep_dir: Path, space: SearchSpace) -> list[Path]:
    """Optimization history (every trial; of a multi-objective study, its primary objective) and parameter
    importances (computed on the COMPLETE trials only, i.e. those that ran every epoch: pruned trials stopped
    at different epochs and their values are not comparable; one bar per objective of a multi-objective
    study), saved as PNGs in ``sweep_dir``; returns the files written. Importances Optuna cannot tell apart
    (equal for every parameter) are skipped with one printed line, not plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(sweep_dir))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    if complete:
        primary = {"target": lambda t: t.values[0], "target_name": space.metric} if space.multi_objective else {}
        ax = ovm.plot_optimization_history(study, **primary)
        out = sweep_dir / "optimization_history.png"
        ax.figure.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(out)
    varying = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    if len(complete) >= 2 and varying:
        with warnings.catch_warnings():
            # PED-ANOVA (Optuna's default) warns and draws equal bars when its top quantile of trials is all of
            # them, e.g. every complete trial scored the same: a plot that would say nothing
            warnings.filterwarnings("error", message="Target and region quantiles select the same set")
            try:
                ax = ovm.plot_param_importances(study)  # Optuna uses COMPLETE trials only
            except UserWarning:
                plt.close("all")
                ax, skipped = None, ("Optuna's PED-ANOVA tells no parameter apart: its top quantile of trials is "
                                     "all of them (e.g. every complete trial scored the same)")
            except (RuntimeError, ValueError) as err:  # e.g. importances undefined for the sampled values
                ax, skipped = None, str(err)
        if ax is None:
            print(f"[pointtune] parameter importances skipped: {skipped}")
        else:
            ax.set_title(f"Hyperparameter importances over the {len(complete)} complete trials "  # replaces Optuna's
                         f"({len(study.trials) - len(complete)} pruned or failed left out)", loc="left")
            out = sweep_dir / "param_importances.png"
            ax.figure.savefig(out, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(out)
    elif len(study.trials) > len(complete):
        print(f"[pointtune] parameter importances need 2 complete trials with differing values; "
              f"{len(complete)} of {len(study.trials)} trials ran every epoch")
    return written


def plot_pareto(rows: list[TrialSummary], space: SearchSpace, path: Path) -> Path | None:
    """The trials of a multi-objective sweep that ran every epoch, one panel per objective after the first
    (its value on x, the primary objective's on y, each at the selected epoch), the Pareto front
    (:attr:`TrialSummary.pareto`) highlighted, labelled with Optuna trial numbers and joined in order; saved as
    ``path``. Returns ``path``, or ``None`` (nothing written) when no trial ran every epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.status == "FINISHED" and all(r.values.get(o.metric) is not None
                                                               for o in space.objectives)]
    if not done:
        return None
    others = space.objectives[1:]
    fig, axes = plt.subplots(1, len(others), figsize=(5.5 * len(others), 4.5), squeeze=False)
    front = [r for r in done if r.pareto]
    for ax, other in zip(axes[0], others):
        ax.scatter([r.values[other.metric] for r in done], [r.values[space.metric] for r in done], color="0.6",
                   label="trials that ran every epoch")
        line = sorted(front, key=lambda r: (r.values[other.metric], r.values[space.metric]))
        ax.plot([r.values[other.metric] for r in line], [r.values[space.metric] for r in line], "o-",
                color="tab:red", label="Pareto front")
        for r in front:
            ax.annotate(f"#{_fmt(r.optuna_trial)}", (r.values[other.metric], r.values[space.metric]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f"{other.metric} ({other.mode})")
        ax.set_ylabel(f"{space.metric} ({space.mode})")
        ax.legend(fontsize=8)
    fig.suptitle(f"Pareto front: {len(front)} of {len(done)} trials ({space.describe_objective()}; values at the "
                 f"epoch {space.metric} selected)", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def format_front(rows: list[TrialSummary], space: SearchSpace) -> str:
    """The Pareto front of a multi-objective sweep as text: a heading, then one line per trial on it (its id,
    Optuna number, every objective's value and its sampled parameters), best first by the primary objective."""
    front = [r for r in rows if r.pareto]
    done = sum(r.status == "FINISHED" for r in rows)
    lines = [f"Pareto front ({space.describe_objective()}): {len(front)} of the {done} trials that ran every epoch"]
    for r in front:
        values = "  ".join(f"{m} = {_fmt(v)}" for m, v in r.values.items())
        lines.append(f"  trial {r.trial_id} (Optuna #{_fmt(r.optuna_trial)}): {values}  {r.params}")
    return "\n".join(lines)


def ui_url(runtime: SweepRuntime, run_id: str | None = None, port: int = 5000) -> str:
    """The MLflow UI address of the sweep's experiment (runs table) or of one run, for the default
    ``mlflow ui`` (port 5000) or the sweep's tracking server."""
    uri = runtime.tracking_uri or ""
    base = uri.rstrip("/") if uri.startswith("http") else f"http://127.0.0.1:{port}"
    if run_id:
        return f"{base}/#/experiments/{runtime.experiment_id}/runs/{run_id}"
    return tracking.runs_table_url(base, runtime.experiment_id)


LOST = ("started before the sweep was interrupted, after Tune last saved its state: Tune does not know it, so "
        "no resume can continue it (its sampled values are tried again as a new trial if Optuna suggests them)")


SUPERSEDED = "superseded"  # the study's user attribute {old trial number: new trial number} (reconcile_study)
_OUTCOME_ATTRS = ("failure", "stopped_at_epoch", "last_value")  # what a record says of how its trial ended


def reconcile_study(spec, space: SearchSpace, rows: list[TrialSummary]) -> None:
    """Make the Optuna study say, once every trial has ended, what Tune received (the source of truth):

    * a trial still RUNNING that no Tune trial continues: FAIL with ``lost``;
    * one whose Tune trial failed: FAIL with ``failure`` (its reason);
    * one whose Tune trial ended (a resumed run whose results the searcher did not see): its missing
      per-epoch values, then COMPLETE with the last value, or PRUNED with the epoch it reached (several
      objectives: no per-epoch values, and the values of :func:`~pointtune.search.records.study_metric`);
    * a trial Optuna closed that Tune then carried on (``resume`` finished a FAIL trial, or trained on a trial
      ASHA had PRUNED when the driver was killed before Tune saved that decision): a closed Optuna trial
      cannot change, so the study gets a new trial with the same parameters, every epoch's value and what
      Tune says happened, ``resumes`` = the old number. Optuna refuses attributes on a closed trial, so the
      link from old to new is the study's user attribute ``superseded`` ({old: new}); ``row.optuna_trial``
      becomes the new number.
    """
    import optuna
    from optuna.trial import TrialState

    storage = study_storage(spec.root)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    superseded = dict(study.user_attrs.get(SUPERSEDED, {}))
    by_tune = {r.trial_id: r for r in rows}
    for trial in study.get_trials(deepcopy=False):
        if str(trial.number) in superseded or trial.state not in (TrialState.RUNNING, TrialState.FAIL,
                                                                  TrialState.PRUNED):
            continue
        row = by_tune.get(trial.user_attrs.get("tune_trial_id"))
        if trial.state == TrialState.RUNNING and (row is None or row.status == "FAILED"):
            key, reason = ("lost", LOST) if row is None else ("failure", row.error or "failed")
            set_study_attr(str(spec.root), trial.number, key, reason)
            study.tell(trial.number, state=TrialState.FAIL)
            continue
        if row is None or (trial.state != TrialState.RUNNING and _agrees(trial, row)):
            continue
        last = _told(row, space)
        outcome = {"FAILED": TrialState.FAIL, "STOPPED": TrialState.PRUNED}.get(row.status, TrialState.COMPLETE)
        attrs = {"failure": row.error or "failed"} if outcome == TrialState.FAIL else \
            {"stopped_at_epoch": row.epochs, **({"last_value": last} if last is not None else {})} \
            if outcome == TrialState.PRUNED else {}
        told = last if outcome == TrialState.COMPLETE else None
        history = {} if space.multi_objective else dict(row.history)
        if trial.state == TrialState.RUNNING:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            for step, value in sorted(history.items()):
                if step not in trial.intermediate_values:
                    storage.set_trial_intermediate_value(trial_id, step, value)
            for key, value in attrs.items():
                set_study_attr(str(spec.root), trial.number, key, value)
            study.tell(trial.number, told, state=outcome)
            continue
        study.add_trial(optuna.trial.create_trial(
            state=outcome, **({"values": told} if space.multi_objective else {"value": told}), params=trial.params,
            distributions=trial.distributions, intermediate_values=history,
            user_attrs={**{k: v for k, v in trial.user_attrs.items() if k not in _OUTCOME_ATTRS}, **attrs,
                        "resumes": trial.number},
        ))
        row.optuna_trial = max(t.number for t in study.get_trials(deepcopy=False))
        superseded[str(trial.number)] = row.optuna_trial
        study.set_user_attr(SUPERSEDED, superseded)


def _agrees(trial, row: TrialSummary) -> bool:
    """Whether a closed Optuna trial (FAIL or PRUNED) says what Tune says of its trial (``row``)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return row.status == "FAILED"
    return row.status == "STOPPED" and trial.user_attrs.get("stopped_at_epoch") == row.epochs


def _told(row: TrialSummary, space: SearchSpace) -> float | list[float] | None:
    """What the study is told for a trial that Tune ended (:func:`~pointtune.search.records.study_metric`): its
    last value, or each objective's value at the selected epoch; ``None`` when one is missing."""
    if not space.multi_objective:
        return row.history.get(row.epochs)
    values = [row.values.get(o.metric) for o in space.objectives]
    return None if None in values else values


def finalize(spec: SweepSpec, runtime: SweepRuntime, space: SearchSpace, results) -> list[TrialSummary]:
    """Close what is still open (the runs of trials Tune never knew, :func:`reconcile_study`), write
    ``summary.csv``, ``best.json``, ``best_config.yaml`` and the plots, rank the trials' MLflow runs, close the
    parent run, print the table, the best trial and how to open the results. Returns the trial summaries."""
    layout = spec.layout
    rows = summarize(results, space, spec)
    uri = runtime.tracking_uri
    runs = MlflowRecorder(spec, runtime, space.metric, space.mode)
    lost = runs.close_lost({r.trial_id for r in rows}, LOST)
    if spec.searches:  # PBT sweeps and seed studies have no Optuna study
        reconcile_study(spec, space, rows)
    if lost:
        print(f"[pointtune] {lost} trial(s) started before the interruption were unknown to Tune's saved state: "
              f"their MLflow runs are marked LOST")
    for rank, row in enumerate(rows, start=1):
        row.mlflow_run_id = runs.rank(row.trial_id, rank if row.best is not None else "-", row.optuna_trial)
    table = format_table(rows, space)
    layout.summary_txt.write_text(table + "\n")
    _write_csv(rows, layout.summary_csv, space)
    pareto_plot = None
    if spec.rows:
        from pointtune.search.study_report import write_study

        written, study_table = write_study(spec, space, rows)
        best_config = None
    else:
        best_config = write_best(rows, layout, space.metric)
        if space.multi_objective:
            pareto_plot = plot_pareto(rows, space, layout.plot("pareto_front"))
        written = ([] if spec.scheduler == "pbt" else plot_study(spec.root, space)) + \
            ([layout.best_config, layout.best] if best_config else []) + ([pareto_plot] if pareto_plot else [])
    for path in [layout.summary_csv, *written]:
        tracking.log_artifact(uri, runtime.parent_run_id, path)
    done = [r for r in rows if r.best is not None]
    if done and not spec.rows:
        tracking.log_metrics({"tracking_uri": uri, "run_id": runtime.parent_run_id},
                             {f"best/{space.metric}": done[0].best}, 0)
        tracking.set_tags(uri, runtime.parent_run_id, {"pointtune.best_trial": done[0].trial_id,
                                                       "pointtune.best_run": done[0].mlflow_run_id or "-"})
    status = "FINISHED" if done else "FAILED"
    tracking.set_tags(uri, runtime.parent_run_id, {"pointtune.status": status})  # replaces a resumed INTERRUPTED
    tracking.end_run(uri, runtime.parent_run_id, status)
    counts = {s: sum(r.status == s for r in rows) for s in ("FINISHED", "STOPPED", "FAILED")}
    print("\n" + table)
    stopped = "" if spec.rows or spec.scheduler == "none" else \
        f"{counts['STOPPED']} stopped early by {spec.scheduler.upper()}, "
    print(f"\n[pointtune] {len(rows)} trials: {counts['FINISHED']} finished, {stopped}{counts['FAILED']} failed")
    if spec.rows:
        print("\n" + study_table)
        print(f"[pointtune] study: {layout.root / 'study.md'}, study.csv, runs.csv, study.png")
    elif done:
        best = done[0]
        origin = "its last PBT values" if spec.scheduler == "pbt" else f"Optuna #{best.optuna_trial}"
        print(f"[pointtune] best trial {best.trial_id} ({origin}): {space.metric} = {best.best:.4f} at epoch "
              f"{best.best_epoch}  {best.params}")
        print(f"[pointtune] best config: {layout.best_config}  (pointtune train {spec.method} --config ...)")
        if space.multi_objective:
            print(f"[pointtune] {format_front(rows, space)}")
        if pareto_plot:
            print(f"[pointtune] Pareto plot: {pareto_plot}")
        if best.mlflow_run_id:
            print(f"[pointtune] best run: {ui_url(runtime, best.mlflow_run_id)}")
    if uri.startswith("sqlite:///"):  # the store's directory: a study's is its sweep's
        store = Path(uri.removeprefix("sqlite:///")).parent
        print(f"[pointtune] MLflow runs: pointtune ui {store}   (then open {ui_url(runtime)})")
    else:
        print(f"[pointtune] MLflow runs: {ui_url(runtime)}")
    if spec.scheduler == "pbt":
        exploits = sum(_pbt_exploits(result) for result in results)
        print(f"[pointtune] PBT: {exploits} exploit(s); each trial's param/* and sched/* per epoch are in MLflow")
    elif spec.searches:
        print(f"[pointtune] Optuna study: optuna-dashboard {layout.optuna_url}")
    return rows


def _pbt_exploits(result) -> int:
    """How many times a PBT trial (a Tune ``Result``) resumed from another trial's checkpoint: its epochs with
    ``pbt/exploit`` = 1, which the trial's loop reports itself (Tune's ``pbt_global.txt`` loses the exploits
    made before a driver was killed; an epoch a resumed trial reported again counts once)."""
    df = result.metrics_dataframe
    return 0 if df is None or "pbt/exploit" not in df else int(df.loc[df["pbt/exploit"] == 1, "epoch"].nunique())


def _write_csv(rows: list[TrialSummary], path: Path, space: SearchSpace) -> None:
    """``summary.csv``: one line per trial; with several objectives, each objective's value at the selected
    epoch (``best/<metric>``) and ``pareto`` after ``best_epoch``."""
    import csv

    keys = sorted({k for r in rows for k in r.params})
    metrics = sorted({k for r in rows for k in r.last if not k.startswith("test/")})  # test: never for selection
    objectives = [o.metric for o in space.objectives] if space.multi_objective else []
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial_id", "optuna_trial", "mlflow_run_id", "status", "epochs", "best_objective",
                         "best_epoch", *[f"best/{m}" for m in objectives], *(["pareto"] if objectives else []),
                         *keys, *metrics, "error"])
        for r in rows:
            writer.writerow([r.trial_id, r.optuna_trial, r.mlflow_run_id or "", r.status, r.epochs, r.best, r.best_epoch,
                             *[r.values.get(m) for m in objectives], *([r.pareto] if objectives else []),
                             *[r.params.get(k) for k in keys], *[r.last.get(k) for k in metrics], r.error or ""])
