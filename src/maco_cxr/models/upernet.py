"""UperNet segmentation head on a plain ViT, as in the BEiT/MAE/MaCo segmentation code.

The ViT is single-scale (stride 16), so four of its blocks are turned into a pyramid by
rescaling (BEiT's ``fpn1..fpn4``): x4 by two transposed convs with BatchNorm + GELU between
them, x2 by one transposed conv, x1 as is, x0.5 by 2x2 max pooling (strides 4/8/16/32).
UperNet (PSP pooling on the coarsest level + FPN top-down path, as mmseg's ``UPerHead``)
fuses them; an auxiliary FCN head reads the third level. Conv blocks are mmseg's
``ConvModule`` defaults: conv without bias, BatchNorm, ReLU.

The output is one logit channel (foreground vs background, sigmoid): the MaCo datasets have
a single foreground class, and the loss (sigmoid focal + Dice on the foreground) is defined
on that channel. Pixels whose target equals ``ignore_index`` (letterbox padding) are left out
of both losses.

Deviation from the official backbone: no LayerScale and no relative position biases (both
start as identities there); attention is global in every block, as in pre-training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from maco_cxr.errors import ConfigError
from maco_cxr.models.config import SegmentationLossWeights, UperNetConfig
from maco_cxr.models.vit import MaskedViT

__all__ = [
    "IGNORE_INDEX",
    "PAPER_BLOCKS",
    "FCNHead",
    "FeatureRescale",
    "PyramidPooling",
    "SegmentationLossWeights",
    "SegmentationOutput",
    "UperHead",
    "UperNetConfig",
    "UperNetSegmenter",
    "binary_dice_loss",
    "feature_blocks",
    "masked_focal_loss",
    "segmentation_loss",
]

IGNORE_INDEX = 255
PAPER_BLOCKS = (4, 6, 8, 12)  # 1-based blocks of the 12-block ViT-B the paper reads


def feature_blocks(depth: int, paper_blocks: Sequence[int] = PAPER_BLOCKS, paper_depth: int = 12) -> tuple[int, ...]:
    """0-based block indices for a ViT of ``depth`` blocks.

    Rule: 1-based block ``b`` of the 12-block paper model maps to ``max(1, round_half_up(b *
    depth / 12))``, so depth 12 gives blocks 4, 6, 8, 12, depth 6 gives 2, 3, 4, 6 and depth 4
    gives 1, 2, 3, 4 (returned 0-based: 0, 1, 2, 3). The last block is always the last level.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return tuple(max(1, math.floor(b * depth / paper_depth + 0.5)) - 1 for b in paper_blocks)


@dataclass
class SegmentationOutput:
    """Logits at stride 4 ``[N, C, H/4, W/4]``; ``aux_logits`` (third level, stride 16) only in training."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class FeatureRescale(nn.Module):
    """Four stride-16 maps ``[N, D, h, w]`` -> strides 4, 8, 16, 32 (BEiT's fpn1..fpn4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, stride=2)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        f4, f8, f16, f32 = features
        return [self.up4(f4), self.up2(f8), f16, self.down2(f32)]


class PyramidPooling(nn.Module):
    """PSPNet pooling: average-pool to each scale, 1x1 conv, upsample back (mmseg's PPM)."""

    def __init__(self, in_ch: int, channels: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_bn_relu(in_ch, channels, 1)) for s in scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_resize(stage(x), x.shape[2:]) for stage in self.stages]


