"""Shared fixtures: paths of the real samples in ../shared/data and small configs that train in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# libgomp's threads (torch's CPU kernels) spin while they wait for work by default: with two busy processes on
# two cores (TEST_WORKERS=2's xdist workers, or a CLI run beside Ray's workers) each spinning thread holds a core
# the other needs. Measured here: two DGCNN fast-dev-runs at once took 62 s spinning and 33 s passive (one alone
# about 27 s). Set before anything imports torch; subprocesses and Ray workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A CEDR experiment small enough to train an epoch in about a second on one CPU core.
TINY = {
    "method.backbone.name": "pointnet",
    "method.backbone.emb_dims": 64,
    "data.num_points": 128,
    "data.synthetic_per_class": 16,
    "train.batch_size": 16,
    "train.eval_batch_size": 64,
}


@pytest.fixture(autouse=True, scope="session")
def private_dataset_cache(tmp_path_factory):
    """The suite's cache (built datasets, the empty MLflow store) lives in its own temporary directory
    (subprocesses inherit it), never in the user's ``~/.cache``."""
    os.environ["POINTTUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("pointtune-cache"))
    yield
    os.environ.pop("POINTTUNE_CACHE_DIR", None)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; the test is skipped where it is absent (only there)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


PLUGINS = Path(__file__).resolve().parent / "plugin_methods"


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> str:
    """A PYTHONPATH on which the test-only methods of tests/plugin_methods are plugins: a distribution declaring
    them as entry points of ``pointtune.methods``, as another installed package would (README: Adding a
    method). Give it to the processes that must find them (a CLI command and the Ray workers it starts)."""
    site = tmp_path_factory.mktemp("plugin-site")
    info = site / "pointtune_test_methods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pointtune-test-methods\nVersion: 0.1\n")
    names = sorted(p.stem for p in PLUGINS.glob("*.py"))
    (info / "entry_points.txt").write_text("[pointtune.methods]\n" + "".join(f"{n} = {n}\n" for n in names))
    return os.pathsep.join(filter(None, [str(site), str(PLUGINS), os.environ.get("PYTHONPATH")]))
