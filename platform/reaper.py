"""The Ray instance a driver started dies with it: a watcher process for ``pointtune sweep`` / ``train``.

A driver that starts its own Ray instance (:func:`pointtune.cluster.init_ray` without an address) spawns
``python -m pointtune.reaper --pid <driver>`` in a session of its own. The watcher notes, every
``interval`` seconds, the processes descended from the driver (the GCS, the raylet, the dashboard and agents,
and through the raylet every Tune actor and Ray Train worker). When the driver ends without taking them
down (SIGKILL, a crash), it kills what is left of them, so no orphaned worker goes on training and writing
checkpoints that the sweep's saved state does not know (issue 12). A driver that shuts Ray down normally
leaves nothing to kill. Linux only (it reads ``/proc``); elsewhere it exits at once.

What the watcher has noted can be seen: with ``$POINTTUNE_REAPER_NOTES`` set to a file path (or ``--notes``),
it writes there, after every scan that changes it, ``{"driver": pid, "reaper": pid, "noted": [pids]}``: the
processes it would kill if the driver died now. Tests wait on that file instead of guessing how long a scan takes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["descendants", "watch", "start_reaper", "NOTES_ENV"]

NOTES_ENV = "POINTTUNE_REAPER_NOTES"  # where start_reaper's watcher writes what it has noted (module docstring)
_READY = "watching"  # the watcher's first line on stdout: it has made its first scan


def _parents() -> dict[int, int]:
    """``{pid: parent pid}`` of every process, from ``/proc/<pid>/stat``."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(roots: set[int]) -> set[int]:
    """Every live process descended from ``roots`` (the roots excluded)."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found - roots


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); empty if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), which tells a process from a later one given its pid."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def watch(pid: int, interval: float = 0.2, noted: Callable[[set[int]], None] | None = None) -> int:
    """Wait for process ``pid`` to end, then SIGKILL the processes that descended from it (noted every
    ``interval`` seconds while it lived, and their own descendants now). After every scan, ``noted`` (if given)
    is called with the pids noted. Returns how many processes were killed."""
    me = os.getpid()
    known: dict[int, str | None] = {}
    while _alive(pid):
        known = {p: _started(p) for p in descendants({pid}) - {me}}
        if noted is not None:
            noted(set(known))
        time.sleep(interval)
    # Only the processes noted (same start time: not a later process given a recycled pid) and theirs.
    still = {p for p, started in known.items() if started is not None and _started(p) == started}
    killed = 0
    for target in (still | descendants(still)) - {me}:
        try:
            os.kill(target, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            continue
    return killed


def _write_notes(path: Path, driver: int, noted: set[int]) -> None:
    """Write the note of the module docstring to ``path`` atomically (a reader sees a whole note, never part)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"driver": driver, "reaper": os.getpid(), "noted": sorted(noted)}))
    os.replace(partial, path)


def start_reaper() -> subprocess.Popen | None:
    """Spawn the watcher of this process (in its own session, so that a signal to the driver's process group
    does not reach it) and return once it has made its first scan: from then on, every process this one
    starts is noted within one scan interval. ``None`` where there is no ``/proc``. The watcher writes its
    notes to ``$POINTTUNE_REAPER_NOTES`` when that is set.

    Raises:
        RuntimeError: the watcher exited before its first scan.
    """
    if not Path("/proc").is_dir():
        return None
    notes = os.environ.get(NOTES_ENV)
    watcher = subprocess.Popen([sys.executable, "-m", "pointtune.reaper", "--pid", str(os.getpid()),
                                *(["--notes", notes] if notes else [])],
                               start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    with watcher.stdout:
        ready = watcher.stdout.readline()
    if not ready.startswith(_READY):
        raise RuntimeError(f"pointtune.reaper exited before watching this process (exit status {watcher.wait()})")
    return watcher


def main(argv: list[str] | None = None) -> int:
    """``python -m pointtune.reaper --pid PID [--interval S] [--notes FILE]``: prints ``watching PID`` once
    its first scan is made (what :func:`start_reaper` waits for), then watches."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--notes", type=Path, help="write what is noted to this JSON file (module docstring)")
    args = parser.parse_args(argv)
    if not Path("/proc").is_dir():
        return 0
    last: set[int] | None = None

    def noted(pids: set[int]) -> None:
        nonlocal last
        if args.notes is not None and pids != last:
            _write_notes(args.notes, args.pid, pids)
        if last is None:
            print(_READY, args.pid, flush=True)
        last = pids

    watch(args.pid, args.interval, noted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
