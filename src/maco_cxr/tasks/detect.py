"""Detection fine-tuning (``maco-cxr detect``): ViTDet-style Faster R-CNN on a MaCo ViT, scored by COCO AP.

Recipe (PROTOCOLS.md section 6): large-scale jitter (letterbox to ``s x image_size`` with
``s`` uniform in ``input.scale_range``, then a random fixed-size crop or pad to
``image_size``, horizontal flip), AdamW lr 5e-4 weight decay 0.05 (none on norms, biases,
CLS token and position embeddings), layer-wise lr decay 0.7 (x 0.7^(depth + 1 - layer id)),
250 warm-up steps from 0.01 then cosine to 0.01. Evaluation letterboxes each image to
``image_size`` and maps predicted boxes back to original pixels before COCO AP / AP50 / AP75.

Normalisation: MaCo's (mean 0.4978, std 0.2449 of 255, i.e. 126.9 / 62.4) by default, the
statistics the backbone was pre-trained with; the official detector used 125.281 / 63.929
(set ``input.pixel_mean=0.4913 input.pixel_std=0.2507`` to match it). The difference is 1 %
of the mean and 2.6 % of the std. Padding is filled with the mean grey (0 after normalisation).

The official detection code passed its checkpoint without key matching, so its backbone
probably never received MaCo weights; here :func:`load_backbone` copies every tensor by an
explicit name map and the counts land in ``metrics.json`` (``backbone.loaded``).

RSNA: the paper's detection test split (1,218 positives of stage_2_train) is not shipped and
the official classification test list (stage_2_test_images) has no boxes, so the shipped
RSNA configs test on the official val list (positives, disjoint from every train list; every
role reads ``stage_2_train_images`` through ``data.options.split=train``) and keep the last
checkpoint (no model selection, as ViTDet's fixed schedule).

Runs in one process on one device. The paper's batch of 32 at 1024 px needs activation
checkpointing on an 80 GB GPU (ViT-B, bf16, H100: 10.5 GiB at batch 4 without, 18 GiB at
batch 16 with ``model.grad_checkpointing``, both about 31 images/s); the RSNA configs set it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN

from maco_cxr.models.config import IMAGE_MEAN, IMAGE_STD
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.config import require
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.metrics.detection import coco_detection_ap
from maco_cxr.models.vitdet import ViTDetConfig, build_vitdet
from maco_cxr.plots import plot_training_curves
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
    "DetectConfig",
    "DetectEvalConfig",
    "DetectInputConfig",
    "DetectModelConfig",
    "DetectResult",
    "build_detector",
    "detect",
    "evaluate_detector",
    "large_scale_jitter",
    "predict_boxes",
]

logger = logging.getLogger(__name__)

_TRUE_COLOUR = (0, 255, 0)
_PRED_COLOUR = (255, 40, 40)



@dataclass
class DetectModelConfig:
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
class DetectInputConfig:
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
        self.scale_range = tuple(float(s) for s in self.scale_range)  # type: ignore[assignment]
        if self.box_labels is not None:
            self.box_labels = tuple(str(b) for b in self.box_labels)
        require(self.image_size >= 32 and self.image_size % 32 == 0, "image_size",
                 f"{self.image_size} must be a positive multiple of 32 (pyramid stride)")
        require(len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1], "scale_range",
                 f"{list(self.scale_range)} must be [low, high] with 0 < low <= high")
        require(0.0 <= self.flip_p <= 1.0, "flip_p", "must be in [0, 1]")
        require(self.pixel_std > 0, "pixel_std", "must be > 0")


@dataclass
class DetectEvalConfig:
    """Validation every ``every`` steps (0: only at the end); ``select``: keep the checkpoint
    with the best validation ``metric`` (val) or the last one (last); ``overlays`` test images
    drawn with predictions scoring at least ``overlay_score``."""

    every: int = 500
    batch_size: int = 8
    select: Literal["val", "last"] = "val"
    metric: Literal["AP", "AP50", "AP75"] = "AP"
    overlays: int = 8
    overlay_score: float = 0.5

    def __post_init__(self) -> None:
        require(self.every >= 0, "every", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.overlays >= 0, "overlays", "must be >= 0")


def _paper_optim() -> OptimConfig:
    """RSNA of the paper: AdamW 5e-4, wd 0.05, layer decay 0.7, batch 32, 5,600 steps."""
    return OptimConfig(name="adamw", lr=5e-4, betas=(0.9, 0.999), weight_decay=0.05, layer_decay=0.7,
                       clip_grad=None, batch_size=32, steps=5600, warmup_steps=250, schedule="cosine",
                       warmup_start=0.01, final=0.01)


@dataclass
class DetectConfig:
    """Everything a detection run needs (YAML sections of the same names)."""

    model: DetectModelConfig = field(default_factory=DetectModelConfig)
    input: DetectInputConfig = field(default_factory=DetectInputConfig)
    detector: ViTDetConfig = field(default_factory=ViTDetConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="rsna"))
    optim: OptimConfig = field(default_factory=_paper_optim)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(out="runs/detect"))
    evaluation: DetectEvalConfig = field(default_factory=DetectEvalConfig)


@dataclass
class DetectResult:
    """Test COCO AP figures and the rest of ``metrics.json``, the output folder, the model."""

    metrics: dict[str, Any]
    out_dir: Path
    checkpoint: Path
    model: FasterRCNN


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


def _usable(dataset: ChestXrayDataset, cfg: DetectInputConfig, role: str) -> tuple[ChestXrayDataset, dict[str, int]]:
    """Drop unannotated images (always) and images without a selected box (positives_only)."""
    keep: list[Record] = []
    counts = {"without_box_annotation": 0, "without_selected_box": 0}
    for record in dataset.records:
        boxes = _selected(record, cfg.box_labels)
        if boxes is None:
            counts["without_box_annotation"] += 1
        elif cfg.positives_only and len(boxes) == 0:
            counts["without_selected_box"] += 1
        else:
            keep.append(record)
    if any(counts.values()):
        logger.info("%s: left out %d images without box annotation and %d without a selected box "
                    "(input.positives_only=%s)", role, counts["without_box_annotation"],
                    counts["without_selected_box"], cfg.positives_only)
    if not keep:
        raise DataError(f"the {role} split has no image with boxes to detect ({counts}); check data.{role}_split "
                        "(the official RSNA test list has no boxes: use a list of stage_2_train images) and "
                        f"input.box_labels={cfg.box_labels}")
    subset = copy.copy(dataset)
    subset.records = keep
    return subset, counts


def _fill_padding(image: np.ndarray, valid: np.ndarray, mean: float) -> np.ndarray:
    return np.where(valid, image, np.uint8(round(mean * 255))).astype(np.uint8)


def _valid_region(box: Letterbox) -> np.ndarray:
    valid = np.zeros((box.size, box.size), dtype=bool)
    valid[box.pad_top:box.pad_top + box.new_height, box.pad_left:box.pad_left + box.new_width] = True
    return valid


def large_scale_jitter(pixels: np.ndarray, boxes: np.ndarray, size: int, scale_range: Sequence[float],
                       flip_p: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Letterbox to ``s * size`` (s uniform in ``scale_range``), crop or pad to ``size`` at a
    random offset, flip with ``flip_p``. Returns image uint8 ``[size, size]``, valid-pixel mask
    and the boxes in the output frame (clipped; boxes narrower than 1 px dropped)."""
    side = max(16, round(size * rng.uniform(*scale_range)))
    box = Letterbox.fit(*pixels.shape, side)
    canvas, valid = box.apply_image(pixels), _valid_region(box)
    out_boxes = box.boxes_to_letterbox(boxes) if len(boxes) else np.zeros((0, 4))
    image = np.zeros((size, size), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    if side >= size:
        oy, ox = (int(v) for v in rng.integers(0, side - size + 1, size=2))
        image[:], mask[:] = canvas[oy:oy + size, ox:ox + size], valid[oy:oy + size, ox:ox + size]
        out_boxes = out_boxes - np.array([ox, oy, ox, oy], dtype=np.float64)
    else:
        oy, ox = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        image[oy:oy + side, ox:ox + side], mask[oy:oy + side, ox:ox + side] = canvas, valid
        out_boxes = out_boxes + np.array([ox, oy, ox, oy], dtype=np.float64)
    out_boxes = np.clip(out_boxes, 0, size)
    out_boxes = out_boxes[(out_boxes[:, 2] - out_boxes[:, 0] >= 1) & (out_boxes[:, 3] - out_boxes[:, 1] >= 1)]
    if rng.random() < flip_p:
        image, mask = image[:, ::-1].copy(), mask[:, ::-1].copy()
        out_boxes = np.stack([size - out_boxes[:, 2], out_boxes[:, 1], size - out_boxes[:, 0], out_boxes[:, 3]], 1)
    return image, mask, out_boxes.reshape(-1, 4)


class _TrainSet(Dataset):
    """Jittered image (padding = mean grey) and its boxes; the jitter is drawn per draw id."""

    def __init__(self, base: ChestXrayDataset, cfg: DetectInputConfig, seed: int) -> None:
        self.base, self.cfg, self.seed = base, cfg, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = key
        pixels = self.base[index]["image"][0].numpy()
        boxes = _selected(self.base.records[index], self.cfg.box_labels)
        image, valid, out_boxes = large_scale_jitter(pixels, boxes, self.cfg.image_size, self.cfg.scale_range,
                                                     self.cfg.flip_p, np.random.default_rng([self.seed, draw]))
        image = _fill_padding(image, valid, self.cfg.pixel_mean)
        return {"image": torch.from_numpy(image)[None],
                "boxes": torch.as_tensor(out_boxes, dtype=torch.float32),
                "labels": torch.ones(len(out_boxes), dtype=torch.int64)}


class _EvalSet(Dataset):
    """Letterboxed image + the transform + the original image and its boxes to detect."""

    def __init__(self, base: ChestXrayDataset, cfg: DetectInputConfig) -> None:
        self.base, self.cfg = base, cfg

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        pixels = sample["image"][0].numpy()
        box = Letterbox.fit(*pixels.shape, self.cfg.image_size)
        image = _fill_padding(box.apply_image(pixels), _valid_region(box), self.cfg.pixel_mean)
        return {"image": torch.from_numpy(image)[None], "letterbox": box, "original": pixels,
                "boxes": _selected(self.base.records[index], self.cfg.box_labels),
                "path": sample.get("path", str(index))}


def _to_inputs(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 ``[1, S, S]`` -> float ``[3, S, S]`` in [0, 1] (the detector normalises)."""
    return [(img.to(device).float() / 255.0).expand(3, -1, -1) for img in images]


# ------------------------------------------------------------------------------------ model


def build_detector(config: DetectConfig) -> tuple[FasterRCNN, dict[str, Any]]:
    """The detector with its backbone loaded (position table resampled to the input size) and
    a summary of what loaded (``loaded`` counts the MaCo tensors copied into the backbone)."""
    vit, report = load_backbone(config.model.source, preset=config.model.preset, img_size=config.input.image_size,
                                drop_path_rate=config.model.drop_path_rate, text_heads=config.model.text_heads)
    vit.set_grad_checkpointing(config.model.grad_checkpointing)
    model = build_vitdet(vit, config.detector, config.input.image_size, config.input.pixel_mean,
                         config.input.pixel_std)
    summary: dict[str, Any] = {"source": config.model.source or f"random init ({config.model.preset})",
                               "anchor_sizes": list(config.detector.anchors_for(config.input.image_size))}
    if report is not None:
        summary.update(loaded=len(report.loaded), ignored=len(report.ignored), missing=report.missing)
    return model, summary


@torch.no_grad()
def _detect_batch(model: FasterRCNN, images: Sequence[torch.Tensor], device: torch.device, precision: str
                  ) -> list[dict[str, np.ndarray]]:
    """Detector outputs for uint8 letterboxed images, in letterbox pixels, as numpy arrays."""
    with autocast(device, precision):
        outputs = model(_to_inputs(images, device))
    return [{k: v.float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in out.items()}
            for out in outputs]


def _to_original(pred: dict[str, np.ndarray], box: Letterbox) -> dict[str, np.ndarray]:
    boxes = box.boxes_to_original(pred["boxes"].reshape(-1, 4)) if len(pred["boxes"]) else np.zeros((0, 4))
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, box.src_width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, box.src_height)
    return {"boxes": boxes, "scores": pred["scores"].astype(np.float64), "labels": pred["labels"]}


def predict_boxes(model: FasterRCNN, images: Sequence[np.ndarray], cfg: DetectInputConfig, *,
                  device: str | torch.device = "cpu", precision: str = "fp32") -> list[dict[str, np.ndarray]]:
    """``boxes`` ``[M, 4]`` (original pixels, xyxy), ``scores`` and ``labels`` per grey uint8 image."""
    device = torch.device(device)
    model.eval()
    letterboxes = [Letterbox.fit(*np.asarray(img).shape, cfg.image_size) for img in images]
    batch = [torch.from_numpy(_fill_padding(b.apply_image(np.asarray(img)), _valid_region(b), cfg.pixel_mean))[None]
             for b, img in zip(letterboxes, images)]
    return [_to_original(p, b) for p, b in zip(_detect_batch(model, batch, device, precision), letterboxes)]


def evaluate_detector(model: FasterRCNN, dataset: ChestXrayDataset, cfg: DetectInputConfig, *, batch_size: int = 8,
                      workers: int = 0, device: torch.device = torch.device("cpu"), precision: str = "fp32",
                      keep: int = 0) -> tuple[dict[str, float], list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO AP / AP50 / AP75 of ``dataset`` in original pixels, the predictions per image and
    the first ``keep`` examples (image, true and predicted boxes) for overlays."""
    model.eval()
    loader = DataLoader(_EvalSet(dataset, cfg), batch_size=batch_size, num_workers=workers, collate_fn=list)
    predictions: list[dict[str, Any]] = []
    truths: list[np.ndarray] = []
    examples: list[dict[str, Any]] = []
    for items in loader:
        outputs = _detect_batch(model, [item["image"] for item in items], device, precision)
        for item, out in zip(items, outputs):
            pred = _to_original(out, item["letterbox"])
            predictions.append({**pred, "image": item["path"]})
            truths.append(item["boxes"])
            if len(examples) < keep:
                examples.append({"image": item["original"], "truth": item["boxes"], **pred, "path": item["path"]})
    scores = coco_detection_ap([{k: p[k] for k in ("boxes", "scores", "labels")} for p in predictions],
                               [{"boxes": t} for t in truths])
    return scores, predictions, examples


# --------------------------------------------------------------------------------- training


def _save_overlays(examples: list[dict[str, Any]], folder: Path, min_score: float) -> list[Path]:
    """True boxes green, predictions red with their score (those >= ``min_score``, at least the best)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ex in enumerate(examples):
        canvas = Image.fromarray(ex["image"]).convert("RGB")
        draw = ImageDraw.Draw(canvas)
        width = max(1, round(min(canvas.size) / 200))
        for x0, y0, x1, y1 in np.asarray(ex["truth"]).reshape(-1, 4):
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=_TRUE_COLOUR, width=width)
        order = np.argsort(-ex["scores"])
        shown = [j for j in order if ex["scores"][j] >= min_score] or list(order[:1])
        for j in shown:
            x0, y0, x1, y1 = ex["boxes"][j]
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=_PRED_COLOUR, width=width)
            draw.text((x0 + 2, y0 + 1), f"{ex['scores'][j]:.2f}", fill=_PRED_COLOUR)
        draw.text((4, 2), "green: truth, red: predicted", fill=(255, 255, 255))
        path = folder / f"overlay_{i:02d}_{Path(str(ex['path'])).stem}.png"
        canvas.save(path)
        paths.append(path)
    return paths


def _fit(model: FasterRCNN, datasets: dict[str, ChestXrayDataset], config: DetectConfig, out: Path,
         device: torch.device, backbone_summary: dict[str, Any]) -> tuple[dict[str, Any], JsonlLog]:
    """The training loop; validates every ``evaluation.every`` steps and at the end, saving the
    best (``evaluation.select=val``) or last checkpoint into ``out/best``."""
    optim, evaluation, precision = config.optim, config.evaluation, config.runtime.precision
    optimizer = build_optimizer(model, optim, num_layers=len(model.backbone.vit.blocks),
                                no_decay_names={f"backbone.{n}" for n in model.backbone.no_weight_decay()},
                                device=device)
    log = JsonlLog(out / "log.jsonl")
    best: dict[str, Any] = {"step": -1, "score": -math.inf}  # the first validation always saves

    def validate(step: int) -> None:
        scores, _, _ = evaluate_detector(model, datasets["val"], config.input, batch_size=evaluation.batch_size,
                                         workers=config.data.workers, device=device, precision=precision)
        log.log({"step": step, **{f"val_{k}": v for k, v in scores.items()}})
        logger.info("step %d: val %s", step, {k: round(v, 4) for k, v in scores.items()})
        score = float(np.nan_to_num(scores[evaluation.metric], nan=-1.0))  # NaN: no validation box
        if evaluation.select == "last" or score > best["score"]:
            best.update({"step": step, "score": score, "val": scores})
            save_checkpoint(out / "best", model.state_dict(),
                            {"task": "detect", "step": step, "val": scores, "config": config_dict(config),
                             "backbone": backbone_summary})
        model.train()

    loader = DataLoader(_TrainSet(datasets["train"], config.input, config.runtime.seed),
                        sampler=StepSampler(len(datasets["train"]), config.runtime.seed),
                        batch_size=optim.batch_size, num_workers=config.data.workers, collate_fn=list,
                        persistent_workers=config.data.workers > 0)
    batches = iter(loader)
    progress = None
    if config.runtime.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=optim.steps, desc="detect")
    model.train()
    started = time.perf_counter()
    for step in range(optim.steps):
        set_learning_rate(optimizer, lr_multiplier(step, optim.steps, optim.warmup_steps, optim.schedule,
                                                   warmup_start=optim.warmup_start, final=optim.final))
        items = next(batches)
        targets = [{"boxes": it["boxes"].to(device), "labels": it["labels"].to(device)} for it in items]
        with autocast(device, precision):
            losses = model(_to_inputs([it["image"] for it in items], device), targets)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad)
        optimizer.step()
        if progress is not None:
            progress.update(1)
        if step % config.runtime.log_every == 0 or step == optim.steps - 1:
            row = {"step": step, "lr": optimizer.param_groups[-1]["lr"], "loss": float(loss.detach()),
                   **{k: float(v.detach()) for k, v in losses.items()},
                   "images_per_s": (step + 1) * optim.batch_size / (time.perf_counter() - started)}
            log.log(row)
            logger.info("step %d loss %.4f", step, row["loss"])
        if evaluation.every and (step + 1) % evaluation.every == 0 and step + 1 < optim.steps:
            validate(step + 1)
    validate(optim.steps)
    if progress is not None:
        progress.close()
    return best, log


def detect(config: DetectConfig) -> DetectResult:
    """Fine-tune the detector, keep the best (or last) checkpoint, score the test split.

    Writes into ``runtime.out``: ``metrics.json`` (test AP / AP50 / AP75, validation figures,
    data counts, what the backbone loaded), ``predictions.csv`` (image, box, score in
    original pixels), ``best/`` (atomic checkpoint), ``overlays/*.png``, ``log.jsonl`` and
    ``curves.png``. Runs are reproducible from ``runtime.seed`` (the global torch generator,
    which torchvision's box samplers use, is forked and seeded; the caller's state is kept).
    """
    out = Path(config.runtime.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.runtime.device)
    splits = build_splits(config.data)
    datasets, dropped = {}, {}
    for role in ("train", "val", "test"):
        datasets[role], dropped[role] = _usable(getattr(splits, role), config.input, role)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.runtime.seed)
        model, backbone_summary = build_detector(config)
        model.to(device)
        logger.info("backbone: %s", backbone_summary)
        best, log = _fit(model, datasets, config, out, device, backbone_summary)
    state, _ = load_checkpoint(out / "best")
    model.load_state_dict(state)
    evaluation = config.evaluation
    scores, predictions, examples = evaluate_detector(model, datasets["test"], config.input,
                                                      batch_size=evaluation.batch_size, workers=config.data.workers,
                                                      device=device, precision=config.runtime.precision,
                                                      keep=evaluation.overlays)
    write_csv(out / "predictions.csv", ["image", "x_min", "y_min", "x_max", "y_max", "score"],
              [[p["image"], *(round(float(v), 2) for v in box), round(float(s), 5)]
               for p in predictions for box, s in zip(p["boxes"], p["scores"])])
    overlays = _save_overlays(examples, out / "overlays", evaluation.overlay_score)
    plot_training_curves(log.rows, ["loss", "lr", f"val_{evaluation.metric}"], out / "curves.png",
                         title="detection fine-tuning")
    metrics = {
        "task": "detect",
        "dataset": config.data.kind,
        "test": {**scores, "n_images": len(predictions),
                 "n_boxes": sum(len(_selected(r, config.input.box_labels)) for r in datasets["test"].records)},
        "best_step": best["step"],
        "selection": evaluation.select,
        "val_best": best.get("val"),
        "data": {"counts": {r: len(d) for r, d in datasets.items()}, "sources": splits.sources, "left_out": dropped},
        "backbone": backbone_summary,
        "overlays": [str(p.relative_to(out)) for p in overlays],
        "config": config_dict(config),
    }
    write_json(out / "metrics.json", metrics)
    logger.info("test: %s", scores)
    return DetectResult(metrics=metrics, out_dir=out, checkpoint=out / "best", model=model)
