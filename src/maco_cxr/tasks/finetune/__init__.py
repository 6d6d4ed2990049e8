"""Fine-tuning: one loop (:mod:`.engine`) and three task specs (classification, segmentation,
detection), and the fine-tuned models they save, reload and predict with."""

from __future__ import annotations

from pathlib import Path

from maco_cxr.tasks.finetune.classification import ClassifyConfig, FinetunedClassifier, finetune_classifier
from maco_cxr.tasks.finetune.detection import DetectConfig, FinetunedDetector, detect
from maco_cxr.tasks.finetune.engine import FinetuneTask, fit
from maco_cxr.tasks.finetune.model_io import FinetunedModel, load_weights, read_finetuned
from maco_cxr.tasks.finetune.segmentation import FinetunedSegmenter, SegmentConfig, segment
from maco_cxr.errors import CheckpointError

__all__ = ["ClassifyConfig", "DetectConfig", "FinetuneTask", "FinetunedClassifier", "FinetunedDetector",
           "FinetunedModel", "FinetunedSegmenter", "SegmentConfig", "detect", "finetune_classifier", "fit",
           "load_finetuned", "segment"]

_KINDS: dict[str, type[FinetunedModel]] = {cls.task: cls for cls in (FinetunedClassifier, FinetunedSegmenter,
                                                                    FinetunedDetector)}


def load_finetuned(directory: str | Path, *, map_location: str = "cpu") -> FinetunedModel:
    """A fine-tuned model (a run's ``best/`` or ``final/``) in eval mode, with its classes and
    preprocessing contract; call ``.predict(images)`` on paths, PIL images, arrays or tensors.

    Classifier: probabilities ``[N, C]``; segmenter: uint8 masks ``[C, H, W]`` per image in its
    original pixel grid; detector: ``{"boxes", "scores", "labels"}`` per image, boxes xyxy in
    original pixels.
    """
    description, tensors = read_finetuned(directory)
    kind = description.get("task")
    if kind not in _KINDS:
        raise CheckpointError(f"{directory}: task {kind!r} is not one of {sorted(_KINDS)}")
    model = _KINDS[kind].from_description(description)
    load_weights(model, tensors, str(directory))
    return model.to(map_location).eval()
