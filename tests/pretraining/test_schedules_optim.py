"""Learning-rate schedules and parameter groups against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from maco_cxr.runtime.optim import build_adamw, param_groups, vit_layer_id
from maco_cxr.runtime.schedules import lr_multiplier, set_learning_rate


def test_warmup_then_cosine() -> None:
    assert lr_multiplier(0, 10, 4) == 0.0
    assert lr_multiplier(1, 10, 4) == 0.25
    assert lr_multiplier(4, 10, 4) == 1.0
    assert lr_multiplier(7, 10, 4) == pytest.approx(0.5)  # half way through the cosine
    assert lr_multiplier(10, 10, 4) == pytest.approx(0.0)
    assert lr_multiplier(12, 10, 4) == pytest.approx(0.0)  # clamped past the end
    assert lr_multiplier(5, 10, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))


def test_other_schedules_and_options() -> None:
    assert lr_multiplier(0, 10, 2, warmup_start=0.1) == pytest.approx(0.1)
    assert lr_multiplier(1, 10, 2, warmup_start=0.1) == pytest.approx(0.55)
    assert lr_multiplier(6, 10, 2, "poly", power=2.0) == pytest.approx(0.25)
    assert lr_multiplier(10, 10, 0, "cosine", final=0.01) == pytest.approx(0.01)
    assert lr_multiplier(9, 10, 2, "constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(5, 10, 2, "linear")  # type: ignore[arg-type]


def test_set_learning_rate_uses_base_lr_and_scale() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr=0.2)
    set_learning_rate(optimizer, 0.5)
    set_learning_rate(optimizer, 0.5)  # idempotent: always from base_lr
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.05])


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
        self.patch_embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(2)])
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)
        self.scale = nn.Parameter(torch.ones(()))


def test_no_decay_on_vectors_norms_and_named_parameters() -> None:
    groups = param_groups(_Tiny(), 0.05, no_decay_names={"pos_embed"})
    by_name = {name: group["weight_decay"] for group in groups for name in group["names"]}
    assert by_name == {
        "pos_embed": 0.0,
        "patch_embed.weight": 0.05,
        "patch_embed.bias": 0.0,
        "blocks.0.0.weight": 0.05,
        "blocks.0.0.bias": 0.0,
        "blocks.0.1.weight": 0.0,
        "blocks.0.1.bias": 0.0,
        "blocks.1.0.weight": 0.05,
        "blocks.1.0.bias": 0.0,
        "blocks.1.1.weight": 0.0,
        "blocks.1.1.bias": 0.0,
        "head.weight": 0.05,
        "head.bias": 0.0,
        "scale": 0.0,
    }
    assert all(group["lr_scale"] == 1.0 for group in groups)


def test_layer_decay_scales() -> None:
    assert [
        vit_layer_id(n, 2)
        for n in ("visual.pos_embed", "patch_embed.proj.weight", "blocks.0.x", "backbone.blocks.1.y", "head.weight")
    ] == [0, 0, 1, 2, 3]
    groups = param_groups(_Tiny(), 0.05, layer_decay=0.5, num_layers=2)
    scales = {name: group["lr_scale"] for group in groups for name in group["names"]}
    assert scales["pos_embed"] == 0.125 and scales["blocks.0.0.weight"] == 0.25
    assert scales["blocks.1.0.bias"] == 0.5 and scales["head.weight"] == 1.0


def test_build_adamw_on_cpu_is_foreach() -> None:
    model = _Tiny()
    optimizer = build_adamw(param_groups(model, 0.05), 1e-3, (0.9, 0.95), torch.device("cpu"))
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["foreach"] is True
    assert not optimizer.defaults["fused"]
