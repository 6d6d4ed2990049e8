"""Contract over every preset: builds, runs forward and backward, saves and reloads exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maco_cxr.config import apply_overrides
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.models.config import preset


def _batch(config, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, config.input_size, config.input_size), dtype=torch.uint8, generator=g)
    texts = ["there is a small left pleural effusion.", "no pneumothorax. heart size is normal."][:n]
    return images, texts


@pytest.mark.parametrize("name", ["tiny", "small", pytest.param("base", marks=pytest.mark.slow)])
def test_preset_forward_backward_save_load(name, tmp_path):
    torch.manual_seed(0)
    config = preset(name)
    model = create_model(config)
    images, texts = _batch(config)
    out = model.pretrain_losses(images, texts, generator=torch.Generator().manual_seed(1))
    assert out["mask"].shape == (2, config.vision.num_patches)
    assert out["mask"].sum(dim=1).eq(config.vision.num_patches * config.mask_ratio).all()
    assert torch.isfinite(out["total"])
    out["total"].backward()
    assert model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.text.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert model.patch_weight.weight.grad is not None

    model.eval()
    save_pretrained(model, tmp_path / "m")
    again = load(tmp_path / "m")
    assert again.config == model.config
    for key, value in model.state_dict().items():
        if not key.endswith(("position_ids", "token_type_ids")):
            assert torch.equal(value, again.state_dict()[key]), key
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(images), model.encode_images(images))
        torch.testing.assert_close(again.encode_texts(texts), model.encode_texts(texts))


def test_paper_preset_is_the_paper_model():
    config = preset("base")
    assert (config.vision.embed_dim, config.vision.depth, config.vision.num_heads) == (768, 12, 12)
    assert (config.decoder.embed_dim, config.decoder.depth, config.decoder.num_heads) == (768, 4, 6)
    assert config.text.hidden_size == 768 and config.input_size == 448 and config.mask_ratio == 0.5
    assert config.rec_weight == 0.9 and config.loss_weighting == "paper"


def test_plain_mode_reconstructs_the_encoder_input():
    config = apply_overrides(preset("tiny"), ["super_resolution=false"])
    model = create_model(config)
    assert config.input_size == 224
    assert model.decoder.pred.out_features == 16 * 16 * 3
    images, texts = _batch(config)
    out = model.pretrain_losses(images, texts)
    assert out["pred"].shape == (2, 196, 768)


def test_norm_pix_loss_normalises_each_target_patch():
    from maco_cxr.models.losses import reconstruction_loss

    target = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    mask = torch.ones(2, 4)
    # A prediction equal to the per-patch standardised target has zero loss.
    from maco_cxr.models.losses import patchify

    patches = patchify(target, 2)
    standardised = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert reconstruction_loss(standardised, target, mask, norm_pix_loss=True).item() == pytest.approx(0, abs=1e-10)
    assert reconstruction_loss(patches, target, mask, norm_pix_loss=False).item() == 0


def test_reconstruction_loss_counts_only_removed_patches():
    from maco_cxr.models.losses import reconstruction_loss

    target = torch.zeros(1, 3, 4, 4)
    pred = torch.tensor([[[1.0] * 12, [2.0] * 12, [3.0] * 12, [4.0] * 12]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    # removed patches 1 and 3: mean of 2^2 and 4^2 = 10
    assert reconstruction_loss(pred, target, mask, norm_pix_loss=False).item() == pytest.approx(10.0)


def test_patchify_orders_row_col_channel():
    from maco_cxr.models.losses import patchify

    image = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(1, 3, 4, 4)
    patches = patchify(image, 2)
    # first patch, first pixel: channels 0,1,2 of pixel (0,0) = 0, 16, 32; then pixel (0,1)
    assert patches[0, 0, :6].tolist() == [0, 16, 32, 1, 17, 33]
    assert patches.shape == (1, 4, 12)


def test_contrastive_weights_start_uniform():
    model = create_model(preset("tiny"))
    images, texts = _batch(model.config)
    out = model.pretrain_losses(images, texts)
    # a = 0, b = 0 at init: every sample weighs softplus(0) = log 2
    torch.testing.assert_close(out["weights"], torch.full((2,), float(torch.log(torch.tensor(2.0)))))
    assert model.inverse_temperature.item() == pytest.approx(1 / 0.03)


def test_encode_images_accepts_every_layout():
    model = create_model(preset("tiny")).eval()
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (2, 224, 224), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        a = model.encode_images(grey)
        b = model.encode_images(grey.unsqueeze(1))
        normalised = (grey.float() / 255 - 0.4978) / 0.2449
        c = model.encode_images(normalised.unsqueeze(1).expand(-1, 3, -1, -1))
        d = model.encode_images(torch.randint(0, 256, (1, 300, 260), dtype=torch.uint8))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    assert d.shape == (1, model.config.embed_dim)


def test_unnormalised_float_images_warn_and_wrong_shapes_fail():
    from maco_cxr.errors import DataError

    model = create_model(preset("tiny")).eval()
    with pytest.warns(UserWarning, match="unnormalised"), torch.no_grad():
        model.encode_images(torch.rand(1, 3, 224, 224))
    with pytest.raises(DataError, match="224x224"):
        model.encode_images(torch.randn(1, 3, 200, 200))
    with pytest.raises(DataError, match="448x448"):
        model.pretrain_losses(torch.zeros(1, 224, 224, dtype=torch.uint8), ["x"])


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruction_loss_on_one_grey_channel_and_on_the_removed_patches_only(norm_pix_loss):
    """The fast path (grey target, gathered removed patches) equals the plain one."""
    from maco_cxr.models.losses import reconstruction_loss

    g = torch.Generator().manual_seed(0)
    grey = torch.randn(3, 1, 16, 16, generator=g)
    pred = torch.randn(3, 16, 4 * 4 * 3, generator=g)
    mask = torch.zeros(3, 16)
    for row in range(3):
        mask[row, torch.randperm(16, generator=g)[:6]] = 1.0
    plain = reconstruction_loss(pred, grey.expand(-1, 3, -1, -1).contiguous(), mask, norm_pix_loss)
    fast = reconstruction_loss(pred, grey, mask, norm_pix_loss, num_masked=6)
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(reconstruction_loss(pred, grey, mask, norm_pix_loss), plain, rtol=1e-6, atol=1e-7)


def test_without_correlation_weighting_the_loss_is_plain_symmetric_infonce():
    from maco_cxr.models.losses import correlation_weighted_contrastive_loss

    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    loss, weights = correlation_weighted_contrastive_loss(z, t, None, torch.tensor(10.0))
    logits = 10.0 * torch.nn.functional.normalize(z, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
    targets = torch.arange(5)
    expected = (
        torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets)
    ) / 2
    torch.testing.assert_close(loss, expected)
    assert torch.equal(weights, torch.ones(5))
    model = create_model(dataclasses.replace(preset("tiny"), correlation_weighting=False))
    assert not model.patch_weight.weight.requires_grad


def test_hard_negative_texts_widen_only_the_image_to_text_softmax():
    from maco_cxr.models.losses import correlation_weighted_contrastive_loss

    g = torch.Generator().manual_seed(1)
    z, t, hard = (torch.randn(4, 8, generator=g) for _ in range(3))
    loss, _ = correlation_weighted_contrastive_loss(z, t, None, torch.tensor(5.0), negative_text_embed=hard)
    unit = torch.nn.functional.normalize
    logits = 5.0 * unit(z, dim=-1) @ unit(t, dim=-1).T
    widened = torch.cat([logits, 5.0 * unit(z, dim=-1) @ unit(hard, dim=-1).T], dim=1)
    targets = torch.arange(4)
    expected = (
        torch.nn.functional.cross_entropy(widened, targets) + torch.nn.functional.cross_entropy(logits.T, targets)
    ) / 2
    torch.testing.assert_close(loss, expected)
    same, _ = correlation_weighted_contrastive_loss(z, t, None, torch.tensor(5.0), negative_text_embed=-t)
    plain, _ = correlation_weighted_contrastive_loss(z, t, None, torch.tensor(5.0))
    assert same > plain


def test_trimmed_padding_gives_the_same_text_embeddings():
    from maco_cxr.models.text import trim_padding

    model = create_model(preset("tiny")).eval()
    texts = ["no pneumothorax. ", "there is a small right pleural effusion. mild cardiomegaly. "]
    full = model.tokenizer(texts)
    trimmed = trim_padding(full)
    longest = int(full["attention_mask"].sum(1).max())
    assert trimmed["input_ids"].shape[1] == -(-longest // 8) * 8 < full["input_ids"].shape[1]
    assert torch.equal(trimmed["input_ids"], full["input_ids"][:, : trimmed["input_ids"].shape[1]])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_texts(trimmed), model.encode_texts(full), rtol=0, atol=1e-6)
    untouched = {k: v[:, :3] for k, v in full.items()}
    assert trim_padding(untouched) is untouched
