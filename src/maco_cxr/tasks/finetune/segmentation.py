"""Segmentation fine-tuning (``maco-cxr segment``): UperNet on a MaCo ViT, scored by three named Dice figures.

Recipe (``docs/protocols.md`` section 5): images letterboxed to ``input.image_size``
(keep-ratio resize, centred zero padding; padded pixels are 0 after normalisation and 255 =
ignored in the target), horizontal flip 0.5, AdamW (0.9, 0.999) with weight decay 0.05 and
layer-wise lr decay 0.65, poly schedule with linear warm-up, focal x2 + Dice x1 (aux 0.8 /
0.4). The checkpoint with the best validation per-image Dice (the official selection metric)
is kept and scored on the test split after mapping each prediction back to its image's
original geometry (:meth:`Letterbox.map_to_original`, then threshold).

The target: the union of each image's masks whose labels are ``data.options.mask_labels``
(manifests, CheXlocalize), or the adapter's own masks (SIIM's RLE, COVID rural). A manifest
whose masks carry several labels (lungs, airways, tubes...) must name the target labels: the
run refuses to guess, and ``metrics.json`` records them. Images without a mask annotation:
``input.missing_mask="skip"`` leaves them out (counted in ``metrics.json``), ``"empty"``
treats them as empty masks (fully annotated data such as the phantoms).

``model.freeze_backbone=true`` trains the head only (the frozen-encoder protocol of MGCA);
the encoder then stays in eval mode.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from maco_cxr._atomic import write_csv, write_with
from maco_cxr.config import config_to_dict, from_dict
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.inference import autocast
from maco_cxr.metrics import bootstrap_mean_ci
from maco_cxr.metrics.segmentation import mask_counts, per_image_dice, segmentation_report_from_counts
from maco_cxr.models.config import VisionConfig
from maco_cxr.models.upernet import (
    IGNORE_INDEX,
    UperNetConfig,
    UperNetSegmenter,
    segmentation_loss,
)
from maco_cxr.models.vit import MaskedViT
from maco_cxr.runtime.loop import Run
from maco_cxr.tasks.finetune.backbone import load_backbone
from maco_cxr.tasks.finetune.config import (
    MissingMask,
    SegmentConfig,
    SegmentEval,
    SegmentInput,
)
from maco_cxr.tasks.finetune.engine import EvalItems, FinetuneTask, FitResult, fit, read_training_sample
from maco_cxr.tasks.finetune.model_io import FinetunedModel
from maco_cxr.tasks.finetune.splits import FinetuneSplits, copy_with

__all__ = [
    "METRIC_NAMES",
    "FinetunedSegmenter",
    "SegmentConfig",
    "SegmentEval",
    "SegmentInput",
    "SegmentTask",
    "train_segmenter",
]

logger = logging.getLogger(__name__)

SELECTION_METRIC = "dice_per_image_mean"
METRIC_NAMES = {
    "dice_per_image_mean": "per-image foreground Dice averaged over all images; an empty truth scores 1 for an "
    "empty prediction, else 0 (the official model-selection metric)",
    "dice_foreground_dataset": "foreground Dice with the pixels of the whole test set pooled",
    "dice_mean_over_classes": "mean of the pooled background and foreground Dice (mmseg's mDice)",
}


# ------------------------------------------------------------------------------------- model


def _normalise(images: torch.Tensor, valid: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 ``[N, 1, S, S]`` -> float ``[N, 3, S, S]``; padding set to 0 (the normalised mean)."""
    x = (images.float() / 255.0 - mean) / std
    x = x * valid[:, None].to(x.dtype)
    return x.expand(-1, 3, -1, -1)


