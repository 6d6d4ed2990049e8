"""Segmentation fine-tuning (``maco-cxr segment``): UperNet on a MaCo ViT, scored by three named Dice figures.

Recipe (PROTOCOLS.md section 5): images letterboxed to ``input.image_size`` (keep-ratio
resize, centred zero padding; padded pixels are 0 after normalisation and 255 = ignored in
the target), horizontal flip 0.5, AdamW (0.9, 0.999) with weight decay 0.05 and layer-wise
lr decay 0.65, poly schedule with linear warm-up, focal x2 + Dice x1 (aux 0.8 / 0.4). The
checkpoint with the best validation per-image Dice (the official selection metric) is kept
and scored on the test split after mapping each prediction back to its image's original
geometry (:meth:`Letterbox.map_to_original`, then threshold).

Images without a mask annotation: ``input.missing_mask="skip"`` leaves them out (counted in
``metrics.json`` and logged), ``"empty"`` treats them as empty masks (fully annotated data
such as the phantoms, where an image without a finding mask has no finding). Evaluation keeps
the test masks in memory (SIIM test at 1024 px: about 4 GB for predictions and truths).

Runs in one process on one device; the paper's batch of 8 fits one GPU (ViT-B at 512 px,
bf16: 10 GiB and 0.1 s per step on an H100).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from maco_cxr.models.config import IMAGE_MEAN, IMAGE_STD
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.config import require
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.metrics.segmentation import segmentation_report
from maco_cxr.models.upernet import (
    IGNORE_INDEX,
    SegmentationLossWeights,
    UperNetConfig,
    UperNetSegmenter,
    segmentation_loss,
)
from maco_cxr.plots import overlay_heatmap, plot_training_curves
from maco_cxr.tasks.backbone import load_backbone
from maco_cxr.tasks.finetune_common import (
    DataConfig,
    JsonlLog,
    OptimConfig,
    RuntimeConfig,
    StepSampler,
    autocast,
    build_optimizer,
    build_splits,
    config_dict,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    write_csv,
    write_json,
)
from maco_cxr.train.schedules import lr_multiplier, set_learning_rate

__all__ = [
    "METRIC_NAMES",
    "SegmentConfig",
    "SegmentEvalConfig",
    "SegmentInputConfig",
    "SegmentModelConfig",
    "SegmentResult",
    "build_segmenter",
    "evaluate_segmenter",
    "predict_masks",
    "segment",
]

logger = logging.getLogger(__name__)

MissingMask = Literal["skip", "empty"]
SELECTION_METRIC = "dice_per_image_mean"
METRIC_NAMES = {
    "dice_per_image_mean": "per-image foreground Dice averaged over all images; an empty truth scores 1 for an "
                           "empty prediction, else 0 (the official model-selection metric)",
    "dice_foreground_dataset": "foreground Dice with the pixels of the whole test set pooled",
    "dice_mean_over_classes": "mean of the pooled background and foreground Dice (mmseg's mDice)",
}



@dataclass
class SegmentModelConfig:
    """Backbone: ``source`` is a MaCo model directory or official ``maco.pth`` (None: random
    init from ``preset``); ``text_heads`` only for a ``maco.pth`` with non-standard heads."""

    source: str | None = None
    preset: str = "base"
    drop_path_rate: float = 0.1
    text_heads: int | None = None
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        require(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", "must be in [0, 1)")


@dataclass
class SegmentInputConfig:
    """Preprocessing: letterbox side, flip probability, normalisation (MaCo's by default)."""

    image_size: int = 512
    flip_p: float = 0.5
    pixel_mean: float = IMAGE_MEAN
    pixel_std: float = IMAGE_STD
    missing_mask: MissingMask = "skip"

    def __post_init__(self) -> None:
        require(self.image_size >= 32 and self.image_size % 32 == 0, "image_size",
                 f"{self.image_size} must be a positive multiple of 32 (pyramid stride)")
        require(0.0 <= self.flip_p <= 1.0, "flip_p", "must be in [0, 1]")
        require(self.pixel_std > 0, "pixel_std", "must be > 0")


@dataclass
class SegmentEvalConfig:
    """Validation every ``every`` steps (0: only at the end), probability ``threshold``,
    ``overlays`` test predictions drawn as PNGs."""

    every: int = 1000
    threshold: float = 0.5
    batch_size: int = 8
    overlays: int = 8

    def __post_init__(self) -> None:
        require(self.every >= 0, "every", "must be >= 0")
        require(0.0 < self.threshold < 1.0, "threshold", "must be in (0, 1)")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.overlays >= 0, "overlays", "must be >= 0")


