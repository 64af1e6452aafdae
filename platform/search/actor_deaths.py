"""A trial whose actor dies (Ray's memory monitor killed it, or its process ended) fails alone and is saved as
failed; two defects of Ray Tune 2.60, patched in the sweep's driver by :func:`tolerate_actor_deaths`:

1. Tune learns of a memory-monitor kill of a trial's actor as a ``ray.exceptions.OutOfMemoryError`` from the
   actor's task. Its actor manager (``RayActorManager._actor_task_failed``) handles only ``RayActorError``
   (the actor died: the trial fails) and ``RayTaskError`` (the task raised), and raises ``RuntimeError("Caught
   unexpected exception: ...")`` for anything else, out of ``Tuner.fit``: the sweep stops with every other
   trial, nothing is summarized, the trial's MLflow run and Optuna trial stay open. The patch hands Tune the
   kill as what it is, the actor's death (:func:`death_by_memory_kill`), which becomes the trial's error and
   recorded reason (:func:`pointtune.failures.failure_reason`).
2. ``TuneController._schedule_trial_stop`` marks a trial for the experiment state only when its actor is
   still alive; a trial whose actor died is ERROR in the driver but stays RUNNING in the saved state, so the
   sweep reads as interrupted (:class:`~pointtune.search.sweep.SweepInterrupted`) and nothing is summarized.
   The patch marks every stopped trial.

Both measured with a single-process trial whose method kept allocating until the monitor killed its actor
(tests/test_failures.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.exceptions import ActorDiedError

_patched = False


def death_by_memory_kill(kill: Exception, actor_id: str | None) -> ActorDiedError:
    """The ``ray.exceptions.ActorDiedError`` of an actor (hex ``actor_id``, if known) that Ray's memory monitor
    killed, as Ray words a death (``actor_id: ...``), followed by the kill's ``OutOfMemoryError`` message (the
    raylet's report, from which :func:`pointtune.failures.memory_kill` reads what the actor held)."""
    from ray.exceptions import ActorDiedError

    died = ActorDiedError()
    died.actor_id = actor_id
    died.error_msg = "\n".join([died.error_msg, *([f"\tactor_id: {actor_id}"] if actor_id else []), str(kill)])
    return died


def tolerate_actor_deaths() -> None:
    """Patch Tune's ``RayActorManager._actor_task_failed`` and ``TuneController._schedule_trial_stop`` in this
    process, once (see the module doc)."""
    global _patched
    if _patched:
        return
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.exceptions import OutOfMemoryError
    from ray.tune.execution.tune_controller import TuneController

    task_failed, schedule_stop = RayActorManager._actor_task_failed, TuneController._schedule_trial_stop

    def actor_task_failed(self, tracked_actor_task, exception: Exception):
        if isinstance(exception, OutOfMemoryError):
            live = self._live_actors_to_ray_actors_resources.get(tracked_actor_task._tracked_actor)
            exception = death_by_memory_kill(exception, live[0]._actor_id.hex() if live else None)
        return task_failed(self, tracked_actor_task, exception)

    def schedule_trial_stop(self, trial, *args, **kwargs):
        schedule_stop(self, trial, *args, **kwargs)
        self._mark_trial_to_checkpoint(trial)

    RayActorManager._actor_task_failed = actor_task_failed
    TuneController._schedule_trial_stop = schedule_trial_stop
    _patched = True
