"""Tiny fine-tuned model folders (random weights, 64 px) for the tests that load them back."""

from __future__ import annotations

from pathlib import Path

import torch

from maco_cxr.models.config import IMAGE_MEAN, IMAGE_STD, VisionConfig
from maco_cxr.models.vit import MaskedViT
from maco_cxr.tasks.finetune.model_io import save_finetuned

SIZE = 64


def tiny_vision() -> VisionConfig:
    return VisionConfig(img_size=SIZE, patch_size=16, embed_dim=32, depth=2, num_heads=2)


def save_tiny_segmenter(path: Path, classes: tuple[str, ...] = ("lung",)) -> None:
    from maco_cxr.models.upernet import UperNetConfig, UperNetSegmenter
    from maco_cxr.tasks.finetune.segmentation import FinetunedSegmenter

    torch.manual_seed(0)
    head = UperNetConfig(channels=16, pool_scales=(1, 2), aux_channels=0, blocks=(0, 0, 1, 1))
    preprocessing = {"image_size": SIZE, "mean": IMAGE_MEAN, "std": IMAGE_STD, "threshold": 0.5}
    save_finetuned(FinetunedSegmenter(UperNetSegmenter(MaskedViT(tiny_vision()), head), classes, preprocessing), path)


def save_tiny_detector(path: Path, classes: tuple[str, ...] = ("nodule",)) -> None:
    from maco_cxr.models.vitdet import ViTDetConfig, build_vitdet
    from maco_cxr.tasks.finetune.detection import FinetunedDetector

    torch.manual_seed(0)
    config = ViTDetConfig(
        out_channels=16, anchor_sizes=(8, 16, 32, 64, 128), box_head_convs=1, box_head_fc=16, box_detections_per_img=5
    )
    net = build_vitdet(MaskedViT(tiny_vision()), config, SIZE, IMAGE_MEAN, IMAGE_STD)
    save_finetuned(
        FinetunedDetector(net, classes, {"image_size": SIZE, "mean": IMAGE_MEAN, "std": IMAGE_STD}, config), path
    )
