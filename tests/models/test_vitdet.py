"""ViTDet pieces: simple feature pyramid shapes, anchors, the assembled Faster R-CNN."""

from __future__ import annotations

import pytest
import torch

from maco_cxr.errors import ConfigError
from maco_cxr.models.config import VisionConfig
from maco_cxr.models.vit import MaskedViT
from maco_cxr.models.vitdet import LayerNorm2d, SimpleFeaturePyramid, ViTDetBackbone, ViTDetConfig, build_vitdet


def _vit(size: int = 64, depth: int = 2) -> MaskedViT:
    torch.manual_seed(0)
    return MaskedViT(VisionConfig(img_size=size, embed_dim=32, depth=depth, num_heads=2))


def _small_config(**changes: object) -> ViTDetConfig:
    values = dict(
        out_channels=16,
        box_head_convs=1,
        box_head_fc=32,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        box_batch_size_per_image=32,
    )
    values.update(changes)
    return ViTDetConfig(**values)  # type: ignore[arg-type]


def test_pyramid_levels_and_names() -> None:
    backbone = ViTDetBackbone(_vit(), out_channels=16)
    maps = backbone(torch.randn(2, 3, 64, 128))
    assert list(maps) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(m.shape) for m in maps.values()] == [
        (2, 16, 16, 32),
        (2, 16, 8, 16),
        (2, 16, 4, 8),
        (2, 16, 2, 4),
        (2, 16, 1, 2),
    ]
    assert backbone.out_channels == 16


def test_pyramid_without_top_pool_and_width_check() -> None:
    pyramid = SimpleFeaturePyramid(32, 8, scales=(2.0, 1.0), top_pool=False)
    maps = pyramid(torch.randn(1, 32, 4, 4))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {"p3": (1, 8, 8, 8), "p4": (1, 8, 4, 4)}
    with pytest.raises(ConfigError, match="divisible by 4"):
        SimpleFeaturePyramid(30)


def test_pyramid_reads_the_last_block_without_the_final_norm() -> None:
    backbone = ViTDetBackbone(_vit(), out_channels=16).eval()
    # the final norm is not used, so it is not kept (DDP would find its parameters without gradient)
    assert isinstance(backbone.vit.norm, torch.nn.Identity)
    assert not any(name.startswith("vit.norm.") for name in backbone.state_dict())
    x = torch.randn(1, 3, 64, 64)
    before = backbone(x)["p4"]
    with torch.no_grad():
        backbone.vit.blocks[-1].mlp.fc2.bias.add_(1.0)
    assert not torch.allclose(before, backbone(x)["p4"])  # the last block feeds the pyramid


def test_layernorm2d_normalises_channels_per_position() -> None:
    norm = LayerNorm2d(4)
    x = torch.randn(2, 4, 3, 5) * 7 + 3
    y = norm(x)
    assert torch.allclose(y.mean(dim=1), torch.zeros(2, 3, 5), atol=1e-5)
    assert torch.allclose(y.var(dim=1, unbiased=False), torch.ones(2, 3, 5), atol=1e-3)


def test_anchor_sizes_scale_with_the_input_and_are_checked() -> None:
    assert ViTDetConfig().anchors_for(1024) == (32.0, 64.0, 128.0, 256.0, 512.0)
    assert ViTDetConfig().anchors_for(128) == (4.0, 8.0, 16.0, 32.0, 64.0)
    assert ViTDetConfig(top_pool=False).anchors_for(512) == (16.0, 32.0, 64.0, 128.0)
    assert ViTDetConfig(anchor_sizes=(1, 2, 3, 4, 5)).anchors_for(64) == (1.0, 2.0, 3.0, 4.0, 5.0)
    with pytest.raises(ConfigError, match="anchor_sizes"):
        ViTDetConfig(anchor_sizes=(8, 16))
    with pytest.raises(ConfigError, match="num_classes"):
        ViTDetConfig(num_classes=1)
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_vitdet(_vit(48), _small_config(), 48, 0.5, 0.25)


def test_detector_trains_and_predicts_in_input_pixels() -> None:
    detector = build_vitdet(_vit(), _small_config(), 64, 0.4978, 0.2449)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    detector.train()
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2
    for pred in out:
        assert pred["boxes"].shape[1] == 4 and pred["scores"].shape[0] == pred["boxes"].shape[0]
        if len(pred["boxes"]):
            assert pred["boxes"].min() >= 0 and pred["boxes"].max() <= 64
    # the detector's own resize is the identity for inputs of side image_size
    transformed, _ = detector.transform(images)
    assert transformed.tensors.shape == (2, 3, 64, 64)


def test_detector_normalises_with_the_given_statistics() -> None:
    detector = build_vitdet(_vit(), _small_config(), 64, 0.5, 0.25).eval()
    image = torch.full((3, 64, 64), 0.75)
    transformed, _ = detector.transform([image])
    assert torch.allclose(transformed.tensors, torch.ones(1, 3, 64, 64))


def test_detector_loss_decreases_on_a_fixed_batch() -> None:
    detector = build_vitdet(_vit(), _small_config(), 64, 0.4978, 0.2449).train()
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=generator) * 0.2 for _ in range(2)]
    for image in images:
        image[:, 16:40, 12:36] += 0.7  # a bright square to find
    targets = [{"boxes": torch.tensor([[12.0, 16.0, 36.0, 40.0]]), "labels": torch.tensor([1])} for _ in images]
    optimizer = torch.optim.AdamW(detector.parameters(), lr=5e-4)
    totals = []
    for step in range(10):
        torch.manual_seed(step)  # the RPN/RoI samplers draw from the global generator
        loss = sum(detector(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < 0.7 * totals[0]
