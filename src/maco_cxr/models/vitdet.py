"""ViTDet-style detector: a plain ViT, a simple feature pyramid, torchvision's Faster R-CNN.

The simple feature pyramid (Li et al., "Exploring Plain Vision Transformer Backbones for
Object Detection", ECCV 2022) builds strides 4, 8, 16, 32 from the LAST block's stride-16 map
alone: two transposed convs (LayerNorm + GELU between), one transposed conv, identity, 2x2
max pooling; each level then gets a 1x1 and a 3x3 conv with channel LayerNorm, and p6 is a
stride-2 subsampling of p5 (detectron2's ``LastLevelMaxPool``) for the largest anchors.

Detector choice: Faster R-CNN, not the official Mask R-CNN with the box as its mask. The
metric is box AP, and a box-shaped mask target adds only a mask head regressing the box;
the RPN (2 convs), the 4-conv + 1-fc box head with LayerNorm and the one-size-per-level
anchors follow ViTDet's settings. Deviation from ViTDet's backbone: attention is global in
every block (as in MaCo pre-training) instead of windowed with relative positions.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from maco_cxr.errors import ConfigError
from maco_cxr.models.config import PAPER_ANCHOR_SIZES, ViTDetConfig
from maco_cxr.models.vit import MaskedViT

__all__ = [
    "PAPER_ANCHOR_SIZES",
    "LayerNorm2d",
    "SimpleFeaturePyramid",
    "ViTDetBackbone",
    "ViTDetConfig",
    "build_vitdet",
]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``[N, C, H, W]`` map (detectron2's "LN" in ViTDet)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _rescale(dim: int, scale: float) -> tuple[list[nn.Module], int]:
    if scale == 4.0:
        return [
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        ], dim // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
    if scale == 1.0:
        return [], dim
    return [nn.MaxPool2d(2, stride=2)], dim


class SimpleFeaturePyramid(nn.Module):
    """Stride-16 map ``[N, D, h, w]`` -> OrderedDict ``p2..p5`` (+ ``p6``) of ``out_channels`` maps."""

    def __init__(
        self,
        dim: int,
        out_channels: int = 256,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_pool: bool = True,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        if dim % 4:
            raise ConfigError(
                f"the simple feature pyramid halves the width twice; embed dim {dim} is not divisible by 4"
            )
        self.names = [f"p{int(math.log2(patch_size / s))}" for s in scales]
        self.stages = nn.ModuleList()
        for scale in scales:
            layers, width = _rescale(dim, scale)
            layers += [
                nn.Conv2d(width, out_channels, 1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ]
            self.stages.append(nn.Sequential(*layers))
        self.top_pool = top_pool
        if top_pool:
            self.names.append(f"p{int(self.names[-1][1:]) + 1}")

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = [stage(x) for stage in self.stages]
        if self.top_pool:
            maps.append(F.max_pool2d(maps[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.names, maps))


class ViTDetBackbone(nn.Module):
    """torchvision detection backbone: ViT last block (no final norm) -> simple feature pyramid."""

    def __init__(
        self,
        vit: MaskedViT,
        out_channels: int = 256,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_pool: bool = True,
    ) -> None:
        super().__init__()
        self.vit = vit
        self.vit.norm = nn.Identity()  # the pyramid reads the last block before the final norm
        self.pyramid = SimpleFeaturePyramid(vit.embed_dim, out_channels, scales, top_pool, vit.patch_size)
        self.out_channels = out_channels

    @property
    def level_names(self) -> list[str]:
        return list(self.pyramid.names)

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{name}" for name in self.vit.no_weight_decay()}

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """x ``[N, 3, H, W]`` normalised, H and W divisible by 32."""
        return self.pyramid(self.vit.forward_intermediates(x, [-1], norm=False)[0])


class SeededSampler(BalancedPositiveNegativeSampler):
    """torchvision's positive/negative sampler, drawing each image's sample from its own seed.

    torchvision draws every image of a batch from the one global generator in turn, so the
    anchors and proposals an image trains on depend on the images before it in the batch,
    and two processes sharing a batch could never train what one process does. Here image
    ``i`` of the next batch draws from a generator seeded by ``seeds[i]`` (set with
    :func:`set_sampling_seeds`; the fine-tuning loop derives them from each sample's draw id),
    so a sample's training signal is a function of the sample alone. Without seeds it falls
    back to torchvision's behaviour.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        super().__init__(batch_size_per_image, positive_fraction)
        self.seeds: list[int] | None = None

    def __call__(self, matched_idxs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.seeds is None:
            return super().__call__(matched_idxs)
        if len(self.seeds) != len(matched_idxs):
            raise ValueError(f"{len(self.seeds)} sampling seeds for {len(matched_idxs)} images")
        pos_idx, neg_idx = [], []
        for matched, seed in zip(matched_idxs, self.seeds):
            generator = torch.Generator().manual_seed(seed)
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            chosen_pos = positive[torch.randperm(positive.numel(), generator=generator)[:num_pos].to(positive.device)]
            chosen_neg = negative[torch.randperm(negative.numel(), generator=generator)[:num_neg].to(negative.device)]
            pos_mask = torch.zeros_like(matched, dtype=torch.uint8)
            neg_mask = torch.zeros_like(matched, dtype=torch.uint8)
            pos_mask[chosen_pos] = 1
            neg_mask[chosen_neg] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
        return pos_idx, neg_idx


def set_sampling_seeds(detector: FasterRCNN, seeds: Sequence[int] | None) -> None:
    """Seeds for the RPN and box-head samplers of the next training batch (one per image; the
    RPN and the box head get distinct streams); None restores torchvision's global draws."""
    detector.rpn.fg_bg_sampler.seeds = None if seeds is None else [2 * int(s) for s in seeds]
    detector.roi_heads.fg_bg_sampler.seeds = None if seeds is None else [2 * int(s) + 1 for s in seeds]


def build_vitdet(
    vit: MaskedViT, config: ViTDetConfig, image_size: int, pixel_mean: float, pixel_std: float
) -> FasterRCNN:
    """Faster R-CNN on a ViT: the detector takes float ``[3, S, S]`` images in [0, 1] of side
    ``image_size`` (already letterboxed or cropped; its own resize is then the identity) and
    normalises them with ``pixel_mean`` / ``pixel_std`` (fractions of 255)."""
    if image_size % 32:
        raise ConfigError(f"image_size {image_size} must be a multiple of 32 (pyramid stride)")
    channels = config.out_channels or max(16, 16 * round(vit.embed_dim / 48))
    fc = config.box_head_fc or 4 * channels
    backbone = ViTDetBackbone(vit, channels, config.scales, config.top_pool)
    names = backbone.level_names
    anchors = AnchorGenerator(
        sizes=tuple((a,) for a in config.anchors_for(image_size)), aspect_ratios=(config.aspect_ratios,) * len(names)
    )
    rpn_head = RPNHead(channels, len(config.aspect_ratios), conv_depth=config.rpn_conv_depth)
    pooled = [n for n in names if n != "p6"] if config.top_pool else names
    box_head = FastRCNNConvFCHead((channels, 7, 7), [channels] * config.box_head_convs, [fc], norm_layer=LayerNorm2d)
    detector = FasterRCNN(
        backbone,
        min_size=image_size,
        max_size=image_size,
        image_mean=[pixel_mean] * 3,
        image_std=[pixel_std] * 3,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=pooled, output_size=7, sampling_ratio=0),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(fc, config.num_classes),
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.box_detections_per_img,
    )
    rpn_sampler, box_sampler = detector.rpn.fg_bg_sampler, detector.roi_heads.fg_bg_sampler
    detector.rpn.fg_bg_sampler = SeededSampler(rpn_sampler.batch_size_per_image, rpn_sampler.positive_fraction)
    detector.roi_heads.fg_bg_sampler = SeededSampler(box_sampler.batch_size_per_image, box_sampler.positive_fraction)
    return detector
