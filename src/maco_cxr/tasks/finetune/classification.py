"""Multi-label classification fine-tuning on a MaCo image encoder (``docs/protocols.md`` section 4).

Model: :class:`~maco_cxr.models.classifier.ClassifierModel` (ViT, mean of the patch tokens,
LayerNorm, linear head). Loss: BCE-with-logits averaged over the known labels (NaN = unknown,
left out) of the global batch. Recipe: SGD momentum 0.9, weight decay 0, grad-norm clip 1.0,
batch 96, linear warm-up then cosine to 0 over a fixed number of steps; validate every ~10
epochs' worth of steps and keep the best mean validation AUC. Augmentation runs per sample in
the loader workers on uint8 tensors (torchvision v2 functional ops, antialiased): train
RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + horizontal flip, eval Resize + CenterCrop;
each sample's crop is drawn from a generator seeded by (seed, draw id).

Modes: ``finetune`` (everything trains) and ``linear_probe`` (frozen encoder in eval mode;
with ``cache_features`` the pooled features of every image are computed once without
augmentation, sharded over the processes, and the head trains on them).

Test reports: per-class and mean AUC with seeded bootstrap 95 % intervals (by patient when
the dataset knows patients), and per-class thresholds chosen on validation (Youden's J and
max-F1) applied to test next to the fixed 0.5.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from maco_cxr._atomic import write_csv, write_with
from maco_cxr.config import from_dict
from maco_cxr.data.augment import normalize_batch
from maco_cxr.data.datasets.base import ChestXrayDataset
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.families import load_family, split_model_spec
from maco_cxr.inference import autocast
from maco_cxr.metrics import (
    apply_thresholds,
    bootstrap_metric_ci,
    classification_report,
    roc_auc_per_class,
    select_thresholds,
)
from maco_cxr.models.classifier import ClassifierModel, EncoderClassifier
from maco_cxr.models.config import IMAGE_MEAN, IMAGE_STD, VisionConfig
from maco_cxr.models.vit import MaskedViT
from maco_cxr.runtime.loop import Run
from maco_cxr.tasks.finetune.backbone import load_backbone
from maco_cxr.tasks.finetune.config import (
    ClassifyAugment,
    ClassifyConfig,
    ClassifyEval,
    ClassifyModel,
)
from maco_cxr.tasks.finetune.engine import EvalItems, FinetuneTask, FitResult, fit, read_training_sample
from maco_cxr.tasks.finetune.model_io import FinetunedModel
from maco_cxr.tasks.finetune.splits import FinetuneSplits

__all__ = [
    "ClassifyAugment",
    "ClassifyConfig",
    "ClassifyEval",
    "ClassifyModel",
    "ClassifyTask",
    "FinetunedClassifier",
    "FinetunedFamilyClassifier",
    "auc_classes_text",
    "eval_transform",
    "finetune_classifier",
    "masked_bce_with_logits",
    "random_resized_crop_params",
    "train_transform",
    "undefined_auc",
]

logger = logging.getLogger(__name__)

# -------------------------------------------------------------------------------- transforms


def random_resized_crop_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
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


def train_transform(image: torch.Tensor, size: int, augment: ClassifyAugment, rng: np.random.Generator) -> torch.Tensor:
    """uint8 ``[1, H, W]`` -> uint8 ``[1, size, size]``: random resized crop, then flip."""
    top, left, h, w = random_resized_crop_params(
        image.shape[-2], image.shape[-1], augment.crop_scale, augment.crop_ratio, rng
    )
    out = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if rng.random() < augment.flip_p:
        out = TF.horizontal_flip(out)
    return out


def eval_transform(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[1, H, W]`` -> uint8 ``[1, size, size]``: shorter side to ``size``, centre crop."""
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])
    return image


