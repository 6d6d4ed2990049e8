"""One image-encoding path: the model's methods, the free functions of maco_cxr.inference and the
exported graphs' eager module compute the same embeddings through models.maco.joint_embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maco_cxr import inference
from maco_cxr.export import ImageEncoderGraph
from maco_cxr.hub import create_model
from maco_cxr.models.config import preset
from maco_cxr.models.maco import joint_embeddings


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(preset("tiny")).eval()


@pytest.fixture(scope="module")
def pixels(model) -> np.ndarray:
    size = model.config.vision.img_size
    return np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)


def test_the_global_embedding_is_the_mean_of_the_projected_patches(model) -> None:
    tokens = torch.randn(2, 1 + model.config.vision.num_patches, model.config.vision.embed_dim)
    pooled, patches = joint_embeddings(model.img_proj, tokens)
    assert patches.shape == (2, model.config.vision.num_patches, model.config.embed_dim)
    torch.testing.assert_close(patches, model.img_proj(tokens[:, 1:]), rtol=0, atol=0)
    torch.testing.assert_close(pooled, patches.mean(dim=1), rtol=0, atol=0)
    # project-then-mean equals mean-then-project up to rounding (the projection is affine)
    torch.testing.assert_close(pooled, model.img_proj(tokens[:, 1:].mean(dim=1)), rtol=1e-5, atol=1e-6)


def test_model_methods_free_functions_and_export_agree(model, pixels) -> None:
    batch = torch.from_numpy(pixels)[:, None]  # uint8 [N, 1, S, S]
    with torch.inference_mode():
        method_global, method_patches = model.encode_images(batch), model.patch_embeddings(batch)
        x = model.normalize(batch)
        exported_global, exported_patches = ImageEncoderGraph(model, uint8_input=False)(x)
    free_global = inference.encode_images(model, list(pixels))
    free_patches = inference.patch_embeddings(model, list(pixels))
    grid = model.config.vision.grid_size
    torch.testing.assert_close(free_global, method_global, rtol=0, atol=1e-6)
    torch.testing.assert_close(free_patches, method_patches, rtol=0, atol=1e-6)
    torch.testing.assert_close(exported_global, method_global, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        exported_patches.reshape(-1, grid, grid, exported_patches.shape[-1]), method_patches, rtol=0, atol=1e-6
    )
