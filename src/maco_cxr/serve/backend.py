"""What the viewer asks of a model: a :class:`Backend`, whose ``predict`` returns task predictions.

The web app never touches a model directly. It calls ``backend.predict(image, phrase, classes)``
(one call at a time: the app holds a lock around it) and shows what comes back, so a new kind
of model is one function that builds a :class:`Backend`:

- :func:`maco_backend`: a MaCo vision-language model. Scores are
  :func:`maco_cxr.tasks.zeroshot.zero_shot` of any class list, the heatmap is
  :func:`maco_cxr.tasks.grounding.ground` of the phrase.
- :func:`classifier_backend`: a fine-tuned classifier, any object with ``classes`` and
  ``predict(uint8 [H, W]) -> probabilities [K]`` (the fine-tuned models' ``predict`` takes
  images as :mod:`maco_cxr.data.inputs` does). Its classes are fixed and it has no grounding,
  so the page hides the phrase box and the class editor.
- :func:`segmenter_backend`, :func:`detector_backend`: a fine-tuned segmenter (its foreground
  probability map over the image; ONE score, the map's maximum, named for its target: the
  segmenter predicts the union of its target labels, so it has no per-label score) or detector
  (its boxes, listed and drawn as a map of the best box score covering each pixel; score per
  class = its best box).

The ``/api/health`` task flags are the backend's own (``classification``, ``segmentation``,
``detection``, ...): true only for what its predictions really are.

:func:`load_backend` picks the builder for a path given to ``maco-cxr serve --model``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from maco_cxr.errors import DataError

if TYPE_CHECKING:
    from maco_cxr.models.maco import MacoModel

__all__ = [
    "Backend",
    "Prediction",
    "PredictFn",
    "classifier_backend",
    "detector_backend",
    "load_backend",
    "maco_backend",
    "resolve_device",
    "segmenter_backend",
]


@dataclass(frozen=True)
class Prediction:
    """One image's predictions: ``scores`` class -> probability (in the order asked) and, when a
    phrase was given, its heatmap, float32 ``[H, W]`` in the image's original pixel grid, and
    ``query``, the phrase as the model read it (after the official phrase processing). A
    fine-tuned dense model gives its own map without a phrase, ``map_name`` says what it shows,
    and a detector lists ``boxes`` (``label``, ``score``, ``box`` xyxy in original pixels)."""

    scores: dict[str, float]
    heatmap: np.ndarray | None = None
    query: str | None = None
    map_name: str | None = None
    boxes: tuple[dict[str, Any], ...] = ()


PredictFn = Callable[[np.ndarray, "str | None", "Sequence[str] | None"], Prediction]
"""``predict(image uint8 [H, W], phrase or None, classes or None) -> Prediction``.

