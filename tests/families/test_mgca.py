"""MGCA loads as released and computes what MGCA's own code computes (fixture made by
tests/assets/families/mgca/make_fixture.py from github.com/HKU-MedAI/MGCA@680fe4a)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("timm")

import maco_cxr  # noqa: E402
from maco_cxr.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from maco_cxr.families import load_family  # noqa: E402
from maco_cxr.families.mgca import cv2_area_resize, mgca_resize  # noqa: E402
from maco_cxr.inference import inference_mode, patch_embeddings  # noqa: E402
from maco_cxr.tasks.prompts import ClassPrompts  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "families" / "mgca"
REAL = Path(__file__).resolve().parents[1] / "assets" / "cxr-real"
TOKENIZER = FIXTURE / "tokenizer"
IMAGES = (
    "images/covid_58cb9263f16e94305c730685358e4e_jumbo.png",
    "images/covid_ARDSSevere.png",
    "images/nih_00000001_000.png",
)
FILES = {"vit": "vit_base.ckpt", "resnet": "resnet_50.ckpt"}
ATOL = 1e-4


@pytest.fixture(scope="module", params=tuple(FILES))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def shared() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "inputs.npz"))


@pytest.fixture(scope="module")
def expected(variant: str) -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / f"expected_{variant}.npz"))


@pytest.fixture(scope="module")
def model(variant: str) -> torch.nn.Module:
    return load_family(FIXTURE / FILES[variant], "mgca", tokenizer=TOKENIZER)


def _paths() -> list[Path]:
    return [REAL / name for name in IMAGES]


def test_loads_the_backbone_the_tensors_name(model: torch.nn.Module, variant: str) -> None:
    assert model.family == "mgca" and not model.training and model.backbone == variant
    assert model.input_size == 224
    assert model.patch_grid == {"vit": (14, 14), "resnet": (19, 19)}[variant]
    assert model.feature_dim == {"vit": 128, "resnet": 512}[variant]
    if variant == "vit":
        assert model.nets.img_encoder_q.model.blocks[0].attn.num_heads == 2


def test_image_input_is_their_transform(model: torch.nn.Module, shared: dict[str, np.ndarray]) -> None:
    for path, theirs in zip(_paths(), shared["image_inputs"]):
        x = model.image_input(maco_cxr.read_image(path), str(path))
        assert x.dtype == torch.float32 and x.shape == (3, 224, 224)
        np.testing.assert_array_equal(x.numpy(), np.broadcast_to((theirs / np.float32(255) - 0.5) / 0.5, x.shape))


def test_resize_is_opencv_inter_area() -> None:
    """Known OpenCV 4.10 ``INTER_AREA`` outputs (2 x 2 fast path rounds half up, general path, enlarging)."""
    ramp = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16 + 1
    np.testing.assert_array_equal(cv2_area_resize(ramp, 2, 2), [[41, 73], [169, 201]])
    ties = np.array([[0, 1], [0, 1]], np.uint8)
    assert cv2_area_resize(ties, 1, 1)[0, 0] == 1
    np.testing.assert_array_equal(cv2_area_resize(ramp, 3, 3), [[21, 41, 61], [101, 121, 141], [181, 201, 221]])
    np.testing.assert_array_equal(
        cv2_area_resize(np.array([[0, 100], [200, 255]], np.uint8), 3, 3),
        [[0, 50, 100], [100, 139, 178], [200, 228, 255]],
    )
    tall = mgca_resize(np.full((512, 409), 7, np.uint8))
    assert tall.shape == (256, 256) and (tall[:, :26] == 0).all() and (tall[:, 26:230] == 7).all()
    assert (tall[:, 230:] == 0).all()


def test_embeddings_match_their_code(
    model: torch.nn.Module, expected: dict[str, np.ndarray], shared: dict[str, np.ndarray]
) -> None:
    images = maco_cxr.encode_images(model, _paths())
    np.testing.assert_allclose(images.numpy(), expected["image_global"], atol=ATOL, rtol=0)
    patches = patch_embeddings(model, _paths())
    np.testing.assert_allclose(patches.reshape(expected["image_local"].shape), expected["image_local"], atol=ATOL)
    x = torch.stack([model.image_input(maco_cxr.read_image(p)) for p in _paths()])
    features = model.image_features(x)
    assert features.requires_grad
    np.testing.assert_allclose(features.detach().numpy(), expected["image_pooled"], atol=ATOL, rtol=0)
    texts = [str(t) for t in shared["texts"]]
    np.testing.assert_allclose(maco_cxr.encode_texts(model, texts).numpy(), expected["text_global"], atol=ATOL)
    with torch.no_grad():
        _, words, sentences = model._words(texts)
        local = torch.nn.functional.normalize(model.nets.text_encoder_q.local_embed(words), dim=-1)
    assert sentences == shared["text_sentences"].tolist()
    np.testing.assert_allclose(local.numpy(), expected["text_words"], atol=ATOL, rtol=0)


def test_every_token_reads_position_zero_as_theirs_does(model: torch.nn.Module) -> None:
    """Their forward passes the token types as position ids: word order does not change a report's embedding."""
    a, b = model.encode_texts(["effusion left pleural small", "small left pleural effusion"])
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-6)


