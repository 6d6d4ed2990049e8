"""Fine-tuning: one loop (:mod:`.engine`) and three task specs (classification, segmentation,
detection), and the fine-tuned models they save, reload and predict with.

The task configs (:mod:`.config`) are torch-free; everything else is imported on first use, so
that ``from maco_cxr.tasks.finetune import ClassifyConfig`` reads and checks a config (the CLI
does it before training) without importing torch."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maco_cxr.errors import CheckpointError
from maco_cxr.tasks.finetune.config import ClassifyConfig, DetectConfig, SegmentConfig

if TYPE_CHECKING:
    from maco_cxr.tasks.finetune.model_io import FinetunedModel

__all__ = [
    "ClassifyConfig",
    "DetectConfig",
    "FinetuneTask",
    "FinetunedClassifier",
    "FinetunedDetector",
    "FinetunedModel",
    "FinetunedSegmenter",
    "FitResult",
    "SegmentConfig",
    "finetune_classifier",
    "fit",
    "load_finetuned",
    "train_detector",
    "train_segmenter",
]

_LAZY = {
    "FinetunedClassifier": "classification",
    "finetune_classifier": "classification",
    "FinetunedDetector": "detection",
    "train_detector": "detection",
    "FinetunedSegmenter": "segmentation",
    "train_segmenter": "segmentation",
    "FinetuneTask": "engine",
    "FitResult": "engine",
    "fit": "engine",
    "FinetunedModel": "model_io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_finetuned(directory: str | Path, *, map_location: str = "cpu") -> FinetunedModel:
    """A fine-tuned model (a run's ``best/`` or ``final/``, or ``hf-hub:ORG/NAME[@REV]``) in eval
    mode, with its classes and preprocessing contract; call ``.predict(images)`` on paths, PIL
    images, arrays or tensors.

    Classifier: probabilities ``[N, C]``; segmenter: uint8 masks ``[C, H, W]`` per image in its
    original pixel grid; detector: ``{"boxes", "scores", "labels"}`` per image, boxes xyxy in
    original pixels.
    """
    from maco_cxr.hub import resolve_model_path
    from maco_cxr.tasks.finetune.classification import FinetunedClassifier
    from maco_cxr.tasks.finetune.detection import FinetunedDetector
    from maco_cxr.tasks.finetune.model_io import load_weights, read_finetuned
    from maco_cxr.tasks.finetune.segmentation import FinetunedSegmenter

    directory = resolve_model_path(directory)  # a folder, or an hf-hub:ORG/NAME[@REV] snapshot
    kinds = {cls.task: cls for cls in (FinetunedClassifier, FinetunedSegmenter, FinetunedDetector)}
    description, tensors = read_finetuned(directory)
    kind = description.get("task")
    if kind not in kinds:
        raise CheckpointError(f"{directory}: task {kind!r} is not one of {sorted(kinds)}")
    model = kinds[kind].from_description(description)
    load_weights(model, tensors, str(directory))
    return model.to(map_location).eval()
