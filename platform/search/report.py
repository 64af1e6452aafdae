"""After a sweep (or a resume): close every trial's MLflow run, write the summary table, the best config
and the plots, and close the parent run. Also what ``pointtune best`` reads.

Idempotent: running it again (e.g. after ``pointtune resume``) updates the same runs and files.
"""

from __future__ import annotations

import math
import warnings
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pointtune import tracking
from pointtune.search.space import SearchSpace
from pointtune.train.checkpoint import load_state


@dataclass
class TrialSummary:
    """One trial as the sweep saw it."""

    trial_id: str
    status: str  # FINISHED (ran all epochs), STOPPED (ASHA), FAILED
    params: dict[str, Any]
    epochs: int
    best: float | None
    last: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    error: str | None = None


def _trial_id(result) -> str:
    if result.metrics and "trial_id" in result.metrics:
        return str(result.metrics["trial_id"])
    # Tune names trial directories <trainable>_<trial id>_<index>_...; the trainable here is run_trial.
    return Path(result.path).name.split("_")[2]


def summarize(results, space: SearchSpace, max_epochs: int) -> list[TrialSummary]:
    """One :class:`TrialSummary` per trial of a Tune ``ResultGrid``, best first (failed trials last)."""
    rows = []
    for result in results:
        df = result.metrics_dataframe
        best, ckpt = None, None
        if df is not None and space.metric in df and df[space.metric].notna().any():
            col = df[space.metric]
            best = float(col.max() if space.mode == "max" else col.min())
            ckpt = _best_kept_checkpoint(df, space)
        metrics = result.metrics or {}
        epochs = int(metrics.get("epoch", 0))
        if result.error is not None:
            status = "FAILED"
        else:
            status = "FINISHED" if epochs >= max_epochs else "STOPPED"
        last = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/", "train/")) and isinstance(v, float)}
        error = str(result.error).strip().splitlines()[-1][:300] if result.error is not None else None
        rows.append(TrialSummary(_trial_id(result), status, _sampled(result.config, space), epochs, best, last, ckpt, error))
    sign = 1 if space.mode == "max" else -1
    rows.sort(key=lambda r: (r.best is None, -sign * (r.best if r.best is not None else 0)))
    return rows


def _best_kept_checkpoint(df, space: SearchSpace) -> str | None:
    """Checkpoint of the best epoch that Ray kept (``num_to_keep=1``: the best and the latest survive; on
    ties the later epoch wins, as in Ray's checkpoint manager)."""
    if "checkpoint_path" not in df:
        return None
    rows = df[df["checkpoint_path"].notna()].sort_values(
        [space.metric, "epoch"], ascending=[space.mode == "min", False]
    )
    for path in rows["checkpoint_path"]:
        if isinstance(path, str) and Path(path).exists():
            return path
    return None


def _sampled(config: dict[str, Any] | None, space: SearchSpace) -> dict[str, Any]:
    keys = set(space.searched())
    return {k: v for k, v in (config or {}).items() if k in keys}


def format_table(rows: list[TrialSummary], metric: str) -> str:
    """A fixed-width text table of the trials (best first)."""
    keys = sorted({k for r in rows for k in r.params})
    header = ["trial", "status", "epochs", metric] + [k.split(".")[-1] for k in keys]
    lines = [header]
    for r in rows:
        cells = [r.trial_id, r.status, str(r.epochs), "-" if r.best is None else f"{r.best:.4f}"]
        cells += [_fmt(r.params.get(k)) for k in keys]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_best_config(rows: list[TrialSummary], path: Path) -> dict[str, Any] | None:
    """Write the best trial's full experiment config (from its best checkpoint) as YAML for
    ``pointtune train --config``; returns it, or ``None`` when no trial has a checkpoint."""
    for row in rows:
        if row.best_checkpoint and Path(row.best_checkpoint).exists():
            state = load_state(row.best_checkpoint)
            config = state["experiment"]
            header = f"# best trial {row.trial_id}: {row.best}\n"
            path.write_text(header + yaml.safe_dump(config, sort_keys=False))
            return config
    return None