def _paper_optim() -> OptimConfig:
    """SIIM 100 % of the paper; the shipped configs set lr / steps / warm-up per dataset."""
    return OptimConfig(name="adamw", lr=1.5e-5, betas=(0.9, 0.999), weight_decay=0.05, layer_decay=0.65,
                       clip_grad=None, batch_size=8, steps=160_000, warmup_steps=1500, schedule="poly",
                       warmup_start=0.0, final=0.0)


@dataclass
class SegmentConfig:
    """Everything a segmentation run needs (YAML sections of the same names)."""

    model: SegmentModelConfig = field(default_factory=SegmentModelConfig)
    input: SegmentInputConfig = field(default_factory=SegmentInputConfig)
    head: UperNetConfig = field(default_factory=UperNetConfig)
    loss: SegmentationLossWeights = field(default_factory=SegmentationLossWeights)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_paper_optim)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(out="runs/segment"))
    evaluation: SegmentEvalConfig = field(default_factory=SegmentEvalConfig)

    def __post_init__(self) -> None:
        require(self.optim.batch_size >= 2, "optim.batch_size",
                 "must be >= 2 (BatchNorm in the head needs two images per step)")


@dataclass
class SegmentResult:
    """Test metrics (the three named Dice figures and more), where they were written, the model."""

    metrics: dict[str, Any]
    out_dir: Path
    checkpoint: Path
    model: UperNetSegmenter


# ------------------------------------------------------------------------------------- data


def _has_mask_annotation(dataset: ChestXrayDataset, record: Record) -> bool:
    """Mask files listed, or an adapter that builds masks itself (SIIM's RLE)."""
    return bool(record.mask_paths) or type(dataset).read_mask is not ChestXrayDataset.read_mask


def _annotated(dataset: ChestXrayDataset, missing: MissingMask, role: str) -> tuple[ChestXrayDataset, int]:
    """The dataset without its unannotated images (``missing="skip"``) and how many left."""
    if missing == "empty":
        return dataset, 0
    keep = [r for r in dataset.records if _has_mask_annotation(dataset, r)]
    dropped = len(dataset.records) - len(keep)
    if dropped:
        logger.warning("%s: %d of %d images have no mask annotation and are left out "
                       "(input.missing_mask=empty counts them as empty masks)", role, dropped, len(dataset.records))
    if not keep:
        raise DataError(f"the {role} split has no image with a mask annotation; check data.options.mask_labels "
                        "or set input.missing_mask=empty if images without masks are empty")
    subset = copy.copy(dataset)
    subset.records = keep
    return subset, dropped


def _mask_of(sample: dict[str, Any], missing: MissingMask) -> np.ndarray:
    image = sample["image"]
    mask = sample.get("mask")
    if mask is None:
        if missing == "empty":
            return np.zeros(image.shape[-2:], dtype=np.uint8)
        raise DataError(f"{sample.get('path')}: the dataset returned no mask for this image; set "
                        "input.missing_mask=empty if such images are empty")
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.shape != tuple(image.shape[-2:]):
        raise DataError(f"{sample.get('path')}: mask is {mask.shape} but the image is {tuple(image.shape[-2:])}")
    return mask


def _valid_region(box: Letterbox) -> np.ndarray:
    valid = np.zeros((box.size, box.size), dtype=bool)
    valid[box.pad_top:box.pad_top + box.new_height, box.pad_left:box.pad_left + box.new_width] = True
    return valid


