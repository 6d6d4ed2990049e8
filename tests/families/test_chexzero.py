"""CheXzero loads as released and computes what CheXzero's own code computes (fixture made by
tests/assets/families/chexzero/make_fixture.py from github.com/rajpurkarlab/CheXzero@5c341db)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

import maco_cxr  # noqa: E402
from maco_cxr.errors import CheckpointError  # noqa: E402
from maco_cxr.families.chexzero import chexzero_letterbox  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "families" / "chexzero"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "expected.npz"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chexzero") / "chexzero_tiny.pt"
    path.write_bytes(gzip.decompress((FIXTURE / "chexzero_tiny.pt.gz").read_bytes()))
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> torch.nn.Module:
    return maco_cxr.load(checkpoint, family="chexzero")


def _images(expected: dict[str, np.ndarray]) -> list[Path]:
    return [FIXTURE / "images" / str(name) for name in expected["images"]]


def test_letterbox_is_their_preprocess(expected: dict[str, np.ndarray]) -> None:
    for path, theirs in zip(_images(expected), expected["letterboxed"]):
        ours = chexzero_letterbox(maco_cxr.read_image(path), 224)
        np.testing.assert_array_equal(ours, theirs)


def test_embeddings_match_their_code(model: torch.nn.Module, expected: dict[str, np.ndarray]) -> None:
    images = maco_cxr.encode_images(model, _images(expected))
    np.testing.assert_allclose(images.numpy(), expected["image_embeddings"], atol=1e-4, rtol=0)
    texts = maco_cxr.encode_texts(model, [str(t) for t in expected["texts"]])
    np.testing.assert_allclose(texts.numpy(), expected["text_embeddings"], atol=1e-4, rtol=0)


def test_zero_shot_is_their_softmax_rule(model: torch.nn.Module, expected: dict[str, np.ndarray]) -> None:
    labels = [str(label) for label in expected["labels"]]
    probabilities = maco_cxr.zero_shot(model, _images(expected), labels)
    assert probabilities.shape == expected["probabilities"].shape
    np.testing.assert_allclose(probabilities.numpy(), expected["probabilities"], atol=1e-4, rtol=0)


def test_an_unseen_fp16_file_equals_open_clip_with_their_rule(tmp_path: Path, checkpoint: Path) -> None:
    """A file no fixture has seen (other seed, fp16 as OpenAI ships CLIP) against open_clip itself."""
    import open_clip

    from maco_cxr.families.chexzero import build_clip

    reference = build_clip(torch.load(checkpoint, weights_only=True))
    torch.manual_seed(7)
    for parameter in reference.parameters():
        parameter.data.normal_(0, 0.05)
    state = {k: v.half() for k, v in reference.state_dict().items()}
    path = tmp_path / "other.pt"
    torch.save(state, path)
    reference.load_state_dict({k: v.float() for k, v in state.items()})
    reference.eval()
    model = maco_cxr.load(path, family="chexzero")
    pixels = (np.random.default_rng(3).random((224, 224)) * 255).astype(np.uint8)
    x = ((torch.from_numpy(pixels).float() - 101.48761) / 83.43944)[None, None].expand(1, 3, -1, -1)
    with torch.no_grad():
        z = reference.encode_image(x)
        t = reference.encode_text(open_clip.tokenize(["edema", "no edema"]))
    np.testing.assert_allclose(maco_cxr.encode_images(model, pixels).numpy(), z.numpy(), atol=1e-4, rtol=0)
    z, t = z / z.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    s = (z @ t.T)[0]
    p = torch.exp(s[0]) / (torch.exp(s[0]) + torch.exp(s[1]))
    ours = maco_cxr.zero_shot(model, pixels, ["Edema"])
    assert abs(float(ours[0, 0]) - float(p)) < 1e-4


def test_wrong_family_and_missing_tensor_are_named(tmp_path: Path, checkpoint: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    del state["visual.proj"]
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(CheckpointError, match=r"chexzero.*visual\.proj"):
        maco_cxr.load(broken, family="chexzero")
    with pytest.raises(CheckpointError, match="chexzero"):
        maco_cxr.load(FIXTURE.parents[1] / "official-maco-tiny" / "maco.pth", family="chexzero")


def test_grounding_is_refused_by_name(model: torch.nn.Module) -> None:
    with pytest.raises(maco_cxr.errors.ConfigError, match="chexzero family cannot do patches"):
        maco_cxr.patch_embeddings(model, np.zeros((224, 224), np.uint8))


def test_cli_takes_a_family_spec(tmp_path: Path, checkpoint: Path) -> None:
    from maco_cxr.cli import main

    assets = FIXTURE.parents[1] / "cxr-real"
    out = tmp_path / "zeroshot"
    code = main(
        ["zeroshot", "--model", f"chexzero:{checkpoint}", "--dataset", "manifest", "--root", str(assets)]
        + ["--classes", "COVID-19", "ARDS", "--bootstrap", "20", "--out", str(out)]
    )
    assert code in (0, None)
    scores = (out / "scores.csv").read_text().splitlines()
    assert len(scores) == 1 + 26
    with pytest.raises(SystemExit):
        main(["zeroshot", "--model", f"chexzero:{tmp_path / 'absent.pt'}", "--dataset", "manifest"])
    with pytest.raises(maco_cxr.errors.ConfigError, match="chexzero family cannot do grounding"):
        maco_cxr.ground(maco_cxr.load(checkpoint, family="chexzero"), np.zeros((224, 224), np.uint8), "edema")


def test_predict_refuses_a_family_it_does_not_take_yet(tmp_path: Path, checkpoint: Path) -> None:
    image = FIXTURE / "images" / "synthetic_260x150.png"
    with pytest.raises(maco_cxr.errors.ConfigError, match="chexzero model is not supported by predict"):
        maco_cxr.predict_folder(f"chexzero:{checkpoint}", image, tmp_path / "out", classes=["Edema"])
    assert not (tmp_path / "out").exists()