def plot_study(sweep_dir: Path) -> list[Path]:
    """Optimization history and (with >= 2 complete trials) parameter importances from the persisted
    Optuna study, saved as PNGs in ``sweep_dir``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from pointtune.search.sweep import STUDY_NAME

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{sweep_dir.resolve()}/optuna.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    if complete:
        ax = ovm.plot_optimization_history(study)
        out = sweep_dir / "optimization_history.png"
        ax.figure.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        written.append(out)
    varying = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    if len(complete) >= 2 and varying:
        try:
            ax = ovm.plot_param_importances(study)
        except (RuntimeError, ValueError) as err:  # e.g. importances undefined for the sampled values
            print(f"[pointtune] parameter importances skipped: {err}")
        else:
            out = sweep_dir / "param_importances.png"
            ax.figure.savefig(out, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(out)
    return written


def _finalize_trial(spec, row: TrialSummary) -> None:
    from pointtune.metrics import plot_confusion_matrix

    run_id = tracking.find_child_run(spec.tracking_uri, spec.experiment_id, spec.parent_run_id, row.trial_id)
    if run_id is None:  # the trial never started
        return
    uri = spec.tracking_uri
    final = {f"final/{k}": v for k, v in row.last.items() if isinstance(v, float) and math.isfinite(v)}
    if row.best is not None:
        final["best_objective"] = row.best
    tracking.log_metrics({"tracking_uri": uri, "run_id": run_id}, final, step=row.epochs)
    tracking.set_tags(uri, run_id, {"pointtune.status": row.status, **({"pointtune.failure": row.error} if row.error else {})})
    if row.best_checkpoint and Path(row.best_checkpoint).exists():
        ckpt = Path(row.best_checkpoint)
        state = load_state(ckpt)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "config.yaml").write_text(yaml.safe_dump(state["experiment"], sort_keys=False))
            tracking.log_artifact(uri, run_id, tmp / "config.yaml")
            if (ckpt / "confusion.npy").exists():
                import numpy as np

                cm = np.load(ckpt / "confusion.npy")
                plot_confusion_matrix(cm, state["class_names"], str(tmp / "confusion_matrix.png"),
                                      title=f"trial {row.trial_id}, epoch {state['epoch'] + 1} (validation)")
                tracking.log_artifact(uri, run_id, tmp / "confusion_matrix.png")
            shutil.copytree(ckpt, tmp / "best_checkpoint")
            tracking.log_artifact(uri, run_id, tmp / "best_checkpoint", "best_checkpoint")
    tracking.end_run(uri, run_id, "FAILED" if row.status == "FAILED" else "FINISHED")


def finalize(spec, space: SearchSpace, results) -> list[TrialSummary]:
    """Close the trials' MLflow runs, write ``summary.csv``, ``best_config.yaml`` and the plots, log them to
    the parent run, print the table and the best trial. Returns the trial summaries."""
    from pointtune.search.sweep import trial_config

    root = spec.root
    max_epochs = trial_config(spec, {}).train.epochs
    rows = summarize(results, space, max_epochs)
    for row in rows:
        _finalize_trial(spec, row)
    table = format_table(rows, space.metric)
    (root / "summary.txt").write_text(table + "\n")
    _write_csv(rows, root / "summary.csv")
    best_config = write_best_config(rows, root / "best_config.yaml")
    plots = plot_study(root)
    uri = spec.tracking_uri
    for path in [root / "summary.csv", *plots] + ([root / "best_config.yaml"] if best_config else []):
        tracking.log_artifact(uri, spec.parent_run_id, path)
    done = [r for r in rows if r.best is not None]
    if done:
        tracking.log_metrics({"tracking_uri": uri, "run_id": spec.parent_run_id}, {f"best/{space.metric}": done[0].best}, 0)
        tracking.set_tags(uri, spec.parent_run_id, {"pointtune.best_trial": done[0].trial_id})
    tracking.end_run(uri, spec.parent_run_id, "FINISHED")
    print("\n" + table)
    if done:
        print(f"\n[pointtune] best trial {done[0].trial_id}: {space.metric} = {done[0].best:.4f}  {done[0].params}")
        print(f"[pointtune] best config: {root / 'best_config.yaml'}  (pointtune train {spec.method} --config ...)")
    print(f"[pointtune] MLflow runs: mlflow ui --backend-store-uri {uri}")
    print(f"[pointtune] Optuna study: optuna-dashboard sqlite:///{root.resolve()}/optuna.db")
    return rows


def _write_csv(rows: list[TrialSummary], path: Path) -> None:
    import csv

    keys = sorted({k for r in rows for k in r.params})
    metrics = sorted({k for r in rows for k in r.last})
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial_id", "status", "epochs", "best_objective", *keys, *metrics, "error"])
        for r in rows:
            writer.writerow([r.trial_id, r.status, r.epochs, r.best, *[r.params.get(k) for k in keys],
                             *[r.last.get(k) for k in metrics], r.error or ""])
