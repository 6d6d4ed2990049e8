"""The image encoder of a MaCo model as a standalone backbone for downstream heads.

Fine-tuning needs a fresh :class:`MaskedViT` at its own input size (224 for classification,
512 for segmentation, 1024 for detection) and drop-path rate, with the pre-trained weights
copied in by name. The copy is explicit (``visual.<name>`` of the MaCo model -> ``<name>`` of
the backbone) and every backbone tensor must arrive: the official detection code passed its
checkpoint without key matching and so never loaded MaCo weights (docs/protocols.md section 6); here a
missing or mis-shaped tensor is an error and the :class:`LoadReport` lists what was copied.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.families import split_model_spec
from maco_cxr.hub import LoadReport, load
from maco_cxr.models.config import VisionConfig
from maco_cxr.models.config import preset as config_preset
from maco_cxr.models.vit import MaskedViT, resample_pos_embed

__all__ = ["VISUAL_PREFIX", "backbone_key_map", "load_backbone"]

logger = logging.getLogger(__name__)

VISUAL_PREFIX = "visual."


def backbone_key_map(source_keys: list[str], backbone: MaskedViT) -> dict[str, str]:
    """Backbone tensor name -> MaCo model tensor name (``visual.`` + name) for every backbone
    tensor; raises :class:`CheckpointError` naming the tensors the source lacks."""
    mapping = {name: VISUAL_PREFIX + name for name in backbone.state_dict()}
    available = set(source_keys)
    missing = sorted(src for src in mapping.values() if src not in available)
    if missing:
        raise CheckpointError(
            f"the MaCo model lacks image-encoder tensors {missing[:10]}; it cannot "
            "initialise the backbone (is it a MaCo checkpoint?)"
        )
    return mapping


def _copy_weights(backbone: MaskedViT, source: dict[str, torch.Tensor], origin: str) -> LoadReport:
    """Copy ``visual.*`` tensors into ``backbone``; the position table is resampled to its grid."""
    mapping = backbone_key_map(list(source), backbone)
    target = backbone.state_dict()
    grid = backbone.config.grid_size
    state: dict[str, torch.Tensor] = {}
    for name, src_name in mapping.items():
        value = source[src_name]
        if name == "pos_embed" and value.shape != target[name].shape:
            old = int(round((value.shape[1] - 1) ** 0.5))
            logger.info(
                "%s: position embedding resampled bicubically from %dx%d to %dx%d", origin, old, old, grid, grid
            )
            value = resample_pos_embed(value, (grid, grid))
        if value.shape != target[name].shape:
            raise CheckpointError(
                f"{origin}: tensor {src_name} has shape {tuple(value.shape)}, the "
                f"backbone's {name} needs {tuple(target[name].shape)}"
            )
        state[name] = value
    backbone.load_state_dict(state, strict=True)
    used = set(mapping.values())
    return LoadReport(
        source=origin, loaded=sorted(mapping.values()), ignored=sorted(k for k in source if k not in used), missing=[]
    )


def load_backbone(
    source: str | Path | None,
    *,
    preset: str = "tiny",
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    text_heads: int | None = None,
    vision_heads: int | None = None,
) -> tuple[MaskedViT, LoadReport | None]:
    """A fresh :class:`MaskedViT` initialised from a MaCo model, or randomly.

    ``source``: this package's model directory, an official ``maco.pth`` (head counts as for
    :func:`maco_cxr.hub.load`), or None for random initialisation from ``preset``.
    ``img_size`` (default: the source's) sets the input size, the position table resampled
    bicubically; ``drop_path_rate`` is the stochastic depth of the last block. Returns the
    backbone in train mode and the report of the copied tensors (``loaded`` names the source's
    ``visual.*`` tensors, ``ignored`` the rest of the MaCo model); None for random init.
    """
    if source is None:
        vision = _with_size(config_preset(preset).vision, img_size, drop_path_rate)
        return MaskedViT(vision), None
    family, _ = split_model_spec(str(source))
    if family != "maco":
        raise ConfigError(
            f"model.source={source}: segmentation and detection build on MaCo's ViT (UperNet, ViTDet); a {family} "
            "encoder is fine-tuned or linearly probed through classification (maco-cxr finetune)"
        )
    model = load(source, text_heads, vision_heads=vision_heads)
    vision = _with_size(model.config.vision, img_size, drop_path_rate)
    backbone = MaskedViT(vision)
    report = _copy_weights(backbone, model.state_dict(), str(source))
    logger.info(report.summary())
    return backbone.train(), report


def _with_size(vision: VisionConfig, img_size: int | None, drop_path_rate: float) -> VisionConfig:
    return dataclasses.replace(vision, img_size=img_size or vision.img_size, drop_path_rate=drop_path_rate)
