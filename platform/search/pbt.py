"""Population-based training (Jaderberg et al. 2017) for schedule-like hyperparameters: Ray Tune's
``PopulationBasedTraining`` over a sweep's search space, the alternative to Optuna + ASHA
(``pointtune sweep ... --scheduler pbt``).

The initial population is drawn from the space (every parameter, the ``when`` conditions applied when a
trial's config is built). Every ``perturbation_interval`` epochs the trials of the bottom quartile copy the
checkpoint and the config of a top-quartile trial (exploit) and change the parameters marked ``perturb`` in
the space file (explore): multiplied by one of the two factors (clipped to ``[low, high]``), or resampled.
The loop resumes the copied checkpoint as it resumes any other, and the schedules are functions of the epoch,
so a trial continues the copied run under its new values. PBT runs synchronously (the population waits at
every interval), so every trial's record keeps one value per epoch.

Ray Tune's PBT takes no search algorithm, so a PBT sweep has no Optuna study; what each trial followed is in
its MLflow run (``param/<key>`` and ``sched/<key>`` per epoch, ``pbt/exploit`` where it copied another).
"""

from __future__ import annotations

import random
from typing import Any

from pointtune.config import ConfigError
from pointtune.search.space import SearchSpace

__all__ = ["pbt_scheduler", "population_space"]


def population_space(space: SearchSpace) -> dict[str, Any]:
    """Tune ``param_space`` of the initial population: every parameter as a Tune domain (fixed ones as
    values)."""
    return {p.key: p.domain() for p in space.params if p.type != "same"}


def pbt_scheduler(space: SearchSpace, perturbation_interval: int, max_epochs: int, seed: int = 0):
    """A synchronous ``PopulationBasedTraining`` on the ``epoch`` attribute that perturbs the parameters the
    space marks ``perturb``, never at a trial's last epoch (``max_epochs``: a trial restarted there would
    have nothing left to train and would end as a copy of its donor).

    Ray Tune applies one pair of factors to every perturbed parameter (``perturbation_factors``), so every
    ``{factor: [a, b]}`` in a space must be the same pair.

    Raises:
        ConfigError: no parameter is marked ``perturb``, or factor pairs differ (names the space file).
    """
    from ray.tune.schedulers import PopulationBasedTraining

    marked = [p for p in space.params if p.perturb is not None]
    if not marked:
        raise ConfigError(f"{space.source}: --scheduler pbt: no parameter is marked `perturb:` (e.g. "
                          "`perturb: {factor: [0.8, 1.2]}` or `perturb: resample`), so PBT would change nothing")
    factored = [p for p in marked if p.perturb != "resample"]
    pairs = {p.perturb for p in factored}
    if len(pairs) > 1:
        raise ConfigError(f"{space.source}: perturb: Ray Tune's PBT uses one pair of factors for every parameter; "
                          f"found {sorted(pairs)} ({', '.join(p.key for p in factored)})")
    factors = next(iter(pairs)) if pairs else (0.8, 1.2)
    resampled = [p for p in marked if p.perturb == "resample"]
    rng = random.Random(seed)

    def explore(config: dict[str, Any]) -> dict[str, Any]:
        """After Tune's perturbation by the factors: resample the ``resample`` parameters, clip the others."""
        for param in resampled:
            config[param.key] = param.domain().sample(random_state=rng.randrange(2**31))
        for param in factored:
            config[param.key] = param.clip(config[param.key])
        return config

    class SynchronousPBT(PopulationBasedTraining):
        """Tune's synchronous PBT, kept off the last epoch and safe to resume.

        After perturbing the population Tune sets the next synchronisation point to
        ``max(previous point + interval, latest epoch)``. A resumed sweep gets the scheduler as it was
        created (point = one interval) while its trials come back at a later epoch ``e``: the next point
        is then ``e`` itself, no paused trial is ever earlier than it, ``choose_trial_to_run`` picks none
        and the sweep spins for ever. Here the next point is always at least one interval past the latest
        epoch, which changes nothing in an uninterrupted sweep.
        """

        def on_trial_result(self, tune_controller, trial, result):
            if result.get("epoch", 0) >= max_epochs:
                return self.CONTINUE
            point = self._next_perturbation_sync
            decision = super().on_trial_result(tune_controller, trial, result)
            if self._next_perturbation_sync != point:  # the population was just perturbed
                latest = max(self._trial_state[t].last_train_time for t in tune_controller.get_trials())
                self._next_perturbation_sync = max(self._next_perturbation_sync,
                                                   latest + self._perturbation_interval)
            return decision

    return SynchronousPBT(
        time_attr="epoch",
        perturbation_interval=perturbation_interval,
        hyperparam_mutations={p.key: p.domain() for p in factored},
        custom_explore_fn=explore,
        perturbation_factors=(factors[1], factors[0]),
        resample_probability=0.0,
        quantile_fraction=0.25,
        synch=True,
    )
