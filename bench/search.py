"""Does searching pay? Search strategies compared at an equal budget of trial-epochs, then their selections tested.

Each strategy (an Optuna sampler, with ASHA early stopping or without) sweeps the same CEDR space (default
``search_spaces/cedr_quick.yaml``: PointNet, 256 points) once per search seed, with ``pointtune sweep`` as a user
would run it. The cost of a search is its trial-epochs (every epoch any trial trained; a trial ASHA stops after
one epoch costs one), so that strategies with and without early stopping are compared on the compute they used,
not on their trial counts. A strategy without early stopping runs ``budget / epochs`` trials; one with ASHA runs
enough trials to spend the budget, and its record is cut where the budget ends.

From each sweep's per-epoch results (Tune's ``result.json`` of every trial, in the order they arrived):

- the best-so-far curve: the best validation objective seen against cumulative trial-epochs;
- the headline: the trial-epochs each strategy needs to reach random search's final best (the median over seeds
  of random search's best within the budget), the median over seeds (a seed that never reaches it counts as
  never; the median is "never" when half of the seeds or more never do);
- the selected configuration of each sweep (its best trial within the budget), retrained with ``--study-seeds``
  seeds in one ``pointtune study`` next to the method's recipe defaults (``reference``), so that the test score
  of each strategy's selection is seen: a strategy that overfits validation shows here.

Everything lands under ``--output`` (default ``runs/bench/search/<problem>``): one sweep directory per
(strategy, seed), ``study/``, ``search.json`` (settings, every sweep's curve and best, the headline, the study's
test scores, the machine) and ``search.png`` (the median best-so-far curve of each strategy, seeds shaded).
Running the same command again skips the sweeps that finished, resumes one that was interrupted
(``pointtune resume``) and runs the study only once every sweep has finished.

    python bench/search.py                                   # synthetic, 3 seeds, 5 strategies
    python bench/search.py --problem modelnet40              # the ModelNet40 sample's three complete classes
    python bench/search.py --strategies random tpe+asha --seeds 0 --budget 24 --study-seeds 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
STRATEGIES = ["random", "random+asha", "tpe", "tpe+asha", "gp"]  # the default comparison
BASELINE = "random"
# --set values of each problem (besides the space's own)
PROBLEMS = {
    "synthetic": [],
    "modelnet40": ["data.name=modelnet40", f"data.root={DATA / 'modelnet40_subset'}",
                   "data.classes=[airplane,bathtub,bench]"],
}
ASHA_REDUCTION = 4  # Ray's ASHAScheduler default reduction factor (pointtune does not change it)


def parse_strategy(name: str) -> tuple[str, str, int]:
    """``SAMPLER[+asha][:STARTUP]`` (e.g. ``tpe+asha:4``) -> ``(--scheduler, --sampler, --startup-trials)``;
    without ``:STARTUP``, Optuna's 10 start-up trials.

    Raises:
        ValueError: an unknown sampler or a bad start-up count, naming the strategy.
    """
    from pointtune.search.spec import SAMPLERS

    body, _, startup = name.partition(":")
    sampler, _, asha = body.partition("+")
    if sampler not in SAMPLERS or asha not in ("", "asha") or (startup and not startup.isdigit()):
        raise ValueError(f"strategy {name!r}: expected SAMPLER[+asha][:STARTUP] with SAMPLER one of {SAMPLERS}")
    return ("asha" if asha else "none"), sampler, int(startup) if startup else 10


def asha_trials(budget: int, epochs: int, grace: int) -> int:
    """Trials an ASHA sweep gets so that it spends ``budget`` trial-epochs: a trial costs ``grace`` epochs, plus
    the rest for about one in ``ASHA_REDUCTION`` that continues; 25 % more, since ASHA lets more trials
    continue early on (its record is cut at the budget)."""
    per_trial = grace + (epochs - grace) / ASHA_REDUCTION
    return math.ceil(1.25 * budget / per_trial)


def epoch_events(sweep_dir: Path, metric: str) -> list[tuple[float, int, str, float]]:
    """Every epoch every trial reported, in arrival order: ``(timestamp s, epoch, trial id, metric value)``,
    read from Tune's ``result.json`` of each trial under ``<sweep_dir>/tune``. Tune's timestamps are whole
    seconds: within one, the lower epoch comes first, then the trial id."""
    events = []
    for result in sorted((sweep_dir / "tune").glob("trial_*/result.json")):
        for line in result.read_text().splitlines():
            row = json.loads(line)
            if metric in row:
                events.append((row["timestamp"], row["epoch"], row["trial_id"], row[metric]))
    return sorted(events)


def best_so_far(events: list[tuple[float, int, str, float]], budget: int, mode: str = "max") -> list[float]:
    """The best metric value seen after each of the first ``budget`` trial-epochs (index i: after i + 1)."""
    pick = max if mode == "max" else min
    curve: list[float] = []
    for _, _, _, value in events[:budget]:
        curve.append(value if not curve else pick(curve[-1], value))
    return curve


def epochs_to_reach(curve: list[float], target: float, mode: str = "max") -> int | None:
    """The trial-epochs a best-so-far curve needs to reach ``target`` (None: never within the curve)."""
    for i, value in enumerate(curve):
        if (value >= target) if mode == "max" else (value <= target):
            return i + 1
    return None


def median_reach(reaches: list[int | None]) -> float | None:
    """Median over seeds of :func:`epochs_to_reach`, a seed that never reached counting as infinitely late;
    None when the median itself is never."""
    ordered = sorted(math.inf if r is None else r for r in reaches)
    median = statistics.median(ordered)
    return None if math.isinf(median) else median


def selected_trial(events: list[tuple[float, int, str, float]], budget: int, mode: str = "max") -> str:
    """The trial id with the best value within the first ``budget`` trial-epochs (the earlier one on a tie)."""
    best: tuple[float, str] | None = None
    for _, _, trial, value in events[:budget]:
        if best is None or (value > best[0] if mode == "max" else value < best[0]):
            best = (value, trial)
    return best[1]


def run(cmd: list[str], log: Path) -> None:
    """``cmd`` with its output in ``log``; on failure, the log's last lines and exit."""
    with log.open("a") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        sys.exit(f"[bench] failed ({code}): {' '.join(cmd)}\n{tail}")


