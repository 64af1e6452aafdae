"""``pointtune``: train one method locally or data-parallel, sweep its hyperparameters, resume, pick the best.

    pointtune train cedr [--config FILE] [--set key=value ...] [--workers N [--gpu]]
    pointtune train finetune --from SWEEP_DIR|RUN_DIR|CHECKPOINT [--dataset ...]
    pointtune sweep cedr [--space FILE] [--dataset NAME] [--data-root DIR] [--trials N] [--epochs E] ...
    pointtune study SWEEP_DIR [--top-k K] [--seeds N] | pointtune study --method M --config FILE ...
    pointtune compare SPEC.yaml [--output DIR]   (entries side by side at an equal budget)
    pointtune resume SWEEP_DIR
    pointtune best SWEEP_DIR
    pointtune ui RUN_OR_SWEEP_DIR [--port 5000]
    pointtune robustness RUN_DIR [--jitter 0.01,...] [--points 1024,...] [--output DIR]   (SCL Figs. 3-4)
    pointtune submit --address http://HEAD:8265 -- sweep cedr ...   (a Ray job running this checkout's code)
    pointtune data {prepare,download,inspect} ...   (datasets into pointtune's layouts: pointtune.data.command)

Bad input (unknown method or dataset, invalid config or search space, missing data, a trial shape that
does not fit the cluster) prints one ``pointtune: error: ...`` line and exits with status 2 before
anything starts.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import sys
import tempfile
import time

import yaml
from pathlib import Path
from typing import NoReturn

from pointtune.cluster import DEFAULT_WORKER_START_TIMEOUT_S
from pointtune.console import quiet_driver
from pointtune.config import ConfigError, config_from_file, load_yaml, plan_prerequisite
from pointtune.search.spec import SAMPLERS, SCHEDULERS

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's status for a process stopped by SIGINT
VERBOSE_HELP = ("show everything Ray, Tune, Optuna and MLflow print (by default their notices and INFO lines are "
                "quieted: pointtune.console)")
# The flags of `resources()` in build_parser: SweepSpec fields every sweep and study of a command gets.
RESOURCE_FLAGS = ("workers", "gpus_per_worker", "cpus_per_worker", "memory_per_worker", "max_concurrent", "address",
                  "storage", "wait_for_resources", "worker_start_timeout", "verbose")


def default_space_file(method: str) -> Path:
    """``search_spaces/<method>.yaml`` of this checkout.

    Raises:
        ConfigError: the file does not exist (pass ``--space``).
    """
    candidates = [root / "search_spaces" / f"{method}.yaml" for root in (REPO_ROOT, Path.cwd())]
    for path in candidates:  # the checkout, or a Ray job's working directory (`pointtune submit`)
        if path.is_file():
            return path
    raise ConfigError(f"{candidates[0]}: no default search space for {method!r}; pass --space FILE")


def _data_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if args.dataset:
        out.append(f"data.name={args.dataset}")
    if args.data_root:
        out.append(f"data.root={Path(args.data_root).resolve()}")
    if args.epochs is not None:
        out.append(f"train.epochs={args.epochs}")
    return out


def recorded_path(path: Path) -> str:
    """How ``sweep.yaml`` and the MLflow parent run name a file the command read: relative to the working
    directory when it lies under it (``search_spaces/cedr.yaml``: the checkout's file, also inside a Ray job,
    whose working directory is a temporary copy of the checkout), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def in_ray_job() -> bool:
    """Whether this process is the driver of a Ray job (``ray job submit`` / ``pointtune submit``)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def _run_dir(args: argparse.Namespace, kind: str, method: str) -> Path:
    """``--output``, else a new directory named after the method, the dataset (``--dataset``, the ``--config``
    file's ``data.name``, or the default ``synthetic``) and the time.

    A Ray job's working directory is a temporary copy that Ray deletes, so inside a job a relative
    ``--output`` is refused and the default goes to ``--storage`` (a local or NFS path) or, for object
    storage, to ``~/pointtune/<kind>/`` on the driver's node.

    Raises:
        ConfigError: a relative ``--output`` inside a Ray job.
    """
    config = getattr(args, "config", None)
    config = config[0] if isinstance(config, list) and config else config
    named = ((load_yaml(config).get("data") or {}).get("name") if config else None) or "synthetic"
    name = f"{method}-{args.dataset or named}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.output:
        if in_ray_job() and not Path(args.output).is_absolute():
            raise ConfigError(f"--output {args.output}: inside a Ray job the working directory is deleted when the "
                              f"job ends; give an absolute path")
        return Path(args.output).resolve()
    if not in_ray_job():
        return (Path("runs") / kind / name).resolve()
    storage = getattr(args, "storage", None)
    root = Path(storage) if storage and "://" not in storage else Path.home() / "pointtune" / kind
    return (root / name).resolve()


def _check_gpus_of_sweep(args: argparse.Namespace) -> None:
    """``--gpus-per-worker`` on a local Ray instance (no ``--address``, not inside a Ray job): this machine's
    GPUs must hold one trial's workers."""
    from pointtune.preflight import check_gpus

    if args.address is None and not in_ray_job():
        check_gpus(args.workers, args.gpus_per_worker,
                   f"--workers {args.workers} --gpus-per-worker {args.gpus_per_worker:g} (local Ray, no --address)")


def cmd_train(args: argparse.Namespace) -> int:
    """``pointtune train``: local in-process (``--workers 0``, default) or N data-parallel workers.

    Everything is validated before the run directory, MLflow or Ray exist: the flags' numbers, the MLflow
    URI, ``--gpu`` against this machine's CUDA devices, ``--from``, the config, and a preflight
    (:func:`pointtune.preflight.preflight`: datasets, one forward pass of the model on the CPU).

    A method whose run needs another first (:meth:`Method.prerequisite <pointtune.method.Method.prerequisite>`:
    SCL's stage 2 without ``--from``) trains that one in ``<run dir>/<name>`` before it, both preflighted
    first; rerunning the command resumes either.
    """
    from pointtune.preflight import check_gpus, check_numbers, check_tracking_uri
    from pointtune.train.debug import read_back
    from pointtune.train.launch import train

    began = time.time()
    check_numbers(vars(args), "train")
    check_tracking_uri(args.mlflow_uri)
    if args.gpu:
        check_gpus(args.workers, 1.0, f"--gpu --workers {args.workers}" if args.workers else "--gpu")
    if args.fast_dev_run and args.epochs is not None:
        raise ConfigError("--fast-dev-run trains one short epoch; drop --epochs (or use --limit-batches N --epochs E)")
    sets = [*args.set, *_data_overrides(args)]
    if args.limit_batches is not None:
        sets.append(f"train.limit_batches={args.limit_batches}")
    if args.from_:
        from pointtune.method import get_method
        from pointtune.search.best import resolve_checkpoint

        key = get_method(args.method).from_key
        if key is None:
            raise ConfigError(f"--from: {args.method} takes no pretrained run; use `pointtune train finetune --from "
                              f"{args.from_}` to fine-tune its encoder")
        checkpoint = resolve_checkpoint(args.from_)
        print(f"[pointtune] --from: {key} = {checkpoint}")
        sets.append(f"{key}={checkpoint}")
    exp = config_from_file(args.method, args.config, sets)
    given = any(o.split("=", 1)[0].strip() in ("train.batch_size", "train") for o in args.set) or (
        args.config and "batch_size" in (load_yaml(args.config).get("train") or {}))
    exp, pre = _preflight_train(exp, args, adapt_batch=not given)
    scratch = args.fast_dev_run and not args.output
    run_dir = Path(tempfile.mkdtemp(prefix="pointtune-fast-dev-run-")) if scratch else _run_dir(args, "train",
                                                                                                 args.method)
    options = dict(workers=args.workers, use_gpu=args.gpu, mlflow_uri=args.mlflow_uri, progress=not args.no_progress)
    if pre:
        print(f"[pointtune] {args.method} trains its {pre.name} run first: {run_dir / pre.name} "
              f"({pre.config.train.epochs} epochs; `--from` an earlier one skips it)", flush=True)
        train(pre.config, run_dir / pre.name, **options)
        exp = pre.then(run_dir / pre.name)
    summary = train(exp, run_dir, **options)
    if args.fast_dev_run:
        checkpoint = read_back(run_dir)
        n = exp.train.limit_batches
        print(f"[pointtune] fast-dev-run passed in {time.time() - began:.0f} s: {n} training batch{'es' * (n > 1)} of "
              f"{exp.train.batch_size}, every judged split on {n * exp.train.batch_size} items, checkpoint written "
              f"and read back ({checkpoint})"
              + ("; the temporary run directory is removed" if scratch else ""), flush=True)
        if scratch:
            shutil.rmtree(run_dir, ignore_errors=True)
        return 0
    test = summary["test"]
    headline = next((k for k in ("OA", "svm_acc") if k in test), next(iter(test), None))
    tested = f", test {headline} {test[headline]:.4f} (epoch {int(test['epoch'])})" if headline else ""
    best = "none" if summary["best"] is None else f"{summary['best']:.4f} at epoch {summary['best_epoch']}"
    print(f"[pointtune] done: {summary['epochs']} epochs in {summary['wall_s']:.0f} s, best {summary['objective']} "
          f"{best}{tested}")
    return 0


def _preflight_train(exp, args: argparse.Namespace, adapt_batch: bool):
    """Plan the run's prerequisite (cut by ``--fast-dev-run`` too) and preflight the configs that train, printing
    each one's memory estimate per worker (the prerequisite's first, marked). ``--fast-dev-run`` preflights
    without the training step (its own run takes that step at once) and prints no estimate. A
    ``train.batch_size`` the user did not give (``adapt_batch``) that exceeds the training items a worker gets is
    lowered to what fits, with one printed line. Returns ``(experiment, planned prerequisite or None)``.

    Raises:
        ConfigError, DatasetError: a failed preflight (:func:`pointtune.preflight.preflight`).
    """
    from pointtune.config import build_config
    from pointtune.preflight import BatchTooLargeError, preflight
    from pointtune.train.debug import fast_dev_prerequisite, fast_dev_run

    if args.fast_dev_run:
        exp = fast_dev_run(exp)
    while True:
        pre = plan_prerequisite(exp)
        if pre and args.fast_dev_run:
            pre = fast_dev_prerequisite(pre)
        try:
            for checked in ([pre.config, pre.stand_in] if pre else [exp]):  # --fast-dev-run trains its own step
                result = preflight(checked, workers=args.workers, step=not args.fast_dev_run)
                if not args.fast_dev_run:
                    print(result.describe_memory(checked.train.batch_size)
                          + (f" [its {pre.name} run]" if pre and checked is pre.config else ""), flush=True)
            return exp, pre
        except BatchTooLargeError as err:
            if not adapt_batch or not err.fits or err.fits >= exp.train.batch_size:
                raise
            print(f"[pointtune] train.batch_size {exp.train.batch_size} -> {err.fits}: each of the "
                  f"{max(args.workers, 1)} worker(s) gets only {err.fits} training items of this dataset "
                  f"(--set train.batch_size=N to choose)", flush=True)
            exp = build_config(exp.method.name, exp.to_dict(), {"train.batch_size": err.fits}, source="--set")


def cmd_sweep(args: argparse.Namespace) -> int:
    """``pointtune sweep``: Ray Tune + Optuna TPE + ASHA over the method's search space (numbers, tracking URI,
    space, config, data and model are checked by :func:`~pointtune.search.sweep.prepare_sweep` before Ray)."""
    quiet_driver(args.verbose)
    import yaml

    from pointtune.config import load_yaml, parse_override
    from pointtune.search.spec import SweepSpec
    from pointtune.search.sweep import run_sweep

    space = Path(args.space).resolve() if args.space else default_space_file(args.method)
    overrides = dict(parse_override(o) for o in [*args.set, *_data_overrides(args)])
    overrides.pop("train.epochs", None)
    spec = SweepSpec(
        method=args.method, space_file=recorded_path(space), sweep_dir=str(_run_dir(args, "sweeps", args.method)),
        trials=args.trials, epochs=args.epochs, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker, memory_per_worker=args.memory_per_worker,
        max_concurrent=args.max_concurrent, seed=args.seed,
        address=args.address, storage=args.storage, mlflow_uri=args.mlflow_uri, grace_period=args.grace_period,
        scheduler=args.scheduler, sampler=args.sampler, startup_trials=args.startup_trials,
        pbt_interval=args.pbt_interval, wait_for_resources=args.wait_for_resources,
        worker_start_timeout=args.worker_start_timeout, verbose=args.verbose,
        base=load_yaml(args.config) if args.config else {}, overrides=yaml.safe_load(yaml.safe_dump(overrides)),
    )
    _check_gpus_of_sweep(args)
    return _sweep_status(run_sweep(spec))


def cmd_study(args: argparse.Namespace) -> int:
    """``pointtune study``: a seed study of a sweep's top configs and/or config files
    (:mod:`pointtune.search.study`), run like a sweep (:func:`~pointtune.search.sweep.run_sweep`)."""
    quiet_driver(args.verbose)
    import yaml

    from pointtune.config import parse_override
    from pointtune.search.space import load_search_space
    from pointtune.search.spec import SweepRuntime, SweepSpec
    from pointtune.search.study import config_rows, plan_study, sweep_rows
    from pointtune.search.sweep import run_sweep

    if args.sweep_dir:
        sweep, rows = sweep_rows(args.sweep_dir, args.top_k, not args.no_reference)
        method, space = sweep.method, sweep.space()
        out = Path(args.output).resolve() if args.output else sweep.root / "study"
        epochs = args.epochs or sweep.epochs
        mlflow_uri = args.mlflow_uri or SweepRuntime.load(sweep.layout).tracking_uri
    else:
        if not (args.method and args.config):
            raise ConfigError("pointtune study: give a SWEEP_DIR, or --method and at least one --config")
        method, rows = args.method, {}
        space = load_search_space(Path(args.space).resolve() if args.space else default_space_file(method), method)
        args.dataset = None
        out, epochs, mlflow_uri = _run_dir(args, "studies", method), args.epochs, args.mlflow_uri
    rows.update(config_rows(args.config, method))
    overrides = dict(parse_override(o) for o in args.set)
    for key, flag in (("train.epochs", "--epochs"), ("train.seed", "--seeds")):
        if key in overrides:
            raise ConfigError(f"--set {key}: a study sets it itself; use {flag}")
    storage = args.storage
    if storage and args.sweep_dir:  # <storage>/<sweep>/study: every sweep's study is named `study`
        from pointtune.layout import join

        storage = join(args.storage, Path(args.sweep_dir).resolve().name)
    spec = SweepSpec(
        method=method, space_file="", sweep_dir=str(out), epochs=epochs, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
        memory_per_worker=args.memory_per_worker, max_concurrent=args.max_concurrent, address=args.address,
        storage=storage, mlflow_uri=mlflow_uri,
        wait_for_resources=args.wait_for_resources, worker_start_timeout=args.worker_start_timeout,
        verbose=args.verbose, overrides=yaml.safe_load(yaml.safe_dump(overrides)),
        of=str(Path(args.sweep_dir).resolve()) if args.sweep_dir else None,
    )
    _check_gpus_of_sweep(args)
    return _sweep_status(run_sweep(plan_study(spec, rows, args.seeds, (space.metric, space.mode))))


def cmd_compare(args: argparse.Namespace) -> int:
    """``pointtune compare SPEC.yaml``: entries side by side at an equal budget (:mod:`pointtune.search.compare`),
    in ``--output`` (default ``runs/compare/<name>``, so that the same command resumes it). Exit status 0 when
    every entry has a finished run, else 1."""
    quiet_driver(args.verbose)
    from pointtune.search.compare import load_compare, run_compare

    spec = load_compare(args.spec)
    if args.output:
        if in_ray_job() and not Path(args.output).is_absolute():
            raise ConfigError(f"--output {args.output}: inside a Ray job the working directory is deleted when the "
                              f"job ends; give an absolute path")
        out = Path(args.output).resolve()
    elif in_ray_job():
        raise ConfigError("pointtune compare: inside a Ray job give an absolute --output (shared storage)")
    else:
        out = (Path("runs") / "compare" / spec.name).resolve()
    _check_gpus_of_sweep(args)
    resources = {key: getattr(args, key) for key in RESOURCE_FLAGS}
    rows = run_compare(spec, out, resources, args.mlflow_uri)
    empty = [r["entry"] for r in rows if r["seeds"] == 0]
    if empty:
        print(f"pointtune: error: no run of entry {empty[0]} finished (see {out / empty[0] / 'study'})", file=sys.stderr)
        return 1
    return 0


def _sweep_status(rows) -> int:
    """Exit status of a sweep: 0 if at least one trial reported the objective, else 1 with the reason."""
    if any(r.best is not None for r in rows):
        return 0
    failed = [r for r in rows if r.error]
    reason = f"; first failure: {failed[0].error}" if failed else ""
    print(f"pointtune: error: no trial of the sweep succeeded ({len(failed)} of {len(rows)} failed){reason}",
          file=sys.stderr)
    return 1


def cmd_resume(args: argparse.Namespace) -> int:
    """``pointtune resume SWEEP_DIR``: finish an interrupted sweep (``--verbose``, or the sweep's own: Ray's
    and Optuna's log lines)."""
    from pointtune.search.spec import SweepSpec
    from pointtune.search.sweep import resume_sweep

    verbose = args.verbose or SweepSpec.load(args.sweep_dir).verbose
    quiet_driver(verbose)
    return _sweep_status(resume_sweep(args.sweep_dir, verbose=verbose))


def _store_dir(root: Path) -> Path:
    """The directory of the SQLite MLflow store that holds ``root``'s runs: ``root`` itself, or, for a study
    that records into its sweep's store, the directory its ``runtime.yaml`` names."""
    from pointtune.layout import SweepDir
    from pointtune.search.spec import SweepRuntime

    layout = SweepDir(root)
    if (root / "mlflow.db").is_file() or not layout.runtime.is_file():
        return root
    uri = SweepRuntime.load(layout).tracking_uri
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else root


def cmd_ui(args: argparse.Namespace) -> int:
    """``pointtune ui DIR``: the MLflow UI of a run or sweep directory (wherever it now lies)."""
    import subprocess

    from pointtune import tracking

    root = _store_dir(Path(args.run_dir).resolve())
    try:
        moved = tracking.relocate_store(root)
    except FileNotFoundError as err:
        raise ConfigError(f"{err}: not a pointtune run or sweep directory with a SQLite MLflow store") from None
    if moved:
        print(f"[pointtune] {root} was moved: its artifact locations now point at {root / tracking.ARTIFACTS_DIR}")
    port = _free_port(args.host, args.port)
    base = f"http://{args.host}:{port}"
    print(f"[pointtune] MLflow UI on {base} (Ctrl-C stops it); the runs tables:", flush=True)
    for experiment_id, name in tracking.experiments(f"sqlite:///{root}/mlflow.db"):
        print(f"[pointtune]   {name}: {tracking.runs_table_url(base, experiment_id)}", flush=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--host", args.host, "--port", str(port)]
    return subprocess.call(cmd)


def _free_port(host: str, port: int) -> int:
    """``port`` if nothing listens on ``host:port``; ``port`` 0: a free port the system picks.

    Raises:
        ConfigError: the port is taken (one line naming it and what to do).
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"--port {port}: {host}:{port} is not free ({err.strerror}; another MLflow UI?); pass "
                              f"another --port, or --port 0 for any free one") from None
        return probe.getsockname()[1]


def cmd_submit(args: argparse.Namespace) -> int:
    """``pointtune submit -- COMMAND``: run a pointtune command as a Ray job with this checkout's code."""
    quiet_driver(args.verbose)
    from pointtune.submit import submit

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    return submit(args.address, command, wait=not args.no_wait, verbose=args.verbose)


def cmd_best(args: argparse.Namespace) -> int:
    """``pointtune best SWEEP_DIR``: print the best trial and write its config as YAML."""
    from pointtune.search.best import best_trial

    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise ConfigError(f"--output {args.output}: directory {Path(args.output).resolve().parent} does not exist")
    best_trial(args.sweep_dir, args.output)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``pointtune config METHOD``: every config key with its type, the default a run gets, its meaning."""
    from pointtune.config_doc import config_rows, format_rows, schedule_rows

    exp = config_from_file(args.method, args.config, args.set)
    if args.yaml:
        print(yaml.safe_dump(exp.to_dict(), sort_keys=False), end="")
        return 0
    print(f"pointtune config {args.method}: key, type, the value a run gets (platform default < the method's "
          "recipe < --config < --set), meaning. Set any key with --set KEY=VALUE or in a --config YAML.\n")
    print(format_rows(config_rows(exp)))
    print("\nA schedule is given whole ({start: 0.1, shape: cosine, end: 0.001}), in part (--set "
          "optim.lr.warmup_epochs=5) or as a number (its start). Its parts:")
    print(format_rows(schedule_rows()))
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    """``pointtune robustness RUN_DIR``: the run's protocol under Gaussian jitter and random subsampling (SCL
    Figs. 3-4, 8; :mod:`pointtune.protocols.robustness`): ``robustness.csv`` and ``robustness.png`` in the run
    directory (or ``--output``), also logged to the run's MLflow run when it has one."""
    from pointtune.preflight import check_gpus
    from pointtune.protocols.robustness import parse_levels
    from pointtune.robustness_run import run_robustness

    sigmas, counts = parse_levels(args.jitter, "jitter"), parse_levels(args.points, "points")
    if args.gpu:
        check_gpus(0, 1.0, "--gpu")
    run_robustness(args.run_dir, sigmas, counts, args.seed, output=args.output, split=args.split,
                   device="cuda:0" if args.gpu else "cpu", tracking_uri=args.mlflow_uri, mlflow=not args.no_mlflow)
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
        p.add_argument("--dataset", help="dataset name (synthetic, modelnet40, modelnet40_resampled, modelnet10, "
                       "scanobjectnn, shapenetpart, shapenetpart_h5; scenes: s3dis, scannet)")
        p.add_argument("--data-root", help="dataset directory")
        p.add_argument("--epochs", type=int, help="epochs per run / per trial")
        p.add_argument("--output", help="run directory (default runs/<kind>/<method>-<dataset>-<time>)")
        p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: SQLite in the run directory, "
                       "or $MLFLOW_TRACKING_URI)")

    def resources(p: argparse.ArgumentParser) -> None:
        """What a trial runs on and where the results go (``sweep``, ``study``, ``compare``): the
        :data:`RESOURCE_FLAGS`."""
        p.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial (default 1)")
        p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker; fractions allowed")
        p.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default: shared evenly)")
        p.add_argument("--memory-per-worker", type=float, metavar="GB",
                       help="memory per worker, planned like CPUs (Ray's memory resource): no node gets more "
                       "workers than fit (default: not planned; preflight's estimate warns)")
        p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as fit)")
        p.add_argument("--address", help="Ray cluster address (default: start a local instance)")
        p.add_argument("--storage", help="shared storage for checkpoints and Tune state, e.g. s3://bucket/path")
        p.add_argument("--wait-for-resources", type=float, default=0.0, metavar="SECONDS",
                       help="autoscaling clusters: request one trial's workers and wait this long for them")
        p.add_argument("--worker-start-timeout", type=float, default=DEFAULT_WORKER_START_TIMEOUT_S,
                       metavar="SECONDS", help="a data-parallel trial whose workers cannot be placed within this "
                       f"long fails (default {DEFAULT_WORKER_START_TIMEOUT_S:g})")
        p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)

    train = sub.add_parser("train", help="train one method (local debug mode by default)")
    common(train)
    train.add_argument("--workers", type=int, default=0,
                       help="0: in-process local debug mode (default); N: N data-parallel Ray Train workers")
    train.add_argument("--gpu", action="store_true", help="one GPU per worker (local mode: the first GPU)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    debug = train.add_mutually_exclusive_group()
    debug.add_argument("--fast-dev-run", action="store_true",
                       help="check a config or code change in seconds: 1 batch of 2, every split judged on 2 "
                       "items, a checkpoint written and read back (a temporary run directory unless --output)")
    debug.add_argument("--limit-batches", type=int, metavar="N",
                       help="train N batches per epoch and judge N x batch_size items per split (train.limit_batches)")
    train.add_argument("--from", dest="from_", metavar="SWEEP_DIR|RUN_DIR|CHECKPOINT",
                       help="finetune: the pretrained encoder (a sweep's best trial, a run's best checkpoint); "
                       "scl: the stage-1 run, so that only stage 2 trains")
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="hyperparameter search with Ray Tune + Optuna + ASHA")
    common(sweep)
    sweep.add_argument("--space", help="search-space YAML (default search_spaces/<method>.yaml)")
    sweep.add_argument("--trials", type=int, default=8, help="number of trials (default 8)")
    resources(sweep)
    sweep.add_argument("--seed", type=int, default=0, help="sampler seed (Optuna's, or PBT's)")
    sweep.add_argument("--scheduler", choices=SCHEDULERS, default="asha",
                       help="asha: Optuna proposes, ASHA stops the weak (default); none: Optuna proposes, every "
                       "trial runs all its epochs; pbt: population-based training perturbs the space's `perturb:` "
                       "parameters (no Optuna)")
    sweep.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                       help="Optuna sampler of asha and none sweeps: tpe (default), random, gp (Gaussian process)")
    sweep.add_argument("--startup-trials", type=int, default=10, metavar="N",
                       help="random trials before tpe or gp model the results (default 10, Optuna's)")
    sweep.add_argument("--grace-period", type=int, default=1, help="ASHA grace period in epochs")
    sweep.add_argument("--pbt-interval", type=int, default=1, metavar="EPOCHS",
                       help="PBT: epochs between exploit/explore steps (default 1)")
    sweep.set_defaults(func=cmd_sweep)

    study = sub.add_parser("study", help="retrain a sweep's top configs (and the reference, and --config files) "
                           "with several seeds; test mean ± std and paired tests against the reference")
    study.add_argument("sweep_dir", nargs="?", metavar="SWEEP_DIR", help="the sweep whose top trials to retrain")
    study.add_argument("--top-k", type=int, default=3, help="the sweep's best trials to retrain (default 3)")
    study.add_argument("--seeds", type=int, default=5, help="seeds per config: train.seed 0 .. N-1 (default 5)")
    study.add_argument("--epochs", type=int, help="epochs per run (default: the sweep's, else each config's)")
    study.add_argument("--no-reference", action="store_true",
                       help="no reference row (the sweep's shared config with the method's recipe values)")
    study.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="a config to add as a row, named by its file stem (repeatable; e.g. a paper's setting)")
    study.add_argument("--method", choices=methods, help="the method of the --config rows when no SWEEP_DIR")
    study.add_argument("--space", help="without SWEEP_DIR: the search space whose objective selects checkpoints "
                       "(default search_spaces/<method>.yaml)")
    study.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key in every row (repeatable)")
    study.add_argument("--output", help="study directory (default SWEEP_DIR/study, else runs/studies/...)")
    study.add_argument("--mlflow-uri", help="MLflow tracking URI (default: the sweep's store, else SQLite in the "
                       "study directory)")
    resources(study)
    study.set_defaults(func=cmd_study)

    compare = sub.add_parser("compare", help="methods, backbones or configs side by side at an equal budget: each "
                             "entry swept (if it has a space) then studied over seeds; a leaderboard")
    compare.add_argument("spec", metavar="SPEC.yaml", help="the comparison (e.g. studies/supervised_classification.yaml)")
    compare.add_argument("--output", help="compare directory (default runs/compare/<name>; the same command resumes it)")
    compare.add_argument("--mlflow-uri", help="MLflow tracking URI of every entry (default: SQLite in the compare "
                         "directory)")
    resources(compare)
    compare.set_defaults(func=cmd_compare)

    config = sub.add_parser("config", help="list every config key of a method: type, default, meaning")
    config.add_argument("method", choices=methods, help="method whose keys to list")
    config.add_argument("--config", help="YAML config whose values to show as the defaults")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key before listing (e.g. method.backbone.name=vit3d)")
    config.add_argument("--yaml", action="store_true", help="print the whole config as YAML instead")
    config.set_defaults(func=cmd_config)

    robust = sub.add_parser("robustness", help="judge a run's frozen features under jitter and point density "
                            "(SCL Figs. 3-4): robustness.csv, robustness.png, MLflow")
    robust.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, sweep trial directory, sweep "
                        "directory (its best trial) or checkpoint")
    robust.add_argument("--jitter", default="0.01,0.02,0.03,0.04,0.05", metavar="SIGMAS",
                        help="Gaussian jitter sigmas, unclipped, unit-sphere units (default 0.01,...,0.05; '' none)")
    robust.add_argument("--points", default="1024,896,768,640,512", metavar="COUNTS",
                        help="points kept per cloud by random subsampling (default 1024,896,768,640,512; '' none)")
    robust.add_argument("--seed", type=int, default=0, help="seed of the perturbations (default 0)")
    robust.add_argument("--split", choices=("test", "val"), default="test", help="the scored split (default test)")
    robust.add_argument("--output", help="directory for robustness.csv / .png (default RUN_DIR)")
    robust.add_argument("--gpu", action="store_true", help="evaluate on the first GPU")
    robust.add_argument("--mlflow-uri", help="the run's MLflow store when not the default one")
    robust.add_argument("--no-mlflow", action="store_true", help="write the files only")
    robust.set_defaults(func=cmd_robustness)

    resume = sub.add_parser("resume", help="finish an interrupted sweep or study")
    resume.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the directory of the interrupted sweep or study")
    resume.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    resume.set_defaults(func=cmd_resume)

    best = sub.add_parser("best", help="print the best trial of a sweep and write its config")
    best.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep (or study) directory")
    best.add_argument("--output", help="where to write the config (default <sweep_dir>/best_config.yaml)")
    best.set_defaults(func=cmd_best)

    ui = sub.add_parser("ui", help="open the MLflow UI of a run or sweep directory (also after moving it)")
    ui.add_argument("run_dir", metavar="RUN_OR_SWEEP_DIR", help="a pointtune run, sweep, study or compare directory")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000; 0: any free port)")
    ui.set_defaults(func=cmd_ui)

    submit = sub.add_parser("submit", help="run a pointtune command as a Ray job, with this checkout's code",
                            usage="pointtune submit --address URL [--no-wait] -- COMMAND ...")
    submit.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                        help="the cluster's dashboard / job API (default http://127.0.0.1:8265, the "
                        "`ray dashboard` tunnel)")
    submit.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    submit.add_argument("--verbose", action="store_true", help="show Ray's lines of packaging and uploading the "
                        "checkout (give the submitted command its own --verbose for the job's)")
    submit.add_argument("command_line", nargs=argparse.REMAINDER, help="-- then the pointtune command")
    submit.set_defaults(func=cmd_submit)

    from pointtune.data.command import add_data_parser
    add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pointtune`` command; returns the exit status."""
    from pointtune.data import DatasetError
    from pointtune.search.resources import ResourceError
    from pointtune.search.sweep import SweepInterrupted

    args = build_parser().parse_args(argv)
    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, ResourceError) as err:
        print(f"pointtune: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SweepInterrupted as err:
        print(f"pointtune: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(argv: list[str] | None = None) -> NoReturn:
    """The ``pointtune`` command (console script, ``python -m pointtune.cli``): :func:`main`, then exit with its
    status.

    Before exiting, every object the command made is moved out of the garbage collector's reach
    (:func:`gc.freeze`): the interpreter's last collections at shutdown walk torch's, Ray's and MLflow's whole
    object graphs, only to free memory the operating system takes back at exit anyway. Measured after
    ``pointtune train cedr --fast-dev-run`` on this 2-CPU machine: 3.2 s idle and about 5 s beside the test
    suite without the freeze, 0.5-1 s with it. Atexit handlers (Ray's shutdown, logging's flush) and objects
    freed by reference counting are not affected. :func:`main` alone (as tests call it in-process) freezes nothing.

    Raises:
        SystemExit: always, with :func:`main`'s status.
    """
    status = main(argv)
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
