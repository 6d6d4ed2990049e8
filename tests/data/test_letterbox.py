"""Letterbox geometry: hand-computed fits and pixels, and round trips of boxes and maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from maco_cxr.data.letterbox import Letterbox, letterbox_image
from maco_cxr.errors import DataError

# (height, width, size): portrait, landscape, square, downscaling and upscaling
SHAPES = [
    (1000, 700, 224),
    (700, 1000, 224),
    (512, 512, 224),
    (60, 90, 224),
    (90, 61, 224),
    (2544, 3056, 448),
    (37, 37, 224),
]


def _foreground_bbox(binary: np.ndarray) -> np.ndarray:
    """xyxy box (pixel-edge convention) around the non-zero pixels."""
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=float)


def _rasterise(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """1 where the pixel centre lies inside the xyxy box."""
    ys = np.arange(height)[:, None] + 0.5
    xs = np.arange(width)[None, :] + 0.5
    inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
    return inside.astype(np.uint8)


def test_fit_portrait_landscape_square() -> None:
    portrait = Letterbox.fit(300, 200, 224)
    assert portrait.scale == 224 / 300
    assert (portrait.new_height, portrait.new_width) == (224, 149)  # 200 * 0.7467 = 149.33
    assert (portrait.pad_top, portrait.pad_left) == (0, 37)  # (224 - 149) // 2
    landscape = Letterbox.fit(200, 300, 224)
    assert (landscape.new_height, landscape.new_width) == (149, 224)
    assert (landscape.pad_top, landscape.pad_left) == (37, 0)
    square = Letterbox.fit(100, 100, 224)
    assert square.scale == 2.24
    assert (square.new_height, square.new_width, square.pad_top, square.pad_left) == (224, 224, 0, 0)


def test_fit_rejects_empty_dimensions() -> None:
    with pytest.raises(DataError, match=">= 1"):
        Letterbox.fit(0, 10, 224)
    with pytest.raises(DataError, match="new_width"):
        Letterbox(src_height=10, src_width=10, size=8, scale=0.8, new_height=8, new_width=9, pad_top=0, pad_left=0)


def test_area_downsampling_hand_computed() -> None:
    image = np.array([[0, 40, 80, 120], [20, 60, 100, 140]], dtype=np.uint8)
    out, box = letterbox_image(image, 2)
    assert (box.new_height, box.new_width, box.pad_top) == (1, 2, 0)
    np.testing.assert_array_equal(out, [[30, 110], [0, 0]])  # means of the 2x2 blocks
    # non-integer factor 3 -> 2: pixel 0 covers [0, 1.5), pixel 1 covers [1.5, 3)
    out, _ = letterbox_image(np.array([[30, 60, 90]], dtype=np.uint8), 2)
    np.testing.assert_array_equal(out, [[40, 80], [0, 0]])  # (30+30)/1.5, (30+90)/1.5


def test_bilinear_upsampling_hand_computed() -> None:
    image = np.array([[0, 20, 40, 60]], dtype=np.uint8)
    out, box = letterbox_image(image, 8)
    assert (box.scale, box.new_height, box.pad_top) == (2.0, 2, 3)
    # half-pixel centres: output x samples (x + 0.5) / 2 - 0.5, clamped at the edges
    np.testing.assert_array_equal(out[3], [0, 5, 15, 25, 35, 45, 55, 60])
    np.testing.assert_array_equal(out[4], out[3])
    assert not out[:3].any() and not out[5:].any()


@pytest.mark.parametrize(("height", "width", "size"), SHAPES)
def test_constant_image_constant_content_zero_padding(height: int, width: int, size: int) -> None:
    out, box = letterbox_image(np.full((height, width), 173, dtype=np.uint8), size)
    assert out.shape == (size, size) and out.dtype == np.uint8
    content = np.zeros_like(out, dtype=bool)
    content[box.pad_top : box.pad_top + box.new_height, box.pad_left : box.pad_left + box.new_width] = True
    assert (out[content] == 173).all()
    assert (out[~content] == 0).all()
    assert max(box.new_height, box.new_width) == size


@pytest.mark.parametrize(("height", "width", "size"), SHAPES)
def test_boxes_round_trip(height: int, width: int, size: int) -> None:
    box = Letterbox.fit(height, width, size)
    rng = np.random.default_rng(height * 7 + width)
    corners = np.sort(rng.uniform(0, 1, size=(20, 2, 2)), axis=1) * [width, height]
    boxes = corners.reshape(20, 4)
    there = box.boxes_to_letterbox(boxes)
    np.testing.assert_allclose(box.boxes_to_original(there), boxes, atol=1e-6)
    # the whole image maps onto the content area (within the rounding of new_*)
    whole = box.boxes_to_letterbox(np.array([[0, 0, width, height]]))[0]
    expected = [box.pad_left, box.pad_top, box.pad_left + box.new_width, box.pad_top + box.new_height]
    np.testing.assert_allclose(whole, expected, atol=0.5 + 1e-9)


def test_boxes_hand_computed() -> None:
    box = Letterbox.fit(300, 200, 224)
    out = box.boxes_to_letterbox(np.array([[0, 0, 200, 300], [30, 60, 90, 150]]))
    s = 224 / 300
    np.testing.assert_allclose(out, [[37, 0, 37 + 200 * s, 224], [37 + 30 * s, 60 * s, 37 + 90 * s, 150 * s]])
    assert box.boxes_to_letterbox(np.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(DataError, match=r"\[M, 4\]"):
        box.boxes_to_letterbox(np.zeros(4))


@pytest.mark.parametrize(("height", "width", "size"), SHAPES)
def test_drawn_box_stays_aligned(height: int, width: int, size: int) -> None:
    box = Letterbox.fit(height, width, size)
    original = np.array([[0.2 * width, 0.3 * height, 0.7 * width, 0.8 * height]]).round()
    image = _rasterise(original[0], height, width) * np.uint8(255)
    out = box.apply_image(image)
    found = _foreground_bbox(out > 127)
    np.testing.assert_allclose(found, box.boxes_to_letterbox(original)[0], atol=1.0)
    mask = box.apply_mask(image // 255)
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
    np.testing.assert_allclose(_foreground_bbox(mask), found, atol=1.0)


@pytest.mark.parametrize(("height", "width", "size"), SHAPES)
def test_map_to_original_recovers_box(height: int, width: int, size: int) -> None:
    box = Letterbox.fit(height, width, size)
    original = np.array([0.15 * width, 0.25 * height, 0.6 * width, 0.9 * height]).round()
    letterboxed = box.boxes_to_letterbox(original[None])[0]
    heatmap = _rasterise(letterboxed, size, size).astype(np.float32)
    back = box.map_to_original(heatmap)
    assert back.shape == (height, width) and back.dtype == np.float32
    found = _foreground_bbox(back >= 0.5)
    # quantising the box to the letterbox grid moves an edge by <= half a letterbox pixel
    np.testing.assert_allclose(found, original, atol=0.5 / box.scale + 1.0)
    expected = _rasterise(original, height, width).astype(bool)
    recovered = back >= 0.5
    iou = (expected & recovered).sum() / (expected | recovered).sum()
    assert iou > 0.9


def test_map_to_original_ignores_padding_and_accepts_tensors() -> None:
    box = Letterbox.fit(300, 200, 224)
    heatmap = torch.full((224, 224), 99.0, dtype=torch.bfloat16)
    heatmap[:, box.pad_left : box.pad_left + box.new_width] = 0.25
    back = box.map_to_original(heatmap)
    assert back.shape == (300, 200)
    np.testing.assert_allclose(back, 0.25, rtol=1e-6)
    with pytest.raises(DataError, match=r"\[224, 224\]"):
        box.map_to_original(np.zeros((100, 100)))


def test_letterbox_then_map_back_reproduces_smooth_image() -> None:
    yy, xx = np.mgrid[0:400, 0:300]
    image = (127 + 100 * np.sin(xx / 40.0) * np.cos(yy / 50.0)).astype(np.uint8)
    out, box = letterbox_image(image, 224)
    back = box.map_to_original(out.astype(np.float32))
    assert np.abs(back - image).mean() < 1.5


def test_dict_round_trip_through_json() -> None:
    box = Letterbox.fit(2544, 3056, 448)
    restored = Letterbox.from_dict(json.loads(json.dumps(box.to_dict())))
    assert restored == box
    assert restored.scale == 448 / 3056
    with pytest.raises(DataError, match="missing.*pad_left"):
        Letterbox.from_dict({k: v for k, v in box.to_dict().items() if k != "pad_left"})


def test_shape_and_dtype_checks() -> None:
    box = Letterbox.fit(10, 20, 8)
    with pytest.raises(DataError, match=r"shape \[20, 10\].*\[10, 20\]"):
        box.apply_image(np.zeros((20, 10), dtype=np.uint8))
    with pytest.raises(DataError, match="uint8"):
        box.apply_image(np.zeros((10, 20), dtype=np.float32))
    with pytest.raises(DataError, match=r"grey \[H, W\]"):
        letterbox_image(np.zeros((10, 20, 3), dtype=np.uint8), 8)


def _reference_weights(n_out: int, n_in: int, step: float, start: float = 0.0, stop: int | None = None) -> np.ndarray:
    """``[n_out, n_in]`` float64 resampling matrix, written out one output pixel at a time.

    Output ``j`` covers source ``[start + j * step, start + (j + 1) * step)`` clipped to
    ``[start, stop)``: exact area (overlap / covered length) when ``step > 1``, bilinear at the
    interval's centre (half-pixel centres, edges clamped) otherwise.
    """
    stop = n_in if stop is None else stop
    low = int(start)
    weights = np.zeros((n_out, n_in))
    for j in range(n_out):
        if step > 1:
            lo, hi = max(low, start + j * step), min(stop, start + (j + 1) * step)
            for k in range(math.floor(lo), math.ceil(hi)):
                weights[j, k] = min(hi, k + 1) - max(lo, k)
            weights[j] /= hi - lo
        else:
            x = min(max(start + (j + 0.5) * step - 0.5, low), stop - 1)
            k = math.floor(x)
            weights[j, k] += 1 - (x - k)
            weights[j, min(k + 1, stop - 1)] += x - k
    return weights


# odd shapes and scales: integer and fractional factors, strong and tiny downscaling, a single
# row, upscaling, and a 1023 px side whose scale has no short period
REFERENCE_SHAPES = [
    (1024, 1024, 448),
    (1023, 731, 448),
    (1201, 1537, 448),
    (333, 517, 300),
    (512, 384, 256),
    (999, 97, 7),
    (37, 53, 16),
    (5, 3, 2),
    (1, 7, 3),
    (61, 90, 224),
    (17, 5, 64),
]


@pytest.mark.parametrize(("height", "width", "size"), REFERENCE_SHAPES)
def test_apply_image_matches_float64_reference(height: int, width: int, size: int) -> None:
    box = Letterbox.fit(height, width, size)
    rng = np.random.default_rng(height * 31 + width)
    image = rng.integers(0, 256, (height, width), dtype=np.uint8)
    step = 1 / box.scale
    rows = _reference_weights(box.new_height, height, step)
    columns = _reference_weights(box.new_width, width, step)
    exact = rows @ image.astype(np.float64) @ columns.T
    out = box.apply_image(image)
    content = out[box.pad_top : box.pad_top + box.new_height, box.pad_left : box.pad_left + box.new_width].astype(
        np.int64
    )
    diff = content - np.rint(np.clip(exact, 0, 255)).astype(np.int64)
    # the fast path rounds like the reference except where float error decides an exact .5
    assert np.abs(diff).max() <= 1
    assert abs(diff.mean()) < 1e-3 and (diff != 0).mean() < 0.01
    assert np.abs(content - exact).max() <= 0.5 + 1e-3
    padding = np.ones_like(out, dtype=bool)
    padding[box.pad_top : box.pad_top + box.new_height, box.pad_left : box.pad_left + box.new_width] = False
    assert not out[padding].any()


@pytest.mark.parametrize(("height", "width", "size"), REFERENCE_SHAPES)
def test_map_to_original_and_mask_match_reference(height: int, width: int, size: int) -> None:
    box = Letterbox.fit(height, width, size)
    rng = np.random.default_rng(height + 17 * width)
    heatmap = rng.uniform(-1, 1, (size, size))
    rows = _reference_weights(height, size, box.scale, box.pad_top, box.pad_top + box.new_height)
    columns = _reference_weights(width, size, box.scale, box.pad_left, box.pad_left + box.new_width)
    np.testing.assert_allclose(box.map_to_original(heatmap), rows @ heatmap @ columns.T, rtol=1e-5, atol=1e-6)
    mask = rng.integers(0, 3, (height, width), dtype=np.uint8)
    step = 1 / box.scale
    ys = np.minimum(((np.arange(box.new_height) + 0.5) * step).astype(int), height - 1)
    xs = np.minimum(((np.arange(box.new_width) + 0.5) * step).astype(int), width - 1)
    expected = np.zeros((size, size), dtype=np.uint8)
    expected[box.pad_top : box.pad_top + box.new_height, box.pad_left : box.pad_left + box.new_width] = mask[ys][:, xs]
    np.testing.assert_array_equal(box.apply_mask(mask), expected)