``classes=None`` means the backend's defaults. Raise :class:`~maco_cxr.errors.DataError` (or
``ConfigError``) for an unusable phrase or class list; the app answers 400 with its message.
"""


@dataclass(frozen=True)
class Backend:
    """A model as the viewer sees it.

    ``classes_editable``: any class list may be scored (zero-shot); otherwise ``default_classes``
    are the names of the model's fixed scores. ``grounding``: ``predict`` accepts a phrase.
    ``maps``: every prediction carries a map of its own (a fine-tuned segmenter or detector).
    ``classification``, ``segmentation``, ``detection``: what the scores and maps are (image
    class probabilities; a foreground map; boxes), so ``/api/health`` claims only what the model
    does; ``scores_meaning`` says it in words for the page. ``input_size``: the side of the
    model's square input (the grounding letterbox). ``classify_geometry``: how the image is
    brought to the model's input, in words, for the page. ``class_sets``: named class lists the
    page offers (editable backends).
    """

    name: str
    kind: str
    device: str
    predict: PredictFn
    default_classes: tuple[str, ...]
    classes_editable: bool
    grounding: bool
    input_size: int
    classify_geometry: str
    summary: dict[str, Any] = field(default_factory=dict)
    class_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    maps: bool = False
    classification: bool = True
    segmentation: bool = False
    detection: bool = False
    scores_meaning: str = "probability of each class for the whole image"


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def maco_backend(model: MacoModel, *, name: str = "maco", device: str | None = None) -> Backend:
    """A MaCo model: zero-shot scores of any classes (default CheXpert-5) and phrase grounding."""
    from maco_cxr.tasks.grounding import ground, phrase_query
    from maco_cxr.tasks.prompts import CLASS_SETS
    from maco_cxr.tasks.zeroshot import zero_shot

    defaults = CLASS_SETS["chexpert"]

    def predict(image: np.ndarray, phrase: str | None, classes: Sequence[str] | None) -> Prediction:
        names = list(classes) if classes else list(defaults)
        query = phrase_query(phrase) if phrase else None  # an unusable phrase fails here
        probabilities = zero_shot(model, image, names)[0]
        heatmap = ground(model, image, phrase) if phrase else None
        return Prediction({c: float(p) for c, p in zip(names, probabilities)}, heatmap, query)

    vision = model.config.vision
    size = vision.img_size
    return Backend(
        name=name,
        kind="maco",
        device=str(device or next(model.parameters()).device),
        predict=predict,
        default_classes=tuple(defaults),
        classes_editable=True,
        grounding=True,
        input_size=size,
        classify_geometry=f"shorter side to {size} (bilinear), centre crop {size} x {size}",
        summary={
            "vision": f"ViT {vision.embed_dim} wide, {vision.depth} blocks, patch {vision.patch_size}, input {size}",
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        class_sets=dict(CLASS_SETS),
        scores_meaning="zero-shot probability of each class (the image's similarity to the class prompts)",
    )


class _Classifier(Protocol):
    classes: Sequence[str]

    def predict(self, images: Any) -> Any: ...


def classifier_backend(model: _Classifier, *, name: str = "classifier", device: str | None = None) -> Backend:
    """A fine-tuned classifier: its own fixed classes, no grounding.

    ``model.predict(image)`` takes one uint8 ``[H, W]`` image and returns its probabilities
    ``[K]`` (or ``[1, K]``) in the order of ``model.classes``; ``model.preprocessing`` (when
    present) gives ``input_size`` for the page.
    """
    classes = tuple(model.classes)

    def predict(image: np.ndarray, phrase: str | None, wanted: Sequence[str] | None) -> Prediction:
        _check_fixed_request(name, "classifier", classes, phrase, wanted)
        probabilities = torch.as_tensor(model.predict(image)).float().reshape(-1).tolist()
        if len(probabilities) != len(classes):
            raise DataError(f"model {name!r} returned {len(probabilities)} probabilities for {len(classes)} classes")
        return Prediction(_wanted(dict(zip(classes, probabilities)), wanted))

    size = int(dict(getattr(model, "preprocessing", {}) or {}).get("input_size", 224))
    return Backend(
        name=name,
        kind="finetuned-classifier",
        device=str(device or "cpu"),
        predict=predict,
        default_classes=classes,
        classes_editable=False,
        grounding=False,
        input_size=size,
        classify_geometry=f"the model's own preprocessing (input {size})",
        summary={"classes": len(classes)},
        scores_meaning="the fine-tuned classifier's probability of each of its classes",
    )


def segmenter_backend(model: Any, *, name: str = "segmenter", device: str | None = None) -> Backend:
    """A fine-tuned segmenter (:class:`~maco_cxr.tasks.finetune.segmentation.FinetunedSegmenter`):
    its foreground probability over the image, in the image's own grid, as the map, and one
    score, the map's maximum. The segmenter predicts ONE foreground, the union of its target
    labels (``model.classes``), so the score is named for that union (``"left lung + right
    lung"``): a score per label would repeat one number as if it were several."""
    from maco_cxr.inference import inference_mode

    labels = tuple(model.classes)
    target = " + ".join(labels)
    size = int(model.preprocessing["image_size"])
    threshold = float(model.preprocessing["threshold"])

    def predict(image: np.ndarray, phrase: str | None, wanted: Sequence[str] | None) -> Prediction:
        _check_fixed_request(name, "segmenter", (target,), phrase, wanted)
        with inference_mode(model, device):
            probability = model.probabilities([model.prepare(image, model.preprocessing)])[0]
        return Prediction(
            {target: float(np.nanmax(probability))},
            heatmap=np.asarray(probability, dtype=np.float32),
            map_name=f"{target} probability (mask where >= {threshold:g})",
        )

    union = f"the union of {list(labels)}" if len(labels) > 1 else repr(labels[0])
    return Backend(
        name=name,
        kind="finetuned-segmenter",
        device=str(device or "cpu"),
        predict=predict,
        default_classes=(target,),
        classes_editable=False,
        grounding=False,
        input_size=size,
        classify_geometry=f"letterbox to {size} x {size} (the segmenter's input)",
        summary={"target_labels": list(labels), "outputs": "one foreground probability map"},
        maps=True,
        classification=False,
        segmentation=True,
        scores_meaning=f"highest foreground probability of the map (the target: {union}); the map "
        "shows where; it is not a classifier's probability",
    )


def detector_backend(model: Any, *, name: str = "detector", device: str | None = None) -> Backend:
    """A fine-tuned detector (:class:`~maco_cxr.tasks.finetune.detection.FinetunedDetector`): its
    boxes (xyxy, original pixels), a map of the best box score covering each pixel, and per
    class the score of its best box (0 without one)."""
    classes = tuple(model.classes)
    size = int(model.preprocessing["image_size"])

    def predict(image: np.ndarray, phrase: str | None, wanted: Sequence[str] | None) -> Prediction:
        _check_fixed_request(name, "detector", classes, phrase, wanted)
        found = model.predict(image, device=device)
        scores = dict.fromkeys(classes, 0.0)
        heat = np.zeros(image.shape, dtype=np.float32)
        boxes = []
        for box, score, label in zip(found["boxes"], found["scores"], found["labels"]):
            cls = classes[int(label) - 1]
            scores[cls] = max(scores[cls], float(score))
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            np.maximum(heat[y0:y1, x0:x1], float(score), out=heat[y0:y1, x0:x1])
            boxes.append({"label": cls, "score": float(score), "box": [float(v) for v in box]})
        return Prediction(
            _wanted(scores, wanted),
            heatmap=heat,
            boxes=tuple(boxes),
            map_name=f"{len(boxes)} boxes, best score per pixel",
        )

    return Backend(
        name=name,
        kind="finetuned-detector",
        device=str(device or "cpu"),
        predict=predict,
        default_classes=classes,
        classes_editable=False,
        grounding=False,
        input_size=size,
        classify_geometry=f"letterbox to {size} x {size} (the detector's input)",
        summary={"classes": len(classes)},
        maps=True,
        classification=False,
        detection=True,
        scores_meaning="score of the best box of each class (0 when it has no box)",
    )


def _check_fixed_request(
    name: str, kind: str, classes: tuple[str, ...], phrase: str | None, wanted: Sequence[str] | None
) -> None:
    if phrase:
        raise DataError(f"model {name!r} is a fine-tuned {kind}: it has no phrase grounding")
    unknown = [c for c in wanted or () if c not in classes]
    if unknown:
        raise DataError(f"model {name!r} scores only its own classes {list(classes)}; not {unknown}")


def _wanted(scores: dict[str, float], wanted: Sequence[str] | None) -> dict[str, float]:
    return {c: scores[c] for c in wanted} if wanted else scores


_FINETUNED_BACKENDS = {
    "classification": classifier_backend,
    "segmentation": segmenter_backend,
    "detection": detector_backend,
}


def _is_finetuned(path: Path) -> bool:
    """A fine-tuned model directory: its ``config.json`` names a ``task`` (MaCo's has none)."""
    try:
        return path.is_dir() and "task" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def load_backend(path: str | Path, *, device: str = "auto") -> Backend:
    """The backend for a model path: a MaCo model directory or an official ``maco.pth``."""
    from maco_cxr.hub import load, resolve_model_path

    device = resolve_device(device)
    path = resolve_model_path(path)
    if _is_finetuned(path):
        from maco_cxr.tasks.finetune import load_finetuned

        model = load_finetuned(path, map_location=device)
        return _FINETUNED_BACKENDS[model.task](model, name=path.name, device=device)
    model = load(path, map_location=device)
    return maco_backend(model, name=path.stem if path.is_file() else path.name, device=device)
