"""Per-trial resources, planned node by node: every bundle of the concurrent trials is placed on a node that
exists, impossible shapes fail fast with the nodes named, drivers go where the cluster says they belong."""

import pytest

from pointtune.search.resources import DRIVER_RESOURCE, ResourceError, fits, plan_resources


def node(cpus, gpus=0, **custom):
    return {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {}), **custom}


def _placed(plan, nodes):
    """Brute force: the plan's bundles fit when placed one node at a time (any order found by fits)."""
    return fits(nodes, plan.bundles() * plan.max_concurrent)


@pytest.mark.parametrize("nodes,workers,g,trials", [
    ([node(2)], 2, 0, 2), ([node(2)], 1, 0, 4), ([node(16)], 2, 0, 8), ([node(16, 4)], 1, 0.5, 20),
    ([node(8, 1)], 2, 0.5, 3), ([node(64, 8)], 4, 1, 2), ([node(1), node(1)], 1, 0, 2), ([node(1)] * 8, 2, 0, 4),
    ([node(6, 0, **{DRIVER_RESOURCE: 1000}), node(4, 1), node(4, 1)], 2, 1, 4),
])
def test_plans_fit_per_node(nodes, workers, g, trials):
    plan = plan_resources(nodes, workers, g, None, trials)
    assert _placed(plan, nodes)
    assert 1 <= plan.max_concurrent <= trials
    assert plan.cpus_per_worker > 0
    assert plan.cpus_per_worker < 1 or float(plan.cpus_per_worker).is_integer()  # what Ray accepts
    assert plan.cpus_per_worker <= max(n["CPU"] for n in nodes)


def test_fits_is_per_node_not_total():
    assert not fits([node(1), node(1)], [{"CPU": 2.0}])
    assert fits([node(1), node(1)], [{"CPU": 1.0}, {"CPU": 1.0}])
    assert not fits([node(4, 1), node(4, 1)], [{"CPU": 1.0, "GPU": 1.0}] * 3)


def test_one_cpu_nodes_never_get_two_cpu_workers():
    # The cluster of 1-CPU nodes: the old plan asked for "1 workers x 2 CPU", which no node has.
    plan = plan_resources([node(1), node(1)], workers=1, trials=2)
    assert plan.cpus_per_worker == 1 and plan.max_concurrent == 2


def test_two_workers_on_two_cores_do_not_deadlock():
    # The platform-notes trap: a driver plus two 1-CPU workers needs 2.1 CPUs on a 2-core machine.
    plan = plan_resources([node(2)], workers=2, trials=2)
    assert plan.max_concurrent == 1
    assert plan.driver_cpus + 2 * plan.cpus_per_worker <= 2


def test_single_process_trial_takes_the_cores_it_can():
    one = plan_resources([node(2)], workers=1, trials=1)
    assert one.single_process and one.max_concurrent == 1 and one.cpus_per_worker == 2
    assert one.trial_bundle() == {"CPU": 2.0} and one.bundles() == [{"CPU": 2.0}]
    many = plan_resources([node(2)], workers=1, trials=6)
    assert many.max_concurrent == 2 and many.cpus_per_worker == 1


def test_gpu_concurrency_follows_gpus():
    plan = plan_resources([node(32, 4)], workers=1, gpus_per_worker=0.5, trials=10)
    assert plan.max_concurrent == 8


def test_drivers_pinned_to_the_declared_resource():
    nodes = [node(6, 0, **{DRIVER_RESOURCE: 1000}), node(4, 1), node(4, 1)]
    plan = plan_resources(nodes, workers=2, gpus_per_worker=1, trials=3)
    assert plan.driver_resource == DRIVER_RESOURCE and plan.driver_cpus == 0
    assert plan.trial_bundle()[DRIVER_RESOURCE] > 0
    assert plan.max_concurrent == 1  # two GPUs: one 2-GPU trial at a time