class UperHead(nn.Module):
    """UperNet decode head: PPM on the last level, FPN top-down fusion, concat, classify."""

    def __init__(
        self, in_channels: Sequence[int], channels: int, pool_scales: Sequence[int], num_classes: int, dropout: float
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.ppm_bottleneck = _conv_bn_relu(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(_conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = _conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        top = levels[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, levels[:-1])]
        laterals.append(self.ppm_bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary head: one 3x3 conv block, dropout, 1x1 classifier (mmseg FCNHead, num_convs=1)."""

    def __init__(self, in_ch: int, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(in_ch, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UperNetSegmenter(nn.Module):
    """ViT backbone + feature rescaling + UperNet (+ auxiliary FCN while training)."""

    def __init__(self, backbone: MaskedViT, config: UperNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UperNetConfig()
        self.backbone = backbone
        self.backbone.norm = nn.Identity()  # features are read before the final norm: it would be unused
        self.feature_indices = self.config.blocks or feature_blocks(len(backbone.blocks))
        depth = len(backbone.blocks)
        if any(not 0 <= b < depth for b in self.feature_indices):
            raise ConfigError(f"head.blocks {self.feature_indices} are not all in 0..{depth - 1} (0-based)")
        dim = backbone.embed_dim
        channels = self.config.channels or dim
        aux_channels = self.config.aux_channels if self.config.aux_channels is not None else max(1, dim // 3)
        self.rescale = FeatureRescale(dim)
        self.decode_head = UperHead(
            [dim] * 4, channels, self.config.pool_scales, self.config.num_classes, self.config.dropout
        )
        self.aux_head = (
            FCNHead(dim, aux_channels, self.config.num_classes, self.config.dropout) if aux_channels else None
        )

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        """x ``[N, 3, H, W]`` normalised, H and W divisible by 32."""
        levels = self.rescale(self.backbone.forward_intermediates(x, self.feature_indices, norm=False))
        logits = self.decode_head(levels)
        aux = self.aux_head(levels[self.config.aux_level]) if self.aux_head is not None and self.training else None
        return SegmentationOutput(logits=logits, aux_logits=aux)


def masked_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Sigmoid focal loss ``-a_t (1 - p_t)^gamma log p_t`` averaged over the valid pixels.

    ``logits`` ``[N, H, W]`` (one foreground channel), ``target`` ``[N, H, W]`` in {0, 1,
    ignore_index}; ``a_t = alpha`` on foreground, ``1 - alpha`` on background. Zero when
    every pixel is ignored.
    """
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    per_pixel = sigmoid_focal_loss(
        logits[valid], target[valid].to(logits.dtype), alpha=alpha, gamma=gamma, reduction="none"
    )
    return per_pixel.mean()


def binary_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-3, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Soft Dice loss on the foreground probability, per image, averaged over the batch.

    ``1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps)`` over the valid pixels of each
    image (mmseg's ``DiceLoss`` with ``naive_dice=False``, eps 1e-3): an empty target drives
    the prediction towards empty, as the per-image Dice metric rewards.
    """
    valid = (target != ignore_index).to(logits.dtype)
    prob = torch.sigmoid(logits.float()) * valid
    truth = (target == 1).to(prob.dtype)
    dims = tuple(range(1, prob.ndim))
    inter = (prob * truth).sum(dims)
    denom = (prob * prob).sum(dims) + truth.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(
    output: SegmentationOutput,
    target: torch.Tensor,
    weights: SegmentationLossWeights = SegmentationLossWeights(),  # noqa: B008 - frozen
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Weighted focal + Dice losses of both heads; logits are resized to the target first.

    ``target`` ``[N, H, W]`` integer in {0, 1, ignore_index}. Returns the parts and ``loss``.
    """
    parts: dict[str, torch.Tensor] = {}
    heads = [("", output.logits, weights.focal, weights.dice)]
    if output.aux_logits is not None:
        heads.append(("aux_", output.aux_logits, weights.aux_focal, weights.aux_dice))
    total = torch.zeros((), device=target.device)
    for prefix, logits, w_focal, w_dice in heads:
        if logits.shape[1] != 1:
            raise ValueError(f"segmentation_loss expects one foreground logit channel, got {logits.shape[1]}")
        full = _resize(logits.float(), target.shape[-2:])[:, 0]
        focal = masked_focal_loss(full, target, gamma=weights.gamma, alpha=weights.alpha, ignore_index=ignore_index)
        dice = binary_dice_loss(full, target, ignore_index=ignore_index)
        parts[f"{prefix}focal"], parts[f"{prefix}dice"] = focal.detach(), dice.detach()
        total = total + w_focal * focal + w_dice * dice
    parts["loss"] = total
    return parts
