"""UperNet head: block mapping, pyramid shapes, the two losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from maco_cxr.errors import ConfigError
from maco_cxr.models.config import VisionConfig
from maco_cxr.models.upernet import (
    IGNORE_INDEX,
    SegmentationLossWeights,
    SegmentationOutput,
    UperNetConfig,
    UperNetSegmenter,
    binary_dice_loss,
    feature_blocks,
    masked_focal_loss,
    segmentation_loss,
)
from maco_cxr.models.vit import MaskedViT


def _tiny(depth: int = 4, size: int = 64) -> UperNetSegmenter:
    torch.manual_seed(0)
    vit = MaskedViT(VisionConfig(img_size=size, embed_dim=32, depth=depth, num_heads=2))
    return UperNetSegmenter(vit, UperNetConfig(channels=16, aux_channels=8))


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (12, (3, 5, 7, 11)),  # the paper's 1-based blocks 4, 6, 8, 12
        (6, (1, 2, 3, 5)),
        (4, (0, 1, 2, 3)),
        (2, (0, 0, 0, 1)),
        (1, (0, 0, 0, 0)),
    ],
)
def test_feature_blocks_maps_paper_blocks_proportionally(depth: int, expected: tuple[int, ...]) -> None:
    assert feature_blocks(depth) == expected


def test_pyramid_levels_have_strides_4_8_16_32() -> None:
    model = _tiny().eval()
    x = torch.randn(2, 3, 64, 96)
    features = model.backbone.forward_intermediates(x, model.feature_indices)
    levels = model.rescale(features)
    assert [tuple(level.shape) for level in levels] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    out = model(x)
    assert out.logits.shape == (2, 1, 16, 24)
    assert out.aux_logits is None  # the auxiliary head only runs in training


def test_aux_head_reads_the_third_level_in_training() -> None:
    model = _tiny().train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.aux_logits is not None and out.aux_logits.shape == (2, 1, 4, 4)


def test_head_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^blocks: need 4 block indices"):
        UperNetConfig(blocks=(1, 2))
    vit = MaskedViT(VisionConfig(img_size=32, embed_dim=32, depth=2, num_heads=2))
    with pytest.raises(ConfigError, match="head.blocks"):
        UperNetSegmenter(vit, UperNetConfig(blocks=(0, 1, 2, 3)))


def test_focal_loss_matches_hand_computed_values() -> None:
    # p = sigmoid(ln 3) = 0.75. Foreground: -0.5 * 0.25^2 * ln 0.75; background (p_t = 0.25):
    # -0.5 * 0.75^2 * ln 0.25. The third pixel is ignored.
    logits = torch.full((1, 1, 3), math.log(3.0))
    target = torch.tensor([[[1, 0, IGNORE_INDEX]]])
    fg = -0.5 * 0.25**2 * math.log(0.75)
    bg = -0.5 * 0.75**2 * math.log(0.25)
    assert masked_focal_loss(logits, target).item() == pytest.approx((fg + bg) / 2, rel=1e-5)
    # alpha weights the classes: alpha = 0.25 -> a_t = 0.25 on foreground, 0.75 on background
    weighted = masked_focal_loss(logits, target, alpha=0.25)
    assert weighted.item() == pytest.approx((fg / 2 + 1.5 * bg) / 2, rel=1e-5)


def test_dice_loss_matches_hand_computed_value() -> None:
    # p = 0.75, 0.25 (and an ignored pixel at 0.75); t = 1, 0.
    # 1 - (2 * 0.75 + eps) / (0.75^2 + 0.25^2 + 1 + eps) with eps = 1e-3
    logits = torch.tensor([[[math.log(3.0), -math.log(3.0), math.log(3.0)]]])
    target = torch.tensor([[[1, 0, IGNORE_INDEX]]])
    expected = 1 - (1.5 + 1e-3) / (0.625 + 1 + 1e-3)
    assert binary_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_dice_loss_is_per_image_and_pushes_empty_targets_to_empty() -> None:
    target = torch.zeros(2, 1, 4, dtype=torch.long)
    target[0, 0, :2] = 1
    logits = torch.full((2, 1, 4), -20.0)
    logits[0, 0, :2] = 20.0
    assert binary_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    logits[1] = 20.0  # image 2 has no foreground but predicts it everywhere
    assert binary_dice_loss(logits, target).item() == pytest.approx(0.5 * (1 - 1e-3 / (4 + 1e-3)), rel=1e-4)


def test_ignored_pixels_get_no_gradient_and_do_not_change_the_loss() -> None:
    target = torch.randint(0, 2, (2, 8, 8))
    target[:, :, 5:] = IGNORE_INDEX
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    out = SegmentationOutput(logits=logits, aux_logits=None)
    loss = segmentation_loss(out, target)["loss"]
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:, 0, :, 5:] == 0)
    assert torch.any(logits.grad[:, 0, :, :5] != 0)
    changed = logits.detach().clone()
    changed[:, 0, :, 5:] = 100.0
    again = segmentation_loss(SegmentationOutput(changed), target)["loss"]
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_segmentation_loss_weights_the_heads_as_the_paper() -> None:
    target = torch.tensor([[[1, 0], [0, 1]]])
    main = torch.full((1, 1, 2, 2), 0.3)
    aux = torch.full((1, 1, 2, 2), -0.2)
    parts = segmentation_loss(SegmentationOutput(main, aux), target)
    focal, dice = masked_focal_loss(main[:, 0], target), binary_dice_loss(main[:, 0], target)
    aux_focal, aux_dice = masked_focal_loss(aux[:, 0], target), binary_dice_loss(aux[:, 0], target)
    expected = 2.0 * focal + 1.0 * dice + 0.8 * aux_focal + 0.4 * aux_dice
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert SegmentationLossWeights() == SegmentationLossWeights(2.0, 1.0, 0.8, 0.4, 2.0, 0.5)


def test_logits_are_resized_to_the_target() -> None:
    target = torch.ones(1, 8, 8, dtype=torch.long)
    low = torch.full((1, 1, 2, 2), 1.0)
    parts = segmentation_loss(SegmentationOutput(low), target)
    assert parts["focal"].item() == pytest.approx(masked_focal_loss(torch.ones(1, 8, 8), target).item(), rel=1e-6)


def test_loss_decreases_on_a_fixed_batch() -> None:
    model = _tiny(depth=2).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 16:40, 20:44] = 1
    target[:, :, :4] = IGNORE_INDEX
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = segmentation_loss(model(x), target)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]
