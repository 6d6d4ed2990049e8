"""MRM loads as released and computes what MRM's own fine-tuning code computes (fixture made by
tests/assets/families/mrm/make_fixture.py from github.com/RL4M/MRM-pytorch@3730ba4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

import maco_cxr  # noqa: E402
from maco_cxr.errors import CheckpointError, ConfigError  # noqa: E402
from maco_cxr.families import load_family  # noqa: E402
from maco_cxr.families.mrm import MRM_MEAN, MRM_STD, mrm_input  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "families" / "mrm"
IMAGES = FIXTURE.parents[1] / "cxr-real" / "images"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "expected.npz"))


@pytest.fixture(scope="module")
def images(expected: dict[str, np.ndarray]) -> list[Path]:
    return [IMAGES / str(name) for name in expected["images"]]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_family(FIXTURE / "MRM.pth", "mrm")


def test_image_input_is_their_test_transform(images: list[Path], expected: dict[str, np.ndarray]) -> None:
    for path, crop in zip(images, expected["crops"]):
        ours = mrm_input(maco_cxr.read_image(path), 224)
        theirs = (torch.from_numpy(crop).float() / 255 - MRM_MEAN) / MRM_STD
        assert ours.shape == (3, 224, 224)
        torch.testing.assert_close(ours, theirs.expand(3, -1, -1), atol=1e-6, rtol=0)


def test_pooled_features_match_their_code(
    model: torch.nn.Module, images: list[Path], expected: dict[str, np.ndarray]
) -> None:
    assert model.family == "mrm" and model.capabilities == frozenset({"finetune"})
    assert (model.input_size, model.feature_dim, model.patch_grid) == (224, 48, None)
    features = maco_cxr.encode_images(model, images)
    np.testing.assert_allclose(features.numpy(), expected["features"], atol=1e-4, rtol=0)
    x = torch.stack([model.image_input(maco_cxr.read_image(p)) for p in images])
    pooled, local = model.embed(x)
    assert local is None
    torch.testing.assert_close(pooled, model.image_features(x))


def test_their_fine_tuned_file_and_a_larger_input(images: list[Path], expected: dict[str, np.ndarray]) -> None:
    tuned = load_family(FIXTURE / "mrm_finetuned.bin", "mrm")
    np.testing.assert_allclose(
        maco_cxr.encode_images(tuned, images).numpy(), expected["finetuned_features"], atol=1e-4, rtol=0
    )
    big = load_family(FIXTURE / "MRM.pth", "mrm", image_size=256)
    assert big.input_size == 256
    np.testing.assert_allclose(maco_cxr.encode_images(big, images).numpy(), expected["features_256"], atol=1e-4, rtol=0)


def test_features_are_differentiable(model: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 224, 224)
    model.image_features(x).square().sum().backward()
    grad = model.vit.blocks[0].attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_heads_are_an_option_the_tensors_cannot_tell(model: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 224, 224)
    other = load_family(FIXTURE / "MRM.pth", "mrm", vision_heads=4)
    with torch.no_grad():
        assert not torch.allclose(other.image_features(x), model.image_features(x), atol=1e-3)
    with pytest.raises(ConfigError, match="vision_heads=5"):
        load_family(FIXTURE / "MRM.pth", "mrm", vision_heads=5)
    with pytest.raises(ConfigError, match="no tokenizer"):
        load_family(FIXTURE / "MRM.pth", "mrm", tokenizer=FIXTURE)
    with pytest.raises(ConfigError, match="cannot do texts"):
        model.encode_texts(["effusion"])


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    checkpoint = torch.load(FIXTURE / "MRM.pth", weights_only=True)
    del checkpoint["model"]["blocks.1.mlp.fc2.weight"]
    torch.save(checkpoint, tmp_path / "MRM.pth")
    with pytest.raises(CheckpointError, match="mrm.*'blocks.1.mlp.fc2.weight'"):
        load_family(tmp_path / "MRM.pth", "mrm")


def test_another_layout_is_refused_naming_the_family(tmp_path: Path) -> None:
    torch.save({"visual.conv1.weight": torch.zeros(8, 3, 32, 32), "logit_scale": torch.ones(())}, tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="mrm family.*'patch_embed.proj.weight'"):
        load_family(tmp_path / "clip.pt", "mrm")
    state = torch.load(FIXTURE / "MRM.pth", weights_only=True)["model"]
    state["blocks.0.ls1.gamma"] = torch.ones(48)
    torch.save({"model": state}, tmp_path / "layerscale.pth")
    with pytest.raises(CheckpointError, match="'blocks.0.ls1.gamma'"):
        load_family(tmp_path / "layerscale.pth", "mrm")
