"""Why a Ray run failed, in one line: what a failed sweep trial records (``summary.csv``, MLflow's
``pointtune.failure``, the Optuna trial's ``failure``) and what a failed ``pointtune train`` prints.

Where Ray (2.60) puts the cause, as the driver receives it:

- A Ray Train run raises ``ray.train.WorkerGroupError`` (``worker_failures``: rank -> error) or
  ``ray.train.ControllerError`` (``controller_failure``). A worker whose process died is a
  ``WorkerHealthCheckFailedError``: "A worker health check failed.", the worker's metadata (``pid=...``),
  then the error of the call that found it dead (``health_check_failure``).
- A process that Ray's memory monitor killed makes that error a ``ray.exceptions.OutOfMemoryError`` holding
  the raylet's report: "N worker(s) were killed due to the node running low on memory. Memory on the node
  (IP: ..., ID: ...) was U GB used / T GB limit (...)", "OOM kill reason: Memory usage ...B exceeded
  threshold of ...B (...% of ...B limit)", and "Selected to kill: (... pid=P, actual memory used=M GB ...)"
  per process killed. A trial whose own actor, Train controller or Tune result queue was killed gets that
  error itself. ``ray.util.state.get_actor(id).death_cause["oom_context"]`` holds the same
  report for the dead actor.

The report is in the text of every one of these, whether the reason is made from the live exception (in the
trial, in ``pointtune train``) or from the text Tune saved for the trial (in the sweep's driver), so the
reason is read from that text. This module imports neither Ray nor the rest of pointtune.
"""

from __future__ import annotations

import re

MAX_CHARS = 500  # the longest reason kept
# The raylet's report of a memory-monitor kill (src/ray/raylet/node_manager.cc in Ray 2.60).
_KILLED = re.compile(r"(\d+) worker\(s\) were killed due to the node running low on memory")
_NODE = re.compile(r"Memory on the node \(IP: ([^,]+), ID: \w+\) was ([\d.]+) ?GB used / ([\d.]+) ?GB limit")
_THRESHOLD = re.compile(r"exceeded threshold of (\d+)B \([\d.]+% of (\d+)B limit\)")
_PID = re.compile(r"\bpid=(\d+)")
_ACTOR_ID = re.compile(r"\bactor_id[=:] ?([0-9a-f]+)")
# What a worker whose process ended or stopped answering fails with (the others' errors follow from it).
_DEATH_MARKS = ("ActorDied", "ActorUnavailable", "health check", "died")


def failure_reason(error: BaseException | str | None) -> str:
    """One line saying why a run failed, at most :data:`MAX_CHARS` characters:

    - failed Ray Train workers: ``worker <rank>: <its reason>`` for the worker that died first (see
      :func:`worker_failure`);
    - processes killed by Ray's memory monitor: ``killed by Ray's memory monitor (node <ip> used U of T GB,
      above its <fraction> threshold; ...)`` or ``Ray's memory monitor killed N Ray processes (...)`` (see
      :func:`memory_kill`);
    - otherwise the innermost error, ``Type: message``.

    Args:
        error: a ``ray.train.WorkerGroupError`` / ``ControllerError``, a Ray core error (``OutOfMemoryError``,
            ``ActorDiedError``, ``RayTaskError``), any exception, or the text Tune recorded for a trial;
            None when nothing is known.
    """
    workers = getattr(error, "worker_failures", None)  # ray.train.WorkerGroupError
    if workers:
        return worker_failure(workers)
    cause = getattr(error, "controller_failure", None)  # ray.train.ControllerError
    if cause is not None:
        return failure_reason(cause)
    text = str(error or "unknown error")
    return (memory_kill(text) or _innermost_error(text))[:MAX_CHARS]


def worker_failure(workers: dict[int, BaseException]) -> str:
    """One line for the failed workers of a Ray Train run (``WorkerGroupError.worker_failures``): the worker
    that the memory monitor killed, else the one that died first (its process ended or stopped answering;
    the others' errors, e.g. gloo's "Connection reset by peer", follow from it), else the lowest rank, with
    how many others failed with it.

    Args:
        workers: rank -> the error of that worker (at least one).
    """
    def order(item: tuple[int, BaseException]) -> tuple[bool, bool, int]:
        text = f"{type(item[1]).__name__}: {item[1]}"
        return _KILLED.search(text) is None, not any(mark in text for mark in _DEATH_MARKS), item[0]

    rank, error = min(workers.items(), key=order)
    others = len(workers) - 1
    return f"worker {rank}: {failure_reason(error)}" + (f" ({others} other worker(s) failed with it)" if others else "")


def memory_kill(text: str) -> str | None:
    """The kill by Ray's memory monitor that ``text`` reports, in one line; None if it reports none.

    ``killed by Ray's memory monitor (node 10.0.0.3 used 22.6 of 23.5 GB, above its 0.95 threshold; it held
    6.5 GB; 3 Ray processes killed)`` when the failed process is among those killed (``text`` names it before
    the report: ``pid=...`` in a Train worker's metadata, ``actor_id...`` in an actor's death), else
    ``Ray's memory monitor killed 3 Ray processes (node ...)`` (e.g. a trial whose result queue's actor was
    killed). The figures are the raylet's:
    the node's address, its memory in use and in all (GB as Ray prints them, i.e. GiB), and the kill threshold
    (``RAY_memory_usage_threshold``, a fraction of the node's memory); a part Ray did not report is left out.

    Args:
        text: an error's message or traceback, e.g. ``str(OutOfMemoryError)``.
    """
    killed = _KILLED.search(text)
    if killed is None:
        return None
    report, count = text[killed.start():], int(killed[1])
    processes = f"{count} Ray process{'es' if count != 1 else ''}"
    parts = []
    node, threshold = _NODE.search(report), _THRESHOLD.search(report)
    if node:
        parts.append(f"node {node[1]} used {node[2]} of {node[3]} GB"
                     + (f", above its {int(threshold[1]) / int(threshold[2]):.3g} threshold" if threshold else ""))
    held = _held(text[:killed.start()], report)
    if held is None:
        return f"Ray's memory monitor killed {processes}" + (f" ({parts[0]})" if parts else "")
    return f"killed by Ray's memory monitor ({'; '.join([*parts, f'it held {held} GB', f'{processes} killed'])})"


def _held(before: str, report: str) -> str | None:
    """The GB that the process ``before`` names last (``pid=...``, ``actor_id...``) held when the monitor killed
    it, from the report's "Selected to kill" lines; None if it is not among them."""
    marks = [rf"\bpid={pid}," for pid in _PID.findall(before)[-1:]]
    marks += [rf"\(Actor\({actor}\)" for actor in _ACTOR_ID.findall(before)[-1:]]
    for line in report.splitlines():
        if line.startswith("Selected to kill:") and any(re.search(mark, line) for mark in marks):
            used = re.search(r"actual memory used=([\d.]+) ?GB", line)
            return used[1] if used else None
    return None


def _innermost_error(text: str) -> str:
    """The last ``Type: message`` line of a traceback or message (not a source line), else its first line."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if "Error:" in line and not line.startswith(("File", "raise")):
            return line
    return (text.strip().splitlines() or ["unknown error"])[0]
