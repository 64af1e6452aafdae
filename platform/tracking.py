"""MLflow tracking: one parent run per sweep, one child run per trial (written by the sweep's driver, see
:mod:`pointtune.search.records`), one run per ``pointtune train``.

Ray does not nest runs and Train V2 has no MLflow callback, so runs are made explicitly with an
``MlflowClient``: the parent carries the sweep's description, each child the ``mlflow.parentRunId`` tag and
``pointtune.trial_id``. A child is looked up by that tag before one is created, so a resumed or restarted
trial keeps its run instead of adding a duplicate.

Default tracking URI: ``sqlite:///<run dir>/mlflow.db`` with artifacts in ``<run dir>/mlartifacts``
(MLflow >= 3.13 refuses a plain ``./mlruns`` store). MLflow stores those artifact locations as absolute
paths; :func:`relocate_store` rewrites them when the directory has been moved or copied off a cluster
(``pointtune ui`` does it before starting the UI). ``--mlflow-uri`` or ``MLFLOW_TRACKING_URI`` point at a
tracking server instead. Experiments are tagged as model-development experiments, so that the MLflow UI
opens them on the runs table rather than on its GenAI overview.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "pointtune.trial_id"
KIND_TAG = "pointtune.kind"
# MLflow's UI shows an experiment of this kind as a runs table (MLflow 3 otherwise guesses, often GenAI).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
ARTIFACTS_DIR = "mlartifacts"


def resolve_tracking_uri(run_dir: str | Path, override: str | None = None) -> str:
    """``override``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file inside ``run_dir``."""
    return override or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve()}/mlflow.db"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """Call ``fn``; retry with back-off when SQLite reports a lock (several trials log at once)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - MLflow wraps the SQLAlchemy error in its own types
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    return None


def _new_sqlite_store(uri: str) -> None:
    """Create the SQLite store of ``uri`` from an empty, already migrated copy kept in pointtune's cache
    (MLflow runs ~70 schema migrations, about 1.5 s, on every new store); the first store made with an MLflow
    version is copied there for the next ones."""
    import mlflow

    from pointtune.data.cache import pointtune_cache

    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists() or not uri.startswith("sqlite:///"):
        return
    template = pointtune_cache() / "mlflow" / f"empty-{mlflow.__version__}.db"
    if template.is_file():
        shutil.copyfile(template, path)
        return
    _retry(_client(uri).search_experiments)  # creates and migrates the store
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        staged = template.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(path, staged)
        os.replace(staged, template)
    except OSError:
        pass  # no cache (read-only home): the next store migrates again


