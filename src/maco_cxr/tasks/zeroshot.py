"""Zero-shot classification with MaCo's official prompts and scoring.

Official rule (``Zeroshot Classification.py`` / ``ZeroShot/model_MaCo.py``): for class c,
P_c is the mean pooled text embedding of its positive prompts and N_c that of its negative
prompts, neither L2-normalised; an image with embedding z (unnormalised, from all 196 patch
tokens) scores p_c = softmax([z . P_c, z . N_c])[0]. Images are resized (shorter side to 224,
bilinear) and centre-cropped to 224 (:mod:`maco_cxr.inference`), each on its own, so an
image's score never depends on the other images of the call. The prompts are encoded once
per call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from maco_cxr.data.inputs import ImagesInput
from maco_cxr.errors import DataError
from maco_cxr.inference import embed_dataset, encode_images, encode_texts
from maco_cxr.tasks.prompts import PromptSpec, resolve_prompts

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.models.maco import MacoModel

__all__ = [
    "ZeroShotResult",
    "build_class_prototypes",
    "evaluate_zero_shot",
    "score_embeddings",
    "zero_shot",
]

logger = logging.getLogger(__name__)


def build_class_prototypes(
    model: MacoModel,
    classes: Sequence[str],
    prompts: PromptSpec = None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative prototypes ``(P [C, D], N [C, D])``: mean prompt embeddings, unnormalised."""
    table = resolve_prompts(classes, prompts)
    texts = sorted({t for entry in table.values() for t in (*entry.positive, *entry.negative)})
    index = {text: i for i, text in enumerate(texts)}
    embeddings = encode_texts(model, texts, batch_size=batch_size, device=device)
    positive = torch.stack([embeddings[[index[t] for t in table[c].positive]].mean(0) for c in classes])
    negative = torch.stack([embeddings[[index[t] for t in table[c].negative]].mean(0) for c in classes])
    return positive, negative


def score_embeddings(image_embeddings: torch.Tensor, positive: torch.Tensor,
                     negative: torch.Tensor) -> torch.Tensor:
    """p ``[N, C]`` = softmax over (z . P_c, z . N_c), positive entry, for embeddings ``[N, D]``."""
    z = image_embeddings.float()
    logits = torch.stack([z @ positive.to(z.device).T, z @ negative.to(z.device).T], dim=-1)
    return torch.softmax(logits, dim=-1)[..., 0]


def zero_shot(
    model: MacoModel,
    images: ImagesInput | torch.Tensor,
    classes: Sequence[str],
    prompts: PromptSpec = None,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class probabilities ``[N, C]`` (CPU float32) of one or many images.

    images: paths, PIL images, uint8 arrays/tensors (see :mod:`maco_cxr.data.inputs`), or
    normalised float tensors ``[N, 3, 224, 224]`` passed to the encoder as they are.
    prompts: see :func:`maco_cxr.tasks.prompts.resolve_prompts` (default: the official set).
    """
    positive, negative = build_class_prototypes(model, classes, prompts, device=device)
    embeddings = encode_images(model, images, batch_size=batch_size, device=device)
    return score_embeddings(embeddings, positive, negative)


@dataclass
class ZeroShotResult:
    """Scores and labels of a zero-shot evaluation over a dataset, row-aligned with ``paths``;
    ``failures`` lists the files that could not be read (left out, counted)."""

    classes: tuple[str, ...]
    scores: np.ndarray  # float32 [N, C]
    labels: np.ndarray  # float32 [N, C], NaN = unknown
    paths: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def evaluate_zero_shot(
    model: MacoModel,
    dataset: ChestXrayDataset,
    classes: Sequence[str] | None = None,
    prompts: PromptSpec = None,
    *,
    label_columns: Sequence[int | None] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ZeroShotResult:
    """Score every image of ``dataset``, streaming (images are read by a DataLoader).

    classes: names to score (default ``dataset.classes``); label_columns: the dataset label
    column of each class (default: the position of each name in ``dataset.classes``, matched
    case-insensitively). Records without labels get NaN rows. Unreadable files of an
    ``on_error="skip"`` dataset are left out and listed in ``failures``.
    """
    classes = tuple(classes if classes is not None else dataset.classes)
    if not classes:
        raise DataError("the dataset declares no classes; pass classes=[...] to score")
    if label_columns is None:
        label_columns = _label_columns(classes, tuple(dataset.classes))
    if len(label_columns) != len(classes):
        raise DataError(f"{len(label_columns)} label columns given for {len(classes)} classes")
    positive, negative = build_class_prototypes(model, classes, prompts, device=device)
    embedded = embed_dataset(model, dataset, batch_size=batch_size, workers=num_workers, device=device,
                             progress=progress, desc="zero-shot")
    scores = score_embeddings(embedded.embeddings, positive, negative).numpy()
    labels = np.full((len(embedded.indices), len(classes)), np.nan, dtype=np.float32)
    for row, index in enumerate(embedded.indices):
        values = dataset.records[index].labels
        if values is not None:
            for k, column in enumerate(label_columns):
                if column is not None:
                    labels[row, k] = values[column]
    if embedded.failures:
        logger.warning("zero-shot: %d unreadable files left out (first: %s: %s)", len(embedded.failures),
                       embedded.failures[0]["path"], embedded.failures[0]["reason"])
    return ZeroShotResult(classes, scores.astype(np.float32), labels, embedded.paths, embedded.failures)


def _label_columns(classes: tuple[str, ...], available: tuple[str, ...]) -> list[int | None]:
    """Column of each class in the dataset's labels, by case-insensitive name; None if absent."""
    lower = [name.lower() for name in available]
    columns: list[int | None] = []
    for name in classes:
        columns.append(lower.index(name.lower()) if name.lower() in lower else None)
    missing = [name for name, col in zip(classes, columns) if col is None]
    if missing:
        logger.warning("classes %s have no label column in the dataset (its classes: %s); their "
                       "labels are unknown (NaN) and their metrics undefined", missing, list(available))
    return columns
