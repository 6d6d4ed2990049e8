"""The config sections every fine-tuning task shares (data, optimiser, runtime, backbone).

Each task config (``ClassifyConfig``, ``SegmentConfig``, ``DetectConfig``) holds these under
the same section names, with the same fields, plus its own sections; all are read with the one
grammar of :mod:`maco_cxr.config`. Section types are named by their owner so no two sections
of the package share a name with different fields.

``optim.batch_size`` is the GLOBAL batch of one optimizer step: it is split over the
processes of a ``torchrun`` job and the ``optim.accum_steps`` micro-steps (it must divide
evenly), so a recipe trains the same thing on one GPU or on eight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from maco_cxr.config import require
from maco_cxr.train.config import check_run_control

__all__ = ["BackboneSection", "DenseModel", "FinetuneData", "FinetuneOptim", "FinetuneRuntime", "RESUMABLE_CHANGES"]


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
        require(self.warmup_steps <= self.steps, "warmup_steps",
                f"{self.warmup_steps} is longer than the run (optim.steps={self.steps}); lower optim.warmup_steps")


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

    ``source``: a MaCo model directory or official ``maco.pth``; None (``none``) = random
    initialisation of ``preset``. ``text_heads``/``vision_heads``: head counts of an official
    checkpoint the known-checkpoint table does not recognise (they are not stored in it).
    ``drop_path_rate``: stochastic depth; ``grad_checkpointing``: trade compute for memory.
    """

    source: str | None = None
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


# Keys that may change between a run and its resumption (how it is watched, where it runs).
RESUMABLE_CHANGES = ("runtime.progress", "runtime.log_every", "runtime.save_every", "runtime.keep_last",
                     "runtime.stop_at_step", "runtime.resume", "runtime.tensorboard", "runtime.device",
                     "data.workers", "data.root", "model.grad_checkpointing", "runtime.out",
                     "evaluation.batch_size", "evaluation.overlays")