class FinetunedSegmenter(FinetunedModel):
    """A fine-tuned segmenter: ``predict(images)`` gives uint8 0/1 masks ``[C, H, W]`` per image
    in the image's ORIGINAL pixel grid (C = the target classes; one for binary segmentation)."""

    task: ClassVar[str] = "segmentation"

    @staticmethod
    def prepare(pixels: np.ndarray, preprocessing: dict[str, Any]) -> dict[str, Any]:
        box = Letterbox.fit(*pixels.shape, int(preprocessing["image_size"]))
        return {
            "x": torch.from_numpy(box.apply_image(pixels))[None],
            "valid": torch.from_numpy(box.content_mask()),
            "letterbox": box,
        }

    def probabilities(self, items: Sequence[dict[str, Any]]) -> list[np.ndarray]:
        """Foreground probability ``[H, W]`` (float32) of each prepared item, original geometry."""
        pre = self.preprocessing
        images = torch.stack([item["x"] for item in items]).to(self.device)
        valid = torch.stack([item["valid"] for item in items]).to(self.device)
        with autocast(self.device):
            logits = self.net(_normalise(images, valid, pre["mean"], pre["std"])).logits
        logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        canvas = torch.sigmoid(logits[:, 0]).cpu()
        return [item["letterbox"].map_to_original(p) for item, p in zip(items, canvas)]

    def predict_prepared(self, items: Sequence[dict[str, Any]]) -> list[np.ndarray]:
        threshold = self.preprocessing["threshold"]
        return [(p >= threshold).astype(np.uint8)[None] for p in self.probabilities(items)]

    def describe(self) -> dict[str, Any]:
        return {"vision": asdict(self.net.backbone.config), "head": config_to_dict(self.net.config)}

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> FinetunedSegmenter:
        architecture = description["architecture"]
        backbone = MaskedViT(from_dict(VisionConfig, architecture["vision"]))
        net = UperNetSegmenter(backbone, from_dict(UperNetConfig, architecture["head"]))
        return cls(net, description["classes"], description["preprocessing"])


# ------------------------------------------------------------------------------------- data


def _has_mask_annotation(dataset: ChestXrayDataset, record: Record) -> bool:
    """Mask files listed, or an adapter that builds masks itself (SIIM's RLE)."""
    return bool(record.mask_paths) or type(dataset).read_mask is not ChestXrayDataset.read_mask


def _mask_of(sample: dict[str, Any], missing: MissingMask) -> np.ndarray:
    image = sample["image"]
    mask = sample.get("mask")
    if mask is None:
        if missing == "empty":
            return np.zeros(image.shape[-2:], dtype=np.uint8)
        raise DataError(
            f"{sample.get('path')}: the dataset returned no mask for this image; set "
            "input.missing_mask=empty if such images are empty"
        )
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.shape != tuple(image.shape[-2:]):
        raise DataError(f"{sample.get('path')}: mask is {mask.shape} but the image is {tuple(image.shape[-2:])}")
    return mask


class _TrainItems(Dataset):
    """Letterboxed image, target (255 on padding) and valid region; flip drawn per draw id."""

    def __init__(self, base: ChestXrayDataset, cfg: SegmentInput, seed: int) -> None:
        self.base, self.cfg, self.seed = base, cfg, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, draw = key
        sample, replaced = read_training_sample(self.base, index)
        pixels = sample["image"][0].numpy()
        mask = _mask_of(sample, self.cfg.missing_mask)
        box = Letterbox.fit(*pixels.shape, self.cfg.image_size)
        image, target, valid = box.apply_image(pixels), box.apply_mask(mask), box.content_mask()
        target = np.where(valid, target, IGNORE_INDEX).astype(np.uint8)
        if np.random.default_rng([self.seed, draw]).random() < self.cfg.flip_p:
            image, target, valid = image[:, ::-1], target[:, ::-1], valid[:, ::-1]
        return {
            "image": torch.from_numpy(image.copy())[None],
            "target": torch.from_numpy(target.copy()),
            "valid": torch.from_numpy(valid.copy()),
            "replaced": replaced,
        }


# ------------------------------------------------------------------------------------- task


