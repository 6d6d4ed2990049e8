"""Zero-shot classification with MaCo's official prompts and scoring.

Official rule (``Zeroshot Classification.py`` / ``ZeroShot/model_MaCo.py``): for class c,
P_c is the mean pooled text embedding of its positive prompts and N_c that of its negative
prompts, neither L2-normalised; an image with embedding z (unnormalised, from all 196 patch
tokens) scores p_c = softmax([z . P_c, z . N_c])[0]. Images are resized (shorter side to 224,
bilinear) and centre-cropped to 224 by ``model.encode_images``.

Each image is encoded on its own terms (same-size images share a forward pass only for speed),
so its score never depends on the other images of the call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from maco_cxr.errors import DataError
from maco_cxr.tasks.inputs import ImagesInput, load_images
from maco_cxr.tasks.prompts import PromptSpec, resolve_prompts

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.models.maco import MacoModel

__all__ = [
    "ZeroShotResult",
    "build_class_prototypes",
    "encode_image_list",
    "evaluate_zero_shot",
    "inference_mode",
    "score_embeddings",
    "zero_shot",
]

logger = logging.getLogger(__name__)


@contextmanager
def inference_mode(model: MacoModel, device: str | torch.device | None = None) -> Iterator[MacoModel]:
    """Eval mode and no_grad for the block; the model's train/eval mode is restored after.

    ``device``: move the model there first (it stays there).
    """
    if device is not None:
        model.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


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
    with inference_mode(model, device):
        embeddings = torch.cat([model.encode_texts(texts[i: i + batch_size]).float()
                                for i in range(0, len(texts), batch_size)])
    positive = torch.stack([embeddings[[index[t] for t in table[c].positive]].mean(0) for c in classes])
    negative = torch.stack([embeddings[[index[t] for t in table[c].negative]].mean(0) for c in classes])
    return positive, negative


def score_embeddings(image_embeddings: torch.Tensor, positive: torch.Tensor,
                     negative: torch.Tensor) -> torch.Tensor:
    """p ``[N, C]`` = softmax over (z . P_c, z . N_c), positive entry, for embeddings ``[N, D]``."""
    z = image_embeddings.float()
    logits = torch.stack([z @ positive.to(z.device).T, z @ negative.to(z.device).T], dim=-1)
    return torch.softmax(logits, dim=-1)[..., 0]


def encode_image_list(model: MacoModel, images: Sequence[np.ndarray], batch_size: int = 32
                      ) -> torch.Tensor:
    """Embeddings ``[N, D]`` of uint8 ``[H, W]`` images of any sizes (same-size ones batched).

    Call inside :func:`inference_mode`.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape), []).append(i)
    out: torch.Tensor | None = None
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start: start + batch_size]
            pixels = torch.from_numpy(np.stack([images[i] for i in chunk]))
            embedded = model.encode_images(pixels).float()
            if out is None:
                out = embedded.new_empty(len(images), embedded.shape[-1])
            out[chunk] = embedded
    if out is None:
        raise DataError("no images to encode")
    return out


def zero_shot(
    model: MacoModel,
    images: ImagesInput,
    classes: Sequence[str],
    prompts: PromptSpec = None,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class probabilities ``[N, C]`` (CPU float32) of one or many images.

    images: paths, PIL images, uint8 arrays/tensors (see :mod:`maco_cxr.tasks.inputs`), or
    normalised float tensors ``[N, 3, 224, 224]`` passed to the encoder as they are.
    prompts: see :func:`maco_cxr.tasks.prompts.resolve_prompts` (default: the official set).
    """
    positive, negative = build_class_prototypes(model, classes, prompts, device=device)
    with inference_mode(model):
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4:
                raise DataError(f"normalised float images must be [N, 3, H, W]; got shape "
                                f"{list(images.shape)}")
            embeddings = torch.cat([model.encode_images(images[i: i + batch_size]).float()
                                    for i in range(0, images.shape[0], batch_size)])
        else:
            embeddings = encode_image_list(model, load_images(images), batch_size)
    return score_embeddings(embeddings, positive, negative).cpu()


@dataclass
class ZeroShotResult:
    """Scores and labels of a zero-shot evaluation over a dataset, row-aligned with ``paths``."""

    classes: tuple[str, ...]
    scores: np.ndarray  # float32 [N, C]
    labels: np.ndarray  # float32 [N, C], NaN = unknown
    paths: list[str] = field(default_factory=list)


def _collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


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
    case-insensitively). Records without labels get NaN rows.
    """
    classes = tuple(classes if classes is not None else dataset.classes)
    if not classes:
        raise DataError("the dataset declares no classes; pass classes=[...] to score")
    if label_columns is None:
        label_columns = _label_columns(classes, tuple(dataset.classes))
    if len(label_columns) != len(classes):
        raise DataError(f"{len(label_columns)} label columns given for {len(classes)} classes")
    positive, negative = build_class_prototypes(model, classes, prompts, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    scores, labels, paths = [], [], []
    with inference_mode(model):
        for batch in tqdm(loader, desc="zero-shot", unit="batch", disable=not progress):
            pixels = [sample["image"][0].numpy() for sample in batch]
            embeddings = encode_image_list(model, pixels, batch_size)
            scores.append(score_embeddings(embeddings, positive, negative).cpu().numpy())
            for sample in batch:
                paths.append(sample["path"])
                row = np.full(len(classes), np.nan, dtype=np.float32)
                if "labels" in sample:
                    values = sample["labels"].numpy()
                    for k, column in enumerate(label_columns):
                        if column is not None:
                            row[k] = values[column]
                labels.append(row)
    if not paths:
        raise DataError("the dataset holds no images to score")
    return ZeroShotResult(classes, np.concatenate(scores).astype(np.float32),
                          np.stack(labels), paths)


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
