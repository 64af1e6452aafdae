"""A test-only method for tests/test_failures.py: CEDR whose last worker keeps 128 MB more after every optimizer
step, until Ray's memory monitor kills it. It makes a real memory-monitor kill happen inside a `pointtune` run.

Every process of the run finds the method as a plugin (an entry point of ``pointtune.methods``, declared by
the test distribution of ``conftest.plugin_path``), as a method of another package would be found. Run the
command with :func:`hog_env`.

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


def hog_env(threshold: float, plugin_path: str) -> dict[str, str]:
    """The environment of a command whose Ray instance kills workers above ``threshold`` (a fraction of the
    node's memory, checked every 100 ms) and whose processes find this method (``plugin_path``: the PYTHONPATH
    of ``conftest.plugin_path``)."""
    return {**os.environ, "PYTHONPATH": plugin_path, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
            "RAY_memory_usage_threshold": f"{threshold:.2f}", "RAY_memory_monitor_refresh_ms": "100"}


class MemoryHogConfig(CEDRConfig):
    """CEDR's hyperparameters, under this method's name."""

    name: Literal["memory_hog"] = "memory_hog"


@register_method(NAME)
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
