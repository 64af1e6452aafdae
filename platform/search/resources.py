"""Per-trial resources planned per node, so that trials can neither deadlock nor wait for a node that does
not exist.

A trial is one of two shapes:

- **single-process** (``workers == 1``): the trial's own Tune actor trains; it holds ``{CPU: c, GPU: g}``.
- **data-parallel** (``workers >= 2``): a Tune driver (``driver_cpus`` CPUs, or a sliver of the custom
  resource :data:`DRIVER_RESOURCE` where the cluster declares it, on the head or on-demand nodes) starts a
  ``TorchTrainer`` whose ``workers`` each hold ``{CPU: c, GPU: g}``, placed by Ray Train on any nodes.

:func:`plan_resources` places every bundle of ``max_concurrent`` trials on the nodes that exist (best fit,
node by node, never on the cluster total: eight 1-CPU nodes cannot host one 2-CPU worker), chooses the CPUs
per worker when the user did not, and raises before anything starts when one trial cannot be placed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DRIVER_CPUS = 0.1  # a data-parallel trial's driver only waits on trainer.fit()
DRIVER_RESOURCE = "pointtune_driver"  # custom resource of the nodes where drivers belong (clusters/*.yaml)
DRIVER_SLIVER = 0.001  # how much of DRIVER_RESOURCE one driver holds
MIN_CPUS_PER_WORKER = 0.5  # below this, CPU workers oversubscribe the cores more than twice


class ResourceError(ValueError):
    """The requested trial shape does not fit the cluster; the message says what was asked and what exists."""


@dataclass(frozen=True)
class TrialResources:
    """Resources of one trial and how many such trials run at once.

    ``workers`` Train workers of ``cpus_per_worker`` CPUs, ``gpus_per_worker`` GPUs and ``memory_per_worker``
    bytes of Ray's ``memory`` resource (0: not planned) each; a data-parallel trial's driver holds
    ``driver_cpus`` CPUs, or ``DRIVER_SLIVER`` of ``driver_resource`` when set.
    """

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    driver_cpus: float
    max_concurrent: int
    driver_resource: str | None = None
    memory_per_worker: float = 0.0

    @property
    def single_process(self) -> bool:
        """Whether the trial trains in its own Tune actor (one worker) rather than through TorchTrainer."""
        return self.workers == 1

    def worker_bundle(self) -> dict[str, float]:
        """What one worker holds, e.g. ``{"CPU": 1.0}`` or ``{"CPU": 4.0, "GPU": 1.0, "memory": 8e9}``."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {}),
                **({"memory": self.memory_per_worker} if self.memory_per_worker else {})}

    def trial_bundle(self) -> dict[str, float]:
        """What the Tune trial itself holds: the worker (single-process) or the driver (data-parallel)."""
        if self.single_process:
            return self.worker_bundle()
        if self.driver_resource:
            return {"CPU": 0.0, self.driver_resource: DRIVER_SLIVER}
        return {"CPU": self.driver_cpus}

    def bundles(self) -> list[dict[str, float]]:
        """Every bundle one trial places: its own, then its Train workers (data-parallel)."""
        return [self.trial_bundle()] + ([] if self.single_process else [self.worker_bundle()] * self.workers)

    def per_trial(self) -> dict[str, float]:
        """Total CPUs and GPUs one trial holds."""
        return {key: sum(b.get(key, 0.0) for b in self.bundles()) for key in ("CPU", "GPU")}

    def as_dict(self) -> dict:
        """Plain dict, for logging and ``sweep.yaml``."""
        return asdict(self)


