"""Per-trial overhead of the platform, as a line ``wall = fixed + per_epoch * epochs`` fitted per mode.

The same CEDR training (synthetic data, PointNet, seed 0) is timed at two (or more) epoch counts in four ways:

1. ``bare``: the shared loop in this process (Ray Train local mode, ``num_workers=0``): no Ray cluster, no MLflow;
2. ``trial_1w``: a one-trial sweep (``run_sweep``, every parameter fixed) whose trial trains in its own Tune actor;
3. ``trial_2w``: the same with a 2-worker gloo ``TorchTrainer`` inside the trial (per-worker batch halved);
4. ``sweep_start``: ``pointtune sweep`` as a subprocess, from launch to its ``[pointtune] trial <id> started`` line;
   plus ``ray.init`` alone (``init_ray(None)``, with and without the dashboard).

Each ``trial_*`` run gives three times: ``trial_*`` the trial's own (Tune ``time_total_s``, read back from
``<sweep dir>/tune``), ``tune_*`` the Tune experiment (its start to its final state save) and ``sweep_*`` the
whole ``run_sweep`` call (validation, MLflow parent run, Tuner, report). Ray is started once per trial mode,
outside every timing, the way ``run_sweep`` would start it (dashboard only for 2 workers), and reused by
``run_sweep``; ``bare`` runs before any Ray is started, after an untimed 1-epoch warm-up (a trial's fresh
actor process pays those one-time costs: they count as platform overhead); ``ray.init`` and ``sweep_start``
are measured apart.

    python bench/overhead.py --epochs 3 12 [--repeats 1] [--batch-size 32] [--output runs/bench/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SETTINGS = {"method.backbone.name": "pointnet", "method.backbone.emb_dims": 128, "data.num_points": 256,
            "data.synthetic_per_class": 48, "train.eval_batch_size": 128, "train.seed": 0}
REPO = Path(__file__).resolve().parent.parent
STARTED = re.compile(r"\[pointtune\] trial (\S+) started")


def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares ``(fixed, per_epoch)`` through ``{epochs: seconds}`` (two points: the exact line)."""
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def write_space(path: Path, batch: int, workers: int) -> Path:
    """A CEDR search space with every parameter fixed (per-worker batch = global batch / workers)."""
    params = {k: {"type": "fixed", "value": v} for k, v in SETTINGS.items()}
    params["train.batch_size"] = {"type": "fixed", "value": batch // workers}
    path.write_text(yaml.safe_dump({"method": "cedr", "params": params}))
    return path


def run_bare(epochs: int, batch: int) -> dict[str, float]:
    """Seconds of the in-process loop (``TorchTrainer`` with ``num_workers=0``; no Ray cluster, no tracking)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pointtune.config import build_config
    from pointtune.train.loop import LoopConfig, train_loop_per_worker

    exp = build_config("cedr", overrides={**SETTINGS, "train.epochs": epochs, "train.batch_size": batch})
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        TorchTrainer(
            train_loop_per_worker,
            train_loop_config=LoopConfig(exp, "val/OA", "max", local_dir=tmp).to_dict(),
            scaling_config=ray.train.ScalingConfig(num_workers=0),
            run_config=ray.train.RunConfig(name="bare", storage_path=tmp),
        ).fit()
        return {"wall_s": time.perf_counter() - began}


def run_trial(epochs: int, batch: int, workers: int, root: Path) -> dict:
    """One-trial sweep: the trial's own time (Tune ``time_total_s``), the ``run_sweep`` call, the trial plan.

    Raises:
        RuntimeError: the trial did not finish (its error is in the message).
    """
    from ray.tune import ExperimentAnalysis

    from pointtune.search.spec import SweepSpec
    from pointtune.search.sweep import run_sweep

    space = write_space(root / f"space_{workers}w.yaml", batch, workers)
    sweep_dir = root / f"sweep_{workers}w_{epochs}e_{time.time_ns()}"
    spec = SweepSpec(method="cedr", space_file=str(space), sweep_dir=str(sweep_dir), trials=1, epochs=epochs,
                     workers=workers)
    began = time.perf_counter()
    run_sweep(spec)
    sweep_s = time.perf_counter() - began
    (trial,) = ExperimentAnalysis(str(sweep_dir / "tune")).trials
    result = trial.last_result or {}
    if trial.status != "TERMINATED" or result.get("epoch") != epochs:
        raise RuntimeError(f"trial {trial.trial_id}: {trial.status} at epoch {result.get('epoch')}: {trial.error_file}")
    state = max((sweep_dir / "tune").glob("experiment_state-*.json"), key=lambda f: f.stat().st_mtime)
    tune_s = state.stat().st_mtime - json.loads(state.read_text())["stats"]["start_time"]
    return {"trial_s": result["time_total_s"], "tune_s": tune_s, "sweep_s": sweep_s, "plan": spec.resources}


def run_ray_init(dashboard: bool) -> float:
    """Seconds of ``init_ray(None, dashboard=...)`` alone (Ray is shut down afterwards, untimed)."""
    from pointtune.cluster import init_ray, shutdown_ray

    began = time.perf_counter()
    init_ray(None, dashboard=dashboard)
    seconds = time.perf_counter() - began
    shutdown_ray()
    return seconds


def run_sweep_start(batch: int, root: Path) -> dict[str, float]:
    """``pointtune sweep`` (1 trial, 1 epoch) as a subprocess: seconds to its first ``trial ... started`` line
    and to its exit.

    Raises:
        RuntimeError: the command failed or never printed the line (the tail of its output is in the message).
    """
    space = write_space(root / "space_cli.yaml", batch, 1)
    cmd = [sys.executable, "-m", "pointtune.cli", "sweep", "cedr", "--space", str(space), "--trials", "1",
           "--epochs", "1", "--output", str(root / f"cli_{time.time_ns()}")]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    env["PYTHONUNBUFFERED"] = "1"
    began, started, tail = time.perf_counter(), None, []
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            if started is None and STARTED.search(line):
                started = time.perf_counter() - began
            tail = (tail + [line.rstrip()])[-30:]
    total = time.perf_counter() - began
    if proc.returncode != 0 or started is None:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}, trial start line seen: {started is not None}\n"
                           + "\n".join(tail))
    return {"to_trial_start_s": started, "total_s": total}


def machine() -> dict:
    """CPU count, load average and the Python, torch, Ray, Optuna and MLflow versions."""
    import mlflow
    import optuna
    import ray
    import torch

    return {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__,
            "mlflow": mlflow.__version__, "system": platform.platform()}


def timed(label: str, fn, *args):
    """``fn(*args)`` between two progress lines (the second with its result and the 1-minute load average)."""
    print(f"[bench] {label} ...", flush=True)
    out = fn(*args)
    shown = {k: round(v, 2) for k, v in out.items() if k != "plan"} if isinstance(out, dict) else round(out, 2)
    print(f"[bench] {label}: {shown}  (load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def main() -> None:
    """Parse the arguments, run every mode, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 12], help="epoch counts (at least two)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode and epoch count (averaged)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--output", default="runs/bench/overhead.json")
    args = parser.parse_args()
    if len(set(args.epochs)) < 2:
        parser.error("--epochs needs at least two different epoch counts")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    from pointtune.cluster import init_ray, shutdown_ray

    before = machine()
    modes = ("bare", "trial_1w", "trial_2w", "tune_1w", "tune_2w", "sweep_1w", "sweep_2w")
    runs: dict[str, dict[int, list[float]]] = {m: {e: [] for e in args.epochs} for m in modes}
    plans, ray_init, sweep_start = {}, {"no_dashboard_s": [], "dashboard_s": []}, []
    timed("bare warm-up, 1 epoch, not counted", run_bare, 1, args.batch_size)  # one-time costs of this process
    shutdown_ray()
    for epochs in args.epochs:
        for rep in range(args.repeats):
            runs["bare"][epochs].append(timed(f"bare {epochs} epochs #{rep + 1}", run_bare, epochs, args.batch_size)["wall_s"])
            shutdown_ray()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            ray_init["no_dashboard_s"].append(timed(f"ray.init #{rep + 1}", run_ray_init, False))
            ray_init["dashboard_s"].append(timed(f"ray.init with dashboard #{rep + 1}", run_ray_init, True))
        for workers in (1, 2):
            init_ray(None, dashboard=workers > 1)  # as run_sweep would start it; run_sweep reuses it
            for epochs in args.epochs:
                for rep in range(args.repeats):
                    out = timed(f"trial_{workers}w {epochs} epochs #{rep + 1}", run_trial, epochs, args.batch_size,
                                workers, Path(tmp))
                    for kind in ("trial", "tune", "sweep"):
                        runs[f"{kind}_{workers}w"][epochs].append(out[f"{kind}_s"])
                    plans[f"{workers}w"] = out["plan"]
            shutdown_ray()
        for rep in range(args.repeats):
            sweep_start.append(timed(f"sweep_start #{rep + 1}", run_sweep_start, args.batch_size, Path(tmp)))

    def mean(xs):
        return sum(xs) / len(xs)

    fits = {}
    for mode, by_epochs in runs.items():
        walls = {e: mean(v) for e, v in by_epochs.items()}
        fixed, per_epoch = fit_line(walls)
        fits[mode] = {"wall_s": walls, "fixed_s": fixed, "per_epoch_s": per_epoch,
                      "added_per_epoch_s": per_epoch - fits.get("bare", {}).get("per_epoch_s", per_epoch)}
    starts = {k: mean([s[k] for s in sweep_start]) for k in ("to_trial_start_s", "total_s")}
    inits = {k: mean(v) for k, v in ray_init.items()}

    after = machine()
    print(f"\nCEDR, synthetic, global batch {args.batch_size}, {args.repeats} repeat(s); {after['cpus']} CPUs, Python "
          f"{after['python']}, torch {after['torch']}, Ray {after['ray']}; load avg {before['load_avg'][0]:.1f} "
          f"before, {after['load_avg'][0]:.1f} after")
    print(f"{'mode':<10}" + "".join(f"{f'wall@{e}ep s':>13}" for e in args.epochs)
          + f"{'fixed s':>10}{'per-epoch s':>13}{'-bare/ep s':>12}")
    for mode, fit in fits.items():
        print(f"{mode:<10}" + "".join(f"{fit['wall_s'][e]:>13.1f}" for e in args.epochs)
              + f"{fit['fixed_s']:>10.1f}{fit['per_epoch_s']:>13.2f}{fit['added_per_epoch_s']:>12.2f}")
    print("trial_*: the trial's Tune time_total_s; tune_*: Tuner.fit (Tune start to final state save); sweep_*: "
          "the run_sweep call (Ray already up)")
    print(f"ray.init: {inits['no_dashboard_s']:.1f} s, with dashboard {inits['dashboard_s']:.1f} s")
    print(f"sweep_start: CLI launch to 'trial ... started' {starts['to_trial_start_s']:.1f} s "
          f"(the 1-epoch sweep exits after {starts['total_s']:.1f} s)")

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": {**SETTINGS, "method": "cedr", "dataset": "synthetic", "global_batch": args.batch_size,
                     "epochs": args.epochs, "repeats": args.repeats},
        "machine": {**after, "load_avg_before": before["load_avg"]}, "fits": fits, "runs": runs,
        "trial_plans": plans, "ray_init": {"mean": inits, "runs": ray_init},
        "sweep_start": {"mean": starts, "runs": sweep_start},
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
