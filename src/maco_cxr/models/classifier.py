"""Classification head on a MaCo ViT, as MAE/MRM global-pool fine-tuning builds it.

ViT -> mean of the patch tokens after the last block (CLS excluded) -> LayerNorm (eps 1e-6)
-> linear head (trunc-normal std 2e-5, bias 0), one logit per class; the encoder's own final
LayerNorm is replaced by the norm after pooling (``docs/protocols.md`` section 4).
"""

from __future__ import annotations

import torch
from torch import nn

from maco_cxr.errors import ConfigError
from maco_cxr.models.vit import MaskedViT

__all__ = ["ClassifierModel"]


class ClassifierModel(nn.Module):
    """``forward`` takes normalised float ``[N, 3, H, W]`` (H, W multiples of the patch), or
    pooled features ``[N, D]``, and returns logits ``[N, num_classes]``."""

    def __init__(self, backbone: MaskedViT, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError("a classifier needs at least one class")
        self.backbone = backbone
        self.backbone.norm = nn.Identity()
        self.fc_norm = nn.LayerNorm(backbone.embed_dim, eps=1e-6)
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    @property
    def img_size(self) -> int:
        return self.backbone.config.img_size

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens after the last block ``[N, D]`` (CLS excluded)."""
        return self.backbone.forward_features(x)[:, 1:].mean(dim=1)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, K]`` of normalised images ``[N, 3, H, W]``, or of pooled features
        ``[N, D]`` (a linear probe on cached features trains through the same forward)."""
        return self.forward_head(x if x.ndim == 2 else self.pool(x))
