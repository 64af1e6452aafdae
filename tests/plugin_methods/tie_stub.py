"""A test-only method, registered as a plugin (an entry point of ``pointtune.methods`` declared by a temporary
distribution, as another package would): its validation and test accuracy follow a fixed sequence over the
epochs, so that a run has two epochs with the same objective (issue 18 §1)."""

from __future__ import annotations

import torch
from pydantic import Field

from pointtune.method import Method, MethodConfig, Task, register_method


class TieStubConfig(MethodConfig):
    """``correct``: per epoch (the last trained one), whether the stub predicts every label right (1) or wrong."""

    builds_backbone = False
    correct: list[int] = Field([0, 1, 1, 0], description="per epoch: 1 predicts every label right, 0 every one wrong")
    scale: float = Field(1.0, gt=0, description="a searchable value that changes nothing")


@register_method("tie_stub")
class TieStub(Method):
    """Predicts the true labels (or all wrong ones) as ``correct[epoch]`` says; its one weight trains to nothing."""

    task = Task.CLASSIFICATION
    Config = TieStubConfig

    def __init__(self, cfg: TieStubConfig, num_classes: int, total_epochs: int):
        super().__init__(cfg, num_classes, total_epochs)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("epochs_trained", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, progress: float) -> dict[str, torch.Tensor]:
        self.epochs_trained.fill_(epoch + 1)
        return {"loss": (self.weight - 1).pow(2).sum() * self.cfg.scale}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        sequence = self.cfg.correct
        right = sequence[min(int(self.epochs_trained), len(sequence)) - 1] if int(self.epochs_trained) else 0
        labels = batch["label"] if right else (batch["label"] + 1) % self.num_classes
        return torch.nn.functional.one_hot(labels, self.num_classes).float()
