"""``DataConfig``: the ``data.*`` section of an experiment config (pydantic v2, unknown keys rejected)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["AugmentConfig", "SceneAugmentConfig", "DataConfig", "NO_AUGMENTATION", "CLOUD_NUM_POINTS",
           "CLOUD_ONLY_REFUSED", "CLOUD_ONLY_IGNORED", "SCENE_ONLY", "AREA_KEYS"]


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


#: ``data.num_points`` of a point-cloud dataset when it is null (a scene dataset's comes from its recipe).
CLOUD_NUM_POINTS = 1024


class SceneAugmentConfig(BaseModel):
    """Scene items' per-point pipeline (``data.scene_augment.*``): training augmentation (PointNeXt / Pointcept
    recipes) and the three steps every split gets (``center``, ``height``, ``color_norm``).

    Every item of a scene dataset is grid-sampled (``data.voxel_size``) and sphere-cropped to ``data.num_points``
    points (:class:`~pointtune.data.scene_dataset.SceneDataset`); then, in this order:

    * every split: translate x, y to the crop's ``center`` and z so that its minimum is 0
      (:class:`~pointtune.data.scene_transforms.CenterShift`); add ``height`` (N, 1), metres above the crop's
      lowest point, before any scaling (PointNeXt's ``heights``);
    * training only: rotation about z by ``U(-rotate_z_deg/2, rotate_z_deg/2)`` degrees, scaling by
      ``U(scale_low, scale_high)`` per axis (one factor if not ``anisotropic``) and flips of x, y, z with the
      ``mirror`` probabilities, Gaussian jitter (``jitter_sigma`` metres, clipped to ``jitter_clip``), chromatic
      auto-contrast with probability ``auto_contrast_p``, all colours set to 0 with probability ``color_drop_p``;
    * every split: colour normalisation ``color_norm`` (colours arrive in 0..255).

    A null knob takes the dataset's recipe value (the AMContrast3D / PointNeXt configs; ``pointtune.data``'s
    :func:`~pointtune.data.registry.scene_defaults`): S3DIS scale 0.9..1.1, no mirror, jitter 0.005 m, its
    colour statistics; ScanNet scale 0.8..1.2, x mirrored with probability 0.2, no jitter, its colour statistics.
    Both: full rotation about z, auto-contrast 0.2, colour drop 0.2. Set a probability or ``rotate_z_deg`` to 0,
    or ``scale_low = scale_high = 1`` with ``mirror: [0, 0, 0]``, to switch a step off.
    """

    model_config = ConfigDict(extra="forbid")
    center: Literal["mean", "bbox", "min", "none"] = Field(
        "mean", description="every split: centre x, y of a crop on its mean (PointNeXt), bbox centre or minimum, z "
        "min to 0 (none: coordinates as read)")
    height: bool = Field(
        True, description="every split: add the per-point feature height (N, 1): metres above the crop's lowest point")
    color_norm: Literal["auto", "s3dis", "scannet", "unit", "none"] = Field(
        "auto", description="every split: colours (c/255 - mean)/std with the s3dis or scannet statistics, unit "
        "(c/255), none (0..255); auto: the dataset's own")
    rotate_z_deg: float = Field(
        360.0, ge=0, le=360, description="training: rotation about z drawn from U(-r/2, r/2) degrees (0: off)")
    scale_low: float | None = Field(
        None, gt=0, description="training: scale factor drawn from U(scale_low, scale_high) (null: S3DIS 0.9, ScanNet 0.8)")
    scale_high: float | None = Field(
        None, gt=0, description="training: upper bound of the scale factor (null: S3DIS 1.1, ScanNet 1.2)")
    anisotropic: bool = Field(True, description="training: an independent scale factor per axis")
    mirror: list[float] | None = Field(
        None, description="training: probabilities of flipping x, y, z after scaling (null: S3DIS [0, 0, 0], "
        "ScanNet [0.2, 0, 0])")
    jitter_sigma: float | None = Field(
        None, ge=0, description="training: std of the Gaussian jitter in metres (0: off; null: S3DIS 0.005, ScanNet 0)")
    jitter_clip: float = Field(0.02, ge=0, description="training: the jitter is clipped to +-jitter_clip metres")
    auto_contrast_p: float = Field(
        0.2, ge=0, le=1, description="training: probability of chromatic auto-contrast (a random blend towards "
        "the colours stretched to 0..255)")
    color_drop_p: float = Field(
        0.2, ge=0, le=1, description="training: probability of setting every colour of a crop to 0")

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 3 or not all(0.0 <= m <= 1.0 for m in value)):
            raise ValueError("must be 3 probabilities in [0, 1] (x, y, z), or null for the dataset's recipe")
        return value


#: Point-cloud knobs that a scene dataset refuses unless they keep their defaults, with the reason.
CLOUD_ONLY_REFUSED = {
    "classes": "a scene keeps every class of the dataset's list (points of other classes cannot be dropped "
               "from a room); train on all classes",
    "sampling": "scene items are voxel-grid sampled (data.voxel_size) and sphere-cropped to data.num_points points",
    "use_normals": "the scene layouts read here have no normals",
    "variant": "scene datasets have no variants (S3DIS reads data.layout)",
    "augment": "it augments point clouds; scene items are augmented by data.scene_augment.*",
}
#: Point-cloud knobs that scene datasets ignore (documented in :class:`DataConfig`).
CLOUD_ONLY_IGNORED = ("normalize", "cache", "synthetic_per_class", "synthetic_num_classes")
#: Scene knobs: a point-cloud dataset refuses them unless they keep their defaults.
SCENE_ONLY = ("voxel_size", "loop", "test_area", "val_area", "layout", "lazy", "scene_augment")
#: Scene knobs only datasets split by area read (S3DIS); other scene datasets refuse them unless at their defaults.
AREA_KEYS = ("test_area", "val_area", "layout")


def _area_or_auto(value: Any) -> Any:
    """``data.test_area``: an area number >= 1, ``auto`` or null, checked before the union so that an error is
    one message located at the key itself."""
    if value is None or value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("must be an area number >= 1, auto (5 when present, else no test split) or null (no test split)")


def _refuse(loc: tuple[str, ...], value: Any, message: str) -> ValidationError:
    """A ValidationError located at ``loc`` (so that the one-line config error names ``data.<loc>``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return ValidationError.from_exception_data("DataConfig", [InitErrorDetails(
        type=PydanticCustomError("data_kind", "{reason}", {"reason": message}), loc=loc, input=value)])


class DataConfig(BaseModel):
    """Which dataset to read and how to turn it into training / validation / test items (``data.*``).

    Fields:
        name: dataset registry key: ``synthetic`` (built in, no download), ``modelnet40`` (the
            ``modelnet40_ply_hdf5_2048`` layout), ``modelnet40_resampled``, ``modelnet10`` (ModelNet40's
            clouds of the 10 ModelNet10 classes), ``scanobjectnn``, ``shapenetpart`` (the
            ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` layout) and ``shapenetpart_h5``
            (both with per-point part labels, item key ``seg``), and the indoor-scene datasets ``s3dis`` and
            ``scannet`` (per-point semantic labels, see *Scenes* below); checked by
            :func:`pointtune.data.build_datasets` against :func:`pointtune.data.dataset_names`.
        root: the dataset directory (every dataset but ``synthetic`` needs one).
        variant: ScanObjectNN variant ``OBJ_ONLY``, ``OBJ_BG`` or ``PB_T50_RS`` (default when ``None``);
            ShapeNetPart ``official`` (default), ``all`` (every shape for training, no test split) or ``split``
            (every shape, split into train and test by pointtune, seeded by ``split_seed`` and stratified by
            category, with a printed line: for copies without the official split lists, e.g. the sample).
        classes: keep only these class names, labels re-indexed in this order; ``None`` keeps all.
        num_points: points per item fed to the model: per cloud (> 0, at most the dataset's points per cloud),
            or a scene item's crop size (``max_points``: crops hold at most that many voxels and are padded to
            it). ``None`` (default) is filled in on validation: :data:`CLOUD_NUM_POINTS` (1024) for clouds, the
            scene dataset's CPU-scale default (4096) for scenes.
        sampling: how training items choose them: ``first`` rows, ``random`` rows (fresh each time), or
            ``fps`` (farthest point sampling, computed once per cloud); evaluation items use ``first``, or
            ``fps`` when ``sampling`` is ``fps``.
        use_normals: also return per-point normals (datasets that have them).
        val_fraction: share of every class of the training split held out for validation, in ``[0, 1)``;
            for scenes the share of training rooms (S3DIS without ``val_area``) or scenes (ScanNet) held out.
        split_seed: seed of that split (and of the per-item augmentation streams).
        synthetic_per_class: clouds per class and split of the ``synthetic`` dataset.
        synthetic_num_classes: classes of the ``synthetic`` dataset (2 to 10).
        augment: training augmentation, see :class:`AugmentConfig`.
        normalize: centre every cloud and scale it into the unit sphere (train and evaluation).
        cache: keep the built splits on disk for every later trial and worker on this machine
            (:mod:`pointtune.data.cache`); ``false`` builds them afresh.

    Scenes (``s3dis``, ``scannet``; :func:`pointtune.data.registry.is_scene_dataset`): items are fixed-size crops
    of voxel-grid-sampled scenes (:class:`~pointtune.data.scene_dataset.SceneDataset`), built by
    :func:`pointtune.data.build_datasets`. Their knobs (a null takes the dataset's default, filled in when the
    datasets are built, so a config stays valid for the other dataset):

        voxel_size: grid-sampling voxel, metres (S3DIS 0.04, ScanNet 0.02).
        loop: repeats of every training scene per epoch, each a fresh random crop (S3DIS 30, ScanNet 6).
        test_area, val_area, layout: S3DIS only (split by area; :func:`pointtune.data.scenes.s3dis_splits`):
            ``test_area`` ``auto`` (default) is the standard Area 5 when it is under ``root`` and otherwise no
            test split, with a printed line (the pointtune sample holds only Area 1); a number must be present
            (else an error naming ``data.test_area``); ``None``: no test split. ``val_area``: a validation area
            (never the test area); ``None``: ``val_fraction`` of the training rooms, seeded by ``split_seed``.
            ``layout``: ``auto`` | ``npy`` | ``txt`` (:func:`pointtune.data.scenes.read_s3dis`).
        lazy: read each scene on access instead of holding all of them in memory.
        scene_augment: :class:`SceneAugmentConfig`.

    ScanNet is split by the official ``scannetv2_train.txt`` / ``scannetv2_val.txt`` when present (test = the
    official val list, validation = ``val_fraction`` of the train list, seeded), else by pointtune, seeded
    (:func:`pointtune.data.scenes.scannet_splits`, 0.2 of the scenes to test, then ``val_fraction`` of the rest
    to validation; with fewer than 3 scenes, e.g. the 2 of the pointtune sample, no test split), with a
    printed ``[pointtune] data scannet`` line saying which.

    Default scale is the CPU one, which trains on the shared samples; the papers' GPU scale (AMContrast3D /
    PointNeXt) is S3DIS ``num_points=24000, voxel_size=0.04, loop=30`` and ScanNet ``num_points=64000,
    voxel_size=0.02, loop=6``.

    Dataset kinds and knobs: a point-cloud knob that a scene cannot apply (:data:`CLOUD_ONLY_REFUSED`:
    ``classes``, ``sampling``, ``use_normals``, ``variant``, ``augment``) is refused on a scene dataset unless it
    keeps its default; ``normalize`` (scenes keep metres: no unit sphere), ``cache`` (scene datasets are read
    afresh by every run, not cached) and the ``synthetic_*`` knobs are ignored by scene datasets. A scene knob
    (:data:`SCENE_ONLY`) is refused on a point-cloud dataset unless it keeps its default, and the S3DIS-only
    ones (:data:`AREA_KEYS`) likewise on ScanNet. Each refusal is a one-line error naming the key.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        "synthetic", description="dataset: synthetic, modelnet40, modelnet40_resampled, modelnet10, scanobjectnn, "
        "shapenetpart, shapenetpart_h5; scenes: s3dis, scannet")
    root: str | None = Field(None, description="the dataset directory (all but synthetic)")
    variant: str | None = Field(
        None, description="ScanObjectNN: OBJ_ONLY, OBJ_BG or PB_T50_RS (null: PB_T50_RS); ShapeNetPart: official, "
        "all (every shape for training, no test: pretraining) or split (seeded split by category, no official lists)")
    classes: list[str] | None = Field(
        None, description="clouds: keep only these classes, labels re-indexed in this order (null: all)")
    num_points: int | None = Field(
        None, gt=0, description="points per cloud fed to the model, or a scene crop's size (null: 1024 for clouds, "
        "4096 for scenes; GPU scale: S3DIS 24000, ScanNet 64000)")
    sampling: Literal["first", "random", "fps"] = Field(
        "first", description="clouds: how training clouds pick their points: first rows, random rows, or fps")
    use_normals: bool = Field(False, description="also return per-point normals (clouds that have them)")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of every class of the training split held out for validation (scenes: "
        "of the training rooms or scenes)")
    split_seed: int = Field(0, ge=0, description="seed of that split and of the augmentation streams")
    synthetic_per_class: int = Field(48, ge=1, description="synthetic dataset: clouds per class and split")
    synthetic_num_classes: int = Field(8, ge=2, le=10, description="synthetic dataset: classes (2 to 10)")
    augment: AugmentConfig = Field(
        AugmentConfig(), description="clouds: training augmentation (evaluation never augments)")
    normalize: bool = Field(
        True, description="clouds: centre every cloud and scale it into the unit sphere (scenes: ignored, metres kept)")
    cache: bool = Field(
        True, description="clouds: keep built splits on disk for later trials and workers (scenes: not cached)")
    voxel_size: float | None = Field(
        None, gt=0, description="scenes: grid-sampling voxel in metres (null: S3DIS 0.04, ScanNet 0.02)")
    loop: int | None = Field(
        None, ge=1, description="scenes: repeats of every training scene per epoch, fresh crops (null: S3DIS 30, "
        "ScanNet 6)")
    test_area: Annotated[int | Literal["auto"] | None, BeforeValidator(_area_or_auto)] = Field(
        "auto", description="S3DIS: test area (auto: 5 if present under data.root, else no test split; null: none)")
    val_area: int | None = Field(
        None, ge=1, description="S3DIS: validation area, never the test area (null: val_fraction of the training "
        "rooms, seeded)")
    layout: Literal["auto", "npy", "txt"] = Field(
        "auto", description="S3DIS: Area_<a>_<room>.npy files (npy), Area_<a>/<room>/Annotations/*.txt (txt), or "
        "npy where an area has them (auto)")
    lazy: bool = Field(
        False, description="scenes: read each scene from disk on access instead of keeping all in memory")
    scene_augment: SceneAugmentConfig = Field(
        SceneAugmentConfig(), description="scenes: training augmentation and the centring, height and colour "
        "normalisation of every split")

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

    @property
    def is_scene(self) -> bool:
        """Whether ``name`` is a registered scene dataset (:func:`pointtune.data.registry.is_scene_dataset`)."""
        from pointtune.data.registry import is_scene_dataset

        return is_scene_dataset(self.name)

    def scene_values(self) -> dict[str, Any]:
        """The scene settings of this config with every null knob replaced by the dataset's default
        (:func:`pointtune.data.registry.scene_defaults`).

        Returns:
            ``voxel_size`` (metres), ``loop``, ``scale_low``, ``scale_high``, ``mirror`` (3 probabilities),
            ``jitter_sigma`` (metres) and ``color_norm`` (a preset: ``s3dis``, ``scannet``, ``unit`` or ``none``).

        Raises:
            ValueError: ``name`` is not a scene dataset.
        """
        from pointtune.data.registry import scene_defaults

        defaults = scene_defaults(self.name)
        if defaults is None:
            raise ValueError(f"dataset {self.name!r} is not a scene dataset")
        aug = self.scene_augment

        def pick(value: Any, key: str) -> Any:
            return defaults[key] if value is None else value

        return {
            "voxel_size": float(pick(self.voxel_size, "voxel_size")),
            "loop": int(pick(self.loop, "loop")),
            "scale_low": float(pick(aug.scale_low, "scale_low")),
            "scale_high": float(pick(aug.scale_high, "scale_high")),
            "mirror": [float(m) for m in pick(aug.mirror, "mirror")],
            "jitter_sigma": float(pick(aug.jitter_sigma, "jitter_sigma")),
            "color_norm": defaults["color_norm"] if aug.color_norm == "auto" else aug.color_norm,
        }

    @model_validator(mode="after")
    def _dataset_kind(self) -> DataConfig:
        """Fill in ``num_points`` and refuse the knobs the dataset's kind does not apply (class docstring)."""
        from pointtune.data.registry import scene_dataset_names, scene_defaults

        defaults = scene_defaults(self.name)
        if self.num_points is None:
            self.num_points = CLOUD_NUM_POINTS if defaults is None else int(defaults["num_points"])
        fields = type(self).model_fields
        if defaults is None:
            scenes = ", ".join(scene_dataset_names()) or "none registered"
            for key in SCENE_ONLY:
                if getattr(self, key) != fields[key].default:
                    raise _refuse((key,), getattr(self, key), (
                        f"a scene-dataset knob ({scenes}); dataset {self.name!r} is not a scene dataset, so leave "
                        f"it at its default ({_shown(fields[key].default)})"))
            return self
        for key, why in CLOUD_ONLY_REFUSED.items():
            if getattr(self, key) != fields[key].default:
                raise _refuse((key,), getattr(self, key), (
                    f"a point-cloud knob that scene dataset {self.name!r} does not apply: {why} (leave it at its "
                    f"default, {_shown(fields[key].default)})"))
        for key in AREA_KEYS:
            if key not in defaults["reads"] and getattr(self, key) != fields[key].default:
                raise _refuse((key,), getattr(self, key), (
                    f"an S3DIS knob (split by area); scene dataset {self.name!r} does not read it, so leave it at "
                    f"its default ({_shown(fields[key].default)})"))
        if self.val_area is not None and self.val_area == self.test_area:
            raise _refuse(("val_area",), self.val_area, (
                "the validation area must not be the test area (model selection never sees the test split); "
                "choose another area, or null for a seeded room split"))
        values = self.scene_values()
        if values["scale_low"] > values["scale_high"]:
            raise _refuse(("scene_augment", "scale_low"), self.scene_augment.scale_low, (
                f"scale_low {values['scale_low']:g} must be <= scale_high {values['scale_high']:g} (a null one is "
                f"the dataset's default)"))
        return self


def _shown(value: Any) -> str:
    """A field default as a config would write it (``null``, ``false``, ``auto``, ``{...}`` for a section)."""
    if isinstance(value, BaseModel):
        return "the section's defaults"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
