"""The runs a run starts from, copied into it so that the run stands alone.

A method may start from another run's weights (:attr:`Method.sources <pointtune.method.Method.sources>`:
``finetune``'s and ``seg``'s ``method.pretrained``, SCL stage 2's ``method.stage1_from``). When a run starts
(``pointtune train``: :func:`pointtune.train.launch.train`; a sweep: once, before Ray starts),
:func:`resolve_sources` copies each such checkpoint, trimmed to what rebuilds its model, into
``<run dir>/sources/<leaf of the key>/`` (a normal checkpoint directory), points the key at the copy and fills
the key that takes the source's architecture (``method.encoder_source``). The run's ``config.yaml``, the
experiment saved in each of its checkpoints and a sweep's ``best_config.yaml`` then never depend on the
original run: a method's constructor builds the architecture only, and
:func:`~pointtune.train.load.load_method` reads nothing but the checkpoint. The weights themselves are
applied by the loop on a fresh start only (:func:`load_sources`, :meth:`Method.warm_start
<pointtune.method.Method.warm_start>`), as timm's ``create_model(pretrained=...)`` and nanoGPT's
``init_from`` do.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pointtune.config import ConfigError, ExperimentConfig, build_config
from pointtune.layout import RunDir
from pointtune.method import Method
from pointtune.train.checkpoint import save_state
from pointtune.train.load import load_checkpoint, load_method

__all__ = ["resolve_sources", "load_sources"]
# What a source's copy keeps of its checkpoint: enough for load_method (no optimizer, scaler or RNG states).
_KEPT = ("model", "experiment", "class_names", "metrics", "epoch")


def _dotted(tree: dict[str, Any], key: str) -> Any:
    """``tree[a][b]`` for ``key = "a.b"`` (None where a part is missing)."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _inside(path: str, directory: Path) -> bool:
    """Whether the local ``path`` lies in ``directory`` (a storage URI never does)."""
    return "://" not in path and Path(path).resolve().is_relative_to(directory.resolve())


def _copy(state: dict[str, Any], target: Path) -> Path:
    """``state`` trimmed to :data:`_KEPT`, saved as the checkpoint directory ``target`` (replacing what was there);
    returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    save_state(staged, {k: state[k] for k in _KEPT if k in state})
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)
    return target


def resolve_sources(exp: ExperimentConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """The overrides that make ``exp`` stand alone: for every key of :attr:`Method.sources
    <pointtune.method.Method.sources>` that ``exp`` sets, the checkpoint it designates (anything
    :func:`~pointtune.train.load.find_checkpoint` accepts) is read and

    * copied into ``<run_dir>/sources/<leaf of the key>/`` (``method.pretrained``: ``sources/pretrained``) with
      its weights, experiment, class names and metrics, and the key set to the copy's absolute path; a key that
      already points inside ``<run_dir>/sources/`` (a resumed or rerun run) is left as it is;
    * its architecture key, where the method has one, set to ``{method: <the source run's method config>,
      num_classes: <its class count>}``.

    Args:
        exp: the validated experiment.
        run_dir: the run's directory, or the sweep's for every trial; None (the preflight): nothing is copied,
            the keys keep their values and only the architecture keys are filled.

    Returns:
        ``{dotted key: value}`` to apply to ``exp`` (:func:`~pointtune.config.build_config`'s ``overrides``);
        empty when it sets no source.

    Raises:
        ConfigError: one line starting with the source's key (``method.pretrained: ...``): nothing usable there,
            or a checkpoint whose saved config is no longer valid (a
            :class:`~pointtune.train.checkpoint.CheckpointNotFoundError` when nothing exists there).
    """
    overrides: dict[str, Any] = {}
    tree = exp.to_dict()
    for key, architecture_key in exp.method_cls.sources.items():
        value = _dotted(tree, key)
        if not value:
            continue
        try:
            found, state = load_checkpoint(value)
            where = f"{found}/state.pt: saved config"
            source = build_config(state["experiment"]["method"]["name"], state["experiment"], source=where)
        except ConfigError as err:
            raise type(err)(f"{key}: {err}") from None
        if run_dir is not None and not _inside(str(value), RunDir(Path(run_dir)).sources):
            copy = _copy(state, RunDir(Path(run_dir)).source(key).absolute())
            print(f"[pointtune] {key}: {found} copied to {copy}", flush=True)
            overrides[key] = str(copy)
        if architecture_key is not None:
            overrides[architecture_key] = {"method": source.to_dict()["method"],
                                           "num_classes": len(state["class_names"])}
    return overrides


def load_sources(method: Method) -> dict[str, Method]:
    """The methods that ``method`` starts from (:meth:`Method.weight_sources
    <pointtune.method.Method.weight_sources>`), each rebuilt from its checkpoint with its weights, on the CPU
    (:func:`~pointtune.train.load.load_method`), for :meth:`Method.warm_start
    <pointtune.method.Method.warm_start>`.

    Raises:
        ConfigError: one line starting with the source's key: see
            :func:`~pointtune.train.load.load_method` (a
            :class:`~pointtune.train.checkpoint.CheckpointNotFoundError` when nothing exists there).
    """
    sources = {}
    for key, path in method.weight_sources().items():
        try:
            sources[key] = load_method(path).method
        except ConfigError as err:
            raise type(err)(f"{key}: {err}") from None
    return sources
