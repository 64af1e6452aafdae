"""The Ray cluster a command runs on: start or join it so that every Ray process knows its address.

Why this module exists: Ray processes that resolve the cluster address on their own (Ray Train V2's
``PlacementGroupCleaner`` asks the State API, which reads ``RAY_ADDRESS`` or guesses from the Ray
instances it finds on the host) attach to the wrong cluster, or fail with ``Found multiple active Ray
instances``, as soon as a second Ray instance runs on the machine. A stopped trial's placement group is then
never freed and the next trial waits for ever. :func:`init_ray` therefore makes ``RAY_ADDRESS`` name the
cluster of this command in every process of it:

- a new local instance is started on a GCS port chosen here, with ``RAY_ADDRESS`` set in the environment
  that the raylet, and so every worker process, inherits;
- an existing cluster (``--address``) is probed first (fail in seconds, not minutes, when nothing listens)
  and joined with ``RAY_ADDRESS`` in the job's runtime environment, which every task and actor inherits.

The same environment carries the Ray Train settings of :data:`TRAIN_ENV` (controller polling, preemption
watcher, bounded worker-group start).
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from urllib.parse import urlparse

from pointtune.errors import ConfigError

# Ray Train V2 settings for every process of a pointtune cluster (measured in ../shared/platform-notes.md:
# the controller's default 2 s polling makes every report wait up to 2 s; the preemption watcher is an extra
# actor per trial that CPU sweeps never need).
TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    # Ray Train copies a worker's print() into its logs, and Ray forwards the worker's stdout as well: every
    # line would reach the console twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
# How long a trial's Train worker group may wait for its resources before the trial fails (seconds).
DEFAULT_WORKER_START_TIMEOUT_S = 120.0
_STARTED_ENV = ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe_address(address: str, timeout_s: float = 5.0) -> str:
    """Check that a Ray cluster's GCS listens at ``address`` (``host:port``); returns it.

    Raises:
        ConfigError: not ``host:port`` (a dashboard URL is for ``pointtune submit``), or nothing answers
            there within ``timeout_s`` seconds (one line, naming the address).
    """
    if "://" in address:
        raise ConfigError(f"--address {address!r}: expected host:port of the cluster's GCS (e.g. 10.0.0.5:6379) "
                          f"or auto; the dashboard URL (http://...:8265) is for `pointtune submit --address`")
    parsed = urlparse(f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ConfigError(f"--address {address!r}: expected host:port of a Ray cluster (e.g. 10.0.0.5:6379) or auto")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({err.strerror or err})") from None
    return f"{host}:{port}"


def starts_local(address: str | None) -> bool:
    """Whether :func:`init_ray` with ``address`` starts a Ray instance on this machine (no address, not inside
    a Ray job), so that this machine's CPUs and GPUs are the whole cluster."""
    return address is None and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ


