"""Point-cloud encoders, built by name: ``build_backbone("dgcnn", k=20, emb_dims=1024)``.

Every backbone maps channels-last clouds ``(B, N, 3)`` to a global feature ``(B, out_dim)`` and exposes the
int attribute ``out_dim``. Registered names: ``pointnet``, ``dgcnn``, ``pointnet2_ssg``.
"""

from .registry import backbone_names, build_backbone, register_backbone
from .head import ClassificationHead
from .pointnet import PointNet
from .dgcnn import DGCNN
from .pointnet2 import PointNet2SSG

__all__ = [
    "ClassificationHead",
    "DGCNN",
    "PointNet",
    "PointNet2SSG",
    "backbone_names",
    "build_backbone",
    "register_backbone",
]
