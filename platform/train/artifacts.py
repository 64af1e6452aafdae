"""What a run's best checkpoint shows in MLflow: its config, confusion matrix, feature spectrum, scene renders
and the checkpoint itself, for a ``pointtune train`` run and a sweep trial alike."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from pointtune import tracking
from pointtune.metrics import plot_confusion_matrix
from pointtune.train.checkpoint import fetch, load_state


def log_checkpoint_artifacts(uri: str, run_id: str, checkpoint: str, title: str) -> None:
    """Log ``config.yaml``, ``confusion_matrix.png`` (if the checkpoint has one), ``feature_spectrum.png`` (the
    feature-collapse plot of DCGLR Fig. 5b, if it has a ``spectrum.npy``), ``scenes/<i>_<scene>.png`` (ground
    truth beside prediction of the validation scenes whose points the ``scene_seg`` protocol kept,
    :func:`pointtune.protocols.scene_seg.render_checkpoint_scenes`) and the checkpoint itself
    (``best_checkpoint/``) to a run; ``checkpoint`` may be a local path or a storage URI."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local = fetch(checkpoint, tmp / "best_checkpoint")
        if local != tmp / "best_checkpoint":  # a local checkpoint: copy it before anything can remove it
            local = Path(shutil.copytree(local, tmp / "best_checkpoint"))
        state = load_state(local)
        (tmp / "config.yaml").write_text(yaml.safe_dump(state["experiment"], sort_keys=False))
        tracking.log_artifact(uri, run_id, tmp / "config.yaml")
        if (local / "confusion.npy").exists():
            plot_confusion_matrix(np.load(local / "confusion.npy"), state["class_names"],
                                  str(tmp / "confusion_matrix.png"),
                                  title=f"{title}, epoch {state['epoch'] + 1} (validation)")
            tracking.log_artifact(uri, run_id, tmp / "confusion_matrix.png")
        if (local / "spectrum.npy").exists():
            from pointtune.protocols.spectrum import log_spectrum, plot_spectrum

            spectrum = np.load(local / "spectrum.npy")
            if spectrum.size and np.isfinite(spectrum).all():  # NaN: the features were not finite
                plot_spectrum(log_spectrum(spectrum), str(tmp / "feature_spectrum.png"),
                              title=f"{title}, epoch {state['epoch'] + 1} (training-split features)")
                tracking.log_artifact(uri, run_id, tmp / "feature_spectrum.png")
        if (local / "scene_coord.npy").exists():  # scene_seg: ground truth beside prediction of validation scenes
            from pointtune.protocols.scene_seg import render_checkpoint_scenes

            oblique = bool((state["experiment"].get("protocol") or {}).get("render_oblique", True))
            if render_checkpoint_scenes(local, state["class_names"], tmp / "scenes", oblique=oblique,
                                        title=f"{title}, epoch {state['epoch'] + 1} (validation)"):
                tracking.log_artifact(uri, run_id, tmp / "scenes", "scenes")
        tracking.log_artifact(uri, run_id, local, "best_checkpoint")
