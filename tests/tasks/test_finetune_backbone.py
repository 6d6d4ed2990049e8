"""load_backbone: the MaCo image encoder really arrives in the backbone (PROTOCOLS section 6)."""

from __future__ import annotations

import pytest
import torch

from maco_cxr.errors import CheckpointError
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.models.config import preset
from maco_cxr.models.vit import MaskedViT, resample_pos_embed
from maco_cxr.tasks.finetune.backbone import backbone_key_map, load_backbone

HEADS = {"text_heads": 2, "vision_heads": 4}


@pytest.fixture(scope="module")
def official(official_fixture_dir):
    path = official_fixture_dir / "maco.pth"
    return path, load(path, HEADS["text_heads"], vision_heads=HEADS["vision_heads"])


def test_random_init_follows_the_preset_and_requested_geometry():
    backbone, report = load_backbone(None, preset="tiny", img_size=64, drop_path_rate=0.2)
    tiny = preset("tiny").vision
    assert report is None
    assert (backbone.config.embed_dim, backbone.config.depth) == (tiny.embed_dim, tiny.depth)
    assert backbone.config.img_size == 64 and backbone.pos_embed.shape == (1, 1 + 16, tiny.embed_dim)
    assert backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert backbone.blocks[0].drop_path1.__class__.__name__ == "Identity"


def test_official_checkpoint_weights_arrive_in_every_tensor(official):
    path, source = official
    backbone, report = load_backbone(path, img_size=224, **HEADS)
    source_state = source.state_dict()
    torch.testing.assert_close(
        backbone.blocks[0].attn.qkv.weight, source.visual.blocks[0].attn.qkv.weight, rtol=0, atol=0
    )
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, source_state[f"visual.{name}"], rtol=0, atol=0)
    assert report.loaded == sorted(f"visual.{n}" for n in backbone.state_dict())
    assert report.missing == []
    assert "inverse_temperature" in report.ignored and any(k.startswith("text.") for k in report.ignored)
    assert not any(k.startswith("visual.") for k in report.ignored)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval().forward_features(x), source.visual.forward_features(x))


def test_new_input_size_resamples_the_position_table(official):
    path, source = official
    backbone, report = load_backbone(path, img_size=96, drop_path_rate=0.1, **HEADS)
    expected = resample_pos_embed(source.visual.pos_embed.detach(), (6, 6))
    assert backbone.pos_embed.shape == (1, 37, source.config.vision.embed_dim)
    torch.testing.assert_close(backbone.pos_embed.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(backbone.patch_embed.proj.weight, source.visual.patch_embed.proj.weight, rtol=0, atol=0)
    assert backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert backbone.forward_features(torch.randn(1, 3, 96, 96)).shape == (1, 37, 64)


def test_package_directory_round_trip(tmp_path):
    torch.manual_seed(3)
    model = create_model(preset("tiny"))
    save_pretrained(model, tmp_path / "m")
    backbone, report = load_backbone(tmp_path / "m")
    assert len(report.loaded) == len(backbone.state_dict())
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[f"visual.{name}"], rtol=0, atol=0)


def test_a_source_without_the_encoder_is_refused():
    backbone = MaskedViT(preset("tiny").vision)
    keys = [f"visual.{n}" for n in backbone.state_dict() if not n.startswith("blocks.3.")]
    with pytest.raises(CheckpointError, match=r"visual\.blocks\.3\."):
        backbone_key_map(keys, backbone)


def test_missing_source_path_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone(tmp_path / "nothing.pth")