class SegmentTask(FinetuneTask):
    """Segmentation as a task spec of the one fine-tuning loop."""

    name: ClassVar[str] = "segmentation"

    def splits(self) -> FinetuneSplits:
        splits = super().splits()
        cfg = self.config
        labels = _target_labels(splits, cfg.data.options)
        if not any(_has_mask_annotation(splits.train, r) for r in splits.train.records):
            chosen = f" labelled {', '.join(labels)} (data.options.mask_labels)" if labels else ""
            raise DataError(
                f"no training image has a mask{chosen}, so every target would be empty; check the "
                "label names against the dataset's masks (a manifest's masks.csv label column)"
            )
        left_out = {"train": 0, "val": 0, "test": 0}
        for role in ("train", "val", "test"):
            dataset = getattr(splits, role)
            if cfg.input.missing_mask == "skip":
                keep = [r for r in dataset.records if _has_mask_annotation(dataset, r)]
                left_out[role] = len(dataset.records) - len(keep)
                if left_out[role]:
                    logger.warning(
                        "%s: %d of %d images have no mask annotation and are left out (input.missing_mask"
                        "=empty counts them as empty masks)",
                        role,
                        left_out[role],
                        len(dataset.records),
                    )
                if not keep:
                    raise DataError(
                        f"the {role} split has no image with a mask annotation; check "
                        "data.options.mask_labels or set input.missing_mask=empty if images without masks "
                        "are empty"
                    )
                setattr(splits, role, copy_with(dataset, keep))
        splits.notes.update(skipped_without_mask=left_out, target_labels=list(labels) or ["foreground"])
        return splits

    def build_model(self, splits: FinetuneSplits) -> tuple[FinetunedModel, dict[str, Any]]:
        cfg = self.config
        backbone, report = load_backbone(
            cfg.model.source,
            preset=cfg.model.preset,
            img_size=cfg.input.image_size,
            drop_path_rate=cfg.model.drop_path_rate,
            text_heads=cfg.model.text_heads,
            vision_heads=cfg.model.vision_heads,
        )
        backbone.set_grad_checkpointing(cfg.model.grad_checkpointing)
        net = UperNetSegmenter(backbone, cfg.head)
        summary: dict[str, Any] = {
            "source": cfg.model.source or f"random init ({cfg.model.preset})",
            "feature_blocks_0_based": list(net.feature_indices),
            "backbone_width": backbone.embed_dim,
            "frozen_backbone": cfg.model.freeze_backbone,
        }
        if report is not None:
            summary.update(loaded=len(report.loaded), ignored=len(report.ignored), missing=report.missing)
        preprocessing = {
            "image_size": cfg.input.image_size,
            "mean": cfg.input.pixel_mean,
            "std": cfg.input.pixel_std,
            "threshold": cfg.evaluation.threshold,
            "resize": "letterbox: longest side to image_size (exact area), centred zero padding; "
            "masks mapped back to the original grid",
        }
        model = FinetunedSegmenter(net, splits.notes["target_labels"], preprocessing)
        if cfg.model.freeze_backbone:
            model.freeze(net.backbone)
        return model, summary

    def train_items(self, dataset: ChestXrayDataset, run: Run, model: FinetunedModel) -> Dataset:
        return _TrainItems(dataset, self.config.input, self.config.runtime.seed)

    def collate_train(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "image": torch.stack([i["image"] for i in items]),
            "target": torch.stack([i["target"] for i in items]),
            "valid": torch.stack([i["valid"] for i in items]),
            "replaced": [r for i in items for r in i["replaced"]],
        }

    def eval_items(self, dataset: ChestXrayDataset, model: FinetunedModel, run: Run, role: str) -> Dataset:
        examples = self.config.evaluation.overlays if role == "test" else 0
        missing = self.config.input.missing_mask
        return EvalItems(
            dataset,
            FinetunedSegmenter.prepare,
            model.preprocessing,
            lambda sample, record: {"mask": _mask_of(sample, missing)},
            examples,
        )

    def loss(self, model: Any, batch: dict[str, Any], run: Run) -> dict[str, torch.Tensor]:
        cfg = self.config.input
        x = _normalise(batch["image"].to(run.device), batch["valid"].to(run.device), cfg.pixel_mean, cfg.pixel_std)
        with run.autocast():
            output = model(x)
        return segmentation_loss(output, batch["target"].to(run.device).long(), self.config.loss)

    def predict(self, model: FinetunedModel, items: Sequence[dict[str, Any]], run: Run) -> list[dict[str, Any]]:
        threshold = self.config.evaluation.threshold
        records = []
        for item, prob in zip(items, model.probabilities(items)):
            pred = (prob >= threshold).astype(np.uint8)
            counts = mask_counts(pred, item["mask"], ignore_index=None)
            record = {"index": item["index"], "path": item["path"], **counts, "dice": per_image_dice(counts)}
            if "original" in item:
                record["example"] = {"image": item["original"], "truth": item["mask"], "pred": pred}
            records.append(record)
        return records

    def evaluate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return dict(segmentation_report_from_counts(records))

    def evaluate_test(
        self, records: Sequence[dict[str, Any]], val_records: Sequence[dict[str, Any]] | None
    ) -> dict[str, Any]:
        metrics = self.evaluate(records)
        if self.config.evaluation.bootstrap:
            metrics["dice_per_image_mean_ci95"] = asdict(
                bootstrap_mean_ci(
                    [r["dice"] for r in records],
                    n_resamples=self.config.evaluation.bootstrap,
                    seed=self.config.runtime.seed,
                )
            )
        return metrics

    @property
    def selection_metric(self) -> str:
        return SELECTION_METRIC

    def eval_every(self, n_train: int) -> int:
        return self.config.evaluation.every

    @property
    def eval_batch_size(self) -> int:
        return self.config.evaluation.batch_size

    def write_outputs(
        self,
        out: Path,
        records: Sequence[dict[str, Any]],
        metrics: dict[str, Any],
        model: FinetunedModel,
        log_rows: list[dict[str, Any]],
    ) -> dict[str, Any]:
        from maco_cxr.plots import plot_training_curves

        columns = ["path", "dice", "true_fg", "pred_fg", "both_fg"]
        write_csv(
            out / "per_image.csv",
            ["image", "dice", "truth_pixels", "pred_pixels", "overlap_pixels"],
            [[r[k] for k in columns] for r in records],
        )
        overlays = _save_overlays([r for r in records if "example" in r], out / "overlays")
        write_with(
            out / "curves.png",
            lambda tmp: plot_training_curves(
                log_rows, ["loss", "lr", f"val_{SELECTION_METRIC}"], tmp, title="segmentation fine-tuning"
            ),
        )
        return {
            "dataset": self.config.data.kind,
            "metric_names": METRIC_NAMES,
            "target_labels": list(model.classes),
            "overlays": [str(p.relative_to(out)) for p in overlays],
        }

    def summary_line(self, metrics: dict[str, Any]) -> str:
        return "test " + ", ".join(f"{k} {metrics[k]:.4f}" for k in METRIC_NAMES)