def local_node() -> dict[str, float]:
    """The CPUs and GPUs a local Ray instance will see on this machine (``os.cpu_count()``, as Ray counts them
    without a cgroup quota; CUDA devices torch sees), for planning before Ray starts; memory is left out."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"CPU": float(os.cpu_count() or 1), **({"GPU": float(gpus)} if gpus else {})}


def init_ray(
    address: str | None = None,
    *,
    dashboard: bool = True,
    worker_start_timeout_s: float = DEFAULT_WORKER_START_TIMEOUT_S,
    verbose: bool = False,
) -> str:
    """Start a local Ray instance (``address=None``) or join a running cluster; returns its GCS address.

    Never attaches to a cluster it was not asked for: ``None`` always starts a new instance, whatever else
    runs on the machine, and a watcher (:mod:`pointtune.reaper`) stops that instance if this process dies
    without doing so. Inside ``ray job submit`` / ``pointtune submit`` (``RAY_ADDRESS`` set by Ray's job
    supervisor) ``None`` joins the job's cluster.

    Args:
        address: ``host:port`` or ``auto`` of a running cluster, or ``None``.
        dashboard: start the dashboard with a local instance. Ray Train's placement-group cleanup needs its
            State API whenever Tune can stop a multi-worker trial; single-process trials do without it.
        worker_start_timeout_s: a Train worker group that cannot be placed within this many seconds fails
            its trial (instead of Ray Train's default of retrying for ever).
        verbose: keep Ray's own INFO lines on the console (else every worker process is quieted:
            :func:`pointtune.console.worker_runtime_env`).

    Raises:
        ConfigError: ``address`` names a cluster that does not answer.
    """
    import ray

    from pointtune.console import worker_runtime_env
    from pointtune.reaper import start_reaper

    env = {**TRAIN_ENV, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{worker_start_timeout_s:g}"}
    level = logging.INFO if verbose else logging.WARNING
    if not verbose:
        warnings.filterwarnings("ignore", module=r"ray\..*")
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    if address is None and "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:  # a job's driver: its cluster
        address = os.environ.get("RAY_ADDRESS") or "auto"
    if address is None:
        port = _free_port()
        os.environ.update({**env, "RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"127.0.0.1:{port}"})
        # The instance dies with this process, even when it is killed (pointtune.reaper). The watcher is up
        # before Ray starts: a kill during ray.init is covered too, but for what started in the last scan.
        start_reaper()
        ray.init(address="local", include_dashboard=dashboard, logging_level=level, log_to_driver=True,
                 configure_logging=True, runtime_env=worker_runtime_env(verbose))
        gcs = ray.get_runtime_context().gcs_address
        os.environ["RAY_ADDRESS"] = gcs
        return gcs
    if address == "auto":  # resolve it once, then join with the address every process will use
        ray.init(address="auto", logging_level=level)
        address = ray.get_runtime_context().gcs_address
        ray.shutdown()
    else:
        address = probe_address(address)
    os.environ.update(env)
    ray.init(address=address, logging_level=level, log_to_driver=True,
             runtime_env={"env_vars": {**env, "RAY_ADDRESS": address}, **worker_runtime_env(verbose)})
    gcs = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = gcs
    return gcs


def shutdown_ray() -> None:
    """Disconnect (and stop a local instance); forget the address :func:`init_ray` put in the environment."""
    import ray

    ray.shutdown()
    for key in _STARTED_ENV:
        os.environ.pop(key, None)


def node_resources() -> list[dict[str, float]]:
    """Resources of every alive node of the connected cluster, e.g. ``[{"CPU": 8.0, "GPU": 1.0}, ...]``."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def addable_nodes(config: dict | None = None) -> list[dict[str, float]]:
    """Nodes the cluster's autoscaler may start, one resource dict per node: for every worker node type of
    the ``ray up`` config, ``max_workers`` nodes of its ``resources`` (all types together at most the
    config's ``max_workers``). Nodes already running are among them (see :func:`planning_nodes`).

    Args:
        config: the cluster-launcher config; default ``~/ray_bootstrap_config.yaml``, which ``ray up`` writes
            on the head node (absent elsewhere: no node can be added).
    """
    import yaml

    if config is None:
        path = os.path.expanduser("~/ray_bootstrap_config.yaml")
        if not os.path.isfile(path):
            return []
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
    head = config.get("head_node_type")
    budget = int(config.get("max_workers", 0))
    nodes: list[dict[str, float]] = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        count = min(int(node_type.get("max_workers", 0)), budget - len(nodes))
        resources = {k: float(v) for k, v in (node_type.get("resources") or {}).items() if float(v) > 0}
        nodes += [dict(resources) for _ in range(max(count, 0))]
    return nodes


def planning_nodes(present: list[dict[str, float]], addable: list[dict[str, float]]) -> list[dict[str, float]]:
    """The nodes to plan trials on: those present, plus those the autoscaler may still start (each present
    node uses up one addable node with the same CPU/GPU/custom resources; Ray's per-node ``node:...`` and
    memory entries are ignored in the match)."""
    def shape(node: dict[str, float]) -> tuple:
        return tuple(sorted((k, v) for k, v in node.items()
                            if not k.startswith("node:") and k not in ("memory", "object_store_memory")))

    left = [shape(n) for n in addable]
    for node in present:
        if shape(node) in left:
            left.remove(shape(node))
    return list(present) + [dict(s) for s in left]
