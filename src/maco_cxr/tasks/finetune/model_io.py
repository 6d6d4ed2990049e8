"""Fine-tuned models as objects that train, save, load back and predict, one per task.

A :class:`FinetunedModel` wraps the task network (classifier, UperNet segmenter, ViTDet
detector) with what prediction needs: class names, the preprocessing contract, and a
``predict(images)`` that takes paths (PNG/JPEG/DICOM), PIL images, arrays or tensors, one or
many. The fine-tuning loop trains this very object (its ``forward`` is the network's), its
evaluation goes through the same :meth:`~FinetunedModel.prepare` and
:meth:`~FinetunedModel.predict_prepared` that ``predict`` uses, so predicting the test split
with a reloaded model reproduces the test metrics.

On disk (``best/``, ``final/`` of a run): ``model.safetensors`` + ``config.json`` (task,
architecture, classes, preprocessing, how it was trained), written atomically.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from maco_cxr._atomic import atomic_directory, write_json
from maco_cxr.data.inputs import ImagesInput, is_single_image, load_images
from maco_cxr.errors import CheckpointError
from maco_cxr.inference import inference_mode

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "FinetunedModel",
    "load_weights",
    "read_finetuned",
    "save_finetuned",
]

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class FinetunedModel(nn.Module, ABC):
    """A task network plus its classes and preprocessing (see the module docstring)."""

    task: ClassVar[str]

    def __init__(self, net: nn.Module, classes: Sequence[str], preprocessing: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.classes = tuple(classes)
        self.preprocessing = dict(preprocessing)
        self._frozen: list[nn.Module] = []

    def freeze(self, module: nn.Module) -> None:
        """Stop ``module`` (a submodule, e.g. the backbone) from training: no gradients, and
        eval mode even while the rest trains (linear probing, frozen-encoder protocols)."""
        for param in module.parameters():
            param.requires_grad_(False)
        self._frozen.append(module)
        module.eval()

    def train(self, mode: bool = True) -> FinetunedModel:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The network's training forward (what the fine-tuning loop and DDP call)."""
        return self.net(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ the one predict path
    @staticmethod
    @abstractmethod
    def prepare(pixels: np.ndarray, preprocessing: dict[str, Any]) -> dict[str, Any]:
        """One grey uint8 ``[H, W]`` image -> the network's input and what maps the output back
        (cheap, CPU, picklable: it runs in loader workers)."""

    @abstractmethod
    def predict_prepared(self, items: Sequence[dict[str, Any]]) -> list[Any]:
        """Predictions for prepared items, in each image's original geometry (call in
        :func:`~maco_cxr.inference.inference_mode`)."""

    def predict(self, images: ImagesInput, *, batch_size: int = 8, device: str | torch.device | None = None) -> Any:
        """Predictions for one image or many (see each task for the form); one image gives one
        prediction, many a list (classification: a ``[N, C]`` tensor)."""
        pictures = load_images(images)
        out: list[Any] = []
        with inference_mode(self, device):
            for start in range(0, len(pictures), batch_size):
                items = [self.prepare(p, self.preprocessing) for p in pictures[start : start + batch_size]]
                out += self.predict_prepared(items)
        return self.collect(out, single=is_single_image(images))

    def collect(self, predictions: list[Any], single: bool) -> Any:
        return predictions[0] if single else predictions

    # ------------------------------------------------------------------ the on-disk format
    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What :meth:`from_description` needs to rebuild the architecture (JSON types)."""

    @classmethod
    @abstractmethod
    def from_description(cls, description: dict[str, Any]) -> FinetunedModel:
        """The architecture of :meth:`describe`, with fresh weights."""


def save_finetuned(model: FinetunedModel, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` atomically into ``directory``."""
    with atomic_directory(directory, "finetuned-model") as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        write_json(
            tmp / CONFIG_NAME,
            {
                "format_version": FORMAT_VERSION,
                "task": model.task,
                "classes": list(model.classes),
                "preprocessing": model.preprocessing,
                "architecture": model.describe(),
                **(extra or {}),
            },
        )
    return Path(directory)


def read_finetuned(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``config.json`` and the tensors of a fine-tuned model directory, checked."""
    directory = Path(directory)
    config_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{directory}: not a fine-tuned model (needs {CONFIG_NAME} and {WEIGHTS_NAME}); give "
            "a run's best/ or final/ folder"
        )
    try:
        config = json.loads(config_path.read_text())
        tensors = load_file(str(weights))
    except (OSError, json.JSONDecodeError, RuntimeError) as err:
        raise CheckpointError(f"{directory}: cannot read the fine-tuned model: {err}") from err
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: format version {config['format_version']} is newer than this "
            f"maco-cxr reads ({FORMAT_VERSION}); upgrade maco-cxr"
        )
    return config, tensors


def load_weights(model: FinetunedModel, tensors: dict[str, torch.Tensor], origin: str) -> FinetunedModel:
    """Every tensor must fit: a fine-tuned model loads exactly or not at all."""
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{origin}: the weights do not fit the architecture in its config.json (missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return model
