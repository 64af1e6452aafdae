"""The methods of pointtune (and `finetune`, the supervised transfer of any pretrained encoder);
importing this package registers them."""

from pointtune.methods import cedr  # noqa: F401
from pointtune.methods import finetune  # noqa: F401
from pointtune.methods import conclu  # noqa: F401
from pointtune.methods import dcglr  # noqa: F401
from pointtune.methods import scl  # noqa: F401
from pointtune.methods import amcontrast3d  # noqa: F401