def _target_labels(splits: FinetuneSplits, options: dict[str, Any]) -> tuple[str, ...]:
    """The mask labels that form the target; several labels without a choice is an error."""
    chosen = options.get("mask_labels")
    if chosen is not None:
        return tuple([chosen] if isinstance(chosen, str) else chosen)
    counts: Counter[str] = Counter()
    for role in ("train", "val", "test"):
        for record in getattr(splits, role).records:
            counts.update(set(record.meta.get("mask_labels") or ()))
    if len(counts) > 1:
        ranked = [label for label, _ in counts.most_common()]
        listed = ", ".join(f"{label} ({counts[label]} images)" for label in ranked)
        raise ConfigError(
            f"the masks of this dataset carry {len(counts)} labels: {listed}. Name the labels "
            f"that form the target (their union), e.g. data.options.mask_labels=[{ranked[0]}] or "
            f"data.options.mask_labels=[{', '.join(ranked[:2])}]",
            key="data.options.mask_labels",
        )
    return tuple(counts)


def _save_overlays(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Green: hit, blue: missed truth, red: false positive (jet colours 0.5 / 0 / 1)."""
    from maco_cxr.plots import overlay_heatmap

    paths = []
    for i, record in enumerate(records):
        example = record["example"]
        truth, pred = example["truth"].astype(bool), example["pred"].astype(bool)
        heat = np.full(truth.shape, np.nan)
        heat[truth & ~pred] = 0.0
        heat[truth & pred] = 0.5
        heat[pred & ~truth] = 1.0
        title = f"Dice {record['dice']:.3f} (green hit, blue miss, red FP)"
        rgb = overlay_heatmap(example["image"], heat, value_range=(0.0, 1.0), alpha=0.4, title=title)
        path = folder / f"overlay_{i:02d}_{Path(str(record['path'])).stem}.png"
        paths.append(write_with(path, lambda tmp, rgb=rgb: Image.fromarray(rgb).save(tmp, format="PNG")))
    return paths


def train_segmenter(config: SegmentConfig) -> FitResult:
    """Fine-tune, select on validation per-image Dice, score the test split, write the outputs.

    Writes into ``runtime.out``: ``metrics.json`` (``test``: the three named Dice figures with
    a bootstrap interval of the per-image Dice; the best validation figures; data counts; the
    target labels; what the backbone loaded), ``per_image.csv``, ``best/`` and ``final/``
    (models for :func:`load_finetuned`), ``checkpoints/``, ``overlays/*.png``, ``log.jsonl``
    and ``curves.png``; returns a :class:`FitResult` (its ``summary`` is what ``metrics.json``
    holds).
    """
    return fit(SegmentTask(config))
