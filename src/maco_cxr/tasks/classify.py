"""Multi-label classification fine-tuning on a MaCo image encoder (PROTOCOLS section 4).

Model: ViT -> mean of the patch tokens after the last block (CLS excluded) -> LayerNorm
(eps 1e-6) -> linear head (trunc-normal std 2e-5, bias 0), as MAE/MRM global-pool fine-tuning
does: the encoder's own final LayerNorm is replaced by the norm after pooling. Loss:
BCE-with-logits averaged over the known labels (NaN = unknown, left out).

Recipe: SGD momentum 0.9, weight decay 0, grad-norm clip 1.0, batch 96, linear warm-up then
cosine to 0 over a fixed number of steps, bf16 autocast on CUDA; validate every ~10 epochs'
worth of steps and keep the best mean validation AUC. Augmentation runs per sample in the
loader workers on uint8 tensors (torchvision v2 functional ops, antialiased): train
RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + horizontal flip, eval Resize + CenterCrop;
each sample's crop is drawn from a generator seeded by (seed, draw id), so a run is
reproducible whatever the number of workers.

Modes: ``finetune`` (everything trains) and ``linear_probe`` (frozen encoder in eval mode;
with ``cache_features`` the pooled features of every image are computed once without
augmentation and the head trains on them).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from maco_cxr.config import config_to_dict, from_dict, require
from maco_cxr.models.config import IMAGE_MEAN, IMAGE_STD, VisionConfig
from maco_cxr.data.augment import normalize_batch
from maco_cxr.data.datasets.base import ChestXrayDataset
from maco_cxr.errors import CheckpointError, ConfigError, DataError
from maco_cxr.metrics import classification_report, roc_auc_per_class
from maco_cxr.models.vit import MaskedViT
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
from maco_cxr.train.rng import isolated_rng
from maco_cxr.train.schedules import lr_multiplier, set_learning_rate

__all__ = [
    "AugmentSection",
    "ClassifierModel",
    "EvalSection",
    "FinetuneConfig",
    "ModelSection",
    "eval_transform",
    "finetune_classifier",
    "masked_bce_with_logits",
    "random_resized_crop_params",
    "train_transform",
]

logger = logging.getLogger(__name__)

Mode = Literal["finetune", "linear_probe"]



# ------------------------------------------------------------------------------------ config


@dataclass
class ModelSection:
    """The encoder and the mode.

    ``source``: a MaCo model directory or official ``maco.pth``; None (``none``) = random
    initialisation of ``preset``. ``text_heads``/``vision_heads``: head counts of an official
    checkpoint (not stored in it).
    """

    source: str | None = None
    preset: str = "base"
    img_size: int = 224
    drop_path_rate: float = 0.1
    mode: Mode = "finetune"
    cache_features: bool = True
    grad_checkpointing: bool = False
    text_heads: int | None = None
    vision_heads: int | None = None

    def __post_init__(self) -> None:
        require(self.img_size >= 1, "img_size", "must be >= 1")
        require(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", "must be in [0, 1)")


@dataclass
class AugmentSection:
    """Training augmentation: RandomResizedCrop to ``model.img_size`` and horizontal flip."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        require(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale", f"{list(self.crop_scale)} must be [low, high] in (0, 1]")
        require(len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio", f"{list(self.crop_ratio)} must be [low, high] with 0 < low <= high")
        require(0.0 <= self.flip_p <= 1.0, "flip_p", "must be in [0, 1]")


@dataclass
class EvalSection:
    """Validation cadence: every ``every`` steps (None = ~10 epochs' worth, at least once)."""

    every: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        require(self.every is None or self.every >= 1, "every", "must be >= 1 or null")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass
class FinetuneConfig:
    """A classification fine-tuning run (defaults: the official SGD recipe, 1 % schedule)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentSection = field(default_factory=AugmentSection)
    eval: EvalSection = field(default_factory=EvalSection)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# -------------------------------------------------------------------------------- transforms


def random_resized_crop_params(height: int, width: int, scale: tuple[float, float],
                               ratio: tuple[float, float], rng: np.random.Generator
                               ) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop covering ``scale`` of the area with aspect ``ratio``
    (log-uniform), torchvision's RandomResizedCrop rule: 10 tries, then the central crop
    clamped to the ratio range."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image: torch.Tensor, size: int, augment: AugmentSection,
                    rng: np.random.Generator) -> torch.Tensor:
    """uint8 ``[1, H, W]`` -> uint8 ``[1, size, size]``: random resized crop, then flip."""
    top, left, h, w = random_resized_crop_params(image.shape[-2], image.shape[-1], augment.crop_scale,
                                                 augment.crop_ratio, rng)
    out = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if rng.random() < augment.flip_p:
        out = TF.horizontal_flip(out)
    return out


def eval_transform(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[1, H, W]`` -> uint8 ``[1, size, size]``: shorter side to ``size``, centre crop."""
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])
    return image


