"""Grounding metrics: hand-computed CNR / mIoU / pointing game, and the official fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maco_cxr.errors import DataError
from maco_cxr.metrics import (
    GroundingScores,
    boxes_to_mask,
    grounding_cnr,
    grounding_miou,
    minmax_to_unit_range,
    pointing_game,
    score_grounding,
    summarise_grounding,
)

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "official-maco-tiny"
RAW = np.array([[0.0, 1.0], [2.0, 4.0]])  # min-max to [-1, 1]: [[-1, -0.5], [0, 1]]


def test_minmax_by_hand() -> None:
    np.testing.assert_allclose(minmax_to_unit_range(RAW), [[-1.0, -0.5], [0.0, 1.0]])
    with_nan = minmax_to_unit_range(np.array([[np.nan, 2.0], [3.0, 6.0]]))
    assert np.isnan(with_nan[0, 0])
    np.testing.assert_allclose(with_nan.ravel()[1:], [-1.0, -0.5, 1.0])  # (x - 2) / 4 * 2 - 1


def test_minmax_constant_and_empty() -> None:
    with pytest.warns(RuntimeWarning, match="constant"):
        np.testing.assert_array_equal(minmax_to_unit_range(np.full((2, 3), 7.0)), np.zeros((2, 3)))
    with pytest.raises(DataError, match="no finite value"):
        minmax_to_unit_range(np.full((2, 2), np.nan))


def test_cnr_by_hand() -> None:
    # mask on the 1: inside [1] (var 0); outside [-1, -0.5, 0]: mean -0.5, var (0.25 + 0 + 0.25) / 3
    # CNR = (1 + 0.5) / sqrt(1/6) = 1.5 * sqrt(6)
    mask = np.array([[0, 0], [0, 1]])
    assert grounding_cnr(RAW, mask) == pytest.approx(1.5 * np.sqrt(6))
    scaled = minmax_to_unit_range(RAW)
    assert grounding_cnr(scaled, mask, normalise=False) == pytest.approx(1.5 * np.sqrt(6))
    # signed: mask on the -1: outside [-0.5, 0, 1] mean 1/6, var ((2/3)^2 + (1/6)^2 + (5/6)^2) / 3 = 7/18
    # CNR = (-1 - 1/6) / sqrt(7/18)
    assert grounding_cnr(RAW, np.array([[1, 0], [0, 0]])) == pytest.approx(-(7 / 6) / np.sqrt(7 / 18))


def test_cnr_edge_cases() -> None:
    # zero variance on both sides: 0 (the official rule), whatever the mean difference
    assert grounding_cnr(np.array([[0.0, 0.0], [0.0, 1.0]]), np.array([[0, 0], [0, 1]])) == 0.0
    assert np.isnan(grounding_cnr(RAW, np.zeros((2, 2))))  # empty mask
    assert np.isnan(grounding_cnr(RAW, np.ones((2, 2))))  # nothing outside
    # a NaN pixel is left out: same value as the map without it
    with_nan = np.array([[np.nan, 0.0, 1.0], [np.nan, 2.0, 4.0]])
    mask = np.array([[1, 0, 0], [1, 0, 1]])
    assert grounding_cnr(with_nan, mask) == pytest.approx(1.5 * np.sqrt(6))
    with pytest.raises(DataError, match="shape"):
        grounding_cnr(RAW, np.zeros((3, 2)))


def test_miou_by_hand() -> None:
    ramp = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])  # scaled: [-1, -0.5, 0, 0.5, 1]
    # mask {3, 4}: t = 0.1..0.4 -> map > t = {3, 4}, IoU 1; t = 0.5 -> {4}, IoU 1/2 -> (4 + 0.5) / 5
    assert grounding_miou(ramp, np.array([[0, 0, 0, 1, 1]])) == pytest.approx(0.9)
    # mask {2, 3, 4}: IoU 2/3 four times and 1/3 once -> (8/3 + 1/3) / 5 = 0.6
    assert grounding_miou(ramp, np.array([[0, 0, 1, 1, 1]])) == pytest.approx(0.6)
    assert grounding_miou(ramp, np.array([[0, 0, 1, 1, 1]]), thresholds=(0.0,)) == pytest.approx(2 / 3)
    # NaN pixels are left out, even inside the mask
    ramp_nan = np.array([[np.nan, 0.0, 1.0, 2.0, 3.0, 4.0]])
    assert grounding_miou(ramp_nan, np.array([[1, 0, 0, 0, 1, 1]])) == pytest.approx(0.9)


def test_miou_nan_cases() -> None:
    assert np.isnan(grounding_miou(RAW, np.zeros((2, 2))))  # empty box mask: NaN at every threshold
    with pytest.warns(RuntimeWarning, match="constant"):
        assert np.isnan(grounding_miou(np.ones((2, 2)), np.eye(2)))  # map > t empty everywhere
    # NaN at one threshold only (t = 1.0 is never exceeded) makes the mean NaN
    assert np.isnan(grounding_miou(RAW, np.eye(2), thresholds=(0.5, 1.0)))


def test_pointing_game() -> None:
    assert pointing_game(RAW, np.array([[0, 0], [0, 1]]))
    assert not pointing_game(RAW, np.array([[1, 1], [1, 0]]))
    assert pointing_game(np.array([[4.0, 0.0], [0.0, 4.0]]), np.array([[0, 0], [0, 1]]))  # ties count
    assert not pointing_game(RAW, np.zeros((2, 2)))
    assert not pointing_game(np.array([[np.nan, 1.0], [0.0, 0.0]]), np.array([[1, 0], [0, 0]]))


def test_score_grounding_matches_single_metrics() -> None:
    rng = np.random.default_rng(0)
    hmap, mask = rng.normal(size=(16, 16)), np.zeros((16, 16), dtype=bool)
    mask[3:9, 4:12] = True
    scores = score_grounding(torch.from_numpy(hmap), torch.from_numpy(mask))
    assert scores == GroundingScores(
        cnr=pytest.approx(grounding_cnr(hmap, mask)),
        miou=pytest.approx(grounding_miou(hmap, mask)),
        pointing=pointing_game(hmap, mask),
    )


def test_boxes_to_mask_rule() -> None:
    expected = np.zeros((3, 4), dtype=bool)
    expected[0:2, 1:3] = True
    np.testing.assert_array_equal(boxes_to_mask([1, 0, 3, 2], 3, 4), expected)
    np.testing.assert_array_equal(boxes_to_mask([[1, 0, 2, 2]], 3, 4, box_format="xywh"), expected)
    # floats: start floor(0.6) = 0, width floor(3.5 - 0.6) = 2 -> columns 0, 1 (not 0..2);
    # rows: floor(0.2) = 0, height floor(2.4 - 0.2) = 2 -> rows 0, 1
    expected = np.zeros((3, 4), dtype=bool)
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(boxes_to_mask([0.6, 0.2, 3.5, 2.4], 3, 4), expected)
    # a width a hair below an integer (float error) counts as that integer: 3 columns
    assert boxes_to_mask([0.1, 0.0, 3.1 - 1e-12, 1.0], 1, 5).sum() == 3


def test_boxes_to_mask_union_clip_and_empty() -> None:
    mask = boxes_to_mask(np.array([[-2, -2, 2, 2], [3, 3, 9, 9], [7, 7, 8, 8]]), 5, 5)
    expected = np.zeros((5, 5), dtype=bool)
    expected[0:2, 0:2] = True
    expected[3:5, 3:5] = True
    np.testing.assert_array_equal(mask, expected)
    assert not boxes_to_mask(np.zeros((0, 4)), 4, 4).any()
    with pytest.raises(DataError, match="negative width"):
        boxes_to_mask([3, 0, 1, 2], 4, 4)
    with pytest.raises(DataError, match=r"\[M, 4\]"):
        boxes_to_mask(np.zeros((2, 3)), 4, 4)


def test_official_fixture_reproduced() -> None:
    inputs = np.load(FIXTURE / "inputs.npz")
    expected = np.load(FIXTURE / "expected.npz")
    for k, box in enumerate(inputs["ground_boxes_xywh"]):
        mask = boxes_to_mask(box, 224, 224, box_format="xywh")
        x, y, w, h = box
        assert mask.sum() == w * h and mask[y, x] and mask[y + h - 1, x + w - 1] and not mask[y + h, x]
        heatmap = expected["ground_heatmap"][k]
        np.testing.assert_allclose(minmax_to_unit_range(heatmap), expected["ground_heatmap_norm"][k], atol=1e-4)
        assert grounding_cnr(heatmap, mask) == pytest.approx(expected["ground_cnr"][k], abs=1e-4)
        assert grounding_miou(heatmap, mask) == pytest.approx(expected["ground_miou"][k], abs=1e-4)
    assert expected["ground_miou"][1] > 0  # the second item exercises a non-trivial IoU


def test_summarise_grounding_by_hand() -> None:
    items = [("a", 1.0, 0.5, True), ("a", 3.0, float("nan"), False), ("b", -1.0, 0.1, False)]
    with pytest.warns(RuntimeWarning, match="1 mIoU"):
        summary = summarise_grounding(items)
    # items: CNR (1 + 3 - 1) / 3 = 1; mIoU NaN skipped -> (0.5 + 0.1) / 2 = 0.3; pointing 1/3
    assert (summary["n"], summary["cnr"], summary["miou"]) == (3, pytest.approx(1.0), pytest.approx(0.3))
    assert summary["pointing"] == pytest.approx(1 / 3)
    assert (summary["n_nan_cnr"], summary["n_nan_miou"]) == (0, 1)
    assert summary["per_category"]["a"] == {"n": 2, "cnr": 2.0, "miou": 0.5, "pointing": 0.5}
    assert summary["per_category"]["b"] == {"n": 1, "cnr": -1.0, "miou": pytest.approx(0.1), "pointing": 0.0}
    # categories: CNR (2 - 1) / 2, mIoU (0.5 + 0.1) / 2, pointing (0.5 + 0) / 2
    assert summary["category_mean"] == {"cnr": 0.5, "miou": pytest.approx(0.3), "pointing": 0.25}
    with pytest.raises(DataError, match="no items"):
        summarise_grounding([])