def masked_bce_with_logits(
    logits: torch.Tensor, labels: torch.Tensor, known_total: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels (NaN labels contribute nothing).

    ``known_total``: the number of known labels of the whole global batch (all processes);
    the local sum is divided by it and multiplied by the process count, so that DDP's mean of
    the processes' gradients is the gradient of the global-batch mean. Returns 0 (with a
    gradient path) when no label is known.
    """
    known = ~torch.isnan(labels)
    targets = torch.where(known, labels, torch.zeros_like(labels))
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    total = (losses * known).sum()
    if known_total is None:
        return total / known.sum().clamp_min(1)
    return total / known_total.clamp_min(1)


# ------------------------------------------------------------------------------------- model


class FinetunedClassifier(FinetunedModel):
    """A fine-tuned classifier: ``predict(images)`` gives class probabilities ``[N, C]``."""

    task: ClassVar[str] = "classification"

    @staticmethod
    def prepare(pixels: np.ndarray, preprocessing: dict[str, Any]) -> dict[str, Any]:
        image = torch.from_numpy(np.ascontiguousarray(pixels))[None]
        return {"x": eval_transform(image, int(preprocessing["input_size"]))}

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 1, S, S]`` -> normalised float ``[N, 3, S, S]`` on the model's device."""
        return normalize_batch(
            images.to(self.device, non_blocking=True), self.preprocessing["mean"], self.preprocessing["std"]
        )

    def predict_prepared(self, items: Sequence[dict[str, Any]]) -> list[np.ndarray]:
        x = self.normalise(torch.stack([item["x"] for item in items]))
        with autocast(self.device):
            logits = self.net(x)
        return list(torch.sigmoid(logits.float()).cpu().numpy())

    def collect(self, predictions: list[Any], single: bool) -> torch.Tensor:
        return torch.from_numpy(np.stack(predictions))

    def describe(self) -> dict[str, Any]:
        return {"vision": asdict(self.net.backbone.config), "num_classes": len(self.classes)}

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> FinetunedClassifier:
        architecture = description["architecture"]
        if "family" in architecture:
            return FinetunedFamilyClassifier.from_description(description)
        vision = from_dict(VisionConfig, architecture["vision"])
        net = ClassifierModel(MaskedViT(vision), int(architecture["num_classes"]))
        return cls(net, description["classes"], description["preprocessing"])