def ensure_experiment(uri: str, name: str, run_dir: str | Path) -> str:
    """Id of experiment ``name``, created if missing (artifacts under ``run_dir`` for SQLite stores) and
    tagged as a model-development experiment."""
    _new_sqlite_store(uri)
    client = _client(uri)
    found = _retry(client.get_experiment_by_name, name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            _retry(client.set_experiment_tag, found.experiment_id, *EXPERIMENT_KIND)
        return found.experiment_id
    location = (Path(run_dir).resolve() / ARTIFACTS_DIR).as_uri() if uri.startswith("sqlite") else None
    return _retry(client.create_experiment, name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def runs_table_url(base: str, experiment_id: str) -> str:
    """The MLflow UI link that opens the experiment's runs table: MLflow 3 opens an experiment clicked in its
    list on the GenAI overview, ``workflowType=machine_learning`` on the runs table (checked in Chromium:
    ``bench/ui_check.py``)."""
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def experiments(uri: str) -> list[tuple[str, str]]:
    """``(id, name)`` of every experiment of the store at ``uri`` that holds a run, oldest first (MLflow's
    empty ``Default`` experiment left out)."""
    client = _client(uri)
    found = _retry(client.search_experiments)
    with_runs = [e for e in found if _retry(client.search_runs, [e.experiment_id], max_results=1)]
    return [(e.experiment_id, e.name) for e in sorted(with_runs, key=lambda e: int(e.experiment_id))]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"dotted.key": leaf}`` (what MLflow params and ``--set`` keys look like)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def start_run(uri: str, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """Create a run with ``tags`` and (flattened, dotted) ``params``; return its id."""
    client = _client(uri)
    run = _retry(client.create_run, experiment_id, run_name=name, tags=tags)
    log_params(uri, run.info.run_id, params)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> int:
    """Log the nested ``params`` as dotted keys (values shortened to MLflow's 6000-character limit) that run
    ``run_id`` does not hold yet; returns how many were logged.

    They go in batches of 90, so a driver killed in between leaves a run with only the first batches; calling
    this again with the same params completes it (MLflow params never change: keys the run holds stay as they
    are)."""
    from mlflow.entities import Param

    client = _client(uri)
    held = _retry(client.get_run, run_id).data.params
    flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items() if k not in held]
    for i in range(0, len(flat), 90):
        _retry(client.log_batch, run_id, params=flat[i : i + 90])
    return len(flat)


def find_child_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """Id of the child run of ``parent_run_id`` tagged with ``trial_id``, or ``None``."""
    runs = _retry(
        _client(uri).search_runs,
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
    )
    return runs[0].info.run_id if runs else None


def find_train_run(uri: str, run_name: str, experiment: str | None = None) -> str | None:
    """The id of the latest ``pointtune train`` run (tag ``pointtune.kind=train``) named ``run_name`` in experiment
    ``experiment`` (``None``: any), preferring a FINISHED one (a resumed run has one per invocation); ``None``
    when there is none."""
    client = _client(uri)
    found = _retry(client.get_experiment_by_name, experiment) if experiment else None
    ids = [found.experiment_id] if found else [e.experiment_id for e in _retry(client.search_experiments)]
    runs = _retry(client.search_runs, ids, filter_string=(
        f"tags.`{KIND_TAG}` = 'train' and attributes.run_name = '{run_name}'"),
        order_by=["attributes.start_time DESC"], max_results=100)
    if not runs:
        return None
    return next((r for r in runs if r.info.status == "FINISHED"), runs[0]).info.run_id


def logged_steps(uri: str, run_id: str, key: str = "epoch") -> set[int]:
    """The steps at which run ``run_id`` holds metric ``key`` (the epochs a pointtune run has logged)."""
    return {int(m.step) for m in _retry(_client(uri).get_metric_history, run_id, key)}


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of ``parent_run_id`` (MLflow ``Run`` objects)."""
    return _retry(_client(uri).search_runs, [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                  max_results=50000)


def reopen_run(uri: str, run_id: str, superseded: tuple[str, ...] = ()) -> dict[str, str]:
    """Mark a run ``RUNNING`` again (a trial restarted by ``pointtune resume``); each tag of ``superseded``
    it holds moves to ``<tag>.previous`` (the record of a failure that the restart supersedes). Returns the
    tags the run had."""
    client = _client(uri)
    tags = dict(_retry(client.get_run, run_id).data.tags)
    for key in superseded:
        if key in tags:
            _retry(client.set_tag, run_id, f"{key}.previous", tags[key])
            _retry(client.delete_tag, run_id, key)
    _retry(client.update_run, run_id, status="RUNNING")
    return tags


def log_metrics(target: dict[str, str], metrics: dict[str, float], step: int) -> None:
    """Log finite numeric ``metrics`` at ``step`` to ``target = {"tracking_uri", "run_id"}``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(key, float(value), now, step)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]
    if batch:
        _retry(_client(target["tracking_uri"]).log_batch, target["run_id"], metrics=batch)


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file or directory to the run's artifacts."""
    client = _client(uri)
    upload = client.log_artifacts if Path(path).is_dir() else client.log_artifact
    _retry(upload, run_id, str(path), artifact_path)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Set several tags on a run."""
    client = _client(uri)
    for key, value in tags.items():
        _retry(client.set_tag, run_id, key, str(value)[:5000])


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ``FINISHED``, ``FAILED`` or ``KILLED``."""
    _retry(_client(uri).set_terminated, run_id, status=status)


def relocate_store(run_dir: str | Path) -> int:
    """Point the artifact locations of ``<run_dir>/mlflow.db`` at ``<run_dir>/mlartifacts`` after the
    directory was moved or copied (MLflow keeps absolute ``file://`` paths); returns the rows rewritten.

    Only locations under a former ``.../mlartifacts`` of this store are touched; a store whose locations
    already point here is left as it is.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``mlflow.db``.
    """
    import sqlite3

    run_dir = Path(run_dir).resolve()
    db = run_dir / "mlflow.db"
    if not db.is_file():
        raise FileNotFoundError(f"{run_dir}: no mlflow.db")
    here = (run_dir / ARTIFACTS_DIR).as_uri()
    changed = 0
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT artifact_location FROM experiments WHERE artifact_location LIKE ?",
                           (f"%/{ARTIFACTS_DIR}",)).fetchall()
        for (old,) in {r for r in rows if r[0] != here}:
            changed += con.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?",
                                   (here, old)).rowcount
            changed += con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                                   "WHERE artifact_uri LIKE ?", (here, len(old) + 1, f"{old}/%")).rowcount
    return changed