class _TrainSet(Dataset):
    """Letterboxed image, target (255 on padding) and valid region; flip drawn per draw id."""

    def __init__(self, base: ChestXrayDataset, cfg: SegmentInputConfig, seed: int) -> None:
        self.base, self.cfg, self.seed = base, cfg, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = key
        sample = self.base[index]
        pixels = sample["image"][0].numpy()
        mask = _mask_of(sample, self.cfg.missing_mask)
        box = Letterbox.fit(*pixels.shape, self.cfg.image_size)
        image, target, valid = box.apply_image(pixels), box.apply_mask(mask), _valid_region(box)
        target = np.where(valid, target, IGNORE_INDEX).astype(np.uint8)
        if np.random.default_rng([self.seed, draw]).random() < self.cfg.flip_p:
            image, target, valid = image[:, ::-1], target[:, ::-1], valid[:, ::-1]
        return {"image": torch.from_numpy(image.copy())[None], "target": torch.from_numpy(target.copy()),
                "valid": torch.from_numpy(valid.copy())}


class _EvalSet(Dataset):
    """Letterboxed image + the transform + the original mask (and image, for overlays)."""

    def __init__(self, base: ChestXrayDataset, cfg: SegmentInputConfig) -> None:
        self.base, self.cfg = base, cfg

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        pixels = sample["image"][0].numpy()
        box = Letterbox.fit(*pixels.shape, self.cfg.image_size)
        return {"image": torch.from_numpy(box.apply_image(pixels))[None],
                "valid": torch.from_numpy(_valid_region(box)), "letterbox": box,
                "mask": _mask_of(sample, self.cfg.missing_mask), "original": pixels,
                "path": sample.get("path", str(index))}


