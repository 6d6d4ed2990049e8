"""Parameter groups: weight decay on matrices only, optional layer-wise lr decay for ViTs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn


def _skip_decay(name: str, param: torch.Tensor, no_decay_names: set[str]) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or name in no_decay_names


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer index for layer-wise lr decay: embeddings 0, block i -> i + 1, everything else
    (final norm, heads) ``num_layers + 1``. Works with any prefix (``visual.``, ``backbone.``)."""
    if re.search(r"(^|\.)(cls_token|pos_embed|patch_embed)", name):
        return 0
    match = re.search(r"(^|\.)blocks\.(\d+)\.", name)
    if match:
        return int(match.group(2)) + 1
    return num_layers + 1


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    no_decay_names: Iterable[str] = (),
    layer_decay: float | None = None,
    num_layers: int | None = None,
    layer_id: Callable[[str, int], int] = vit_layer_id,
) -> list[dict]:
    """Groups for AdamW/SGD: no decay on biases, norms, 1-D tensors and ``no_decay_names``;
    with ``layer_decay`` each group also gets ``lr_scale = layer_decay ** (L + 1 - layer)``."""
    skip = set(no_decay_names)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not _skip_decay(name, param, skip)
        layer = layer_id(name, num_layers) if layer_decay is not None and num_layers is not None else 0
        key = (layer, decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer) if layer_decay is not None and num_layers else 1.0
            groups[key] = {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_adamw(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel for all parameters), foreach elsewhere."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None, foreach=None if fused else True)
