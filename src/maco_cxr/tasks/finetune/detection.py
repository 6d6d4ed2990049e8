"""Detection fine-tuning (``maco-cxr detect``): ViTDet-style Faster R-CNN on a MaCo ViT, scored by COCO AP.

Recipe (``docs/protocols.md`` section 6): large-scale jitter (letterbox to ``s x image_size``
with ``s`` uniform in ``input.scale_range``, then a random fixed-size crop or pad to
``image_size``, horizontal flip), AdamW lr 5e-4 weight decay 0.05 (none on norms, biases,
CLS token and position embeddings), layer-wise lr decay 0.7 (x 0.7^(depth + 1 - layer id)),
250 warm-up steps from 0.01 then cosine to 0.01. Evaluation letterboxes each image to
``image_size`` and maps predicted boxes back to original pixels before COCO AP / AP50 / AP75.
The positive/negative sampling of the RPN and the box head draws per image from the image's
draw id (:class:`~maco_cxr.models.vitdet.SeededSampler`), so two processes train what one does.

Normalisation: MaCo's (mean 0.4978, std 0.2449 of 255, i.e. 126.9 / 62.4) by default, the
statistics the backbone was pre-trained with; the official detector used 125.281 / 63.929
(set ``input.pixel_mean=0.4913 input.pixel_std=0.2507`` to match it). Padding is filled with
the mean grey (0 after normalisation).

The official detection code passed its checkpoint without key matching, so its backbone
probably never received MaCo weights; here :func:`load_backbone` copies every tensor by an
explicit name map and the counts land in ``metrics.json`` (``model.loaded``).

RSNA: every role reads ``stage_2_train_images`` (the only images with boxes; ``data.options
.split`` defaults to ``train``) and the default test split is the paper's detection test set
(``data.test_split: detection_test``: 1,218 positives of stage_2_train, the official COCO
file), its images kept out of training and validation (counted in ``metrics.json``; a warning names the
count when a split you gave listed them). ``model.freeze_backbone=true`` trains the pyramid
and heads only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision.models.detection import FasterRCNN

from maco_cxr._atomic import write_csv, write_with
from maco_cxr.config import config_to_dict, from_dict
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.data.splits import official_rsna_detection_test
from maco_cxr.errors import DataError
from maco_cxr.inference import autocast
from maco_cxr.metrics.detection import coco_detection_ap
from maco_cxr.models.config import VisionConfig
from maco_cxr.models.vit import MaskedViT
from maco_cxr.models.vitdet import ViTDetConfig, build_vitdet, set_sampling_seeds
from maco_cxr.runtime.loop import Run
from maco_cxr.tasks.finetune.backbone import load_backbone
from maco_cxr.tasks.finetune.config import (
    DetectConfig,
    DetectEval,
    DetectInput,
    FinetuneData,
)
from maco_cxr.tasks.finetune.engine import EvalItems, FinetuneTask, FitResult, fit, read_training_sample
from maco_cxr.tasks.finetune.model_io import FinetunedModel
from maco_cxr.tasks.finetune.splits import RSNA_DETECTION_TEST, FinetuneSplits, build_splits, copy_with

__all__ = [
    "DetectConfig",
    "DetectEval",
    "DetectInput",
    "DetectTask",
    "FinetunedDetector",
    "large_scale_jitter",
    "train_detector",
]

logger = logging.getLogger(__name__)

_TRUE_COLOUR = (0, 255, 0)
_PRED_COLOUR = (255, 40, 40)


# ------------------------------------------------------------------------------------- model


def _fill_padding(image: np.ndarray, valid: np.ndarray, mean: float) -> np.ndarray:
    return np.where(valid, image, np.uint8(round(mean * 255))).astype(np.uint8)


def _to_inputs(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 ``[1, S, S]`` -> float ``[3, S, S]`` in [0, 1] (the detector normalises)."""
    return [(img.to(device).float() / 255.0).expand(3, -1, -1) for img in images]


