"""Ray hygiene: a sweep never attaches to, nor is confused by, a Ray instance it did not start (the data-parallel
sweep of test_sweep runs beside one), and a cluster address that does not answer fails in seconds with the
address named."""

import csv
import time

import pytest

from helpers import pointtune, scaled, start_other_ray, stop_ray_instance, write_space

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def other_ray(tmp_path_factory):
    """One unrelated instance for the module's tests (started once: ~8 s each time)."""
    address = start_other_ray(tmp_path_factory.mktemp("other_ray"))
    yield address
    stop_ray_instance(address)


def test_unreachable_address_fails_in_seconds(tmp_path):
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2}})
    began, bound = time.time(), scaled(30)
    proc = pointtune("sweep", "cedr", "--space", str(space), "--address", "127.0.0.1:1", "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and time.time() - began < bound
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pointtune: error: --address 127.0.0.1:1") and "no Ray cluster answers" in last
    assert not (tmp_path / "o").exists()


PROBE = """
import json, os
import ray
from pointtune.cluster import init_ray

gcs = init_ray(None, dashboard=True)

@ray.remote(num_cpus=0)
def probe():
    from ray.util.state import list_nodes  # resolves the cluster address on its own, like Train's cleaner
    return os.environ.get("RAY_ADDRESS"), [n.node_id for n in list_nodes()]

address, nodes = ray.get(probe.remote())
print(json.dumps({"gcs": gcs, "address": address, "nodes": nodes, "mine": ray.get_runtime_context().get_node_id()}))
"""


def test_every_ray_process_knows_its_cluster(other_ray):
    # The root of the hang: a Ray worker that asks the State API without an address must reach the cluster
    # it belongs to, not the latest one `ray start` left on the machine.
    import json
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=scaled(180))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    port = seen["gcs"].rsplit(":", 1)[1]
    assert seen["address"].rsplit(":", 1)[1] == port != other_ray.rsplit(":", 1)[1]
    assert seen["nodes"] == [seen["mine"]]


def test_unplaceable_workers_fail_the_trial_in_bounded_time(tmp_path):
    # The plan fits the cluster's nodes, but something else holds most of the CPUs: the trial's 2 workers
    # cannot be placed, and after --worker-start-timeout the trial fails with one line naming what it waited
    # for, instead of Ray Train retrying for ever. The sweep exits non-zero and stays resumable.
    import socket

    import ray
    from ray.cluster_utils import Cluster

    with socket.socket() as sock:  # a free dashboard port: 8265 may be another instance's
        sock.bind(("127.0.0.1", 0))
        dashboard_port = sock.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                            "dashboard_port": dashboard_port})
    try:
        ray.init(address=cluster.address)
        blocker = ray.util.placement_group([{"CPU": 1.5}])
        ray.get(blocker.ready(), timeout=60)
        space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2}})
        out = tmp_path / "run"
        began, bound = time.time(), scaled(200)
        proc = pointtune("sweep", "cedr", "--space", str(space), "--trials", "1", "--epochs", "1", "--workers", "2",
                         "--address", cluster.address, "--worker-start-timeout", "5", "--output", str(out),
                         timeout=300)
        assert proc.returncode == 1 and time.time() - began < bound, proc.stderr[-3000:]
        assert "no trial of the sweep succeeded" in proc.stderr
        (row,) = list(csv.DictReader((out / "summary.csv").open()))
        assert row["status"] == "FAILED" and "could not be placed within 5 s" in row["error"], row["error"]
        assert "'CPU': 0.95" in row["error"]  # the resources it waited for
        assert (out / "tune").is_dir()  # resumable: `pointtune resume` restores it
    finally:
        ray.shutdown()
        cluster.shutdown()
