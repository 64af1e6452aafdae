"""The methods of pointtune (and `finetune` and `seg`, the supervised transfer of any pretrained encoder to
classification and to scene segmentation); importing this package registers them."""

from pointtune.methods import cedr  # noqa: F401
from pointtune.methods import finetune  # noqa: F401
from pointtune.methods import conclu  # noqa: F401
from pointtune.methods import dcglr  # noqa: F401
from pointtune.methods import scl  # noqa: F401
from pointtune.methods import amcontrast3d  # noqa: F401
from pointtune.methods import seg  # noqa: F401