def _normalise(images: torch.Tensor, valid: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 ``[N, 1, S, S]`` -> float ``[N, 3, S, S]``; padding set to 0 (the normalised mean)."""
    x = (images.float() / 255.0 - mean) / std
    x = x * valid[:, None].to(x.dtype)
    return x.expand(-1, 3, -1, -1)


# ------------------------------------------------------------------------------------ model


def build_segmenter(config: SegmentConfig) -> tuple[UperNetSegmenter, dict[str, Any]]:
    """The UperNet segmenter with its backbone loaded (position table resampled to the input
    size once, here) and a summary of what loaded."""
    backbone, report = load_backbone(config.model.source, preset=config.model.preset,
                                     img_size=config.input.image_size,
                                     drop_path_rate=config.model.drop_path_rate,
                                     text_heads=config.model.text_heads)
    backbone.set_grad_checkpointing(config.model.grad_checkpointing)
    model = UperNetSegmenter(backbone, config.head)
    summary: dict[str, Any] = {"source": config.model.source or f"random init ({config.model.preset})",
                               "feature_blocks_0_based": list(model.feature_indices)}
    if report is not None:
        summary.update(loaded=len(report.loaded), ignored=len(report.ignored), missing=report.missing)
    return model, summary


@torch.no_grad()
def _probabilities(model: UperNetSegmenter, images: torch.Tensor, valid: torch.Tensor, cfg: SegmentInputConfig,
                   device: torch.device, precision: str) -> torch.Tensor:
    """Foreground probabilities ``[N, S, S]`` on the letterbox canvas."""
    x = _normalise(images.to(device), valid.to(device), cfg.pixel_mean, cfg.pixel_std)
    with autocast(device, precision):
        logits = model(x).logits
    logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return torch.sigmoid(logits[:, 0]).cpu()


def predict_masks(model: UperNetSegmenter, images: Sequence[np.ndarray], cfg: SegmentInputConfig, *,
                  threshold: float = 0.5, device: str | torch.device = "cpu", precision: str = "fp32"
                  ) -> list[np.ndarray]:
    """Binary uint8 masks in each image's original geometry for grey uint8 ``[H, W]`` images."""
    device = torch.device(device)
    model.eval()
    boxes = [Letterbox.fit(*np.asarray(img).shape, cfg.image_size) for img in images]
    batch = torch.stack([torch.from_numpy(b.apply_image(np.asarray(img)))[None] for b, img in zip(boxes, images)])
    valid = torch.stack([torch.from_numpy(_valid_region(b)) for b in boxes])
    probs = _probabilities(model, batch, valid, cfg, device, precision)
    return [(b.map_to_original(p) >= threshold).astype(np.uint8) for b, p in zip(boxes, probs)]


def evaluate_segmenter(model: UperNetSegmenter, dataset: ChestXrayDataset, cfg: SegmentInputConfig, *,
                       threshold: float = 0.5, batch_size: int = 8, workers: int = 0,
                       device: torch.device = torch.device("cpu"), precision: str = "fp32",
                       keep: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Score ``dataset`` in original geometry: (segmentation_report, per-image rows, the first
    ``keep`` examples with image, truth, prediction and probability for overlays)."""
    model.eval()
    loader = DataLoader(_EvalSet(dataset, cfg), batch_size=batch_size, num_workers=workers,
                        collate_fn=list)
    preds: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for items in loader:
        images = torch.stack([item["image"] for item in items])
        valid = torch.stack([item["valid"] for item in items])
        probs = _probabilities(model, images, valid, cfg, device, precision)
        for item, prob in zip(items, probs):
            original = item["letterbox"].map_to_original(prob)
            pred = (original >= threshold).astype(np.uint8)
            truth = item["mask"]
            single = segmentation_report([pred], [truth], ignore_index=None)
            rows.append({"image": item["path"], "dice": single["dice_per_image_mean"],
                         "empty_truth": int(not truth.any()), "empty_pred": int(not pred.any()),
                         "truth_pixels": int(truth.sum()), "pred_pixels": int(pred.sum())})
            preds.append(pred)
            truths.append(truth)
            if len(examples) < keep:
                examples.append({"image": item["original"], "truth": truth, "pred": pred, "prob": original,
                                 "path": item["path"], "dice": rows[-1]["dice"]})
    report = segmentation_report(preds, truths, ignore_index=None)
    return report, rows, examples


# --------------------------------------------------------------------------------- training


def _train_loader(dataset: ChestXrayDataset, config: SegmentConfig) -> DataLoader:
    return DataLoader(_TrainSet(dataset, config.input, config.runtime.seed),
                      sampler=StepSampler(len(dataset), config.runtime.seed), batch_size=config.optim.batch_size,
                      drop_last=True, num_workers=config.data.workers,
                      persistent_workers=config.data.workers > 0)


def _save_overlays(examples: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Green: hit, blue: missed truth, red: false positive (jet colours 0.5 / 0 / 1)."""
    paths = []
    for i, ex in enumerate(examples):
        truth, pred = ex["truth"].astype(bool), ex["pred"].astype(bool)
        heat = np.full(truth.shape, np.nan)
        heat[truth & ~pred] = 0.0
        heat[truth & pred] = 0.5
        heat[pred & ~truth] = 1.0
        title = f"Dice {ex['dice']:.3f} (green hit, blue miss, red FP)"
        rgb = overlay_heatmap(ex["image"], heat, value_range=(0.0, 1.0), alpha=0.4, title=title)
        path = folder / f"overlay_{i:02d}_{Path(str(ex['path'])).stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths


def _fit(model: UperNetSegmenter, datasets: dict[str, ChestXrayDataset], config: SegmentConfig, out: Path,
         device: torch.device, backbone_summary: dict[str, Any]) -> tuple[dict[str, Any], JsonlLog]:
    """The training loop; validates every ``evaluation.every`` steps and at the end, saving the
    best checkpoint (validation per-image Dice) into ``out/best``."""
    optim, evaluation, precision = config.optim, config.evaluation, config.runtime.precision
    optimizer = build_optimizer(model, optim, num_layers=len(model.backbone.blocks),
                                no_decay_names=model.no_weight_decay(), device=device)
    log = JsonlLog(out / "log.jsonl")
    best: dict[str, Any] = {"step": -1, SELECTION_METRIC: -math.inf}  # the first validation always saves

    def validate(step: int) -> None:
        report, _, _ = evaluate_segmenter(model, datasets["val"], config.input, threshold=evaluation.threshold,
                                          batch_size=evaluation.batch_size, workers=config.data.workers,
                                          device=device, precision=precision)
        log.log({"step": step, **{f"val_{k}": v for k, v in report.items()}})
        logger.info("step %d: val %s", step, {k: round(float(v), 4) for k, v in report.items()})
        score = float(np.nan_to_num(report[SELECTION_METRIC], nan=-1.0))
        if score > best[SELECTION_METRIC]:
            best.update({"step": step, SELECTION_METRIC: score, "val": report})
            save_checkpoint(out / "best", model.state_dict(),
                            {"task": "segment", "step": step, "val": report, "config": config_dict(config),
                             "backbone": backbone_summary})
        model.train()

    batches = iter(_train_loader(datasets["train"], config))
    progress = None
    if config.runtime.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=optim.steps, desc="segment")
    model.train()
    started = time.perf_counter()
    for step in range(optim.steps):
        set_learning_rate(optimizer, lr_multiplier(step, optim.steps, optim.warmup_steps, optim.schedule,
                                                   warmup_start=optim.warmup_start, final=optim.final))
        batch = next(batches)
        x = _normalise(batch["image"].to(device), batch["valid"].to(device), config.input.pixel_mean,
                       config.input.pixel_std)
        with autocast(device, precision):
            output = model(x)
        parts = segmentation_loss(output, batch["target"].to(device).long(), config.loss)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if optim.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad)
        optimizer.step()
        if progress is not None:
            progress.update(1)
        if step % config.runtime.log_every == 0 or step == optim.steps - 1:
            row = {"step": step, "lr": optimizer.param_groups[-1]["lr"],
                   **{k: float(v.detach()) for k, v in parts.items()},
                   "images_per_s": (step + 1) * optim.batch_size / (time.perf_counter() - started)}
            log.log(row)
            logger.info("step %d loss %.4f (focal %.4f dice %.4f)", step, row["loss"], row["focal"], row["dice"])
        if evaluation.every and (step + 1) % evaluation.every == 0 and step + 1 < optim.steps:
            validate(step + 1)
    validate(optim.steps)
    if progress is not None:
        progress.close()
    return best, log


