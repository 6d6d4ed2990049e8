"""The three named Dice figures against hand-counted pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maco_cxr.errors import DataError
from maco_cxr.metrics import (
    dice_foreground_dataset,
    dice_mean_over_classes,
    dice_per_image_mean,
    segmentation_report,
)

# Four images of different sizes.
PREDS = [
    np.array([[1, 1], [0, 0]]),  # A
    np.zeros((2, 2), dtype=np.uint8),  # B
    np.pad(np.ones((1, 1), dtype=bool), ((0, 2), (0, 2))),  # C: 3x3, one pixel at (0, 0)
    np.zeros((1, 2)),  # D
]
TARGETS = [
    np.array([[1, 0], [0, 0]]),
    np.zeros((2, 2)),
    np.zeros((3, 3)),
    np.ones((1, 2)),
]
# Per image: A 2*1/(2+1) = 2/3; B empty/empty = 1; C empty truth, non-empty pred = 0; D 2*0/(0+2) = 0
PER_IMAGE = (2 / 3 + 1 + 0 + 0) / 4
# Foreground pooled: intersection 1, |P| 2+0+1+0 = 3, |T| 1+0+0+2 = 3 -> 2/6
FOREGROUND = 2 / 6
# Background pooled: intersection 2+4+8+0 = 14, |P| 2+4+8+2 = 16, |T| 3+4+9+0 = 16 -> 28/32
BACKGROUND = 28 / 32


def test_three_dice_figures_by_hand() -> None:
    assert dice_per_image_mean(PREDS, TARGETS) == pytest.approx(PER_IMAGE)
    assert dice_foreground_dataset(PREDS, TARGETS) == pytest.approx(FOREGROUND)
    assert dice_mean_over_classes(PREDS, TARGETS) == pytest.approx((FOREGROUND + BACKGROUND) / 2)
    report = segmentation_report(PREDS, TARGETS)
    assert report == {
        "dice_per_image_mean": pytest.approx(PER_IMAGE),
        "dice_foreground_dataset": pytest.approx(FOREGROUND),
        "dice_background_dataset": pytest.approx(BACKGROUND),
        "dice_mean_over_classes": pytest.approx((FOREGROUND + BACKGROUND) / 2),
        "n_images": 4,
        "n_empty_targets": 2,
    }


def test_stacked_array_and_torch_inputs() -> None:
    preds = np.stack([PREDS[0], PREDS[1]])
    targets = torch.from_numpy(np.stack([TARGETS[0], TARGETS[1]]))
    # A 2/3 and B 1 -> 5/6; foreground pooled 2*1/(2+1)
    assert dice_per_image_mean(preds, targets) == pytest.approx(5 / 6)
    assert dice_foreground_dataset(torch.from_numpy(preds), targets) == pytest.approx(2 / 3)


def test_ignored_pixels_leave_every_count() -> None:
    # the predicted pixel at (0, 1) is padding in the target: A becomes a perfect match
    target = np.array([[1, 255], [0, 0]])
    assert dice_per_image_mean([PREDS[0]], [target]) == 1.0
    assert dice_foreground_dataset([PREDS[0]], [target]) == 1.0
    # background: |P| 2, |T| 2, both 2 -> 1, so the class mean is 1 as well
    assert dice_mean_over_classes([PREDS[0]], [target]) == 1.0
    with pytest.raises(DataError, match="255"):
        dice_per_image_mean([PREDS[0]], [target], ignore_index=None)


def test_all_empty() -> None:
    empty = [np.zeros((3, 3)), np.zeros((2, 2))]
    assert dice_per_image_mean(empty, empty) == 1.0
    assert np.isnan(dice_foreground_dataset(empty, empty))  # 0/0: no foreground anywhere
    assert dice_mean_over_classes(empty, empty) == 1.0  # background 1, foreground NaN skipped
    # all-foreground truth, empty prediction: both figures 0, background 0/0 skipped
    assert dice_mean_over_classes([np.zeros((2, 2))], [np.ones((2, 2))]) == 0.0


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="threshold"):
        dice_per_image_mean([np.full((2, 2), 0.7)], [np.zeros((2, 2))])
    with pytest.raises(DataError, match="2 predicted masks but 1"):
        dice_per_image_mean(PREDS[:2], TARGETS[:1])
    with pytest.raises(DataError, match="shape"):
        dice_per_image_mean([np.zeros((2, 2))], [np.zeros((2, 3))])
    with pytest.raises(DataError, match="at least one image"):
        dice_per_image_mean([], [])
    with pytest.raises(DataError, match=r"\[N, H, W\]"):
        dice_per_image_mean(np.zeros((2, 2)), np.zeros((2, 2)))
