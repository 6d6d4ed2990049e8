"""The official MaCo code's outputs on a tiny checkpoint, reproduced by this package.

Tolerances from the fixture's README: 1e-4 absolute on embeddings and maps, 1e-5 relative on
losses. Gradients are those of the contrastive loss alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maco_cxr.hub import load_official


@pytest.fixture(scope="module")
def fixture(official_fixture_dir):
    config = json.loads((official_fixture_dir / "fixture.json").read_text())
    inputs = np.load(official_fixture_dir / "inputs.npz")
    expected = np.load(official_fixture_dir / "expected.npz")
    model, report = load_official(
        official_fixture_dir / "maco.pth",
        text_heads=config["config"]["text_heads"],
        vision_heads=config["config"]["num_heads"],
        decoder_heads=config["config"]["decoder_num_heads"],
    )
    return config, inputs, expected, model, report


@pytest.fixture(scope="module")
def pretrain_out(fixture):
    config, inputs, _, model, _ = fixture
    model.zero_grad()
    out = model.pretrain_losses(
        torch.from_numpy(inputs["images_448"]), config["reports"], torch.from_numpy(inputs["mask_noise"])
    )
    out["con"].backward()
    return out


def test_checkpoint_loads_with_every_used_tensor(fixture):
    config, _, _, model, report = fixture
    assert not report.missing
    assert all(
        k.startswith(
            (
                "pos_weight_text",
                "pos_cat",
                "logit_scale",
                "WCE",
                "bert_encoder.model.cls",
                "bert_encoder.model.bert.embeddings.position_ids",
            )
        )
        for k in report.ignored
    )
    c = config["config"]
    assert model.config.vision.embed_dim == c["embed_dim"] and model.config.vision.depth == c["depth"]
    assert model.config.decoder.depth == c["decoder_depth"] and model.config.super_resolution
    assert model.config.text.num_layers == c["text_layers"]
    assert model.config.text.intermediate_size == c["text_intermediate"]
    assert model.config.text.max_length == c["max_text_len"]


def test_tokenizer_reproduces_official_ids(fixture):
    config, inputs, _, model, _ = fixture
    batch = model.tokenizer(config["reports"])
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(batch[key].numpy(), inputs[key])


def test_masking_and_encoder(fixture, pretrain_out):
    _, _, expected, _, _ = fixture
    np.testing.assert_array_equal(pretrain_out["mask"].numpy(), expected["mask"])
    np.testing.assert_array_equal(pretrain_out["ids_restore"].numpy(), expected["ids_restore"])
    np.testing.assert_allclose(pretrain_out["latent"].detach().numpy(), expected["latent_masked"], atol=1e-4)


def test_decoder_predictions(fixture, pretrain_out):
    _, _, expected, _, _ = fixture
    pred = pretrain_out["pred"].detach()
    np.testing.assert_allclose(pred[..., :16].numpy(), expected["pred_first16"], atol=1e-4)
    assert pred.abs().mean().item() == pytest.approx(float(expected["pred_mean_abs"]), rel=1e-5)


def test_losses(fixture, pretrain_out):
    _, _, expected, model, _ = fixture
    rec, con = pretrain_out["rec"].item(), pretrain_out["con"].item()
    assert rec == pytest.approx(float(expected["loss_rec"]), rel=1e-5)
    assert con == pytest.approx(float(expected["loss_con"]), rel=1e-5)
    assert pretrain_out["total"].item() == pytest.approx(float(expected["loss_total_paper"]), rel=1e-5)
    assert rec + con == pytest.approx(float(expected["loss_total_sum"]), rel=1e-5)


def test_contrastive_gradients(fixture, pretrain_out):
    _, _, expected, model, _ = fixture
    np.testing.assert_allclose(model.patch_weight.weight.grad.numpy(), expected["grad_con_pos_weight_w"], atol=1e-5)
    np.testing.assert_allclose(model.patch_weight.bias.grad.numpy(), expected["grad_con_pos_weight_b"], atol=1e-5)
    assert model.inverse_temperature.grad.item() == pytest.approx(float(expected["grad_con_Tpar"]), rel=1e-4)
    assert model.img_proj.weight.grad.norm().item() == pytest.approx(
        float(expected["grad_con_img_mlp_w_norm"]), rel=1e-5
    )


def test_inference_embeddings(fixture):
    config, inputs, expected, model, _ = fixture
    images = torch.from_numpy(inputs["images_224"])
    with torch.no_grad():
        np.testing.assert_allclose(model.encode_texts(config["reports"]).numpy(), expected["text_embed"], atol=1e-4)
        np.testing.assert_allclose(model.image_tokens(images).numpy(), expected["latent_nomask"], atol=1e-4)
        np.testing.assert_allclose(model.encode_images(images).numpy(), expected["image_embed"], atol=1e-4)
        patches = model.patch_embeddings(images)
    assert patches.shape == (4, 14, 14, config["config"]["text_hidden"])
    np.testing.assert_allclose(patches.mean(dim=(1, 2)).numpy(), expected["image_embed"], atol=1e-5)


def test_paper_and_released_loss_weighting(fixture, pretrain_out):
    import dataclasses

    _, _, expected, model, _ = fixture
    model.config = dataclasses.replace(model.config, loss_weighting="sum")
    try:
        config, inputs = fixture[0], fixture[1]
        with torch.no_grad():
            out = model.pretrain_losses(
                torch.from_numpy(inputs["images_448"]), config["reports"], torch.from_numpy(inputs["mask_noise"])
            )
        assert out["total"].item() == pytest.approx(float(expected["loss_total_sum"]), rel=1e-5)
    finally:
        model.config = dataclasses.replace(model.config, loss_weighting="paper")
