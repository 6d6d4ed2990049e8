"""The configs of the fine-tuning tasks: the sections they share (data, optimiser, runtime,
backbone) and each task's own (``ClassifyConfig``, ``SegmentConfig``, ``DetectConfig``).

Each task config holds the shared sections under the same section names, with the same
fields, plus its own sections; all are read with the one grammar of :mod:`maco_cxr.config`.
Section types are named by their owner so no two sections of the package share a name with
different fields. Nothing here imports torch, so the CLI reads and checks a whole config
(``maco-cxr finetune ... optim.lrr=1``) before loading the model code.

``optim.batch_size`` is the GLOBAL batch of one optimizer step: it is split over the
processes of a ``torchrun`` job and the ``optim.accum_steps`` micro-steps (it must divide
evenly), so a recipe trains the same thing on one GPU or on eight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from maco_cxr.config import require, require_at_least
from maco_cxr.models.config import IMAGE_MEAN, IMAGE_STD, SegmentationLossWeights, UperNetConfig, ViTDetConfig
from maco_cxr.pretraining.config import check_run_control

__all__ = [
    "RESUMABLE_CHANGES",
    "BackboneSection",
    "ClassifyAugment",
    "ClassifyConfig",
    "ClassifyEval",
    "ClassifyModel",
    "DenseModel",
    "DetectConfig",
    "DetectEval",
    "DetectInput",
    "FinetuneData",
    "FinetuneOptim",
    "FinetuneRuntime",
    "SegmentConfig",
    "SegmentEval",
    "SegmentInput",
]


@dataclass
class FinetuneData:
    """Which images train, select and test a model.

    ``kind``/``root``: a :func:`maco_cxr.data.datasets.build_dataset` adapter and its root, or
    ``store`` and a folder written by ``maco-cxr prepare`` (decoded once, read by memory map).
    ``train_split``/``val_split``/``test_split``: a split file (``path label...`` per line;
    labels in it replace the dataset's) or, for nih/chexpert/rsna/siim, an official list name
    (train_1, train_10, train, val, test; for RSNA detection also ``detection_test``, the
    paper's detection test set). When None: official kinds use their official lists (CheXpert
    train: train.csv minus the val list; RSNA detection: the paper's test set, its images kept
    out of training and validation), other kinds the records whose ``split`` equals
    ``train_name``/``val_name``/``test_name``. ``fraction``: percentage of the training images
    kept, drawn whole patients at a time with ``fraction_seed``
    (:func:`maco_cxr.data.splits.label_fraction`). ``options``: extra adapter arguments.
    ``deduplicate``: make the overlapping official SIIM lists disjoint. ``on_error``:
    ``skip`` leaves unreadable evaluation images out and replaces unreadable training images
    by the next readable one, counting and listing both in ``metrics.json``.
    """

    kind: str = "manifest"
    root: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    test_split: str | None = None
    train_name: str = "train"
    val_name: str = "val"
    test_name: str = "test"
    fraction: float = 100.0
    fraction_seed: int = 0
    deduplicate: bool = False
    on_error: Literal["raise", "skip"] = "raise"
    workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(0.0 < self.fraction <= 100.0, "fraction", f"{self.fraction} must be a percentage in (0, 100]")
        require(self.workers >= 0, "workers", "must be >= 0")


@dataclass
class FinetuneOptim:
    """Optimiser and per-step schedule (linear warm-up, then cosine or poly decay).

    ``name``: ``sgd`` (momentum, the classification recipe) or ``adamw`` (fused on CUDA).
    ``layer_decay``: ViT layer-wise lr decay (lr x decay^(depth + 1 - layer id)); None = off.
    Weight decay never applies to biases, norms, the CLS token or position embeddings.
    ``warmup_start``/``final``: lr multipliers at the first step and at the end.
    ``batch_size``: the global batch of one step (see the module docstring); ``accum_steps``
    micro-steps make it up. ``warmup_steps`` longer than the run is an error naming both keys.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    layer_decay: float | None = None
    clip_grad: float | None = 1.0
    batch_size: int = 96
    accum_steps: int = 1
    steps: int = 2000
    warmup_steps: int = 50
    schedule: Literal["cosine", "poly"] = "cosine"
    warmup_start: float = 0.0
    final: float = 0.0

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", "must be > 0")
        require(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        require(all(0 <= b < 1 for b in self.betas), "betas", f"{list(self.betas)} must be two numbers in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.layer_decay is None or 0 < self.layer_decay <= 1, "layer_decay", "must be in (0, 1] or null")
        require(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "must be > 0 or null")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.accum_steps >= 1, "accum_steps", "must be >= 1")
        require(self.steps >= 1, "steps", "must be >= 1")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(
            self.warmup_steps <= self.steps,
            "warmup_steps",
            f"{self.warmup_steps} is longer than the run (optim.steps={self.steps}); lower optim.warmup_steps",
        )


@dataclass
class FinetuneRuntime:
    """Where and how a fine-tuning run executes.

    ``device``: auto (the process's GPU under torchrun, else CPU), cpu, cuda or cuda:N.
    ``precision``: bf16 autocast on CUDA (CPU always runs fp32). ``out``: output folder.
    ``log_every`` counts steps. ``save_every``: a resumable checkpoint every so many steps
    (and at the end); ``resume``: ``auto`` continues a killed run from its newest checkpoint in
    ``out`` (when its config matches), ``never`` starts afresh, a path resumes from that
    checkpoint. ``stop_at_step`` ends the run early after saving, without changing the schedule.
    """

    device: str = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    seed: int = 0
    out: str = "runs/finetune"
    log_every: int = 10
    save_every: int = 1000
    keep_last: int = 2
    resume: str = "auto"
    stop_at_step: int | None = None
    tensorboard: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        check_run_control(self)


@dataclass
class BackboneSection:
    """The image encoder a task starts from.

    ``source``: a MaCo model directory or official ``maco.pth``, or ``FAMILY:PATH`` for another
    foundation model's image encoder (classification only; ``tokenizer``: the tokenizer folder a
    family needs to load, see :mod:`maco_cxr.families`); None (``none``) = random
    initialisation of ``preset``. ``text_heads``/``vision_heads``: head counts of an official
    checkpoint the known-checkpoint table does not recognise (they are not stored in it).
    ``drop_path_rate``: stochastic depth; ``grad_checkpointing``: trade compute for memory.
    """

    source: str | None = None
    tokenizer: str | None = None
    preset: str = "base"
    drop_path_rate: float = 0.1
    text_heads: int | None = None
    vision_heads: int | None = None
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        require(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", "must be in [0, 1)")


@dataclass
class DenseModel(BackboneSection):
    """The backbone of a dense task (segmentation, detection); ``freeze_backbone`` trains the
    head only (the encoder stays in eval mode)."""

    freeze_backbone: bool = False


# ----------------------------------------------------------------------------- classification

Mode = Literal["finetune", "linear_probe"]


@dataclass
class ClassifyModel(BackboneSection):
    """The encoder, its input size and the mode (``finetune`` or ``linear_probe``)."""

    img_size: int = 224
    mode: Mode = "finetune"
    cache_features: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.img_size >= 1, "img_size", "must be >= 1")


@dataclass
class ClassifyAugment:
    """Training augmentation: RandomResizedCrop to ``model.img_size`` and horizontal flip."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        require(
            0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            "crop_scale",
            f"{list(self.crop_scale)} must be [low, high] in (0, 1]",
        )
        require(
            0 < self.crop_ratio[0] <= self.crop_ratio[1],
            "crop_ratio",
            f"{list(self.crop_ratio)} must be [low, high] with 0 < low <= high",
        )
        require(0.0 <= self.flip_p <= 1.0, "flip_p", "must be in [0, 1]")


@dataclass
class ClassifyEval:
    """Validation every ``every`` steps (None = ~10 epochs' worth, at least once); test-time
    ``bootstrap`` replicates for the confidence intervals (0 = none)."""

    every: int | None = None
    batch_size: int = 256
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        require_at_least(self, every=1, batch_size=1, bootstrap=0)


@dataclass
class ClassifyConfig:
    """A classification fine-tuning run (defaults: the official SGD recipe, 1 % schedule)."""

    data: FinetuneData = field(default_factory=FinetuneData)
    model: ClassifyModel = field(default_factory=ClassifyModel)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    augment: ClassifyAugment = field(default_factory=ClassifyAugment)
    evaluation: ClassifyEval = field(default_factory=ClassifyEval)
    runtime: FinetuneRuntime = field(default_factory=lambda: FinetuneRuntime(out="runs/finetune"))


# ------------------------------------------------------------------------------- segmentation

MissingMask = Literal["skip", "empty"]


@dataclass
class SegmentInput:
    """Preprocessing: letterbox side, flip probability, normalisation (MaCo's by default)."""

    image_size: int = 512
    flip_p: float = 0.5
    pixel_mean: float = IMAGE_MEAN
    pixel_std: float = IMAGE_STD
    missing_mask: MissingMask = "skip"

    def __post_init__(self) -> None:
        require(
            self.image_size >= 32 and self.image_size % 32 == 0,
            "image_size",
            f"{self.image_size} must be a positive multiple of 32 (pyramid stride)",
        )
        require(0.0 <= self.flip_p <= 1.0, "flip_p", "must be in [0, 1]")
        require(self.pixel_std > 0, "pixel_std", "must be > 0")


@dataclass
class SegmentEval:
    """Validation every ``every`` steps (0: only at the end), probability ``threshold``,
    ``overlays`` test predictions drawn as PNGs, ``bootstrap`` replicates of the per-image Dice
    interval (0 = none)."""

    every: int = 1000
    threshold: float = 0.5
    batch_size: int = 8
    overlays: int = 8
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        require_at_least(self, every=0, batch_size=1, overlays=0, bootstrap=0)
        require(0.0 < self.threshold < 1.0, "threshold", "must be in (0, 1)")


def _segment_paper_optim() -> FinetuneOptim:
    """SIIM 100 % of the paper; the shipped configs set lr / steps / warm-up per dataset."""
    return FinetuneOptim(
        name="adamw",
        lr=1.5e-5,
        betas=(0.9, 0.999),
        weight_decay=0.05,
        layer_decay=0.65,
        clip_grad=None,
        batch_size=8,
        steps=160_000,
        warmup_steps=1500,
        schedule="poly",
        warmup_start=0.0,
        final=0.0,
    )


@dataclass
class SegmentConfig:
    """Everything a segmentation run needs (YAML sections of the same names)."""

    model: DenseModel = field(default_factory=DenseModel)
    input: SegmentInput = field(default_factory=SegmentInput)
    head: UperNetConfig = field(default_factory=UperNetConfig)
    loss: SegmentationLossWeights = field(default_factory=SegmentationLossWeights)
    data: FinetuneData = field(default_factory=FinetuneData)
    optim: FinetuneOptim = field(default_factory=_segment_paper_optim)
    runtime: FinetuneRuntime = field(default_factory=lambda: FinetuneRuntime(out="runs/segment"))
    evaluation: SegmentEval = field(default_factory=SegmentEval)

    def __post_init__(self) -> None:
        require(
            self.optim.batch_size >= 2,
            "optim.batch_size",
            "must be >= 2 (BatchNorm in the head needs two images per step)",
        )


# ---------------------------------------------------------------------------------- detection


@dataclass
class DetectInput:
    """Input side, large-scale-jitter range, flip, normalisation and which boxes count.

    ``box_labels``: boxes whose label (or ``category`` column, for manifests) is listed are
    the objects to detect (None: every box). ``positives_only``: images without such a box are
    left out of training and testing (the RSNA protocol); images without any box annotation
    are always left out. Both are counted in ``metrics.json``.
    """

    image_size: int = 1024
    scale_range: tuple[float, float] = (0.8, 1.2)
    flip_p: float = 0.5
    pixel_mean: float = IMAGE_MEAN
    pixel_std: float = IMAGE_STD
    box_labels: tuple[str, ...] | None = None
    positives_only: bool = True

    def __post_init__(self) -> None:
        require(
            self.image_size >= 32 and self.image_size % 32 == 0,
            "image_size",
            f"{self.image_size} must be a positive multiple of 32 (pyramid stride)",
        )
        require(
            0 < self.scale_range[0] <= self.scale_range[1],
            "scale_range",
            f"{list(self.scale_range)} must be [low, high] with 0 < low <= high",
        )
        require(0.0 <= self.flip_p <= 1.0, "flip_p", "must be in [0, 1]")
        require(self.pixel_std > 0, "pixel_std", "must be > 0")


@dataclass
class DetectEval:
    """Validation every ``every`` steps (0: only at the end); ``select``: keep the model with
    the best validation ``metric`` (val) or the last one (last); ``overlays`` test images drawn
    with predictions scoring at least ``overlay_score``."""

    every: int = 500
    batch_size: int = 8
    select: Literal["val", "last"] = "val"
    metric: Literal["AP", "AP50", "AP75"] = "AP"
    overlays: int = 8
    overlay_score: float = 0.5

    def __post_init__(self) -> None:
        require_at_least(self, every=0, batch_size=1, overlays=0)


def _detect_paper_optim() -> FinetuneOptim:
    """RSNA of the paper: AdamW 5e-4, wd 0.05, layer decay 0.7, batch 32, 5,600 steps."""
    return FinetuneOptim(
        name="adamw",
        lr=5e-4,
        betas=(0.9, 0.999),
        weight_decay=0.05,
        layer_decay=0.7,
        clip_grad=None,
        batch_size=32,
        steps=5600,
        warmup_steps=250,
        schedule="cosine",
        warmup_start=0.01,
        final=0.01,
    )


@dataclass
class DetectConfig:
    """Everything a detection run needs (YAML sections of the same names)."""

    model: DenseModel = field(default_factory=DenseModel)
    input: DetectInput = field(default_factory=DetectInput)
    detector: ViTDetConfig = field(default_factory=ViTDetConfig)
    data: FinetuneData = field(default_factory=lambda: FinetuneData(kind="rsna"))
    optim: FinetuneOptim = field(default_factory=_detect_paper_optim)
    runtime: FinetuneRuntime = field(default_factory=lambda: FinetuneRuntime(out="runs/detect"))
    evaluation: DetectEval = field(default_factory=DetectEval)


# Keys that may change between a run and its resumption (how it is watched, where it runs).
RESUMABLE_CHANGES = (
    "runtime.progress",
    "runtime.log_every",
    "runtime.save_every",
    "runtime.keep_last",
    "runtime.stop_at_step",
    "runtime.resume",
    "runtime.tensorboard",
    "runtime.device",
    "data.workers",
    "data.root",
    "model.grad_checkpointing",
    "runtime.out",
    "evaluation.batch_size",
    "evaluation.overlays",
)
