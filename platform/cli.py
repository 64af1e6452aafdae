"""``pointtune``: train one method locally or data-parallel, sweep its hyperparameters, resume, pick the best.

    pointtune train cedr [--config FILE] [--set key=value ...] [--workers N [--gpu]]
    pointtune train finetune --from SWEEP_DIR|RUN_DIR|CHECKPOINT [--dataset ...]
    pointtune sweep cedr [--space FILE] [--dataset NAME] [--data-root DIR] [--trials N] [--epochs E] ...
    pointtune resume SWEEP_DIR
    pointtune best SWEEP_DIR

Bad input (unknown method or dataset, invalid config or search space, missing data, a trial shape that
does not fit the cluster) prints one ``pointtune: error: ...`` line and exits with status 2 before
anything starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pointtune.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_USAGE = 2


def default_space_file(method: str) -> Path:
    """``search_spaces/<method>.yaml`` of this checkout.

    Raises:
        ConfigError: the file does not exist (pass ``--space``).
    """
    path = REPO_ROOT / "search_spaces" / f"{method}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no default search space for {method!r}; pass --space FILE")
    return path


def _data_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if args.dataset:
        out.append(f"data.name={args.dataset}")
    if args.data_root:
        out.append(f"data.root={Path(args.data_root).resolve()}")
    if args.epochs is not None:
        out.append(f"train.epochs={args.epochs}")
    return out


def _run_dir(args: argparse.Namespace, kind: str, method: str) -> Path:
    if args.output:
        return Path(args.output).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (Path("runs") / kind / f"{method}-{args.dataset or 'default'}-{stamp}").resolve()


def cmd_train(args: argparse.Namespace) -> int:
    """``pointtune train``: local in-process (``--workers 0``, default) or N data-parallel workers."""
    from pointtune.config import config_from_file
    from pointtune.train.launch import train

    sets = [*args.set, *_data_overrides(args)]
    if args.from_:
        from pointtune.search.best import resolve_checkpoint

        if args.method != "finetune":
            raise ConfigError(f"--from loads a pretrained encoder: use `pointtune train finetune --from {args.from_}`")
        checkpoint = resolve_checkpoint(args.from_)
        print(f"[pointtune] fine-tuning the encoder of {checkpoint}")
        sets.append(f"method.pretrained={checkpoint}")
    exp = config_from_file(args.method, args.config, sets)
    run_dir = _run_dir(args, "train", args.method)
    result = train(exp, run_dir, workers=args.workers, use_gpu=args.gpu, mlflow_uri=args.mlflow_uri,
                   progress=not args.no_progress)
    scores = "  ".join(f"{k}={v:.4f}" for k, v in result.items() if k.startswith(("val/", "test/")))
    print(f"[pointtune] done after {result.get('epoch')} epochs: {scores}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``pointtune sweep``: Ray Tune + Optuna TPE + ASHA over the method's search space."""
    import yaml

    from pointtune.config import load_yaml, parse_override
    from pointtune.search.sweep import SweepSpec, run_sweep

    space = Path(args.space).resolve() if args.space else default_space_file(args.method)
    overrides = dict(parse_override(o) for o in [*args.set, *_data_overrides(args)])
    overrides.pop("train.epochs", None)
    spec = SweepSpec(
        method=args.method, space_file=str(space), sweep_dir=str(_run_dir(args, "sweeps", args.method)),
        trials=args.trials, epochs=args.epochs, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker, max_concurrent=args.max_concurrent, seed=args.seed,
        address=args.address, storage=args.storage, mlflow_uri=args.mlflow_uri, grace_period=args.grace_period,
        wait_for_resources=args.wait_for_resources,
        base=load_yaml(args.config) if args.config else {}, overrides=yaml.safe_load(yaml.safe_dump(overrides)),
    )
    run_sweep(spec)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``pointtune resume SWEEP_DIR``: finish an interrupted sweep."""
    from pointtune.search.sweep import resume_sweep

    resume_sweep(args.sweep_dir)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """``pointtune best SWEEP_DIR``: print the best trial and write its config as YAML."""
    from pointtune.search.best import best_trial

    best_trial(args.sweep_dir, args.output)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pointtune`` argument parser."""
    from pointtune.method import method_names

    methods = method_names()
    parser = argparse.ArgumentParser(prog="pointtune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("method", choices=methods, help="method to run")
        p.add_argument("--config", help="YAML config (e.g. a best_config.yaml written by `pointtune best`)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")
        p.add_argument("--dataset", help="dataset name (synthetic, modelnet40, modelnet40_resampled, scanobjectnn)")
        p.add_argument("--data-root", help="dataset directory")
        p.add_argument("--epochs", type=int, help="epochs per run / per trial")
        p.add_argument("--output", help="run directory (default runs/<kind>/<method>-<dataset>-<time>)")
        p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: SQLite in the run directory, "
                       "or $MLFLOW_TRACKING_URI)")

    train = sub.add_parser("train", help="train one method (local debug mode by default)")
    common(train)
    train.add_argument("--workers", type=int, default=0,
                       help="0: in-process local debug mode (default); N: N data-parallel Ray Train workers")
    train.add_argument("--gpu", action="store_true", help="one GPU per worker (local mode: the first GPU)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--from", dest="from_", metavar="SWEEP_DIR|RUN_DIR|CHECKPOINT",
                       help="finetune: the pretrained encoder (a sweep's best trial, a run's best checkpoint)")
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="hyperparameter search with Ray Tune + Optuna + ASHA")
    common(sweep)
    sweep.add_argument("--space", help="search-space YAML (default search_spaces/<method>.yaml)")
    sweep.add_argument("--trials", type=int, default=8, help="number of trials (default 8)")
    sweep.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial (default 1)")
    sweep.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker; fractions allowed")
    sweep.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default: shared evenly)")
    sweep.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as fit)")
    sweep.add_argument("--address", help="Ray cluster address (default: start a local instance)")
    sweep.add_argument("--storage", help="shared storage for checkpoints and Tune state, e.g. s3://bucket/path")
    sweep.add_argument("--wait-for-resources", type=float, default=0.0, metavar="SECONDS",
                       help="autoscaling clusters: request one trial's workers and wait this long for them")
    sweep.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
    sweep.add_argument("--grace-period", type=int, default=1, help="ASHA grace period in epochs")
    sweep.set_defaults(func=cmd_sweep)

    resume = sub.add_parser("resume", help="finish an interrupted sweep")
    resume.add_argument("sweep_dir")
    resume.set_defaults(func=cmd_resume)

    best = sub.add_parser("best", help="print the best trial of a sweep and write its config")
    best.add_argument("sweep_dir")
    best.add_argument("--output", help="where to write the config (default <sweep_dir>/best_config.yaml)")
    best.set_defaults(func=cmd_best)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pointtune`` command; returns the exit status."""
    from pointtune.data import DatasetError
    from pointtune.search.resources import ResourceError

    args = build_parser().parse_args(argv)
    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, ResourceError) as err:
        print(f"pointtune: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
