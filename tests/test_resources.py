"""Per-trial resources: drivers and workers of concurrent trials always fit; impossible shapes fail fast."""

import pytest

from pointtune.search.resources import ResourceError, plan_resources


def _fits(plan, cpus, gpus):
    per = plan.per_trial()
    return plan.max_concurrent * per["CPU"] <= cpus + 1e-9 and plan.max_concurrent * per["GPU"] <= gpus + 1e-9


@pytest.mark.parametrize("cpus,gpus,workers,g,trials", [
    (2, 0, 2, 0, 2), (2, 0, 1, 0, 4), (16, 0, 2, 0, 8), (16, 4, 1, 0.5, 20), (8, 1, 2, 0.5, 3), (64, 8, 4, 1, 2),
])
def test_plans_fit(cpus, gpus, workers, g, trials):
    plan = plan_resources(cpus, gpus, workers, g, None, trials)
    assert _fits(plan, cpus, gpus)
    assert 1 <= plan.max_concurrent <= trials
    assert plan.cpus_per_worker > 0


def test_two_workers_on_two_cores_do_not_deadlock():
    # The platform-notes trap: a 0.01-CPU driver plus two 1-CPU workers needs 2.01 CPUs on a 2-core machine.
    plan = plan_resources(2, 0, workers=2, trials=2)
    assert plan.max_concurrent == 1
    assert plan.driver_cpus + 2 * plan.cpus_per_worker <= 2


def test_gpu_concurrency_follows_gpus():
    plan = plan_resources(32, 4, workers=1, gpus_per_worker=0.5, trials=10)
    assert plan.max_concurrent == 8


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_cpus=8, total_gpus=1, workers=2, gpus_per_worker=1), "GPUs, but the cluster has 1"),
    (dict(total_cpus=2, total_gpus=0, workers=2, max_concurrent=3), "do not fit"),
    (dict(total_cpus=0, total_gpus=0, workers=1), "CPUs"),
    (dict(total_cpus=4, total_gpus=0, workers=0), "--workers"),
])
def test_impossible_shapes_raise(kwargs, match):
    with pytest.raises(ResourceError, match=match):
        plan_resources(**kwargs)
