"""The ``classification`` protocol: a supervised method's own classifier, scored by OA, mAcc, macro F1 and
per-class accuracy (the usual ModelNet40 / ScanObjectNN evaluation: PointNet, DGCNN)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from pointtune import distributed as dist
from pointtune.method import Method, Task
from pointtune.metrics import classification_metrics, confusion_matrix
from pointtune.protocols.base import Protocol, ProtocolConfig, Result, register_protocol, shard_loader, to_device


@register_protocol("classification", default_for=[Task.CLASSIFICATION])
class Classification(Protocol):
    """Argmax of ``method.predict`` (``(B, K)`` logits) on the ``eval`` split.

    Each worker predicts its shard (:func:`~pointtune.protocols.base.shard_loader`); the ``(K, K)``
    confusion matrices are summed over workers (``all_reduce_sum``), so the metrics are exactly those of one
    process. Reports ``OA``, ``mAcc``, ``F1`` (macro, over classes present) and, through
    :func:`pointtune.protocols.evaluate`, ``acc/<class>``. It has no settings of its own: its ``Config`` is the
    base :class:`~pointtune.protocols.base.ProtocolConfig` (whose ``data`` it refuses).
    """

    tasks = frozenset({Task.CLASSIFICATION})
    splits = ("eval",)
    own_data = False

    def metrics(self, cfg: ProtocolConfig) -> tuple[str, ...]:
        """``("OA", "mAcc", "F1")``."""
        return ("OA", "mAcc", "F1")

    def check_output(self, method: Method, batch: dict[str, torch.Tensor], num_classes: int) -> None:
        """``predict`` must return ``(1, K)`` logits for a 1-cloud batch.

        Raises:
            ValueError: another shape.
        """
        logits = method.predict(batch)
        if tuple(logits.shape) != (1, num_classes):
            raise ValueError(f"predict returned shape {tuple(logits.shape)}, expected {(1, num_classes)}")

    def run(self, method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
            cfg: ProtocolConfig, batch_size: int = 64, num_workers: int = 0) -> Result:
        """OA, mAcc, macro F1 and the summed confusion matrix ``(K, K)`` of ``splits["eval"]``."""
        k = len(class_names)
        method.eval()
        local = np.zeros((k, k), dtype=np.int64)
        with torch.no_grad():
            for batch in shard_loader(splits["eval"], batch_size, num_workers):
                batch = to_device(batch, device)
                preds = method.predict(batch).argmax(-1).cpu().numpy()
                local += confusion_matrix(batch["label"].cpu().numpy(), preds, k)
        cm = local if dist.world_size() == 1 else dist.all_reduce_sum(torch.from_numpy(local).to(device)).cpu().numpy()
        return classification_metrics(cm), cm, {}
