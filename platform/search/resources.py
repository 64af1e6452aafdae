"""Per-trial resources that cannot deadlock.

Every Tune trial holds a driver (the function that runs ``TorchTrainer.fit``) plus its Train workers. If
the drivers and workers of all concurrent trials do not fit in the cluster at once, a trial waits forever
for its worker group ("Attempting to start training worker group"). :func:`plan_resources` sizes the
driver, the workers and the concurrency so that they always fit, and raises before anything starts when
one trial alone cannot fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DRIVER_CPUS = 0.1  # the driver only waits on trainer.fit()
MIN_CPUS_PER_WORKER = 0.5  # below this, CPU workers oversubscribe the cores more than twice


class ResourceError(ValueError):
    """The requested trial shape does not fit the cluster; the message says what was asked and what exists."""


@dataclass(frozen=True)
class TrialResources:
    """Resources of one trial: ``driver_cpus`` for the Tune driver, then ``workers`` Train workers of
    ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs each; ``max_concurrent`` such trials fit at once."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    driver_cpus: float
    max_concurrent: int

    def per_trial(self) -> dict[str, float]:
        """Total CPUs and GPUs one trial holds."""
        return {
            "CPU": self.driver_cpus + self.workers * self.cpus_per_worker,
            "GPU": self.workers * self.gpus_per_worker,
        }

    def as_dict(self) -> dict[str, float]:
        """Plain dict, for logging."""
        return asdict(self)


def plan_resources(
    total_cpus: float,
    total_gpus: float,
    workers: int,
    gpus_per_worker: float = 0.0,
    max_concurrent: int | None = None,
    trials: int = 1,
    cpus_per_worker: float | None = None,
) -> TrialResources:
    """Choose per-trial resources for ``trials`` trials of ``workers`` workers each.

    Args:
        total_cpus, total_gpus: what the Ray cluster has (``ray.cluster_resources()``).
        workers: Train workers per trial (>= 1).
        gpus_per_worker: GPUs per worker; fractions (0.5) let several workers share a GPU.
        max_concurrent: trials at once; default as many as fit, at most ``trials``.
        cpus_per_worker: CPUs per worker; default: the CPUs left after the drivers, shared evenly.

    Raises:
        ResourceError: one trial needs more GPUs or CPUs than the cluster has, or ``max_concurrent``
            trials cannot run at once.
    """
    if workers < 1:
        raise ResourceError(f"--workers must be >= 1 for a sweep, got {workers}")
    if gpus_per_worker < 0 or (gpus_per_worker > 1 and not float(gpus_per_worker).is_integer()):
        raise ResourceError(f"--gpus-per-worker must be a fraction <= 1 or a whole number, got {gpus_per_worker}")
    gpus_per_trial = workers * gpus_per_worker
    if gpus_per_trial > total_gpus + 1e-9:
        raise ResourceError(
            f"one trial needs {workers} workers x {gpus_per_worker} GPU = {gpus_per_trial:g} GPUs, "
            f"but the cluster has {total_gpus:g}"
        )
    min_cpus_per_worker = cpus_per_worker or MIN_CPUS_PER_WORKER
    fit_by_cpu = math.floor(total_cpus / (DRIVER_CPUS + workers * min_cpus_per_worker) + 1e-9)
    fit_by_gpu = math.floor(total_gpus / gpus_per_trial + 1e-9) if gpus_per_trial > 0 else fit_by_cpu
    fit = min(fit_by_cpu, fit_by_gpu)
    if fit < 1:
        raise ResourceError(
            f"one trial needs {DRIVER_CPUS:g} driver CPU + {workers} x {min_cpus_per_worker:g} worker CPUs, "
            f"but the cluster has {total_cpus:g} CPUs"
        )
    if max_concurrent is None:
        # CPU-only: by default one worker per core, so concurrency is what the cores allow.
        by_core = math.floor(total_cpus / (DRIVER_CPUS + workers)) if gpus_per_trial == 0 and not cpus_per_worker else fit
        concurrent = max(1, min(trials, fit, by_core))
    else:
        if max_concurrent < 1:
            raise ResourceError(f"--max-concurrent must be >= 1, got {max_concurrent}")
        if max_concurrent > fit:
            raise ResourceError(
                f"--max-concurrent {max_concurrent} trials of {workers} workers do not fit: the cluster "
                f"({total_cpus:g} CPUs, {total_gpus:g} GPUs) holds at most {fit} at once"
            )
        concurrent = min(max_concurrent, trials)
    if cpus_per_worker is None:
        share = (total_cpus / concurrent - DRIVER_CPUS) / workers
        cpus_per_worker = math.floor(share * 100) / 100 if share < 1 else float(math.floor(share))
    return TrialResources(workers, cpus_per_worker, gpus_per_worker, DRIVER_CPUS, concurrent)