def test_zero_shot_is_the_temperature_softmax_of_their_loss(
    model: torch.nn.Module, expected: dict[str, np.ndarray], shared: dict[str, np.ndarray]
) -> None:
    classes = [str(c) for c in shared["classes"]]
    prompts = {
        c: ClassPrompts(
            tuple(str(t) for t in shared[f"prompts_positive/{c}"]),
            tuple(str(t) for t in shared[f"prompts_negative/{c}"]),
        )
        for c in classes
    }
    probabilities = maco_cxr.zero_shot(model, _paths(), classes, prompts)
    np.testing.assert_allclose(probabilities.numpy(), expected["zero_shot_probabilities"], atol=ATOL, rtol=0)


def test_phrase_maps_are_their_notebook_attention(
    model: torch.nn.Module, expected: dict[str, np.ndarray], shared: dict[str, np.ndarray]
) -> None:
    phrases = [[str(p) for p in group] for group in shared["phrases"]]
    with inference_mode(model):
        maps = np.stack(model.phrase_maps(torch.as_tensor(shared["letterboxed"]), phrases))
    assert maps.shape == (*shared["phrases"].shape, 224, 224) and maps.dtype == np.float32
    nan = np.unpackbits(expected["map_nan"])[: maps.size].reshape(maps.shape).astype(bool)
    np.testing.assert_array_equal(np.isnan(maps), nan)
    assert nan[..., :14, :].all() and not nan[..., 14, 14:-14].any()
    ours, theirs = maps[..., 1::3, 1::3], expected["map_values"]
    scale = np.nanmax(theirs, axis=(-2, -1), keepdims=True)
    assert np.nanmin(theirs / scale) < 0.5  # the maps are far from uniform, so the comparison means something
    np.testing.assert_allclose(ours / scale, theirs / scale, atol=ATOL, rtol=0, equal_nan=True)


def test_texts_their_cleaning_empties_are_refused(model: torch.nn.Module) -> None:
    with pytest.raises(DataError, match=r"'Effusion\.' is empty after MGCA's report cleaning"):
        model.encode_texts(["Effusion."])


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    checkpoint = torch.load(FIXTURE / FILES["vit"], weights_only=False, pickle_module=_plain_pickle())
    for key in (
        "img_encoder_q.model.blocks.0.attn.qkv.bias",
        "text_encoder_q.model.encoder.layer.1.output.dense.bias",
        "word_local_atten_layer.in_proj_weight",
        "img_encoder_q.local_embed.head.1.running_var",
    ):
        state = dict(checkpoint["state_dict"])
        del state[key]
        torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
        with pytest.raises(CheckpointError, match=rf"the mgca checkpoint lacks tensor '{key}'"):
            load_family(tmp_path / "broken.ckpt", "mgca", tokenizer=TOKENIZER)


def test_another_layout_is_refused_naming_the_family() -> None:
    biovil = FIXTURE.parent / "biovil" / "biovil" / "biovil_image_resnet50_proj_size_128.pt"
    with pytest.raises(CheckpointError, match=r"not a mgca checkpoint .*'img_encoder_q.model.cls_token'"):
        load_family(biovil, "mgca", tokenizer=TOKENIZER)
    with pytest.raises(CheckpointError, match=r"mgca"):
        load_family(FIXTURE.parents[1] / "official-maco-tiny" / "maco.pth", "mgca", tokenizer=TOKENIZER)


def test_missing_files_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Bio_ClinicalBERT tokenizer files .*tokenizer=FOLDER"):
        load_family(FIXTURE / FILES["vit"], "mgca")
    with pytest.raises(CheckpointError, match=r"no such file"):
        load_family(tmp_path / "absent.ckpt", "mgca", tokenizer=TOKENIZER)


def _plain_pickle() -> object:
    """The fixture pickles its hyper-parameters as Lightning's AttributeDict, as released files do."""
    from maco_cxr.families import _bert

    return _bert._PICKLE