@pytest.mark.parametrize("kwargs,match", [
    (dict(nodes=[node(8, 1)], workers=2, gpus_per_worker=1), "GPUs, but the cluster has 1"),
    (dict(nodes=[node(2)], workers=2, max_concurrent=3, trials=3), "do not fit"),
    (dict(nodes=[node(0)], workers=1), "no CPUs"),
    (dict(nodes=[node(4)], workers=0), "--workers"),
    (dict(nodes=[node(1), node(1)], workers=1, cpus_per_worker=2), "2 node"),
    (dict(nodes=[node(4)], workers=1, cpus_per_worker=1.5), "--cpus-per-worker"),
    (dict(nodes=[node(4)], workers=1, max_concurrent=0), "--max-concurrent"),
])
def test_impossible_shapes_raise(kwargs, match):
    with pytest.raises(ResourceError, match=match):
        plan_resources(**kwargs)


def test_plans_include_the_nodes_an_autoscaler_may_add():
    from pointtune.cluster import addable_nodes, planning_nodes

    config = {"max_workers": 3, "head_node_type": "head",
              "available_node_types": {"head": {"resources": {"CPU": 6, "GPU": 0, DRIVER_RESOURCE: 1000}},
                                       "gpu_1x": {"max_workers": 8, "resources": {"CPU": 4, "GPU": 1}}}}
    addable = addable_nodes(config)
    assert addable == [{"CPU": 4.0, "GPU": 1.0}] * 3  # the config's max_workers bounds every type together
    head = {"CPU": 6.0, DRIVER_RESOURCE: 1000.0, "node:10.0.0.1": 1.0, "memory": 1e9}
    running = {"CPU": 4.0, "GPU": 1.0, "node:10.0.0.2": 1.0}
    nodes = planning_nodes([head, running], addable)
    assert len(nodes) == 4  # the running GPU node is one of the three the autoscaler may have
    plan = plan_resources(nodes, workers=1, gpus_per_worker=1, trials=8)
    assert plan.max_concurrent == 3 and plan.cpus_per_worker == 4
    assert addable_nodes({}) == []


def test_memory_is_planned_like_cpus():
    """--memory-per-worker: Ray's memory resource in every worker's bundle, and no node gets more workers than
    its memory holds (16 CPUs but 24 GB: three 8-GB single-process trials, not sixteen)."""
    big = node(16, memory=24e9)
    plan = plan_resources([big], workers=1, trials=10, memory_per_worker=8)
    assert plan.max_concurrent == 3 and plan.worker_bundle()["memory"] == 8e9 and _placed(plan, [big])
    assert not fits([big], plan.bundles() * 4)
    dp = plan_resources([node(8, memory=20e9), node(8, memory=20e9)], workers=2, trials=4, memory_per_worker=6)
    assert dp.max_concurrent == 3                                     # 3 workers of 6 GB a node, 2 a trial
    assert [b.get("memory", 0) for b in dp.bundles()] == [0, 6e9, 6e9]   # the driver holds no memory
    assert "memory" not in plan_resources([big], workers=1, trials=2).worker_bundle()   # not planned by default
    with pytest.raises(ResourceError, match=r"one trial needs .*'memory': 30000000000.0.*16 CPU/0 GPU/24.0 GB"):
        plan_resources([big], workers=1, trials=1, memory_per_worker=30)
    with pytest.raises(ResourceError, match="--memory-per-worker must be a number of GB > 0"):
        plan_resources([big], workers=1, memory_per_worker=0)


def test_memory_warning_when_the_estimate_does_not_fit():
    from pointtune.search.resources import memory_warning

    nodes = [node(16, memory=24e9)]
    plan = plan_resources(nodes, workers=2, trials=8)                 # 7 trials of 2 x 1 CPU at once
    assert memory_warning(plan, nodes, 1e9) is None                   # 14 GB of 24
    text = memory_warning(plan, nodes, 4e9)                           # 56 GB of 24
    assert text.startswith("[pointtune] warning: 7 trial(s) x 2 worker(s) x ~4.0 GB") and "--memory-per-worker 4" in text
    assert memory_warning(plan_resources(nodes, workers=1, trials=1), nodes, 30e9) is not None   # one too big
