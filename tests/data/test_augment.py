"""Batched augmentation against analytic cases and torchvision's own affine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from maco_cxr.data.augment import (
    AugmentConfig,
    AugmentParams,
    affine_grid,
    affine_normalize,
    affine_theta,
    augment_batch,
    normalize_batch,
    sample_params,
)
from maco_cxr.errors import ConfigError, DataError

MEAN, STD = 0.4978, 0.2449


def _images(b: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 1, h, w), generator=g, dtype=torch.uint8)


def _params(b: int, flip: bool = False, angle: float = 0.0, scale: float = 1.0) -> AugmentParams:
    return AugmentParams(
        flip=torch.full((b,), flip),
        angle=torch.full((b,), angle),
        scale=torch.full((b,), scale),
    )


def test_normalize_batch_values_shape_and_view() -> None:
    x = torch.tensor([0, 255, 127], dtype=torch.uint8).reshape(1, 1, 1, 3)
    out = normalize_batch(x)
    expected = (torch.tensor([0.0, 1.0, 127 / 255]) - MEAN) / STD
    assert out.shape == (1, 3, 1, 3) and out.dtype == torch.float32
    for c in range(3):
        torch.testing.assert_close(out[0, c, 0], expected, atol=1e-6, rtol=0)
    assert out.stride(1) == 0  # channels are an expand view, not copies


def test_identity_params_reproduce_normalize_batch() -> None:
    x = _images(2, 24, 40)
    out = affine_normalize(x, _params(2), MEAN, STD)
    torch.testing.assert_close(out, normalize_batch(x, MEAN, STD), atol=1e-5, rtol=0)


def test_identity_config_reproduces_normalize_batch() -> None:
    x = _images()
    cfg = AugmentConfig(flip_p=0.0, degrees=0.0, scale=(1.0, 1.0))
    out = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, normalize_batch(x), atol=1e-5, rtol=0)


def test_flip_only_equals_torch_flip() -> None:
    x = _images(2, 16, 20)
    cfg = AugmentConfig(flip_p=1.0, degrees=0.0, scale=(1.0, 1.0))
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalize_batch(torch.flip(x, dims=[-1])), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("angle", "k"), [(90.0, -1), (-90.0, 1), (180.0, 2)])
def test_rotation_by_right_angles_equals_rot90(angle: float, k: int) -> None:
    # torchvision's affine (hence RandomAffine) turns positive angles clockwise; rot90 with
    # k > 0 turns counter-clockwise.
    x = _images(2, 17, 17)
    out = affine_normalize(x, _params(2, angle=angle))
    expected = normalize_batch(torch.rot90(x, k=k, dims=(-2, -1)))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_positive_angle_turns_clockwise() -> None:
    corner = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    corner[0, 0, 0, 0] = 255  # top-left goes to top-right under a clockwise quarter turn
    rotated = affine_normalize(corner, _params(1, angle=90.0))
    assert rotated[0, 0].argmax().item() == 4


def test_flip_then_rotate_composes_in_recipe_order() -> None:
    x = _images(1, 15, 15)
    out = affine_normalize(x, _params(1, flip=True, angle=90.0))
    expected = torch.rot90(torch.flip(x, dims=[-1]), k=-1, dims=(-2, -1))
    torch.testing.assert_close(out, normalize_batch(expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("angle", "scale"), [(13.0, 1.0), (-20.0, 0.8), (7.5, 1.2), (0.0, 0.9)])
def test_matches_torchvision_affine(angle: float, scale: float) -> None:
    x = _images(1, 48, 48, seed=3)
    out = affine_normalize(x, _params(1, angle=angle, scale=scale))[:, :1]
    ref = TF.affine(
        x.float() / 255,
        angle=angle,
        translate=[0, 0],
        scale=scale,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
    )
    ref = (ref - MEAN) / STD
    torch.testing.assert_close(out[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4], atol=1e-4, rtol=0)


@pytest.mark.parametrize(("flip", "angle", "scale"), [(False, 13.0, 1.0), (True, -20.0, 0.8), (True, 7.5, 1.2)])
def test_matches_official_pil_recipe_within_one_grey_level(flip: bool, angle: float, scale: float) -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    img = (127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.uint8)
    pil = Image.fromarray(img)
    if flip:
        pil = TF.hflip(pil)
    pil = TF.affine(
        pil,
        angle=angle,
        translate=[0, 0],
        scale=scale,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0,
    )
    ref = TF.normalize(TF.to_tensor(TF.to_grayscale(pil, num_output_channels=3)), [MEAN] * 3, [STD] * 3)
    out = affine_normalize(torch.from_numpy(img)[None, None], _params(1, flip, angle, scale))[0]
    centre = torch.from_numpy((xx - 31.5) ** 2 + (yy - 31.5) ** 2 < 24**2)  # away from borders
    diff = (out - ref).abs()[:, centre] * STD * 255
    assert diff.max() <= 1.01  # PIL rounds to uint8
    assert diff.mean() < 0.6


def test_affine_grid_equals_torch_affine_grid() -> None:
    params = sample_params(5, AugmentConfig(), torch.Generator().manual_seed(2))
    for h, w in ((7, 7), (9, 13)):
        theta = affine_theta(params, h, w)
        expected = torch.nn.functional.affine_grid(theta, [5, 1, h, w], align_corners=False)
        torch.testing.assert_close(affine_grid(theta, h, w), expected, atol=1e-6, rtol=0)


def test_matches_torchvision_affine_non_square() -> None:
    x = _images(1, 30, 50, seed=4)
    out = affine_normalize(x, _params(1, angle=17.0, scale=1.1))[:, :1]
    ref = TF.affine(
        x.float() / 255,
        angle=17.0,
        translate=[0, 0],
        scale=1.1,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
    )
    torch.testing.assert_close(out, (ref - MEAN) / STD, atol=1e-4, rtol=0)


def test_scale_half_shrinks_content_around_centre() -> None:
    x = torch.full((1, 1, 64, 64), 255, dtype=torch.uint8)
    out = affine_normalize(x, _params(1, scale=0.5))[0, 0] * STD + MEAN  # back to [0, 1]
    inside = out[17:47, 17:47]
    torch.testing.assert_close(inside, torch.ones_like(inside), atol=1e-5, rtol=0)
    assert out[:15].abs().max() < 1e-6 and out[49:].abs().max() < 1e-6
    assert out[:, :15].abs().max() < 1e-6 and out[:, 49:].abs().max() < 1e-6
    assert abs(out.sum().item() - 32 * 32) < 1.0  # area shrinks by 0.5^2


def test_determinism_and_generator_dependence() -> None:
    x = _images(8, 32, 32)
    cfg = AugmentConfig()
    a = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32


def test_sampled_parameters_lie_in_ranges() -> None:
    cfg = AugmentConfig(flip_p=0.5, degrees=20.0, scale=(0.8, 1.2))
    p = sample_params(4000, cfg, torch.Generator().manual_seed(0))
    assert p.angle.min() >= -20.0 and p.angle.max() <= 20.0
    assert p.angle.min() < -19.0 and p.angle.max() > 19.0
    assert p.scale.min() >= 0.8 and p.scale.max() <= 1.2
    assert abs(p.angle.mean().item()) < 1.0
    assert 0.45 < p.flip.float().mean().item() < 0.55
    never = sample_params(100, AugmentConfig(flip_p=0.0), torch.Generator().manual_seed(0))
    assert not never.flip.any()


def test_rejects_bad_inputs_and_configs() -> None:
    with pytest.raises(DataError, match="uint8"):
        augment_batch(torch.zeros(1, 1, 4, 4), AugmentConfig(), None)
    with pytest.raises(DataError, match=r"\[B, 1, H, W\]"):
        normalize_batch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="flip_p"):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_is_deterministic() -> None:
    x = _images(4, 64, 64)
    params = sample_params(4, AugmentConfig(), torch.Generator().manual_seed(0))
    cpu = affine_normalize(x, params)
    gpu_params = AugmentParams(*(t.cuda() for t in (params.flip, params.angle, params.scale)))
    gpu = affine_normalize(x.cuda(), gpu_params)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    a = augment_batch(x.cuda(), AugmentConfig(), torch.Generator("cuda").manual_seed(3))
    b = augment_batch(x.cuda(), AugmentConfig(), torch.Generator("cuda").manual_seed(3))
    assert torch.equal(a, b)
