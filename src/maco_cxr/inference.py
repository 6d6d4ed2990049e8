"""The one inference path: batched image and text encoding for every user of a model.

A model is MaCo's :class:`~maco_cxr.models.maco.MacoModel` or any family's
:class:`~maco_cxr.families.base.FoundationModel`: both give ``embed`` and ``encode_texts``;
the per-image step is :func:`image_input` (MaCo's zero-shot geometry, or the family's own
preprocessing).

Zero-shot, grounding, retrieval, ``predict``, the web viewer and Python users all encode
through these functions, so a score is computed one way everywhere:

- images in any form users hold them (paths to PNG/JPEG/DICOM, PIL images, uint8 arrays or
  tensors, one or many; see :mod:`maco_cxr.data.inputs`), or normalised float tensors
  ``[N, 3, S, S]`` passed to the encoder as they are;
- each image is brought to the encoder's input alone (for MaCo: shorter side to S, bilinear,
  centre crop, the official zero-shot geometry), then stacked: so images of any sizes share one
  forward pass, and an image's embedding never depends on the rest of the batch;
- the forward runs under ``torch.inference_mode``, in eval mode (the caller's mode is put
  back), with bf16 autocast on CUDA; results come back as float32 CPU tensors.

:func:`image_input` is the per-image step, cheap enough for loader workers
(:func:`embed_dataset` runs it in them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from maco_cxr.data.datasets.base import failure_of, is_failed
from maco_cxr.data.inputs import ImagesInput, input_name, load_images
from maco_cxr.data.io import check_image_size
from maco_cxr.data.letterbox import letterbox_image
from maco_cxr.errors import DataError
from maco_cxr.families.base import require
from maco_cxr.models.maco import resize_center_crop

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.families.base import FoundationModel
    from maco_cxr.models.maco import MacoModel

    Model = MacoModel | FoundationModel

__all__ = [
    "EmbeddedImages",
    "autocast",
    "embed_dataset",
    "encode_images",
    "encode_texts",
    "encoder_input",
    "image_input",
    "input_size",
    "inference_mode",
    "patch_embeddings",
    "similarity",
]


@contextmanager
def inference_mode(model: torch.nn.Module, device: str | torch.device | None = None) -> Iterator[torch.nn.Module]:
    """Eval mode and ``torch.inference_mode`` for the block; the train/eval mode is put back.

    ``device``: move the model there first (it stays there).
    """
    if device is not None:
        model.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def autocast(device: torch.device, precision: str = "bf16") -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``precision == "bf16"``; fp32 otherwise (and on the CPU)."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encoder_input(pixels: np.ndarray, size: int, mean: float, std: float, where: str = "image") -> torch.Tensor:
    """uint8 ``[H, W]`` -> normalised float32 ``[1, size, size]`` in the zero-shot geometry.

    An image too small or too elongated to be scored is refused first, named ``where``
    (:func:`~maco_cxr.data.io.check_image_size`).
    """
    check_image_size(pixels.shape, where)
    x = (torch.from_numpy(np.ascontiguousarray(pixels)).float()[None, None] / 255.0 - mean) / std
    return resize_center_crop(x, size)[0]


def image_input(model: Model, pixels: np.ndarray, where: str = "image") -> torch.Tensor:
    """One uint8 ``[H, W]`` image as ``model``'s encoder takes it: the family's own
    preprocessing, or MaCo's zero-shot geometry (:func:`encoder_input` with the model's config).
    A family model whose ``protocol`` is ``"common"`` gets the image letterboxed to its input size
    first (MaCo's geometry), then its own normalisation."""
    if hasattr(model, "image_input"):
        if getattr(model, "protocol", "own") == "common":  # one geometry for every family: our letterbox
            check_image_size(pixels.shape, where)
            pixels = letterbox_image(pixels, int(model.input_size))[0]
        return model.image_input(pixels, where)
    config = model.config
    return encoder_input(pixels, config.vision.img_size, config.image_mean, config.image_std, where)


def input_size(model: Model) -> int:
    """The side of ``model``'s square encoder input."""
    return int(model.input_size)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _image_batches(model: Model, images: ImagesInput | torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Encoder-input float ``[B, C, S, S]`` batches (CPU) of any supported image input."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        size = input_size(model)
        if images.ndim != 4 or images.shape[1] not in (1, 3) or tuple(images.shape[-2:]) != (size, size):
            raise DataError(
                f"normalised float images must be [N, 1|3, {size}, {size}]; got shape "
                f"{list(images.shape)}. Pass uint8 pixels (or paths) to have them resized"
            )
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size].expand(-1, 3, -1, -1)
        return
    pictures = load_images(images)
    for start in range(0, len(pictures), batch_size):
        chunk = [
            image_input(model, p, input_name(images, start + k))
            for k, p in enumerate(pictures[start : start + batch_size])
        ]
        yield torch.stack(chunk).expand(-1, 3, -1, -1)


def _embed(model: Model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's ``embed`` of encoder inputs, on its device under autocast: (global ``[B, D]``,
    patches ``[B, L, D]``, None for a family without local features)."""
    device = _model_device(model)
    with autocast(device):
        return model.embed(x.to(device, non_blocking=True))


def encode_images(
    model: Model,
    images: ImagesInput | torch.Tensor,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Global image embeddings ``[N, D]`` (float32, CPU): the mean of the projected patch tokens
    (:func:`~maco_cxr.models.maco.joint_embeddings`), unnormalised, as the official code computes them."""
    with inference_mode(model, device):
        out = [_embed(model, x)[0].float().cpu() for x in _image_batches(model, images, batch_size)]
    return torch.cat(out)


def patch_embeddings(
    model: Model,
    images: ImagesInput | torch.Tensor,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Per-patch embeddings in the joint space ``[N, g, g, D]`` (MaCo: g = 14 at 224 px; a
    family's ``patch_grid`` otherwise), float32 CPU."""
    require(model, "patches")
    rows, columns = model.patch_grid
    with inference_mode(model, device):
        out = [_embed(model, x)[1].float().cpu() for x in _image_batches(model, images, batch_size)]
    tokens = torch.cat(out)
    return tokens.reshape(tokens.shape[0], rows, columns, -1)


def encode_texts(
    model: Model, texts: str | Sequence[str], *, batch_size: int = 64, device: str | torch.device | None = None
) -> torch.Tensor:
    """Report / prompt embeddings ``[N, D]`` (float32, CPU): for MaCo the BERT pooler output of
    "[CLS] " + text; a family's own text embedding otherwise."""
    require(model, "texts")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise DataError("encode_texts: no texts given")
    empty = [i for i, text in enumerate(texts) if not str(text).strip()]
    if empty:
        raise DataError(f"encode_texts: text {empty[0]} is empty; every text needs at least one word")
    with inference_mode(model, device):
        run_on = _model_device(model)
        out = []
        for start in range(0, len(texts), batch_size):
            with autocast(run_on):
                out.append(model.encode_texts(texts[start : start + batch_size]).float().cpu())
    return torch.cat(out)


def similarity(
    model: Model,
    images: ImagesInput | torch.Tensor,
    texts: str | Sequence[str],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Cosine similarity ``[N_images, N_texts]`` of image and text embeddings."""
    z = F.normalize(encode_images(model, images, batch_size=batch_size, device=device), dim=-1)
    t = F.normalize(encode_texts(model, texts, device=device), dim=-1)
    return z @ t.T


# ------------------------------------------------------------------------------ datasets


class _EncoderInputs(Dataset):
    """A dataset's samples as encoder inputs (computed in the loader workers)."""

    def __init__(self, dataset: ChestXrayDataset, model: Model, indices: Sequence[int] | None) -> None:
        self.dataset, self.model = dataset, model
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self.indices[position]
        sample = self.dataset[index]
        if is_failed(sample):
            return {"index": index, "failure": failure_of(sample)}
        try:
            x = image_input(self.model, sample["image"][0].numpy(), sample["path"])
        except DataError as err:  # too small to score: a lenient dataset counts it like an unreadable file
            if getattr(self.dataset, "on_error", "raise") == "raise":
                raise
            return {"index": index, "failure": {"path": str(sample["path"]), "reason": str(err)}}
        return {"index": index, "path": sample["path"], "x": x}


def _keep_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


@dataclass
class EmbeddedImages:
    """Embeddings of a dataset's readable images, row-aligned with ``indices`` (dataset record
    indices, in order); ``failures`` lists the unreadable files and why."""

    indices: list[int]
    paths: list[str]
    embeddings: torch.Tensor  # float32 [N, D]
    failures: list[dict[str, str]] = field(default_factory=list)


def embed_dataset(
    model: Model,
    dataset: ChestXrayDataset,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    desc: str = "encode",
) -> EmbeddedImages:
    """Global embeddings of every image of ``dataset`` (or of ``indices``), streamed through a
    DataLoader whose ``workers`` decode and resize; unreadable files (``on_error="skip"``
    datasets) are counted in ``failures``, never silently dropped."""
    loader = DataLoader(
        _EncoderInputs(dataset, model, indices),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_keep_list,
        pin_memory=torch.cuda.is_available(),
    )
    kept: list[int] = []
    paths: list[str] = []
    chunks: list[torch.Tensor] = []
    failures: list[dict[str, str]] = []
    with inference_mode(model, device):
        for items in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            good = [item for item in items if "x" in item]
            failures += [item["failure"] for item in items if "failure" in item]
            if good:
                x = torch.stack([item["x"] for item in good]).expand(-1, 3, -1, -1)
                chunks.append(_embed(model, x)[0].float().cpu())
                kept += [item["index"] for item in good]
                paths += [item["path"] for item in good]
    if not kept:
        first = f"; first failure: {failures[0]['path']}: {failures[0]['reason']}" if failures else ""
        raise DataError(f"no image of the dataset could be read ({len(failures)} failed){first}")
    return EmbeddedImages(kept, paths, torch.cat(chunks), failures)
