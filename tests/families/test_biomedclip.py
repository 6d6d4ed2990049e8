"""BiomedCLIP loads offline from the Hub repository's files and computes what open_clip (its authors'
inference path) computes (fixture made by tests/assets/families/biomedclip/make_fixture.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

import maco_cxr  # noqa: E402
from maco_cxr.errors import CheckpointError, ConfigError  # noqa: E402
from maco_cxr.families import load_family  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "families" / "biomedclip"
IMAGES = FIXTURE.parents[1] / "cxr-real" / "images"
WEIGHTS = FIXTURE / "open_clip_pytorch_model.bin"
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
MEAN, STD = 0.48145466, 0.26862954


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "expected.npz"))


@pytest.fixture(scope="module")
def images(expected: dict[str, np.ndarray]) -> list[Path]:
    return [IMAGES / str(name) for name in expected["images"]]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_family(WEIGHTS, "biomedclip")


def test_image_input_is_open_clips_eval_transform(
    model: torch.nn.Module, images: list[Path], expected: dict[str, np.ndarray]
) -> None:
    assert (model.input_size, model.feature_dim, model.patch_grid) == (160, 64, None)
    for path, crop in zip(images, expected["crops"]):
        x = model.image_input(maco_cxr.read_image(path))
        assert x.shape == (3, 160, 160)
        torch.testing.assert_close(x[0], (torch.from_numpy(crop).float() / 255 - MEAN) / STD, atol=1e-6, rtol=0)


def test_embeddings_match_open_clip(
    model: torch.nn.Module, images: list[Path], expected: dict[str, np.ndarray]
) -> None:
    np.testing.assert_allclose(
        maco_cxr.encode_images(model, images).numpy(), expected["image_embeddings"], atol=1e-4, rtol=0
    )
    x = torch.stack([model.image_input(maco_cxr.read_image(p)) for p in images])
    with torch.no_grad():
        np.testing.assert_allclose(model.image_features(x).numpy(), expected["image_features"], atol=1e-4, rtol=0)
        assert model.embed(x)[1] is None
    texts = [str(t) for t in expected["texts"]]
    np.testing.assert_array_equal(model.tokenizer(texts).numpy(), expected["token_ids"])
    np.testing.assert_allclose(
        maco_cxr.encode_texts(model, texts).numpy(), expected["text_embeddings"], atol=1e-4, rtol=0
    )


def test_zero_shot_is_the_model_cards_softmax_over_the_pair(
    model: torch.nn.Module, images: list[Path], expected: dict[str, np.ndarray]
) -> None:
    probabilities = maco_cxr.zero_shot(model, images, [str(c) for c in expected["classes"]])
    np.testing.assert_allclose(probabilities.numpy(), expected["probabilities"], atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="cannot do grounding"):
        model.phrase_maps(torch.zeros(1, 160, 160, dtype=torch.uint8), [["effusion"]])


def test_image_features_are_differentiable(model: torch.nn.Module) -> None:
    model.image_features(torch.randn(1, 3, 160, 160)).square().sum().backward()
    grad = model.clip.visual.trunk.blocks[0].attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_files_in_separate_places(tmp_path: Path, model: torch.nn.Module) -> None:
    """The Hub file as released (with transformers < 4.31's position_ids buffer), config and tokenizer elsewhere."""
    assert "text.transformer.embeddings.position_ids" in torch.load(WEIGHTS, weights_only=True)
    (tmp_path / "weights").mkdir()
    shutil.copy(WEIGHTS, tmp_path / "weights" / WEIGHTS.name)
    with pytest.raises(ConfigError, match="open_clip_config.json"):
        load_family(tmp_path / "weights", "biomedclip")
    config = FIXTURE / "open_clip_config.json"
    with pytest.raises(ConfigError, match="vocab.txt, tokenizer_config.json"):
        load_family(tmp_path / "weights", "biomedclip", config=config)
    (tmp_path / "tok").mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(FIXTURE / name, tmp_path / "tok" / name)
    other = load_family(tmp_path / "weights", "biomedclip", tokenizer=tmp_path / "tok", config=config)
    texts = ["small left pleural effusion"]
    torch.testing.assert_close(maco_cxr.encode_texts(other, texts), maco_cxr.encode_texts(model, texts))
    fewer_heads = load_family(WEIGHTS, "biomedclip", text_heads=2)
    assert not torch.allclose(maco_cxr.encode_texts(fewer_heads, texts), maco_cxr.encode_texts(model, texts), atol=1e-3)


def _hub_folder(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    for name in ("open_clip_config.json", *TOKENIZER_FILES):
        shutil.copy(FIXTURE / name, tmp_path / name)
    torch.save(state, tmp_path / WEIGHTS.name)
    return tmp_path / WEIGHTS.name


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    state = torch.load(WEIGHTS, weights_only=True)
    del state["text.proj.2.weight"]
    with pytest.raises(CheckpointError, match="biomedclip.*'text.proj.2.weight'"):
        load_family(_hub_folder(tmp_path, state), "biomedclip")


def test_another_layout_is_refused_naming_the_family(tmp_path: Path) -> None:
    mae_vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "cls_token": torch.zeros(1, 1, 8)}
    with pytest.raises(CheckpointError, match="biomedclip family.*'visual.trunk.patch_embed.proj.weight'"):
        load_family(_hub_folder(tmp_path, mae_vit), "biomedclip")
