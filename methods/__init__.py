"""The five methods of pointtune; importing this package registers them."""

from pointtune.methods import cedr  # noqa: F401
from pointtune.methods import finetune  # noqa: F401
from pointtune.methods import conclu  # noqa: F401