def fits(nodes: list[dict[str, float]], bundles: list[dict[str, float]]) -> bool:
    """Whether ``bundles`` can all be placed on ``nodes`` (each bundle on one node; best fit, largest first).

    Args:
        nodes: per-node capacities, e.g. ``[{"CPU": 8, "GPU": 1}, {"CPU": 1}]``.
        bundles: resource requests, e.g. ``[{"CPU": 0.1}, {"CPU": 1, "GPU": 0.5}]``.
    """
    free = [dict(n) for n in nodes]
    for bundle in sorted(bundles, key=lambda b: (b.get("GPU", 0), b.get("CPU", 0), b.get("memory", 0)), reverse=True):
        candidates = [n for n in free if all(n.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())]
        if not candidates:
            return False
        node = min(candidates, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
        for key, value in bundle.items():
            node[key] = node.get(key, 0.0) - value
    return True


def _cpu_grid(nodes: list[dict[str, float]]) -> list[float]:
    """CPUs per worker to try, largest first: whole numbers down to 1, then fractions down to the minimum
    (Ray accepts fractions below 1 and whole numbers above)."""
    top = int(max(n.get("CPU", 0.0) for n in nodes))
    return [float(c) for c in range(top, 0, -1)] + [c / 100 for c in range(99, int(MIN_CPUS_PER_WORKER * 100) - 1, -1)]


def _describe(nodes: list[dict[str, float]]) -> str:
    shown = [f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU/{n.get('memory', 0) / 1e9:.1f} GB" for n in nodes[:6]]
    return f"{len(nodes)} node(s): " + ", ".join(shown) + (" ..." if len(nodes) > 6 else "")


def plan_resources(
    nodes: list[dict[str, float]],
    workers: int,
    gpus_per_worker: float = 0.0,
    max_concurrent: int | None = None,
    trials: int = 1,
    cpus_per_worker: float | None = None,
    memory_per_worker: float | None = None,
) -> TrialResources:
    """Choose per-trial resources for ``trials`` trials of ``workers`` workers each, node by node.

    Args:
        nodes: resources of each node (``pointtune.cluster.node_resources()``), custom resources included.
        workers: Train workers per trial (>= 1; 1 trains in the trial's own actor).
        gpus_per_worker: GPUs per worker; fractions (0.5) let several workers share a GPU.
        max_concurrent: trials at once; default as many as fit with one CPU per worker, at most ``trials``.
        cpus_per_worker: CPUs per worker; default the most that lets ``max_concurrent`` trials fit.
        memory_per_worker: GB of Ray's ``memory`` resource per worker (a node's ``memory`` is what Ray lets
            tasks reserve on it); None: memory is not planned.

    Raises:
        ResourceError: a bad count, or one trial (or ``max_concurrent`` trials) cannot be placed on the
            nodes; the message names the request and the nodes.
    """
    if workers < 1:
        raise ResourceError(f"--workers must be >= 1 for a sweep, got {workers}")
    if gpus_per_worker < 0 or (gpus_per_worker > 1 and not float(gpus_per_worker).is_integer()):
        raise ResourceError(f"--gpus-per-worker must be a fraction <= 1 or a whole number, got {gpus_per_worker}")
    if cpus_per_worker is not None and (cpus_per_worker <= 0 or (cpus_per_worker > 1 and not float(cpus_per_worker).is_integer())):
        raise ResourceError(f"--cpus-per-worker must be a fraction < 1 or a whole number, got {cpus_per_worker}")
    if memory_per_worker is not None and not memory_per_worker > 0:
        raise ResourceError(f"--memory-per-worker must be a number of GB > 0, got {memory_per_worker}")
    if max_concurrent is not None and max_concurrent < 1:
        raise ResourceError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if not nodes or max(n.get("CPU", 0.0) for n in nodes) <= 0:
        raise ResourceError(f"the cluster has no CPUs ({_describe(nodes)})")
    gpus_total = sum(n.get("GPU", 0.0) for n in nodes)
    if workers * gpus_per_worker > gpus_total + 1e-9:
        raise ResourceError(f"one trial needs {workers} workers x {gpus_per_worker:g} GPU = {workers * gpus_per_worker:g} "
                            f"GPUs, but the cluster has {gpus_total:g}")
    driver_resource = DRIVER_RESOURCE if any(n.get(DRIVER_RESOURCE, 0) > 0 for n in nodes) else None

    def shape(cpus: float, concurrent: int) -> TrialResources:
        return TrialResources(workers, cpus, gpus_per_worker, 0.0 if driver_resource else DRIVER_CPUS, concurrent,
                              driver_resource, (memory_per_worker or 0.0) * 1e9)

    def capacity(cpus: float) -> int:
        """How many trials of ``cpus`` per worker fit at once (at most ``trials``)."""
        k = 0
        while k < trials and fits(nodes, shape(cpus, k + 1).bundles() * (k + 1)):
            k += 1
        return k

    grid = [cpus_per_worker] if cpus_per_worker else _cpu_grid(nodes)
    if max_concurrent is not None:
        target = min(max_concurrent, trials)
    elif cpus_per_worker:
        target = capacity(cpus_per_worker)
    else:  # one worker per core by default; fewer cores than workers: as many trials as fit at all
        target = capacity(1.0) if 1.0 in grid else 0
        target = target or max((capacity(c) for c in grid[-1:]), default=0)
    chosen = next((c for c in grid if target >= 1 and fits(nodes, shape(c, target).bundles() * target)), None)
    if chosen is None:
        lowest = grid[-1]
        one = shape(lowest, 1)
        if not fits(nodes, one.bundles()):
            raise ResourceError(
                f"one trial needs {' + '.join(str(b) for b in one.bundles())} (each on one node), which no "
                f"placement on {_describe(nodes)} fits"
            )
        raise ResourceError(f"--max-concurrent {max_concurrent} trials of {workers} workers do not fit: "
                            f"{_describe(nodes)} hold at most {capacity(lowest)} at once")
    return shape(chosen, target)



def memory_warning(plan: TrialResources, nodes: list[dict[str, float]], per_worker: float) -> str | None:
    """A warning when ``plan`` runs more workers at once than the nodes' memory holds at ``per_worker`` bytes
    each (preflight's estimate, :meth:`pointtune.preflight.PreflightResult.memory_per_worker`), for a sweep
    that does not plan memory (no ``--memory-per-worker``); None when they fit.

    The check is on the cluster's total of Ray's ``memory`` resource (and on its largest node for one worker):
    Ray may still pack several workers onto one node whose memory they exceed, which only planning memory
    prevents.
    """
    running = plan.max_concurrent * plan.workers
    total = sum(n.get("memory", 0.0) for n in nodes)
    largest = max((n.get("memory", 0.0) for n in nodes), default=0.0)
    if running * per_worker <= total and per_worker <= largest:
        return None
    return (f"[pointtune] warning: {plan.max_concurrent} trial(s) x {plan.workers} worker(s) x ~{per_worker / 1e9:.1f} "
            f"GB (preflight's estimate) may not fit the {total / 1e9:.1f} GB Ray can give on {_describe(nodes)}; "
            f"workers killed by Ray's memory monitor fail their trials: lower --max-concurrent, or pass "
            f"--memory-per-worker {math.ceil(per_worker / 1e8) / 10:g} so that Ray places only what fits")
