"""A test-only method for tests/test_failures.py: CEDR whose last worker keeps 128 MB more after every optimizer
step, until Ray's memory monitor kills it. It makes a real memory-monitor kill happen inside a `pointtune` run.

Every process of the run must know the method, and only those: :func:`register` runs in the command's driver
before ``pointtune.cli.main`` (:data:`DRIVER`) and in each of Ray's worker processes (trial actors, Train
workers) as the setup hook that :func:`runtime_env` adds to the job's runtime environment through Ray's
``RAY_RUNTIME_ENV_HOOK``; importing this module registers nothing. Run the command with :func:`hog_env`.

The hog never takes the node past ``RAY_memory_usage_threshold + 0.03`` of its memory (the monitor kills at
the threshold), so a monitor that fails to act leaves the run to finish its epochs instead of exhausting the
machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch.distributed as dist

from pointtune.method import register_method
from pointtune.methods.cedr import CEDR, CEDRConfig

NAME = "memory_hog"
STEP_BYTES = 128 << 20
OVERSHOOT = 0.03  # how far past the monitor's threshold the hog may take the node's memory, as a fraction
# `python -c` program: the `pointtune` command, with this method registered first.
DRIVER = f"import sys, {__name__}; {__name__}.register(); from pointtune.cli import main; sys.exit(main(sys.argv[1:]))"


def node_memory() -> tuple[int, int]:
    """This node's memory in use and in all, in bytes: ``MemTotal - MemAvailable`` and ``MemTotal``
    (/proc/meminfo), as Ray's memory monitor measures it on a node without a cgroup memory limit (with one,
    Ray measures the cgroup: see :func:`cgroup_limited`)."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(info[key].split()[0]) * 1024 for key in ("MemTotal", "MemAvailable"))
    return total - available, total


def cgroup_limited() -> bool:
    """Whether this process runs under a cgroup (v2) memory limit, which Ray's memory monitor then measures
    instead of the node."""
    limit = Path("/sys/fs/cgroup/memory.max")
    return limit.is_file() and limit.read_text().strip() != "max"


def hog_env(threshold: float) -> dict[str, str]:
    """The environment of a command whose Ray instance kills workers above ``threshold`` (a fraction of the
    node's memory, checked every 100 ms) and whose processes all know this method."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
            "RAY_RUNTIME_ENV_HOOK": f"{__name__}.runtime_env", "RAY_memory_usage_threshold": f"{threshold:.2f}",
            "RAY_memory_monitor_refresh_ms": "100"}


def runtime_env(env: dict | None) -> dict:
    """``RAY_RUNTIME_ENV_HOOK``: the driver's job runtime environment, with :func:`register` run in every worker
    process (Ray's ``worker_process_setup_hook``)."""
    return {**(env or {}), "worker_process_setup_hook": f"{__name__}.register"}


class MemoryHogConfig(CEDRConfig):
    """CEDR's hyperparameters, under this method's name."""

    name: Literal["memory_hog"] = "memory_hog"


class MemoryHog(CEDR):
    """CEDR; after every step its last worker (rank ``world - 1``; the only one in a single-process trial)
    keeps :data:`STEP_BYTES` more, written so that they count as used, while the node is below the ceiling."""

    Config = MemoryHogConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held: list[bytes] = []

    def after_step(self, step: int, total_steps: int) -> None:
        """CEDR's update, then one more block on the last worker."""
        super().after_step(step, total_steps)
        last = not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1
        used, total = node_memory()
        if last and used / total < float(os.environ["RAY_memory_usage_threshold"]) + OVERSHOOT:
            self.held.append(b"\1" * STEP_BYTES)


def register() -> None:
    """Make the method buildable as :data:`NAME` in this process."""
    register_method(NAME)(MemoryHog)