class _Samples(Dataset):
    """Dataset items as fixed-size uint8 images plus labels; keys are an index (eval) or an
    ``(index, draw id)`` pair from :class:`StepSampler` (train, augmented)."""

    def __init__(self, dataset: ChestXrayDataset, num_classes: int, size: int,
                 augment: AugmentSection | None, seed: int) -> None:
        self.dataset = dataset
        self.num_classes = num_classes
        self.size = size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, draw = key if isinstance(key, tuple) else (key, None)
        sample = self.dataset[index]
        image = sample["image"]
        if self.augment is not None and draw is not None:
            image = train_transform(image, self.size, self.augment, np.random.default_rng([self.seed, draw]))
        else:
            image = eval_transform(image, self.size)
        labels = sample.get("labels")
        if labels is None:
            labels = torch.full((self.num_classes,), math.nan)
        elif labels.shape != (self.num_classes,):
            raise DataError(f"{sample['path']}: {labels.numel()} labels, expected {self.num_classes}")
        return {"image": image, "labels": labels, "path": sample["path"]}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([i["image"] for i in items]),
            "labels": torch.stack([i["labels"] for i in items]),
            "path": [i["path"] for i in items]}


# ------------------------------------------------------------------------------------- model


class ClassifierModel(nn.Module):
    """ViT encoder + global average pool + LayerNorm + linear head, one logit per class.

    ``forward`` takes normalised float ``[N, 3, H, W]`` (H, W multiples of the patch);
    :meth:`predict` takes uint8 grey images and returns probabilities.
    """

    def __init__(self, backbone: MaskedViT, classes: Sequence[str], *, mean: float = IMAGE_MEAN,
                 std: float = IMAGE_STD) -> None:
        super().__init__()
        if not classes:
            raise ConfigError("a classifier needs at least one class")
        self.backbone = backbone
        self.backbone.norm = nn.Identity()
        self.classes = tuple(classes)
        self.mean, self.std = mean, std
        self.fc_norm = nn.LayerNorm(backbone.embed_dim, eps=1e-6)
        self.head = nn.Linear(backbone.embed_dim, len(self.classes))
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    @property
    def img_size(self) -> int:
        return self.backbone.config.img_size

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def freeze_backbone(self) -> None:
        """Linear probing: no encoder parameter trains (the encoder also stays in eval mode)."""
        for param in self.backbone.parameters():
            param.requires_grad_(False)

    def train(self, mode: bool = True) -> ClassifierModel:
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens after the last block ``[N, D]`` (CLS excluded)."""
        return self.backbone.forward_features(x)[:, 1:].mean(dim=1)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, K]`` for normalised images ``[N, 3, H, W]``."""
        return self.forward_head(self.pool(x))

    @torch.no_grad()
    def predict(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Class probabilities ``[N, K]`` for uint8 grey images (``[N, 1, H, W]``, ``[N, H, W]``
        or a list of ``[1, H, W]`` of any sizes), resized and centre-cropped as in evaluation."""
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images.unsqueeze(1)
            images = list(images)
        if not images or any(i.dtype != torch.uint8 or i.ndim != 3 or i.shape[0] != 1 for i in images):
            raise DataError("predict takes uint8 grey images [N, 1, H, W], [N, H, W] or a list of [1, H, W]")
        batch = torch.stack([eval_transform(i, self.img_size) for i in images])
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        x = normalize_batch(batch.to(device), self.mean, self.std)
        probabilities = torch.sigmoid(self(x).float())
        self.train(was_training)
        return probabilities

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"task": "classification", "classes": list(self.classes),
                "vision": asdict(self.backbone.config),
                "preprocessing": {"input_size": self.img_size, "mean": self.mean, "std": self.std,
                                  "resize": "shorter side to input_size, centre crop",
                                  "pixel_input": "uint8 grey, (x/255 - mean)/std, 3 channels"}}

    def save(self, directory: str | Path, **extra: Any) -> Path:
        """Weights and everything needed to rebuild the model, written atomically."""
        return save_checkpoint(directory, self.state_dict(), {**self.checkpoint_meta(), **extra})

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> ClassifierModel:
        """Rebuild a classifier saved by :meth:`save` (e.g. a run's ``best/``), in eval mode."""
        state, meta = load_checkpoint(directory)
        if meta.get("task") != "classification":
            raise CheckpointError(f"{directory}: holds a {meta.get('task')!r} model, not a classifier")
        vision = from_dict(VisionConfig, meta["vision"], prefix="vision.")
        preprocessing = meta["preprocessing"]
        model = cls(MaskedViT(vision), meta["classes"], mean=preprocessing["mean"], std=preprocessing["std"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{directory}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
        return model.eval()


def masked_bce_with_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels (NaN labels contribute nothing).

    Returns 0 (with a gradient path) when no label of the batch is known.
    """
    known = ~torch.isnan(labels)
    targets = torch.where(known, labels, torch.zeros_like(labels))
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (losses * known).sum() / known.sum().clamp_min(1)


# ---------------------------------------------------------------------------------- training


@dataclass
class _Run:
    """Everything the loop needs, built once."""

    cfg: FinetuneConfig
    model: ClassifierModel
    device: torch.device
    out: Path
    log: JsonlLog
    classes: tuple[str, ...]


def _loader(samples: Dataset, batch_size: int, workers: int, sampler: Any = None) -> DataLoader:
    return DataLoader(samples, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=_collate, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0 and sampler is not None)


def _normalise(run: _Run, images: torch.Tensor) -> torch.Tensor:
    return normalize_batch(images.to(run.device, non_blocking=True), run.model.mean, run.model.std)


@torch.no_grad()
def _pooled_features(run: _Run, loader: DataLoader, desc: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Frozen-encoder features ``[N, D]`` (fp32), labels and paths of a whole loader."""
    run.model.eval()
    features, labels, paths = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not run.cfg.runtime.progress, leave=False):
        with autocast(run.device, run.cfg.runtime.precision):
            features.append(run.model.pool(_normalise(run, batch["image"])).float())
        labels.append(batch["labels"])
        paths.extend(batch["path"])
    return torch.cat(features), torch.cat(labels), paths


@torch.no_grad()
def _scores(run: _Run, source: DataLoader | tuple[torch.Tensor, torch.Tensor, list[str]], desc: str
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sigmoid scores, labels ``[N, K]`` and paths, from images or cached features."""
    run.model.eval()
    if isinstance(source, tuple):
        features, labels, paths = source
        logits = torch.cat([run.model.forward_head(chunk.to(run.device)).float()
                            for chunk in features.split(run.cfg.eval.batch_size)])
        return torch.sigmoid(logits).cpu().numpy(), labels.numpy(), paths
    scores, all_labels, paths = [], [], []
    for batch in tqdm(source, desc=desc, disable=not run.cfg.runtime.progress, leave=False):
        with autocast(run.device, run.cfg.runtime.precision):
            logits = run.model(_normalise(run, batch["image"]))
        scores.append(torch.sigmoid(logits.float()).cpu())
        all_labels.append(batch["labels"])
        paths.extend(batch["path"])
    return torch.cat(scores).numpy(), torch.cat(all_labels).numpy(), paths


def _mean_auc(labels: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> tuple[float, np.ndarray]:
    """Mean of the defined per-class AUCs (NaN when none is) and the per-class AUCs; classes with
    one label value are expected in small validation sets, so their warnings are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        aucs = roc_auc_per_class(labels, scores, classes)
    finite = aucs[np.isfinite(aucs)]
    return (float(finite.mean()) if finite.size else math.nan), aucs


def _build_model(cfg: FinetuneConfig, classes: tuple[str, ...], device: torch.device
                 ) -> tuple[ClassifierModel, dict[str, Any]]:
    backbone, report = load_backbone(cfg.model.source, preset=cfg.model.preset, img_size=cfg.model.img_size,
                                     drop_path_rate=cfg.model.drop_path_rate, text_heads=cfg.model.text_heads,
                                     vision_heads=cfg.model.vision_heads)
    model = ClassifierModel(backbone, classes)
    if cfg.model.mode == "linear_probe":
        model.freeze_backbone()
    if cfg.model.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    loaded = {"source": cfg.model.source, "tensors_loaded": len(report.loaded) if report else 0,
              "tensors_ignored": len(report.ignored) if report else 0,
              "init": "pretrained" if report else f"random ({cfg.model.preset})"}
    return model.to(device), loaded


def _eval_every(cfg: FinetuneConfig, n_train: int) -> int:
    every = cfg.eval.every or math.ceil(10 * n_train / cfg.optim.batch_size)
    return max(1, min(every, cfg.optim.steps))


def _train_batches(run: _Run, splits_train: ChestXrayDataset,
                   cached: tuple[torch.Tensor, torch.Tensor, list[str]] | None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(input, labels)`` batches: augmented images, or rows of cached features."""
    cfg = run.cfg
    sampler = StepSampler(len(splits_train), cfg.runtime.seed)
    if cached is not None:
        features, labels, _ = cached
        keys = iter(sampler)
        while True:
            rows = torch.tensor([next(keys)[0] for _ in range(cfg.optim.batch_size)])
            yield features[rows].to(run.device), labels[rows]
    samples = _Samples(splits_train, len(run.classes), cfg.model.img_size, cfg.augment, cfg.runtime.seed)
    for batch in _loader(samples, cfg.optim.batch_size, cfg.data.workers, sampler):
        yield _normalise(run, batch["image"]), batch["labels"]


def _train_step(run: _Run, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, labels: torch.Tensor,
                from_features: bool) -> float:
    run.model.train()
    with autocast(run.device, run.cfg.runtime.precision):
        logits = run.model.forward_head(inputs) if from_features else run.model(inputs)
    loss = masked_bce_with_logits(logits.float(), labels.to(run.device, non_blocking=True))
    if not torch.isfinite(loss):
        raise DataError(f"the training loss became {loss.item()}; lower optim.lr (now {run.cfg.optim.lr})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.optim.clip_grad is not None:
        nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], run.cfg.optim.clip_grad)
    optimizer.step()
    return float(loss.detach())


def finetune_classifier(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train, select on validation AUC, test; write the run folder ``cfg.runtime.out``.

    Writes ``metrics.json`` (per-class and mean test AUC, best validation AUC and its step),
    ``predictions.csv``, ``best/`` (the selected :class:`ClassifierModel`, atomic),
    ``roc.png``, ``training_curves.png``, ``log.jsonl`` and ``config.json``; returns the
    metrics dict. The global generators are seeded with ``runtime.seed`` for the run and
    restored afterwards.
    """
    device = resolve_device(cfg.runtime.device)
    with isolated_rng(cfg.runtime.seed, device):
        return _finetune(cfg, device)


def _finetune(cfg: FinetuneConfig, device: torch.device) -> dict[str, Any]:
    from maco_cxr.plots import plot_roc_curves, plot_training_curves

    started = time.perf_counter()
    out = Path(cfg.runtime.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config_dict(cfg))
    splits = build_splits(cfg.data)
    model, loaded = _build_model(cfg, splits.classes, device)
    run = _Run(cfg, model, device, out, JsonlLog(out / "log.jsonl"), splits.classes)
    classes, workers = splits.classes, cfg.data.workers

    def eval_loader(dataset: ChestXrayDataset) -> DataLoader:
        samples = _Samples(dataset, len(classes), cfg.model.img_size, None, cfg.runtime.seed)
        return _loader(samples, cfg.eval.batch_size, workers)

    linear_cached = cfg.model.mode == "linear_probe" and cfg.model.cache_features
    cached_train = _pooled_features(run, eval_loader(splits.train), "features train") if linear_cached else None
    val_source: Any = _pooled_features(run, eval_loader(splits.val), "features val") if linear_cached \
        else eval_loader(splits.val)
    optimizer = build_optimizer(model, cfg.optim, num_layers=model.backbone.config.depth,
                                no_decay_names=model.no_weight_decay(), device=device)
    steps, eval_every = cfg.optim.steps, _eval_every(cfg, len(splits.train))
    logger.info("classification %s: %d classes, %d steps of %d, validation every %d steps, device %s",
                cfg.model.mode, len(classes), steps, cfg.optim.batch_size, eval_every, device)
    best_auc, best_step = -math.inf, None
    batches = _train_batches(run, splits.train, cached_train)
    window_loss, window_start = [], time.perf_counter()
    bar = tqdm(total=steps, desc="finetune", disable=not cfg.runtime.progress)
    for step in range(1, steps + 1):
        multiplier = lr_multiplier(step - 1, steps, cfg.optim.warmup_steps, cfg.optim.schedule,
                                   warmup_start=cfg.optim.warmup_start, final=cfg.optim.final)
        set_learning_rate(optimizer, multiplier)
        inputs, labels = next(batches)
        window_loss.append(_train_step(run, optimizer, inputs, labels, cached_train is not None))
        bar.update(1)
        if step % cfg.runtime.log_every == 0 or step == steps:
            elapsed = time.perf_counter() - window_start
            row = {"step": step, "loss": float(np.mean(window_loss)), "lr": cfg.optim.lr * multiplier,
                   "images_per_s": len(window_loss) * cfg.optim.batch_size / max(elapsed, 1e-9)}
            if device.type == "cuda":
                row["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            run.log.log(row)
            window_loss, window_start = [], time.perf_counter()
        if step % eval_every == 0 or step == steps:
            scores, labels_np, _ = _scores(run, val_source, "validate")
            val_auc, _ = _mean_auc(labels_np, scores, classes)
            run.log.log({"step": step, "val_mean_auc": val_auc})
            bar.set_postfix(val_auc=f"{val_auc:.4f}")
            if best_step is None or (math.isfinite(val_auc) and val_auc > best_auc):
                best_auc, best_step = (val_auc if math.isfinite(val_auc) else -math.inf), step
                model.save(out / "best", step=step, val_mean_auc=val_auc, config=config_dict(cfg))
    bar.close()
    batches.close()
    state, _ = load_checkpoint(out / "best")
    model.load_state_dict(state)
    test_source: Any = _pooled_features(run, eval_loader(splits.test), "features test") if linear_cached \
        else eval_loader(splits.test)
    scores, labels_np, paths = _scores(run, test_source, "test")
    _, test_aucs = _mean_auc(labels_np, scores, classes)
    report = classification_report(labels_np, scores, classes)
    metrics = {
        "task": "classification", "mode": cfg.model.mode, "classes": list(classes),
        "mean_auc": report["mean_auc"],
        "per_class_auc": {name: float(a) for name, a in zip(classes, test_aucs)},
        "best_val_auc": best_auc if math.isfinite(best_auc) else math.nan, "best_step": best_step,
        "steps": steps, "eval_every": eval_every, "counts": splits.counts(), "data": splits.sources,
        "model": loaded, "test_report": report, "device": str(device),
        "elapsed_s": time.perf_counter() - started,
    }
    write_json(out / "metrics.json", metrics)
    header = ["path", *[f"label:{c}" for c in classes], *[f"score:{c}" for c in classes]]
    write_csv(out / "predictions.csv", header,
              ([p, *["" if math.isnan(v) else int(v) for v in lab], *[f"{s:.6f}" for s in sc]]
               for p, lab, sc in zip(paths, labels_np, scores)))
    plot_roc_curves(labels_np, scores, classes, out / "roc.png", title=f"test ROC ({cfg.model.mode})")
    plot_training_curves(run.log.rows, ["loss", "lr", "val_mean_auc"], out / "training_curves.png")
    logger.info("test mean AUC %.4f (best validation AUC %.4f at step %s); outputs in %s",
                metrics["mean_auc"], best_auc, best_step, out)
    return metrics
