"""Classification heads on an image encoder, as MAE/MRM global-pool fine-tuning builds them.

Pooled features -> LayerNorm (eps 1e-6) -> linear head (trunc-normal std 2e-5, bias 0), one logit per
class. :class:`ClassifierModel` pools a MaCo ViT (mean of the patch tokens after the last block, CLS
excluded; the encoder's own final LayerNorm is replaced by the norm after pooling,
``docs/protocols.md`` section 4). :class:`EncoderClassifier` pools another family's encoder by its
``image_features`` (the features its authors' heads read), so every family is fine-tuned and probed
with the same head and the same loop: differences come from the encoders.
"""

from __future__ import annotations

import torch
from torch import nn

from maco_cxr.errors import ConfigError
from maco_cxr.models.vit import MaskedViT

__all__ = ["ClassifierModel", "EncoderClassifier"]


class _PooledHead(nn.Module):
    """``forward`` takes encoder inputs ``[N, C, H, W]``, or pooled features ``[N, D]`` (a linear probe on
    cached features trains through the same forward), and returns logits ``[N, num_classes]``."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError("a classifier needs at least one class")
        self.fc_norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(x if x.ndim == 2 else self.pool(x))


class ClassifierModel(_PooledHead):
    """A MaCo ViT with the head; inputs are normalised float ``[N, 3, H, W]`` (H, W multiples of the patch)."""

    def __init__(self, backbone: MaskedViT, num_classes: int) -> None:
        super().__init__(backbone.embed_dim, num_classes)
        self.backbone = backbone
        self.backbone.norm = nn.Identity()

    @property
    def img_size(self) -> int:
        return self.backbone.config.img_size

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens after the last block ``[N, D]`` (CLS excluded)."""
        return self.backbone.forward_features(x)[:, 1:].mean(dim=1)


class EncoderClassifier(_PooledHead):
    """Another family's model (``image_features``, ``feature_dim``, ``input_size``) with the head; inputs
    are what its ``image_input`` gives."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__(int(encoder.feature_dim), num_classes)
        self.encoder = encoder

    @property
    def img_size(self) -> int:
        return int(self.encoder.input_size)

    def no_weight_decay(self) -> set[str]:
        return set()

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.image_features(x)
