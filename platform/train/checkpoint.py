"""Training state on disk: model, optimizer, scheduler, AMP scaler, epoch, best score and RNG states.

One checkpoint is a directory holding ``state.pt`` (this module), ``metrics.json`` (the epoch's metrics, so
that the best checkpoint of a run can be chosen without loading models) and optional evaluation artefacts
(``confusion.npy``). Ray Train moves these directories to the run's storage; in local mode
(``num_workers=0``) Ray keeps no copy, so :class:`LocalCheckpoints` keeps the latest and the best.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA, if present) RNG states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when CUDA is present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/state.pt`` and its ``metrics`` (finite numbers) to
    ``directory/metrics.json`` (the directory is created); return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    metrics = {k: v for k, v in state.get("metrics", {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
    (directory / METRICS_FILE).write_text(json.dumps(metrics))
    return directory


def load_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read ``directory/state.pt``.

    Raises:
        FileNotFoundError: the directory holds no ``state.pt``; the message names it.
    """
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a pointtune checkpoint (no {STATE_FILE})")
    return torch.load(path, map_location=map_location, weights_only=False)


class LocalCheckpoints:
    """Latest and best checkpoint directories under ``root`` for local (in-process) runs.

    ``root/latest`` is replaced every epoch; ``root/best`` whenever the objective improves.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def latest(self) -> Path:
        """Directory of the most recent checkpoint."""
        return self.root / "latest"

    @property
    def best(self) -> Path:
        """Directory of the checkpoint with the best objective so far."""
        return self.root / "best"

    def commit(self, staged: Path, is_best: bool) -> Path:
        """Move a freshly written checkpoint directory into ``latest`` (and copy it to ``best``)."""
        if is_best:
            shutil.rmtree(self.best, ignore_errors=True)
            shutil.copytree(staged, self.best)
        shutil.rmtree(self.latest, ignore_errors=True)
        shutil.move(str(staged), self.latest)
        return self.latest
