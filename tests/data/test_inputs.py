"""Image inputs of the inference API: paths, PIL, arrays, tensors, one or many."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maco_cxr.data.inputs import is_single_image, load_images
from maco_cxr.errors import DataError


def test_paths_pil_arrays_and_tensors_give_the_same_pixels(tmp_path):
    pixels = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    for value in (path, str(path), Image.fromarray(pixels), pixels, torch.from_numpy(pixels)):
        assert is_single_image(value)
        (out,) = load_images(value)
        np.testing.assert_array_equal(out, pixels)


def test_batches_and_lists_give_one_array_per_image():
    batch = np.zeros((3, 5, 6), np.uint8)
    assert not is_single_image(batch) and len(load_images(batch)) == 3
    tensor = torch.zeros(2, 1, 5, 6, dtype=torch.uint8)
    assert [a.shape for a in load_images(tensor)] == [(5, 6), (5, 6)]
    mixed = load_images([np.zeros((4, 4), np.uint8), torch.zeros(1, 3, 2, dtype=torch.uint8)])
    assert [a.shape for a in mixed] == [(4, 4), (3, 2)]


def test_colour_becomes_luminance_and_16_bit_is_scaled():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: L = 200 * 299/1000 = 59.8 -> 60 (Pillow rounds)
    assert load_images(rgb)[0][0, 0] == 60
    assert load_images(np.full((2, 2), 65535, np.uint16))[0][0, 0] == 255
    assert load_images(np.full((2, 2), 32768, np.uint16))[0][0, 0] == 128
    assert load_images(np.ones((2, 2), bool))[0][0, 0] == 255


def test_ambiguous_or_unsupported_inputs_are_refused():
    with pytest.raises(DataError, match="ambiguous"):
        load_images(np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match="empty"):
        load_images([])
    with pytest.raises(DataError, match="unsupported type"):
        load_images(42)
    with pytest.raises(DataError, match=r"images\[0\]"):
        load_images([np.zeros((2, 5, 6), np.uint8)])  # a batch inside a list
