"""The face every foundation-model family gives the task layer.

Zero-shot, grounding, retrieval, ``predict``, ``serve`` and ``compare`` call only what
:class:`FoundationModel` names, so a family (MaCo, CheXzero, BioViL, ...) plugs in by
implementing it once, with its authors' own preprocessing, embeddings and scoring rule:

- :meth:`image_input`: one uint8 grey image ``[H, W]`` -> the float ``[C, S, S]`` the image
  encoder takes (the family's geometry and normalisation), computed per image so a score never
  depends on the other images of a batch;
- :meth:`embed`: a batch of those -> (global ``[N, D]``, local ``[N, L, D]`` or None) in the
  joint image-text space;
- :meth:`encode_texts`: texts -> ``[N, D]`` in the same space;
- :meth:`class_prototype` and :meth:`zero_shot_scores`: the family's zero-shot rule;
- :meth:`phrase_maps`: the family's grounding map on letterboxed images;
- :meth:`image_features`: pooled features ``[N, feature_dim]`` of the image encoder before any
  projection, differentiable: what a linear probe and classification fine-tuning train on.

``capabilities`` says which of :data:`CAPABILITIES` a family has, so a task it cannot do is
refused by name (:func:`require`) instead of failing inside a forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maco_cxr.errors import ConfigError

__all__ = ["CAPABILITIES", "FoundationModel", "cosine_prototype", "cosine_softmax_scores", "require"]

#: What a family may be able to do: encode texts (retrieval), give local features in the joint
#: space, score zero-shot classes, ground phrases, and fine-tune its image encoder.
CAPABILITIES = ("texts", "patches", "zeroshot", "grounding", "finetune")


class FoundationModel(nn.Module):
    """Base of the peer families' models (MaCo's :class:`~maco_cxr.models.maco.MacoModel` has
    the same face). Subclasses set ``family``, ``capabilities``, ``input_size`` and
    ``patch_grid`` and implement the methods their capabilities need."""

    family: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    #: the authors' zero-shot templates (positive, negative); ``{c}`` is the class name
    prompt_templates: ClassVar[tuple[tuple[str, ...], tuple[str, ...]] | None] = None
    input_size: int
    feature_dim: int
    patch_grid: tuple[int, int] | None = None
    #: "own": the authors' preprocessing; "common": every image letterboxed to ``input_size`` first
    #: (MaCo's geometry, so that models compared under one protocol see the same pixels)
    protocol: str = "own"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def image_input(self, pixels: np.ndarray, where: str = "image") -> torch.Tensor:
        """uint8 ``[H, W]`` -> float32 ``[C, S, S]`` in the family's own preprocessing."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder inputs ``[N, C, S, S]`` -> (global ``[N, D]``, local ``[N, L, D]`` or None)."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        require(self, "texts")
        raise NotImplementedError

    def class_prototype(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """One class side's prompt embeddings ``[K, D]`` -> its prototype ``[D]``."""
        require(self, "zeroshot")
        raise NotImplementedError

    def zero_shot_scores(self, images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, D]`` and prototypes ``[C, D]`` -> probabilities ``[N, C]``."""
        require(self, "zeroshot")
        raise NotImplementedError

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder inputs ``[N, C, S, S]`` -> pooled image-encoder features ``[N, feature_dim]``."""
        require(self, "finetune")
        raise NotImplementedError

    def phrase_maps(self, letterboxed: torch.Tensor, phrases: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """uint8 letterboxed images ``[N, S, S]`` and phrases per image -> maps ``[P_i, S, S]``."""
        require(self, "grounding")
        raise NotImplementedError


def require(model: nn.Module, capability: str) -> None:
    """Raise :class:`ConfigError` when ``model``'s family cannot do ``capability``."""
    capabilities = getattr(model, "capabilities", frozenset(CAPABILITIES))
    if capability not in capabilities:
        family = getattr(model, "family", type(model).__name__)
        can = ", ".join(c for c in CAPABILITIES if c in capabilities) or "image embeddings only"
        raise ConfigError(f"the {family} family cannot do {capability} (it can: {can})")


def cosine_prototype(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """CLIP's template ensemble: L2-normalise each prompt, average, normalise again."""
    return F.normalize(F.normalize(prompt_embeddings.float(), dim=-1).mean(dim=0), dim=-1)


def cosine_softmax_scores(images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """p = exp(s+) / (exp(s+) + exp(s-)) of the cosine similarities to the two prototypes."""
    z = F.normalize(images.float(), dim=-1)
    logits = torch.stack(
        [z @ F.normalize(positive.float(), dim=-1).T, z @ F.normalize(negative.float(), dim=-1).T], dim=-1
    )
    return torch.softmax(logits, dim=-1)[..., 0]
