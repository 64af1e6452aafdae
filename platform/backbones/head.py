"""Classification head on top of a global feature."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["ClassificationHead"]


class ClassificationHead(nn.Module):
    """MLP classifier ``(B, in_dim) -> (B, num_classes)`` logits, in the style of DGCNN (Wang et al. 2019).

    Each hidden layer is ``Linear (no bias) -> BatchNorm1d -> LeakyReLU(0.2) -> Dropout(dropout)``, followed by
    a final ``Linear`` with bias. Defaults ``hidden=(512, 256)``, ``dropout=0.5`` are those of the DGCNN and
    PointNet / PointNet++ classification heads. BatchNorm needs ``B > 1`` in training mode.

    Args:
        in_dim: width of the global feature (a backbone's ``out_dim``).
        num_classes: number of logits.
        hidden: widths of the hidden layers (may be empty for a linear classifier).
        dropout: drop probability after each hidden layer, in ``[0, 1)``.

    Raises:
        ValueError: non-positive sizes or a dropout outside ``[0, 1)``.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.5):
        super().__init__()
        if in_dim < 1 or num_classes < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"ClassificationHead: sizes must be positive, got in_dim={in_dim}, num_classes={num_classes}, "
                f"hidden={tuple(hidden)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ClassificationHead: dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.num_classes = num_classes

    def forward(self, feat: Tensor) -> Tensor:
        """``(B, in_dim)`` global features to ``(B, num_classes)`` logits."""
        return self.net(feat)