def sweep(args, strategy: str, seed: int, root: Path) -> Path:
    """The sweep of ``strategy`` with search seed ``seed`` (run, resumed, or found finished)."""
    scheduler, sampler, startup = parse_strategy(strategy)
    out = root / strategy / f"seed{seed}"
    if (out / "summary.csv").is_file():
        return out
    trials = args.budget // args.epochs if scheduler == "none" else asha_trials(args.budget, args.epochs, args.grace)
    pointtune = str(Path(sys.executable).with_name("pointtune"))
    if (out / "sweep.yaml").is_file():
        cmd = [pointtune, "resume", str(out)]
    else:
        cmd = [pointtune, "sweep", "cedr", "--space", str(args.space), "--epochs", str(args.epochs),
               "--trials", str(trials), "--scheduler", scheduler, "--sampler", sampler, "--seed", str(seed),
               "--startup-trials", str(startup),
               "--grace-period", str(args.grace), "--output", str(out)]
        for item in PROBLEMS[args.problem] + args.set:
            cmd += ["--set", item]
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    run(cmd, out.parent / f"seed{seed}.log")
    print(f"[bench] {strategy} seed {seed}: {trials} trials in {time.time() - start:.0f} s "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def selected_config(sweep_dir: Path, trial_id: str, path: Path) -> Path:
    """Write the config trial ``trial_id`` trained with (as its best checkpoint holds it) to ``path``."""
    import tempfile

    from pointtune.search.best import sweep_trials
    from pointtune.train.checkpoint import experiment_of

    _, _, trials = sweep_trials(sweep_dir)
    trial = next(t for t in trials if t.trial_id == trial_id)
    with tempfile.TemporaryDirectory() as tmp:
        tree = experiment_of(trial.best_checkpoint, Path(tmp))
    tree["train"]["threads"] = None  # the study plans its own resources
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def study(args, root: Path, selected: dict[str, tuple[Path, str]]) -> dict[str, dict]:
    """One seed study (``pointtune study``) of every sweep's selected configuration (``{row: (sweep dir, trial
    id)}``) plus the reference (the method's recipe values for every searched key, on this problem); its
    ``study.csv`` rows by name."""
    import csv

    out = root / "study"
    if not (out / "study.csv").is_file():
        configs = root / "selected"
        configs.mkdir(exist_ok=True)
        paths = [selected_config(d, t, configs / f"{name}.yaml") for name, (d, t) in selected.items()]
        pointtune = str(Path(sys.executable).with_name("pointtune"))
        first = next(iter(selected.values()))[0]  # any sweep: its reference row is every sweep's
        cmd = [pointtune, "resume", str(out)] if (out / "sweep.yaml").is_file() else \
            [pointtune, "study", str(first), "--top-k", "0", "--seeds", str(args.study_seeds), "--output", str(out)]
        for path in paths if cmd[1] == "study" else []:
            cmd += ["--config", str(path)]
        start = time.time()
        run(cmd, root / "study.log")
        print(f"[bench] study of {len(paths) + 1} configs x {args.study_seeds} seeds in {time.time() - start:.0f} s",
              flush=True)
    with (out / "study.csv").open() as f:
        return {row["row"]: row for row in csv.DictReader(f)}


def plot(curves: dict[str, list[list[float]]], budget: int, target: float, path: Path) -> None:
    """The median best-so-far curve of each strategy against cumulative trial-epochs, min-max over seeds
    shaded, random search's final best dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in curves.items():
        length = min(len(c) for c in runs)
        xs = range(1, length + 1)
        cols = [[c[i] for c in runs] for i in range(length)]
        line, = ax.plot(xs, [statistics.median(c) for c in cols], label=name)
        ax.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(), alpha=0.15)
    ax.axhline(target, color="k", ls="--", lw=0.8, label=f"{BASELINE}'s final best (median)")
    ax.set(xlabel="cumulative trial-epochs", ylabel="best validation objective so far", xlim=(1, budget),
           title="search strategies at an equal budget\n(median over search seeds, range shaded)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> dict:
    """CPU count, load average and the package versions that matter here."""
    import optuna
    import ray
    import torch

    return {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="synthetic")
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "cedr_quick.yaml")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, metavar="SAMPLER[+asha][:STARTUP]",
                        help=f"samplers (tpe, random, gp), +asha for early stopping, :N start-up trials "
                        f"(default {' '.join(STRATEGIES)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="search seeds")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a trial that is not stopped")
    parser.add_argument("--budget", type=int, default=48, help="trial-epochs of every sweep")
    parser.add_argument("--grace", type=int, default=1, help="ASHA grace period (epochs)")
    parser.add_argument("--study-seeds", type=int, default=3, help="seeds of each selection's retraining (0: none)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    for name in args.strategies:
        try:
            parse_strategy(name)
        except ValueError as err:
            parser.error(f"--strategies: {err}")
    if BASELINE not in args.strategies:
        parser.error(f"--strategies: the headline is measured against {BASELINE!r}; include it")
    if args.budget < args.epochs:
        parser.error(f"--budget {args.budget}: less than one trial of --epochs {args.epochs}")
    root = (args.output or REPO / "runs" / "bench" / "search" / args.problem).resolve()
    args.space = args.space.resolve()
    from pointtune.search.space import load_search_space
    from pointtune.search.study_report import tested_metric

    space = load_search_space(args.space, "cedr")
    metric, mode = space.metric, space.mode
    test = tested_metric(metric)
    begin = time.time()
    sweeps = {(name, seed): sweep(args, name, seed, root) for seed in args.seeds for name in args.strategies}
    events = {key: epoch_events(d, metric) for key, d in sweeps.items()}
    curves = {name: [best_so_far(events[name, s], args.budget, mode) for s in args.seeds] for name in args.strategies}
    target = statistics.median(c[-1] for c in curves[BASELINE])
    table = {}
    for name in args.strategies:
        reaches = [epochs_to_reach(c, target, mode) for c in curves[name]]
        med = median_reach(reaches)
        table[name] = {"final_best": [c[-1] for c in curves[name]], "spent": [len(c) for c in curves[name]],
                       "reach": reaches, "median_reach": med,
                       "ratio": None if med is None else med / args.budget}
    selected = {f"{name}-s{seed}": (d, selected_trial(events[name, seed], args.budget, mode))
                for (name, seed), d in sweeps.items()}
    tested = study(args, root, selected) if args.study_seeds else {}
    plot(curves, args.budget, target, root / "search.png")
    print(f"\n[bench] {args.problem}: budget {args.budget} trial-epochs per sweep ({args.epochs}-epoch trials), "
          f"target = {BASELINE}'s final best, median over seeds {args.seeds}: {metric} {target:.4f}\n")
    print(f"| strategy | final best {metric} (per seed) | trial-epochs to target (per seed) | median | x budget |"
          f"{' test (selected, mean over seeds) |' if tested else ''}")
    print(f"|---|---|---|---|---|{'---|' if tested else ''}")
    for name, row in table.items():
        reach = ", ".join("never" if r is None else str(r) for r in row["reach"])
        med = "never" if row["median_reach"] is None else f"{row['median_reach']:g}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        cell = ""
        if tested:
            means = [float(tested[f"{name}-s{s}"][f"{test} mean"]) for s in args.seeds]
            cell = f" {', '.join(f'{m:.3f}' for m in means)} |"
        print(f"| {name} | {', '.join(f'{v:.4f}' for v in row['final_best'])} | {reach} | {med} | {ratio} |{cell}")
    if tested:
        ref = tested.get("reference")
        print(f"\nreference (recipe defaults), {test}: {float(ref[f'{test} mean']):.4f} ± "
              f"{float(ref[f'{test} std']):.4f} over {ref['seeds']} seeds" if ref else "")
    report = {"problem": args.problem, "space": str(args.space), "metric": metric, "mode": mode,
              "budget": args.budget, "epochs": args.epochs, "grace": args.grace, "seeds": args.seeds,
              "target": target, "strategies": {n: dict(zip(("scheduler", "sampler", "startup_trials"),
                                                            parse_strategy(n))) for n in args.strategies},
              "table": table, "curves": curves, "study": tested,
              "selected": {k: {"sweep": str(d), "trial": t} for k, (d, t) in selected.items()},
              "seconds": time.time() - begin, "machine": machine()}
    (root / "search.json").write_text(json.dumps(report, indent=1))
    print(f"\n[bench] {root / 'search.json'}, {root / 'search.png'}")


if __name__ == "__main__":
    main()
