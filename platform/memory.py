"""The memory a process holds and the most it held, on the CPU (resident set size) or on a CUDA device.

Linux keeps a process's peak resident set size (``VmHWM`` in ``/proc/self/status``) and resets it when ``5`` is
written to ``/proc/self/clear_refs`` (Linux >= 4.0), so the peak of one piece of work can be measured in the
process that does it: :func:`reset_peak`, the work, :func:`peak_bytes`. Where the reset is not allowed the peak
is the process's since it started (``getrusage``), which can only overstate a step's own.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

import torch

__all__ = ["rss_bytes", "peak_bytes", "reset_peak"]

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def rss_bytes(device: torch.device | None = None) -> int:
    """Bytes held now: the process's resident set size on the CPU (``device`` None or CPU), or what PyTorch has
    allocated on ``device`` (CUDA)."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    kib = _status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak(device: torch.device | None = None) -> bool:
    """Start a new peak: PyTorch's peak statistics of ``device`` (CUDA), or the process's peak resident set size
    (CPU). Returns whether the CPU peak could be reset (False: :func:`peak_bytes` is the peak since the process
    started)."""
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_bytes(device: torch.device | None = None) -> int:
    """The most bytes held since the last :func:`reset_peak` (or since the start): the peak resident set size on
    the CPU, ``torch.cuda.max_memory_allocated`` on a CUDA ``device``."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    kib = _status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