def segment(config: SegmentConfig) -> SegmentResult:
    """Fine-tune, select on validation per-image Dice, score the test split, write the outputs.

    Writes into ``runtime.out``: ``metrics.json`` (the three named test Dice figures, the best
    validation figures, data counts and what the backbone loaded), ``per_image.csv``,
    ``best/`` (atomic checkpoint), ``overlays/*.png``, ``log.jsonl`` and ``curves.png``.
    Runs are reproducible from ``runtime.seed`` (the global torch generator is forked, so the
    caller's random state is left alone).
    """
    out = Path(config.runtime.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.runtime.device)
    splits = build_splits(config.data)
    datasets, skipped = {}, {}
    for role in ("train", "val", "test"):
        datasets[role], skipped[role] = _annotated(getattr(splits, role), config.input.missing_mask, role)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.runtime.seed)  # head init, dropout and drop-path
        model, backbone_summary = build_segmenter(config)
        model.to(device)
        logger.info("backbone: %s", backbone_summary)
        best, log = _fit(model, datasets, config, out, device, backbone_summary)
    state, _ = load_checkpoint(out / "best")
    model.load_state_dict(state)
    evaluation = config.evaluation
    report, rows, examples = evaluate_segmenter(model, datasets["test"], config.input, threshold=evaluation.threshold,
                                                batch_size=evaluation.batch_size, workers=config.data.workers,
                                                device=device, precision=config.runtime.precision,
                                                keep=evaluation.overlays)
    columns = ["image", "dice", "empty_truth", "empty_pred", "truth_pixels", "pred_pixels"]
    write_csv(out / "per_image.csv", columns, [[r[k] for k in columns] for r in rows])
    overlays = _save_overlays(examples, out / "overlays")
    plot_training_curves(log.rows, ["loss", "lr", f"val_{SELECTION_METRIC}"], out / "curves.png",
                         title="segmentation fine-tuning")
    metrics = {
        "task": "segment",
        "dataset": config.data.kind,
        "test": report,
        "metric_names": METRIC_NAMES,
        "best_step": best["step"],
        "val_best": best.get("val"),
        "data": {"counts": {r: len(d) for r, d in datasets.items()}, "sources": splits.sources,
                 "skipped_without_mask": skipped},
        "backbone": backbone_summary,
        "overlays": [str(p.relative_to(out)) for p in overlays],
        "config": config_dict(config),
    }
    write_json(out / "metrics.json", metrics)
    logger.info("test: %s", {k: report[k] for k in METRIC_NAMES})
    return SegmentResult(metrics=metrics, out_dir=out, checkpoint=out / "best", model=model)
