"""``DataConfig``: the ``data.*`` section of an experiment config (pydantic v2, unknown keys rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["AugmentConfig", "DataConfig", "NO_AUGMENTATION"]


class AugmentConfig(BaseModel):
    """Training-time augmentation (``data.augment.*``); evaluation never augments.

    Applied in this order after subsampling and normalisation: rotation about the up axis (y) by
    ``U(-rotate_range_deg/2, rotate_range_deg/2)`` degrees if ``rotate_up``; per-axis scale
    ``U(scale_low, scale_high)`` and translation ``U(-translate, translate)`` (DGCNN's defaults 2/3, 3/2, 0.2);
    Gaussian jitter ``N(0, jitter_sigma)`` clipped to ``+-jitter_clip`` if ``jitter_sigma > 0`` (PointNet uses
    0.01, 0.05); a random point order if ``shuffle``. Lengths are in units of the normalised cloud (radius 1).
    Set ``scale_low = scale_high = 1`` and ``translate = 0`` to switch the scale / translation off.
    """

    model_config = ConfigDict(extra="forbid")
    scale_low: float = Field(
        2.0 / 3.0, gt=0, description="per-axis scale factor drawn from U(scale_low, scale_high) (1 and 1: off)")
    scale_high: float = Field(1.5, gt=0, description="upper bound of the scale factor")
    translate: float = Field(0.2, ge=0, description="per-axis translation drawn from U(-translate, translate) (0: off)")
    jitter_sigma: float = Field(0.0, ge=0, description="std of the Gaussian jitter (0: off; PointNet: 0.01)")
    jitter_clip: float = Field(0.05, ge=0, description="the jitter is clipped to +-jitter_clip")
    rotate_up: bool = Field(False, description="rotate about the up axis (y)")
    rotate_range_deg: float = Field(
        360.0, ge=0, le=360, description="rotation angle drawn from U(-range/2, range/2) degrees")
    shuffle: bool = Field(True, description="random point order")

    @model_validator(mode="after")
    def _scale_order(self) -> AugmentConfig:
        if self.scale_low > self.scale_high:
            raise ValueError(f"scale_low ({self.scale_low}) must be <= scale_high ({self.scale_high})")
        return self


#: ``data.augment`` with every augmentation off but the point order: for methods whose views make their own
#: augmentations (a recipe's ``{"data": {"augment": NO_AUGMENTATION}}``).
NO_AUGMENTATION = {"scale_low": 1.0, "scale_high": 1.0, "translate": 0.0, "jitter_sigma": 0.0, "rotate_up": False,
                   "shuffle": True}


class DataConfig(BaseModel):
    """Which dataset to read and how to turn it into training / validation / test items (``data.*``).

    Fields:
        name: dataset registry key: ``synthetic`` (built in, no download), ``modelnet40`` (the
            ``modelnet40_ply_hdf5_2048`` layout), ``modelnet40_resampled``, ``modelnet10`` (ModelNet40's
            clouds of the 10 ModelNet10 classes), ``scanobjectnn``, ``shapenetpart`` (the
            ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` layout) and ``shapenetpart_h5``
            (both with per-point part labels, item key ``seg``); checked by
            :func:`pointtune.data.build_datasets` against :func:`pointtune.data.dataset_names`.
        root: the dataset directory (every dataset but ``synthetic`` needs one).
        variant: ScanObjectNN variant ``OBJ_ONLY``, ``OBJ_BG`` or ``PB_T50_RS`` (default when ``None``);
            ShapeNetPart ``official`` (default), ``all`` (every shape for training, no test split) or ``split``
            (every shape, split into train and test by pointtune, seeded by ``split_seed`` and stratified by
            category, with a printed line: for copies without the official split lists, e.g. the sample).
        classes: keep only these class names, labels re-indexed in this order; ``None`` keeps all.
        num_points: points per cloud fed to the model (> 0, at most the dataset's points per cloud).
        sampling: how training items choose them: ``first`` rows, ``random`` rows (fresh each time), or
            ``fps`` (farthest point sampling, computed once per cloud); evaluation items use ``first``, or
            ``fps`` when ``sampling`` is ``fps``.
        use_normals: also return per-point normals (datasets that have them).
        val_fraction: share of every class of the training split held out for validation, in ``[0, 1)``.
        split_seed: seed of that split (and of the per-item augmentation streams).
        synthetic_per_class: clouds per class and split of the ``synthetic`` dataset.
        synthetic_num_classes: classes of the ``synthetic`` dataset (2 to 10).
        augment: training augmentation, see :class:`AugmentConfig`.
        normalize: centre every cloud and scale it into the unit sphere (train and evaluation).
        cache: keep the built splits on disk for every later trial and worker on this machine
            (:mod:`pointtune.data.cache`); ``false`` builds them afresh.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        "synthetic", description="dataset: synthetic, modelnet40, modelnet40_resampled, modelnet10, scanobjectnn, shapenetpart, shapenetpart_h5")
    root: str | None = Field(None, description="the dataset directory (all but synthetic)")
    variant: str | None = Field(
        None, description="ScanObjectNN: OBJ_ONLY, OBJ_BG or PB_T50_RS (null: PB_T50_RS); ShapeNetPart: official, "
        "all (every shape for training, no test: pretraining) or split (seeded split by category, no official lists)")
    classes: list[str] | None = Field(
        None, description="keep only these classes, labels re-indexed in this order (null: all)")
    num_points: int = Field(1024, gt=0, description="points per cloud fed to the model")
    sampling: Literal["first", "random", "fps"] = Field(
        "first", description="how training clouds pick their points: first rows, random rows, or fps")
    use_normals: bool = Field(False, description="also return per-point normals (datasets that have them)")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of every class of the training split held out for validation")
    split_seed: int = Field(0, ge=0, description="seed of that split and of the augmentation streams")
    synthetic_per_class: int = Field(48, ge=1, description="synthetic dataset: clouds per class and split")
    synthetic_num_classes: int = Field(8, ge=2, le=10, description="synthetic dataset: classes (2 to 10)")
    augment: AugmentConfig = Field(AugmentConfig(), description="training augmentation (evaluation never augments)")
    normalize: bool = Field(True, description="centre every cloud and scale it into the unit sphere")
    cache: bool = Field(True, description="keep built splits on disk for later trials and workers on this machine")

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one class (or be null for all classes)")
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"class {repeated[0]!r} is listed more than once")
        return value
