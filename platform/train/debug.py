"""``pointtune train --fast-dev-run``: a whole run, cut short, to check a config or a code change in seconds.

The name is PyTorch Lightning's. The run is a real one through the same loop, records and checkpoints as any
``pointtune train``: one epoch of :data:`FAST_DEV_RUN`'s one batch of two clouds (scenes: two crops), every
judged split (the protocol's fit, validation and test splits) cut to two items of different classes (scenes: two scenes)
(``train.limit_batches``: :meth:`pointtune.protocols.EvalSplits.limited`), the protocol run on them in its
quick settings (:attr:`Protocol.fast <pointtune.protocols.base.Protocol.fast>`), one
checkpoint written, and :func:`read_back` rebuilding the model from that checkpoint alone. A method that
trains another run first (SCL's stage 1) has that run cut the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pointtune.config import ExperimentConfig, PlannedPrerequisite, build_config

__all__ = ["FAST_DEV_RUN", "fast_dev_run", "fast_dev_prerequisite", "read_back"]

#: The settings ``--fast-dev-run`` puts over the run's config.
FAST_DEV_RUN = {"train.epochs": 1, "train.limit_batches": 1, "train.batch_size": 2, "train.eval_batch_size": 2}


def fast_dev_run(exp: ExperimentConfig) -> ExperimentConfig:
    """``exp`` with :data:`FAST_DEV_RUN` over it, and the quick settings of its protocol
    (:attr:`Protocol.fast <pointtune.protocols.base.Protocol.fast>`, e.g. ``scene_seg`` scores the split's own
    crops instead of whole scenes).

    Raises:
        ConfigError: the result is not a valid config (names the key).
    """
    from pointtune.protocols import selected_protocol

    quick = {f"protocol.{key}": value for key, value in selected_protocol(exp).fast.items()}
    return build_config(exp.method.name, exp.to_dict(), {**FAST_DEV_RUN, **quick}, source="--fast-dev-run")


def fast_dev_prerequisite(pre: PlannedPrerequisite) -> PlannedPrerequisite:
    """The prerequisite run (its config and stand-in) cut like the run itself (its own overrides, e.g. SCL's
    ``method.stage1.epochs``, set its epochs otherwise)."""
    return dataclasses.replace(pre, config=fast_dev_run(pre.config), stand_in=fast_dev_run(pre.stand_in))


def read_back(run_dir: str | Path) -> str:
    """Rebuild the model of the run in ``run_dir`` from its best checkpoint alone, every weight loaded strictly
    (:func:`pointtune.train.load.load_method`).

    Returns:
        The checkpoint directory read.

    Raises:
        CheckpointNotFoundError, ConfigError: as :func:`~pointtune.train.load.load_method`: no checkpoint, or
            one that does not rebuild its model.
    """
    from pointtune.train.load import load_method

    return str(load_method(run_dir).path)
