"""The known-checkpoint registry: head counts for official files, and warnings for the rest."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from maco_cxr.hub import (
    KNOWN_CHECKPOINTS,
    CheckpointSignature,
    HeadCountWarning,
    checkpoint_signature,
    convert_official_state_dict,
    create_model,
    identify_checkpoint,
    load,
    load_official,
)
from maco_cxr.models.config import preset


def _shapes(
    vision: tuple[int, int],
    text: tuple[int, int, int],
    decoder: tuple[int, int],
    pred: int,
    vocab: int = 30000,
    positions: int = 100,
    grid: int = 14,
) -> dict[str, torch.Tensor]:
    """A converted state dict holding only the tensors sizes are read from (no memory: expanded zeros)."""
    (vw, vd), (tw, tl, ffn), (dw, dd) = vision, text, decoder

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(()).expand(*shape)

    state = {
        "visual.patch_embed.proj.weight": zeros(vw, 3, 16, 16),
        "visual.pos_embed": zeros(1, grid**2 + 1, vw),
        "decoder.embed.weight": zeros(dw, vw),
        "decoder.pred.weight": zeros(pred, dw),
        "text.bert.embeddings.word_embeddings.weight": zeros(vocab, tw),
        "text.bert.embeddings.position_embeddings.weight": zeros(positions, tw),
        "inverse_temperature": torch.tensor(1 / 0.03),
    }
    state |= {f"visual.blocks.{i}.mlp.fc1.weight": zeros(4 * vw, vw) for i in range(vd)}
    state |= {f"decoder.blocks.{i}.mlp.fc1.weight": zeros(4 * dw, dw) for i in range(dd)}
    state |= {f"text.bert.encoder.layer.{i}.intermediate.dense.weight": zeros(ffn, tw) for i in range(tl)}
    return state


@pytest.fixture(scope="module")
def official(official_fixture_dir):
    inputs = np.load(official_fixture_dir / "inputs.npz")
    expected = np.load(official_fixture_dir / "expected.npz")
    reports = json.loads((official_fixture_dir / "fixture.json").read_text())["reports"]
    return official_fixture_dir / "maco.pth", inputs, expected, reports


def _embeddings(model, inputs, reports):
    with torch.no_grad():
        return (
            model.encode_images(torch.from_numpy(inputs["images_224"])).numpy(),
            model.encode_texts(reports).numpy(),
        )


def test_fixture_loads_without_head_counts_and_computes_the_official_numbers(official):
    path, inputs, expected, reports = official
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadCountWarning)
        model = load(path)
        _, report = load_official(path)
    c = model.config
    assert (c.vision.num_heads, c.text.num_heads, c.decoder.num_heads) == (4, 2, 2)
    assert report.known_checkpoint == "official-maco-tiny" and "recognised as official-maco-tiny" in report.summary()
    images, texts = _embeddings(model, inputs, reports)
    np.testing.assert_allclose(images, expected["image_embed"], atol=1e-4)
    np.testing.assert_allclose(texts, expected["text_embed"], atol=1e-4)


def test_explicit_heads_win_over_the_registry_and_a_contradiction_warns(official):
    path, inputs, expected, reports = official
    with pytest.warns(
        HeadCountWarning,
        match=r"official-maco-tiny, whose text_heads is 2; using the "
        r"text_heads=1 you passed",
    ):
        model = load(path, text_heads=1)
    assert (model.config.text.num_heads, model.config.vision.num_heads, model.config.decoder.num_heads) == (1, 4, 2)
    images, texts = _embeddings(model, inputs, reports)
    np.testing.assert_allclose(images, expected["image_embed"], atol=1e-4)  # vision heads still right
    assert np.abs(texts - expected["text_embed"]).max() > 1e-3  # the wrong text heads do change the output


def test_matching_explicit_heads_load_silently(official):
    path = official[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadCountWarning)
        model = load(path, text_heads=2, vision_heads=4, decoder_heads=2)
    assert model.config.text.num_heads == 2


@pytest.fixture(scope="module")
def unknown_official(official, tmp_path_factory):
    """The fixture with its second ViT block removed: official layout, shapes no entry has."""
    raw = torch.load(official[0], weights_only=True)["model"]
    raw = {k: v for k, v in raw.items() if not k.startswith("blocks.1.")}
    path = tmp_path_factory.mktemp("unknown") / "other.pth"
    torch.save({"model": raw}, path)
    return path


def test_unrecognised_official_checkpoint_warns_which_heads_were_assumed(unknown_official):
    with pytest.warns(HeadCountWarning) as caught:
        model = load(unknown_official)
    message = str(caught[0].message)
    assert "other.pth: not a known checkpoint (ViT 64x1, BERT 64x2, decoder 64x1)" in message
    assert "assumed: vision_heads=1, text_heads=1, decoder_heads=1" in message
    assert "vision_heads=N, text_heads=N, decoder_heads=N in Python" in message
    assert "--vision-heads N --text-heads N --decoder-heads N on the command line" in message
    c = model.config
    assert (c.vision.depth, c.vision.num_heads, c.text.num_heads, c.decoder.num_heads) == (1, 1, 1, 1)


def test_unrecognised_checkpoint_warns_only_about_heads_not_given(unknown_official):
    with pytest.warns(HeadCountWarning) as caught:
        model = load(unknown_official, text_heads=2, vision_heads=4)
    message = str(caught[0].message)
    assert "assumed: decoder_heads=1 (" in message and "--decoder-heads N on" in message
    assert "--text-heads" not in message and "vision_heads=" not in message
    assert (model.config.text.num_heads, model.config.vision.num_heads) == (2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadCountWarning)
        load(unknown_official, text_heads=2, vision_heads=4, decoder_heads=2)


def test_signature_helper_matches_the_fixture_file(official):
    converted, _ = convert_official_state_dict(torch.load(official[0], weights_only=True)["model"])
    assert checkpoint_signature(converted) == checkpoint_signature(_shapes((64, 2), (64, 2, 256), (64, 1), 3072))
    assert identify_checkpoint(converted).name == "official-maco-tiny"


def test_released_model_shapes_are_recognised_with_their_head_counts():
    known = identify_checkpoint(_shapes((768, 12), (768, 6, 3072), (768, 4), 3072))
    assert known is not None and known.name == "maco-official"
    assert known.heads == {"vision_heads": 12, "text_heads": 6, "decoder_heads": 6}
    assert "MIMIC-CXR" in known.training_data
    # The FFN width of the released BERT is not stated by the official repository: any is accepted.
    assert identify_checkpoint(_shapes((768, 12), (768, 6, 1536), (768, 4), 3072)).name == "maco-official"


@pytest.mark.parametrize(
    "changed",
    [
        {"vision": (768, 24)},
        {"text": (768, 12, 3072)},
        {"text": (384, 6, 1536)},
        {"decoder": (512, 8)},
        {"pred": 768},
        {"vocab": 30522},
        {"positions": 512},
        {"grid": 28},
    ],
)
def test_any_other_size_is_not_the_released_model(changed):
    sizes = {"vision": (768, 12), "text": (768, 6, 3072), "decoder": (768, 4), "pred": 3072} | changed
    assert identify_checkpoint(_shapes(**sizes)) is None


@pytest.mark.slow  # builds a full-size model (~3 s alone, more on a busy machine)
def test_base_preset_has_the_released_shapes_and_tiny_is_unknown():
    assert identify_checkpoint(create_model(preset("base")).state_dict()).name == "maco-official"
    assert identify_checkpoint(create_model(preset("tiny")).state_dict()) is None


def test_registry_entries_are_consistent():
    names = [k.name for k in KNOWN_CHECKPOINTS]
    assert len(set(names)) == len(names)
    for known in KNOWN_CHECKPOINTS:
        s = known.signature
        assert s.vision_width % known.vision_heads == 0 and s.text_width % known.text_heads == 0
        assert s.decoder_width % known.decoder_heads == 0 and s.pred_outputs in (
            3 * (2 * s.patch_size) ** 2,
            3 * s.patch_size**2,
        )
    assert CheckpointSignature(1, 1, 16, 14, 1, 1, 1, 1, 1, 1, 768).matches(
        CheckpointSignature(1, 1, 16, 14, 1, 1, 1, 1, 1, 1, 768, text_intermediate=99)
    )


def test_a_sidecar_states_the_head_counts_once(unknown_official, tmp_path):
    from maco_cxr.errors import ConfigError

    path = tmp_path / "other.pth"
    path.write_bytes(unknown_official.read_bytes())
    path.with_suffix(".json").write_text(json.dumps({"vision_heads": 4, "text_heads": 2, "decoder_heads": 2}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadCountWarning)
        model = load(path)
    assert (model.config.vision.num_heads, model.config.text.num_heads, model.config.decoder.num_heads) == (4, 2, 2)
    assert load(path, text_heads=1).config.text.num_heads == 1  # an argument wins over the sidecar
    path.with_suffix(".json").write_text(json.dumps({"text_head": 2}))
    with pytest.raises(ConfigError, match=r"other.json: unknown key 'text_head'; did you mean text_heads\?"):
        load(path)