class FinetunedFamilyClassifier(FinetunedClassifier):
    """A classifier on another family's image encoder (:class:`EncoderClassifier`): each image goes in
    through the family's own preprocessing (``image_input``: its geometry and normalisation), at test
    and in prediction as at the authors' inference. Training crops (uint8, the family's input size) go
    through the same ``image_input``.

    On disk the weights hold the whole family model; ``config.json`` names the family and the base
    file, which rebuilds the architecture (the authors' file is needed to load the fine-tuned one)."""

    def __init__(self, net: EncoderClassifier, classes: Sequence[str], preprocessing: dict[str, Any]) -> None:
        super().__init__(net, classes, preprocessing)

    def prepare(self, pixels: np.ndarray, preprocessing: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        return {"x": self.net.encoder.image_input(pixels)}

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared float inputs as they are; uint8 training crops ``[N, 1, S, S]`` through ``image_input``."""
        if images.dtype == torch.uint8:
            images = torch.stack([self.net.encoder.image_input(image[0].cpu().numpy()) for image in images])
        return images.to(self.device, non_blocking=True)

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.net.encoder.family,
            "base": self.preprocessing["base"],
            "tokenizer": self.preprocessing.get("tokenizer"),
            "num_classes": len(self.classes),
        }

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> FinetunedFamilyClassifier:
        architecture = description["architecture"]
        encoder = load_family(architecture["base"], architecture["family"], tokenizer=architecture.get("tokenizer"))
        net = EncoderClassifier(encoder, int(architecture["num_classes"]))
        return cls(net, description["classes"], description["preprocessing"])


def family_preprocessing(encoder: Any, base: str, tokenizer: str | None) -> dict[str, Any]:
    return {
        "input_size": int(encoder.input_size),
        "family": encoder.family,
        "base": base,
        "tokenizer": tokenizer,
        "pixel_input": f"the {encoder.family} family's own preprocessing (maco_cxr.families.{encoder.family})",
    }


def classifier_preprocessing(size: int) -> dict[str, Any]:
    return {
        "input_size": size,
        "mean": IMAGE_MEAN,
        "std": IMAGE_STD,
        "resize": "shorter side to input_size (antialiased), centre crop",
        "pixel_input": "uint8 grey, (x/255 - mean)/std, 3 channels",
    }


# ------------------------------------------------------------------------------------- items


class _TrainImages(Dataset):
    def __init__(
        self, dataset: ChestXrayDataset, num_classes: int, size: int, augment: ClassifyAugment, seed: int
    ) -> None:
        self.dataset, self.num_classes, self.size, self.augment, self.seed = dataset, num_classes, size, augment, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, draw = key
        sample, replaced = read_training_sample(self.dataset, index)
        image = train_transform(sample["image"], self.size, self.augment, np.random.default_rng([self.seed, draw]))
        return {"x": image, "labels": _labels(sample, self.num_classes), "replaced": replaced}


class _Features(Dataset):
    """Cached pooled features of a split (linear probing), keyed like images are."""

    in_memory = True

    def __init__(self, records: list[dict[str, Any]], n: int) -> None:
        self.records = {r["index"]: r for r in records}
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[0] if isinstance(key, tuple) else key
        record = self.records.get(index)
        if record is None:  # unreadable when the features were computed
            return {"index": index, "failure": {"path": str(index), "reason": "unreadable"}}
        return {**record, "replaced": []}


def _labels(sample: dict[str, Any], num_classes: int) -> torch.Tensor:
    labels = sample.get("labels")
    if labels is None:
        return torch.full((num_classes,), math.nan)
    if labels.shape != (num_classes,):
        raise DataError(f"{sample['path']}: {labels.numel()} labels, expected {num_classes}")
    return labels


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "x": torch.stack([i["x"] for i in items]),
        "labels": torch.stack([i["labels"] for i in items]),
        "replaced": [r for i in items for r in i["replaced"]],
    }


# -------------------------------------------------------------------------------------- task


# What maco_cxr.metrics warns about, once per class and call, when an AUC, a ROC curve, a threshold or
# bootstrap replicates are undefined: a run names those classes once, in words, instead (metrics.json,
# the summary line, one log line), so no warning with a source line reaches the command's output.
_REPORTED_UNDEFINED = (
    r"AUC of .* is undefined",
    r"ROC curve is undefined",
    r"no \w+ threshold for ",
    r"\d+ of \d+ bootstrap replicates gave an undefined value",
)


@contextmanager
def _undefined_reported() -> Iterator[None]:
    """Silence exactly the warnings of :data:`_REPORTED_UNDEFINED` (any other still shows)."""
    with warnings.catch_warnings():
        for message in _REPORTED_UNDEFINED:
            warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
        yield


def _mean_auc(labels: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> tuple[float, np.ndarray]:
    """Mean of the defined per-class AUCs (NaN when none is); a class whose known labels take one
    value has none (see :func:`undefined_auc`)."""
    with _undefined_reported():
        aucs = roc_auc_per_class(labels, scores, classes)
    finite = aucs[np.isfinite(aucs)]
    return (float(finite.mean()) if finite.size else math.nan), aucs


def undefined_auc(labels: np.ndarray, classes: Sequence[str]) -> dict[str, str]:
    """Why each class without an AUC has none (labels ``[N, C]``, NaN unknown): its known labels
    are all positive, all negative, or there are none."""
    reasons = {}
    for k, name in enumerate(classes):
        known = labels[~np.isnan(labels[:, k]), k]
        if known.size == 0:
            reasons[name] = "no known label"
        elif np.all(known == 0):
            reasons[name] = f"no positive among its {known.size} known labels"
        elif np.all(known == 1):
            reasons[name] = f"no negative among its {known.size} known labels"
    return reasons


class ClassifyTask(FinetuneTask):
    """Classification as a task spec of the one fine-tuning loop."""

    name: ClassVar[str] = "classification"
    uses_val_at_test: ClassVar[bool] = True

    def __init__(self, config: ClassifyConfig) -> None:
        super().__init__(config)
        self.classes: tuple[str, ...] = ()
        self.cached: dict[int, _Features] = {}

    @property
    def linear_cached(self) -> bool:
        return self.config.model.mode == "linear_probe" and self.config.model.cache_features

    def build_model(self, splits: FinetuneSplits) -> tuple[FinetunedModel, dict[str, Any]]:
        cfg = self.config.model
        self.classes = splits.classes
        if cfg.source is not None and split_model_spec(cfg.source)[0] != "maco":
            return self._build_family_model()
        backbone, report = load_backbone(
            cfg.source,
            preset=cfg.preset,
            img_size=cfg.img_size,
            drop_path_rate=cfg.drop_path_rate,
            text_heads=cfg.text_heads,
            vision_heads=cfg.vision_heads,
        )
        net = ClassifierModel(backbone, len(self.classes))
        if cfg.grad_checkpointing:
            backbone.set_grad_checkpointing(True)
        summary = {
            "source": cfg.source,
            "mode": cfg.mode,
            "tensors_loaded": len(report.loaded) if report else 0,
            "tensors_ignored": len(report.ignored) if report else 0,
            "init": "pretrained" if report else f"random ({cfg.preset})",
        }
        model = FinetunedClassifier(net, self.classes, classifier_preprocessing(cfg.img_size))
        if cfg.mode == "linear_probe":
            model.freeze(backbone)
        return model, summary

    def _build_family_model(self) -> tuple[FinetunedModel, dict[str, Any]]:
        """Another family's encoder (``FAMILY:PATH``) with the same head, trained by the same loop."""
        cfg = self.config.model
        family, path = split_model_spec(cfg.source)
        if self.config.optim.layer_decay is not None:
            raise ConfigError(
                f"optim.layer_decay: layer-wise lr decay is defined for MaCo's ViT blocks, not the {family} "
                "encoder; leave it unset"
            )
        encoder = load_family(path, family, tokenizer=cfg.tokenizer)
        net = EncoderClassifier(encoder, len(self.classes))
        model = FinetunedFamilyClassifier(net, self.classes, family_preprocessing(encoder, path, cfg.tokenizer))
        if cfg.mode == "linear_probe":
            model.freeze(encoder)
        else:
            encoder.train()
        summary = {"source": cfg.source, "mode": cfg.mode, "family": family, "init": "pretrained"}
        if cfg.img_size != encoder.input_size:
            logger.info("%s: images go in at the family's own input size %d", family, encoder.input_size)
        return model, summary

    def num_layers(self, model: FinetunedModel) -> int:
        return 0 if isinstance(model.net, EncoderClassifier) else super().num_layers(model)

    def _features(self, dataset: ChestXrayDataset, model: FinetunedModel, run: Run) -> _Features:
        """Pooled features of every image of ``dataset``, computed once (sharded, gathered)."""
        if id(dataset) not in self.cached:
            items = self._eval_images(dataset, model)

            def pool(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
                x = model.normalise(torch.stack([item["x"] for item in batch]))
                with run.autocast():
                    pooled = model.net.pool(x).float().cpu()
                return [
                    {
                        "index": item["index"],
                        "path": item["path"],
                        "labels": item["labels"],
                        "patient": item["patient"],
                        "x": feature,
                    }
                    for item, feature in zip(batch, pooled)
                ]

            was_training = model.training
            model.eval()
            records, _ = run.map_items(items, pool, self.config.evaluation.batch_size, "features")
            model.train(was_training)
            self.cached[id(dataset)] = _Features(records, len(dataset))
        return self.cached[id(dataset)]

    def _eval_images(self, dataset: ChestXrayDataset, model: FinetunedModel) -> EvalItems:
        n = len(self.classes)
        return EvalItems(
            dataset,
            model.prepare,
            model.preprocessing,
            lambda sample, record: {"labels": _labels(sample, n), "patient": record.patient_id},
        )

    def train_items(self, dataset: ChestXrayDataset, run: Run, model: FinetunedModel) -> Dataset:
        if self.linear_cached:
            return self._features(dataset, model, run)
        cfg = self.config
        return _TrainImages(dataset, len(self.classes), model.net.img_size, cfg.augment, cfg.runtime.seed)

    def collate_train(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return _collate(items)

    def eval_items(self, dataset: ChestXrayDataset, model: FinetunedModel, run: Run, role: str) -> Dataset:
        if self.linear_cached:
            return self._features(dataset, model, run)
        return self._eval_images(dataset, model)

    def loss(self, model: Any, batch: dict[str, Any], run: Run) -> dict[str, torch.Tensor]:
        core = model.module if hasattr(model, "module") else model
        x = batch["x"].to(run.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = core.normalise(x)
        labels = batch["labels"].to(run.device, non_blocking=True)
        known = run.global_sum((~torch.isnan(labels)).sum().float()) / run.info.world_size
        with run.autocast():
            logits = model(x)
        return {"loss": masked_bce_with_logits(logits.float(), labels, known)}

    def predict(self, model: FinetunedModel, items: Sequence[dict[str, Any]], run: Run) -> list[dict[str, Any]]:
        if items[0]["x"].dtype == torch.uint8:
            scores = model.predict_prepared(items)
        else:
            with run.autocast():
                logits = model.net(torch.stack([item["x"] for item in items]).to(run.device))
            scores = list(torch.sigmoid(logits.float()).cpu().numpy())
        return [
            {
                "index": item["index"],
                "path": item["path"],
                "patient": item["patient"],
                "labels": item["labels"].numpy(),
                "scores": score,
            }
            for item, score in zip(items, scores)
        ]

    def evaluate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        labels = np.stack([r["labels"] for r in records])
        scores = np.stack([r["scores"] for r in records])
        mean_auc, aucs = _mean_auc(labels, scores, self.classes)
        left_out = undefined_auc(labels, self.classes)
        return {
            "mean_auc": mean_auc,
            "per_class_auc": dict(zip(self.classes, map(float, aucs))),
            "n_images": len(records),
            "n_classes_in_mean": len(self.classes) - len(left_out),
            "auc_undefined": left_out,
        }

    def evaluate_test(
        self, records: Sequence[dict[str, Any]], val_records: Sequence[dict[str, Any]] | None
    ) -> dict[str, Any]:
        metrics = self.evaluate(records)
        labels = np.stack([r["labels"] for r in records])
        scores = np.stack([r["scores"] for r in records])
        with _undefined_reported():
            metrics["report_at_0.5"] = classification_report(labels, scores, self.classes)
        if val_records:
            val_labels = np.stack([r["labels"] for r in val_records])
            val_scores = np.stack([r["scores"] for r in val_records])
            no_threshold = undefined_auc(val_labels, self.classes)
            if no_threshold:
                named = "; ".join(f"{name} ({why} in the validation split)" for name, why in no_threshold.items())
                logger.warning(
                    "no threshold chosen on validation for %s: its at_val_youden_threshold and "
                    "at_val_max_f1_threshold figures are n/a",
                    named,
                )
            for method in ("youden", "max_f1"):
                with _undefined_reported():
                    thresholds = select_thresholds(val_labels, val_scores, self.classes, method=method)
                metrics[f"at_val_{method}_threshold"] = apply_thresholds(labels, scores, self.classes, thresholds)
        replicates = self.config.evaluation.bootstrap
        if replicates:
            patients = [r["patient"] for r in records]
            groups = patients if all(p is not None for p in patients) else None
            with _undefined_reported():
                metrics["mean_auc_ci95"] = asdict(
                    bootstrap_metric_ci(
                        lambda y, s: _mean_auc(y, s, self.classes)[0],
                        labels,
                        scores,
                        n_resamples=replicates,
                        seed=self.config.runtime.seed,
                        groups=groups,
                    )
                )
            metrics["bootstrap"] = {"replicates": replicates, "by": "patient" if groups else "image"}
        return metrics

    @property
    def selection_metric(self) -> str:
        return "mean_auc"

    def eval_every(self, n_train: int) -> int:
        optim = self.config.optim
        every = self.config.evaluation.every or math.ceil(10 * n_train / optim.batch_size)
        return max(1, min(every, optim.steps))

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
        from maco_cxr.plots import plot_roc_curves, plot_training_curves

        labels = np.stack([r["labels"] for r in records])
        scores = np.stack([r["scores"] for r in records])
        header = ["path", *[f"label:{c}" for c in self.classes], *[f"score:{c}" for c in self.classes]]
        write_csv(
            out / "predictions.csv",
            header,
            (
                [r["path"], *["" if math.isnan(v) else int(v) for v in r["labels"]], *[f"{s:.6f}" for s in r["scores"]]]
                for r in records
            ),
        )
        title = f"test ROC ({self.config.model.mode})"
        with _undefined_reported():
            write_with(out / "roc.png", lambda tmp: plot_roc_curves(labels, scores, self.classes, tmp, title=title))
        write_with(
            out / "training_curves.png", lambda tmp: plot_training_curves(log_rows, ["loss", "lr", "val_mean_auc"], tmp)
        )
        return {"classes": list(self.classes), "mode": self.config.model.mode}

    def summary_line(self, metrics: dict[str, Any]) -> str:
        return f"test mean AUC {metrics['mean_auc']:.4f} {auc_classes_text(metrics)}"


def auc_classes_text(metrics: dict[str, Any]) -> str:
    """Which classes a split's mean AUC averages, e.g. ``over 5 of 6 classes (Pneumocystis: no
    positive among its 7 known labels)``."""
    left_out = metrics.get("auc_undefined") or {}
    total = len(metrics["per_class_auc"])
    if not left_out:
        return f"over {total} classes"
    reasons = "; ".join(f"{name}: {why}" for name, why in left_out.items())
    return f"over {total - len(left_out)} of {total} classes ({reasons})"


def finetune_classifier(config: ClassifyConfig) -> FitResult:
    """Train, select on validation AUC, test; write the run folder ``config.runtime.out``.

    Writes ``metrics.json`` (``test``: per-class and mean AUC with a bootstrap interval, the
    report at 0.5 and at validation-chosen thresholds; the best validation figures and step),
    ``predictions.csv``, ``best/`` and ``final/`` (models for :func:`load_finetuned`),
    ``checkpoints/``, ``roc.png``, ``training_curves.png``, ``log.jsonl`` and ``config.json``;
    returns a :class:`FitResult` (its ``summary`` is what ``metrics.json`` holds). Runs under
    ``torchrun`` too (see :mod:`maco_cxr.tasks.finetune.engine`).
    """
    return fit(ClassifyTask(config))
