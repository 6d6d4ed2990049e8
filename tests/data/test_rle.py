"""SIIM run-length encoding: hand-made cases, the official decoder, round trips, errors."""

from __future__ import annotations

import numpy as np
import pytest

from maco_cxr.data.rle import rle_decode, rle_encode, rle_runs
from maco_cxr.errors import DataError

# Column-major flattening of HAND: col0 = 0 1 1 0, col1 = 0 0 0 0, col2 = 0 0 0 1,
# col3 = 0 1 1 0 -> runs start at 1 (len 2, ends at 3), 11 (offset 8, len 1, ends at 12),
# 13 (offset 1, len 2).
HAND = np.array(
    [
        [0, 0, 0, 0],
        [1, 0, 0, 1],
        [1, 0, 0, 1],
        [0, 0, 1, 0],
    ],
    dtype=np.uint8,
)
HAND_RLE = "1 2 8 1 1 2"


def official_rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The SIIM challenge's reference decoder (mask_functions.rle2mask), then ``.T``."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts, lengths = array[0::2], array[1::2]
    position = 0
    for start, length in zip(starts, lengths, strict=True):
        position += start
        mask[position : position + length] = 255
        position += length
    return (mask.reshape(width, height).T > 0).astype(np.uint8)


def test_hand_made_case() -> None:
    assert rle_encode(HAND) == HAND_RLE
    np.testing.assert_array_equal(rle_decode(HAND_RLE, 4, 4), HAND)
    np.testing.assert_array_equal(rle_runs(HAND_RLE), [[1, 2], [8, 1], [1, 2]])


def test_non_square_orientation() -> None:
    # 2 rows x 3 columns; column-major order is (0,0), (1,0), (0,1), (1,1), (0,2), (1,2).
    mask = rle_decode("2 1", 2, 3)
    np.testing.assert_array_equal(mask, [[0, 1, 0], [0, 0, 0]])
    assert rle_encode(mask) == "2 1"


@pytest.mark.parametrize("empty", ["-1", " -1", "", "  "])
def test_empty(empty: str) -> None:
    np.testing.assert_array_equal(rle_decode(empty, 3, 5), np.zeros((3, 5), np.uint8))
    assert rle_encode(np.zeros((3, 5), np.uint8)) == "-1"


def test_run_to_the_last_pixel() -> None:
    mask = np.zeros((3, 3), np.uint8)
    mask[:, 2] = 1
    assert rle_encode(mask) == "6 3"
    np.testing.assert_array_equal(rle_decode("6 3", 3, 3), mask)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (16, 9), (32, 32)])
def test_round_trip_and_official_decoder(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for density in (0.1, 0.5, 0.9):
        mask = (rng.random(shape) < density).astype(np.uint8)
        rle = rle_encode(mask)
        np.testing.assert_array_equal(rle_decode(rle, *shape), mask)
        if mask.any():
            np.testing.assert_array_equal(official_rle2mask(rle, shape[1], shape[0]), mask)


def test_nonzero_values_are_foreground() -> None:
    assert rle_encode(HAND * 255) == HAND_RLE


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "pairs"),
        ("1 x", "'x' is not an integer"),
        ("1 -2", "negative"),
    ],
)
def test_malformed(rle: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        rle_decode(rle, 4, 4)


def test_runs_beyond_the_image() -> None:
    with pytest.raises(DataError, match=r"end at pixel 17 .* 16 pixels"):
        rle_decode("10 7", 4, 4)
    with pytest.raises(DataError, match="2-D"):
        rle_encode(np.zeros(4))
