"""Point-cloud encoders, built by name: ``build_backbone("dgcnn", k=20, emb_dims=1024)``.

Every backbone is a :class:`Backbone`: ``forward(xyz, features=None)`` maps channels-last clouds ``(B, N, 3)``
(plus optional extra per-point channels ``(B, N, in_features)``) to a global feature ``(B, out_dim)``;
``forward_features(xyz, features=None)`` returns a :class:`BackboneOutput` with that global feature and the
per-point features ``(B, M, point_dim)`` at coordinates ``(B, M, 3)``. Registered names: ``pointnet``,
``dgcnn``, ``gbnet`` (built for a fixed number of points, ``num_points``), ``pointnet2_ssg``, ``vit3d``, ``pct``,
``pointnext`` (segmentation encoder-decoder; its :meth:`~pointtune.backbones.pointnext.PointNeXt.forward_seg`
gives per-point logits and every stage).
"""

from .base import Backbone, BackboneOutput
from .registry import backbone_factory, backbone_names, build_backbone, register_backbone
from .head import ClassificationHead
from .pointnet import PointNet
from .dgcnn import DGCNN
from .gbnet import GBNet
from .pointnet2 import PointNet2SSG
from .pointnext import PointNeXt, PointNeXtOutput
from .vit import PointViT
from .pct import PCT

__all__ = [
    "Backbone",
    "BackboneOutput",
    "ClassificationHead",
    "DGCNN",
    "GBNet",
    "PCT",
    "PointNet",
    "PointNet2SSG",
    "PointNeXt",
    "PointNeXtOutput",
    "PointViT",
    "backbone_factory",
    "backbone_names",
    "build_backbone",
    "register_backbone",
]
