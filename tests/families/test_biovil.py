"""BioViL and BioViL-T load as released and compute what hi-ml-multimodal's own code computes (fixture made by
tests/assets/families/biovil/make_fixture.py from github.com/microsoft/hi-ml@b67c1d2, hi-ml-multimodal 0.2.2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import maco_cxr  # noqa: E402
from maco_cxr.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from maco_cxr.families import load_family  # noqa: E402
from maco_cxr.families.biovil import BIOVIL_IMAGE_WEIGHTS, BIOVIL_T_IMAGE_WEIGHTS, load  # noqa: E402
from maco_cxr.inference import inference_mode, patch_embeddings  # noqa: E402
from maco_cxr.tasks.grounding import letterboxed_maps  # noqa: E402
from maco_cxr.tasks.prompts import ClassPrompts  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "families" / "biovil"
REAL = Path(__file__).resolve().parents[1] / "assets" / "cxr-real"
TOKENIZER = FIXTURE / "tokenizer"
IMAGES = (
    "images/covid_58cb9263f16e94305c730685358e4e_jumbo.png",
    "images/covid_X-ray_of_cyst_in_pneumocystis_pneumonia_1.png",
    "images/covid_acute-respiratory-distress-syndrome-ards.png",
)
WEIGHTS = {"biovil": BIOVIL_IMAGE_WEIGHTS, "biovil-t": BIOVIL_T_IMAGE_WEIGHTS}
FAMILY_NAMES = ("biovil", "biovil-t")
ATOL = 1e-4


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def expected(family: str) -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / f"expected_{family}.npz"))


@pytest.fixture(scope="module")
def model(family: str) -> torch.nn.Module:
    return load_family(FIXTURE / family, family, tokenizer=TOKENIZER)


def _paths() -> list[Path]:
    return [REAL / name for name in IMAGES]


def test_loads_its_family_with_sizes_from_the_tensors(model: torch.nn.Module, family: str) -> None:
    assert model.family == family and not model.training
    assert model.input_size == {"biovil": 480, "biovil-t": 448}[family]
    assert model.patch_grid == (model.input_size // 32,) * 2
    assert model.feature_dim == {"biovil": 512, "biovil-t": 32}[family]


def test_image_input_is_their_transform(model: torch.nn.Module, expected: dict[str, np.ndarray]) -> None:
    for path, theirs in zip(_paths(), expected["image_inputs"]):
        x = model.image_input(maco_cxr.read_image(path), str(path))
        assert x.dtype == torch.float32 and x.shape == (3, *theirs.shape)
        np.testing.assert_array_equal(x.numpy(), np.broadcast_to(theirs / np.float32(255), x.shape))


def test_embeddings_match_their_code(model: torch.nn.Module, expected: dict[str, np.ndarray]) -> None:
    images = maco_cxr.encode_images(model, _paths())
    np.testing.assert_allclose(images.numpy(), expected["image_global"], atol=ATOL, rtol=0)
    patches = patch_embeddings(model, _paths())
    np.testing.assert_allclose(patches.numpy(), expected["image_patches"], atol=ATOL, rtol=0)
    x = torch.stack([model.image_input(maco_cxr.read_image(p)) for p in _paths()])
    features = model.image_features(x)
    assert features.requires_grad
    np.testing.assert_allclose(features.detach().numpy(), expected["image_pooled"], atol=ATOL, rtol=0)
    texts = maco_cxr.encode_texts(model, [str(t) for t in expected["texts"]])
    np.testing.assert_allclose(texts.numpy(), expected["text_raw"], atol=ATOL, rtol=0)


def test_zero_shot_is_their_positive_versus_negative_rule(
    model: torch.nn.Module, expected: dict[str, np.ndarray]
) -> None:
    classes = [str(c) for c in expected["classes"]]
    prompts = {
        c: ClassPrompts(
            tuple(str(t) for t in expected[f"prompts_positive/{c}"]),
            tuple(str(t) for t in expected[f"prompts_negative/{c}"]),
        )
        for c in classes
    }
    probabilities = maco_cxr.zero_shot(model, _paths(), classes, prompts)
    np.testing.assert_allclose(probabilities.numpy(), expected["zero_shot_probabilities"], atol=ATOL, rtol=0)
    similarities = expected["zero_shot_similarities"]
    assert np.array_equal(probabilities.numpy() > 0.5, similarities[..., 0] > similarities[..., 1])
    defaults = maco_cxr.zero_shot(model, _paths(), ["pneumonia"])  # their pneumonia prompts are the templates
    np.testing.assert_allclose(defaults.numpy(), expected["zero_shot_probabilities"][:, :1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_phrase_maps_are_their_maps(family: str, expected: dict[str, np.ndarray], interpolation: str) -> None:
    model = load_family(FIXTURE / family, family, tokenizer=TOKENIZER, interpolation=interpolation)
    phrases = [[str(p) for p in group] for group in expected["phrases"]]
    with inference_mode(model):
        maps = np.stack(model.phrase_maps(torch.as_tensor(expected["letterboxed"]), phrases))
        filled = np.stack(letterboxed_maps(model, expected["letterboxed"], phrases))
    size = model.input_size
    assert maps.shape == (*expected["phrases"].shape, size, size) and maps.dtype == np.float32
    nan = np.unpackbits(expected[f"map_nan_{interpolation}"])[: maps.size].reshape(maps.shape).astype(bool)
    np.testing.assert_array_equal(np.isnan(maps), nan)
    border = (size - int(model.crop * size / 512)) // 2
    assert nan[..., :border, :].all() and not nan[..., border, border:-border].any()
    np.testing.assert_allclose(maps[..., 1::4, 1::4], expected[f"map_values_{interpolation}"], atol=ATOL, rtol=0)
    # the task layer reads what the model did not see as the least related: each map's lowest seen value
    assert not np.isnan(filled).any()
    np.testing.assert_array_equal(filled[~nan], maps[~nan])
    lowest = np.nanmin(maps, axis=(-2, -1), keepdims=True)
    np.testing.assert_array_equal(filled, np.where(nan, lowest, maps))


def test_texts_with_special_tokens_are_refused(model: torch.nn.Module) -> None:
    with pytest.raises(DataError, match=r"\[SEP\]"):
        model.encode_texts(["effusion [SEP] edema"])


def _copy(family: str, folder: Path) -> Path:
    shutil.copytree(FIXTURE / family, folder / family)
    return folder / family


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    folder = _copy("biovil", tmp_path)
    for key in ("encoder.encoder.layer2.0.bn2.running_var", "projector.model.3.weight"):
        state = torch.load(FIXTURE / "biovil" / BIOVIL_IMAGE_WEIGHTS)
        del state[key]
        torch.save(state, folder / BIOVIL_IMAGE_WEIGHTS)
        with pytest.raises(CheckpointError, match=rf"biovil checkpoint lacks tensor '{key}'"):
            load_family(folder, "biovil", tokenizer=TOKENIZER)
    text = torch.load(FIXTURE / "biovil" / "pytorch_model.bin")
    del text["bert.encoder.layer.1.output.dense.bias"]
    torch.save(text, tmp_path / "text.bin")
    with pytest.raises(CheckpointError, match=r"lacks tensor 'encoder.layer.1.output.dense.bias'"):
        load_family(FIXTURE / "biovil", "biovil", tokenizer=TOKENIZER, text=tmp_path / "text.bin")


def test_another_layout_is_refused_naming_the_family(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"not a biovil image checkpoint.*'encoder.encoder.conv1.weight'"):
        load(FIXTURE / "biovil" / "pytorch_model.bin", tokenizer=TOKENIZER, family="biovil")
    maco = Path(__file__).resolve().parents[1] / "assets" / "official-maco-tiny" / "maco.pth"
    with pytest.raises(
        CheckpointError, match=r"biovil image checkpoint is a plain state dict.*'model' is not a tensor"
    ):
        load_family(maco, "biovil", tokenizer=TOKENIZER)
    with pytest.raises(CheckpointError, match=r"biovil-t image checkpoint, not biovil; load it as biovil-t"):
        load_family(FIXTURE / "biovil-t", "biovil", tokenizer=TOKENIZER)
    with pytest.raises(CheckpointError, match=r"biovil image checkpoint, not biovil-t; load it as biovil$"):
        load_family(FIXTURE / "biovil" / BIOVIL_IMAGE_WEIGHTS, "biovil-t", tokenizer=TOKENIZER)


def test_missing_companion_files_say_what_to_give(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "biovil" / BIOVIL_IMAGE_WEIGHTS, tmp_path)
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin or model.safetensors.*text=PATH"):
        load_family(tmp_path, "biovil", tokenizer=TOKENIZER)
    with pytest.raises(ConfigError, match=r"vocab.txt \+ tokenizer_config.json.*tokenizer=FOLDER"):
        load_family(FIXTURE / "biovil", "biovil")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no biovil_image_resnet50_proj_size_128.pt or biovil_t_image"):
        load_family(tmp_path / "empty", "biovil", tokenizer=TOKENIZER)
    with pytest.raises(CheckpointError, match=r"missing: no such file"):
        load_family(tmp_path / "missing", "biovil", tokenizer=TOKENIZER)