class FinetunedDetector(FinetunedModel):
    """A fine-tuned detector: ``predict(images)`` gives per image ``{"boxes": [M, 4] xyxy in the
    image's original pixels, "scores": [M], "labels": [M] (1-based class ids; names in
    ``classes``)}``."""

    task: ClassVar[str] = "detection"

    def __init__(
        self, net: FasterRCNN, classes: Sequence[str], preprocessing: dict[str, Any], detector: ViTDetConfig
    ) -> None:
        super().__init__(net, classes, preprocessing)
        self.detector_config = detector

    @staticmethod
    def prepare(pixels: np.ndarray, preprocessing: dict[str, Any]) -> dict[str, Any]:
        box = Letterbox.fit(*pixels.shape, int(preprocessing["image_size"]))
        image = _fill_padding(box.apply_image(pixels), box.content_mask(), preprocessing["mean"])
        return {"x": torch.from_numpy(image)[None], "letterbox": box}

    def predict_prepared(self, items: Sequence[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        with autocast(self.device):
            outputs = self.net(_to_inputs([item["x"] for item in items], self.device))
        return [_to_original(out, item["letterbox"]) for out, item in zip(outputs, items)]

    def describe(self) -> dict[str, Any]:
        return {"vision": asdict(self.net.backbone.vit.config), "detector": config_to_dict(self.detector_config)}

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> FinetunedDetector:
        architecture, pre = description["architecture"], description["preprocessing"]
        vit = MaskedViT(from_dict(VisionConfig, architecture["vision"]))
        config = from_dict(ViTDetConfig, architecture["detector"])
        return cls(
            build_vitdet(vit, config, int(pre["image_size"]), pre["mean"], pre["std"]),
            description["classes"],
            pre,
            config,
        )


def _to_original(pred: dict[str, torch.Tensor], box: Letterbox) -> dict[str, np.ndarray]:
    boxes = pred["boxes"].float().cpu().numpy().reshape(-1, 4)
    boxes = box.boxes_to_original(boxes) if len(boxes) else np.zeros((0, 4))
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, box.src_width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, box.src_height)
    return {
        "boxes": boxes,
        "scores": pred["scores"].float().cpu().numpy().astype(np.float64),
        "labels": pred["labels"].cpu().numpy(),
    }


# ------------------------------------------------------------------------------------- data


def _selected(record: Record, labels: tuple[str, ...] | None) -> np.ndarray | None:
    """The record's boxes ``[M, 4]`` to detect; None when the image has no box annotation."""
    if record.boxes is None:
        return None
    boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
    if labels is None:
        return boxes
    meta = record.meta.get("box_meta") or [{}] * len(boxes)
    names = record.box_labels or [""] * len(boxes)
    keep = [i for i in range(len(boxes)) if names[i] in labels or meta[i].get("category") in labels]
    return boxes[keep]


def large_scale_jitter(
    pixels: np.ndarray,
    boxes: np.ndarray,
    size: int,
    scale_range: Sequence[float],
    flip_p: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Letterbox to ``s * size`` (s uniform in ``scale_range``), crop or pad to ``size`` at a
    random offset, flip with ``flip_p``. Returns image uint8 ``[size, size]``, valid-pixel mask
    and the boxes in the output frame (clipped; boxes narrower than 1 px dropped)."""
    side = max(16, round(size * rng.uniform(*scale_range)))
    box = Letterbox.fit(*pixels.shape, side)
    canvas, valid = box.apply_image(pixels), box.content_mask()
    out_boxes = box.boxes_to_letterbox(boxes) if len(boxes) else np.zeros((0, 4))
    image = np.zeros((size, size), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    if side >= size:
        oy, ox = (int(v) for v in rng.integers(0, side - size + 1, size=2))
        image[:], mask[:] = canvas[oy : oy + size, ox : ox + size], valid[oy : oy + size, ox : ox + size]
        out_boxes = out_boxes - np.array([ox, oy, ox, oy], dtype=np.float64)
    else:
        oy, ox = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        image[oy : oy + side, ox : ox + side], mask[oy : oy + side, ox : ox + side] = canvas, valid
        out_boxes = out_boxes + np.array([ox, oy, ox, oy], dtype=np.float64)
    out_boxes = np.clip(out_boxes, 0, size)
    out_boxes = out_boxes[(out_boxes[:, 2] - out_boxes[:, 0] >= 1) & (out_boxes[:, 3] - out_boxes[:, 1] >= 1)]
    if rng.random() < flip_p:
        image, mask = image[:, ::-1].copy(), mask[:, ::-1].copy()
        out_boxes = np.stack([size - out_boxes[:, 2], out_boxes[:, 1], size - out_boxes[:, 0], out_boxes[:, 3]], 1)
    return image, mask, out_boxes.reshape(-1, 4)


class _TrainItems(Dataset):
    """Jittered image (padding = mean grey) and its boxes; the jitter is drawn per draw id."""

    def __init__(self, base: ChestXrayDataset, cfg: DetectInput, seed: int) -> None:
        self.base, self.cfg, self.seed = base, cfg, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, draw = key
        sample, replaced = read_training_sample(self.base, index)
        boxes = _selected(self.base.records[sample["index"]], self.cfg.box_labels)
        image, valid, out_boxes = large_scale_jitter(
            sample["image"][0].numpy(),
            boxes,
            self.cfg.image_size,
            self.cfg.scale_range,
            self.cfg.flip_p,
            np.random.default_rng([self.seed, draw]),
        )
        return {
            "image": torch.from_numpy(_fill_padding(image, valid, self.cfg.pixel_mean))[None],
            "boxes": torch.as_tensor(out_boxes, dtype=torch.float32),
            "labels": torch.ones(len(out_boxes), dtype=torch.int64),
            "draw": draw,
            "replaced": replaced,
        }


# -------------------------------------------------------------------------------------- task


class DetectTask(FinetuneTask):
    """Detection as a task spec of the one fine-tuning loop."""

    name: ClassVar[str] = "detection"

    def splits(self) -> FinetuneSplits:
        cfg = self.config
        data = cfg.data
        if data.kind == "rsna":  # boxes exist for stage_2_train only; the paper tests on its detection set
            data = dataclasses.replace(
                data, test_split=data.test_split or RSNA_DETECTION_TEST, options={"split": "train", **data.options}
            )
        splits = build_splits(data)
        if data.kind == "rsna" and data.test_split == RSNA_DETECTION_TEST:
            _hold_out_rsna_detection_test(splits, data)
        left_out = {}
        for role in ("train", "val", "test"):
            dataset = getattr(splits, role)
            keep: list[Record] = []
            counts = {"without_box_annotation": 0, "without_selected_box": 0}
            for record in dataset.records:
                boxes = _selected(record, cfg.input.box_labels)
                if boxes is None:
                    counts["without_box_annotation"] += 1
                elif cfg.input.positives_only and len(boxes) == 0:
                    counts["without_selected_box"] += 1
                else:
                    keep.append(record)
            if not keep:
                raise DataError(
                    f"the {role} split has no image with boxes to detect ({counts}); check "
                    f"data.{role}_split and input.box_labels={cfg.input.box_labels}"
                )
            left_out[role] = counts
            setattr(splits, role, copy_with(dataset, keep))
        splits.notes["left_out"] = left_out
        return splits

    def build_model(self, splits: FinetuneSplits) -> tuple[FinetunedModel, dict[str, Any]]:
        cfg = self.config
        vit, report = load_backbone(
            cfg.model.source,
            preset=cfg.model.preset,
            img_size=cfg.input.image_size,
            drop_path_rate=cfg.model.drop_path_rate,
            text_heads=cfg.model.text_heads,
            vision_heads=cfg.model.vision_heads,
        )
        vit.set_grad_checkpointing(cfg.model.grad_checkpointing)
        net = build_vitdet(vit, cfg.detector, cfg.input.image_size, cfg.input.pixel_mean, cfg.input.pixel_std)
        classes = tuple(cfg.input.box_labels or ("finding",))
        preprocessing = {
            "image_size": cfg.input.image_size,
            "mean": cfg.input.pixel_mean,
            "std": cfg.input.pixel_std,
            "resize": "letterbox: longest side to image_size (exact area), padding with the mean grey; "
            "boxes mapped back to original pixels",
        }
        model = FinetunedDetector(net, classes, preprocessing, cfg.detector)
        if cfg.model.freeze_backbone:
            model.freeze(net.backbone.vit)
        summary: dict[str, Any] = {
            "source": cfg.model.source or f"random init ({cfg.model.preset})",
            "anchor_sizes": list(cfg.detector.anchors_for(cfg.input.image_size)),
            "pyramid_channels": net.backbone.out_channels,
            "frozen_backbone": cfg.model.freeze_backbone,
        }
        if report is not None:
            summary.update(loaded=len(report.loaded), ignored=len(report.ignored), missing=report.missing)
        return model, summary

    def num_layers(self, model: FinetunedModel) -> int:
        return len(model.net.backbone.vit.blocks)

    def no_weight_decay(self, model: FinetunedModel) -> set[str]:
        return {f"net.backbone.{name}" for name in model.net.backbone.no_weight_decay()}

    def train_items(self, dataset: ChestXrayDataset, run: Run, model: FinetunedModel) -> Dataset:
        return _TrainItems(dataset, self.config.input, self.config.runtime.seed)

    def collate_train(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"items": items, "replaced": [r for i in items for r in i["replaced"]]}

    def eval_items(self, dataset: ChestXrayDataset, model: FinetunedModel, run: Run, role: str) -> Dataset:
        examples = self.config.evaluation.overlays if role == "test" else 0
        labels = self.config.input.box_labels
        return EvalItems(
            dataset,
            FinetunedDetector.prepare,
            model.preprocessing,
            lambda sample, record: {"truth": _selected(record, labels)},
            examples,
        )

    def loss(self, model: Any, batch: dict[str, Any], run: Run) -> dict[str, torch.Tensor]:
        items = batch["items"]
        core = model.module if hasattr(model, "module") else model
        set_sampling_seeds(core.net, [_sampling_seed(self.config.runtime.seed, item["draw"]) for item in items])
        targets = [{"boxes": it["boxes"].to(run.device), "labels": it["labels"].to(run.device)} for it in items]
        with run.autocast():
            losses = model(_to_inputs([it["image"] for it in items], run.device), targets)
        parts = {k: v.float() for k, v in losses.items()}
        return {"loss": sum(parts.values()), **parts}

    def predict(self, model: FinetunedModel, items: Sequence[dict[str, Any]], run: Run) -> list[dict[str, Any]]:
        records = []
        for item, pred in zip(items, model.predict_prepared(items)):
            record = {"index": item["index"], "path": item["path"], "truth": item["truth"], **pred}
            if "original" in item:
                record["original"] = item["original"]
            records.append(record)
        return records

    def evaluate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        scores = coco_detection_ap(
            [{k: r[k] for k in ("boxes", "scores", "labels")} for r in records],
            [{"boxes": r["truth"]} for r in records],
        )
        return {**scores, "n_images": len(records), "n_boxes": int(sum(len(r["truth"]) for r in records))}

    @property
    def selection_metric(self) -> str:
        return self.config.evaluation.metric

    @property
    def select_last(self) -> bool:
        return self.config.evaluation.select == "last"

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

        write_csv(
            out / "predictions.csv",
            ["image", "x_min", "y_min", "x_max", "y_max", "score"],
            [
                [r["path"], *(round(float(v), 2) for v in box), round(float(s), 5)]
                for r in records
                for box, s in zip(r["boxes"], r["scores"])
            ],
        )
        overlays = _save_overlays(
            [r for r in records if "original" in r], out / "overlays", self.config.evaluation.overlay_score
        )
        write_with(
            out / "curves.png",
            lambda tmp: plot_training_curves(
                log_rows, ["loss", "lr", f"val_{self.config.evaluation.metric}"], tmp, title="detection fine-tuning"
            ),
        )
        return {"dataset": self.config.data.kind, "overlays": [str(p.relative_to(out)) for p in overlays]}

    def summary_line(self, metrics: dict[str, Any]) -> str:
        return f"test AP {metrics['AP']:.4f}, AP50 {metrics['AP50']:.4f}, AP75 {metrics['AP75']:.4f}"


def _sampling_seed(seed: int, draw: int) -> int:
    return int(np.random.SeedSequence([seed, draw, 7]).generate_state(1, dtype=np.uint64)[0] >> 2)


def _hold_out_rsna_detection_test(splits: FinetuneSplits, data: FinetuneData) -> None:
    """Keep the paper's detection test images out of training and validation (counted; a
    warning when a split the user gave listed them)."""
    held_out = {entry.name for entry in official_rsna_detection_test()}
    removed = {}
    for role in ("train", "val"):
        dataset = getattr(splits, role)
        keep = [r for r in dataset.records if r.image_path.stem not in held_out]
        removed[role] = len(dataset.records) - len(keep)
        if removed[role] and getattr(data, f"{role}_split") is not None:
            logger.warning(
                "data.%s_split lists %d images of the paper's RSNA detection test set; they are left out "
                "of %s (the test set is data.test_split=%s)",
                role,
                removed[role],
                "training" if role == "train" else "validation",
                RSNA_DETECTION_TEST,
            )
        setattr(splits, role, copy_with(dataset, keep))
    splits.notes["rsna_detection_test_held_out"] = removed


def _save_overlays(records: list[dict[str, Any]], folder: Path, min_score: float) -> list[Path]:
    """True boxes green, predictions red with their score (those >= ``min_score``, at least the best)."""
    paths = []
    for i, record in enumerate(records):
        canvas = Image.fromarray(record["original"]).convert("RGB")
        draw = ImageDraw.Draw(canvas)
        width = max(1, round(min(canvas.size) / 200))
        for x0, y0, x1, y1 in np.asarray(record["truth"]).reshape(-1, 4):
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=_TRUE_COLOUR, width=width)
        order = np.argsort(-record["scores"])
        shown = [j for j in order if record["scores"][j] >= min_score] or list(order[:1])
        for j in shown:
            x0, y0, x1, y1 = record["boxes"][j]
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=_PRED_COLOUR, width=width)
            draw.text((x0 + 2, y0 + 1), f"{record['scores'][j]:.2f}", fill=_PRED_COLOUR)
        draw.text((4, 2), "green: truth, red: predicted", fill=(255, 255, 255))
        path = folder / f"overlay_{i:02d}_{Path(str(record['path'])).stem}.png"
        paths.append(write_with(path, lambda tmp, canvas=canvas: canvas.save(tmp, format="PNG")))
    return paths


def train_detector(config: DetectConfig) -> FitResult:
    """Fine-tune the detector, keep the best (or last) model, score the test split.

    Writes into ``runtime.out``: ``metrics.json`` (``test``: AP / AP50 / AP75; validation
    figures, data counts, what the backbone loaded), ``predictions.csv`` (image, box, score in
    original pixels), ``best/`` and ``final/`` (models for :func:`load_finetuned`),
    ``checkpoints/``, ``overlays/*.png``, ``log.jsonl`` and ``curves.png``; returns a
    :class:`FitResult` (its ``summary`` is what ``metrics.json`` holds).
    """
    return fit(DetectTask(config))
