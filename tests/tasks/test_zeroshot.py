"""Zero-shot classification: the official fixture, batch independence, mode handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import maco_cxr
from maco_cxr.hub import load
from maco_cxr.tasks.prompts import resolve_prompts
from maco_cxr.tasks.zeroshot import build_class_prototypes, score_embeddings, zero_shot


@pytest.fixture(scope="module")
def official(official_fixture_dir):
    config = json.loads((official_fixture_dir / "fixture.json").read_text())
    inputs = np.load(official_fixture_dir / "inputs.npz")
    expected = np.load(official_fixture_dir / "expected.npz")
    model = load(official_fixture_dir / "maco.pth", text_heads=2, vision_heads=4, decoder_heads=2)
    return config, inputs, expected, model


def test_fixture_prompts_are_the_official_default_templates(official):
    config, _, _, _ = official
    table = resolve_prompts(config["zeroshot_classes"])
    for name, prompts in config["zeroshot_prompts"].items():
        assert list(table[name].positive) == prompts["pos"]
        assert list(table[name].negative) == prompts["neg"]


def test_prototypes_reproduce_the_official_code(official):
    config, _, expected, model = official
    positive, negative = build_class_prototypes(model, config["zeroshot_classes"], config["zeroshot_prompts"])
    np.testing.assert_allclose(positive.numpy(), expected["zeroshot_pos_proto"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(negative.numpy(), expected["zeroshot_neg_proto"], atol=1e-4, rtol=0)


def test_probabilities_reproduce_the_official_code(official):
    config, inputs, expected, model = official
    probs = zero_shot(model, torch.from_numpy(inputs["images_224"]), config["zeroshot_classes"])
    assert probs.shape == (4, 3) and probs.dtype == torch.float32
    np.testing.assert_allclose(probs.numpy(), expected["zeroshot_prob"], atol=1e-4, rtol=0)
    via_package = maco_cxr.zero_shot(model, list(inputs["images_224"]), config["zeroshot_classes"])
    np.testing.assert_allclose(via_package.numpy(), expected["zeroshot_prob"], atol=1e-4, rtol=0)


def test_score_of_an_image_does_not_depend_on_the_batch(official):
    config, inputs, _, model = official
    rng = np.random.default_rng(0)
    odd = rng.integers(0, 256, size=(300, 260), dtype=np.uint8)
    images = [*inputs["images_224"], odd]
    together = zero_shot(model, images, config["zeroshot_classes"], batch_size=3)
    alone = torch.cat([zero_shot(model, image, config["zeroshot_classes"]) for image in images])
    np.testing.assert_allclose(together.numpy(), alone.numpy(), atol=1e-6, rtol=0)
    reversed_order = zero_shot(model, images[::-1], config["zeroshot_classes"])
    np.testing.assert_allclose(reversed_order.numpy()[::-1], alone.numpy(), atol=1e-6, rtol=0)


def test_score_embeddings_is_the_two_way_softmax():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positive = torch.tensor([[1.0, 1.0]])
    negative = torch.tensor([[0.0, 0.0]])
    probs = score_embeddings(z, positive, negative)
    expected = torch.sigmoid(torch.tensor([[1.0], [2.0]]))  # softmax([a, 0])[0] = sigmoid(a)
    torch.testing.assert_close(probs, expected)


def test_model_mode_is_restored_and_no_gradients_are_kept(official):
    config, inputs, _, model = official
    model.train()
    try:
        probs = zero_shot(model, inputs["images_224"][0], config["zeroshot_classes"])
        assert model.training
        assert not probs.requires_grad
    finally:
        model.eval()


def test_normalised_float_tensors_go_to_the_encoder_as_they_are(official):
    config, inputs, expected, model = official
    pixels = torch.from_numpy(inputs["images_224"]).float() / 255.0
    normalised = ((pixels - model.config.image_mean) / model.config.image_std)[:, None].expand(-1, 3, -1, -1)
    probs = zero_shot(model, normalised, config["zeroshot_classes"])
    np.testing.assert_allclose(probs.numpy(), expected["zeroshot_prob"], atol=1e-4, rtol=0)
