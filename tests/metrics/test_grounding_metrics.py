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
from maco_cxr.metrics.grounding import (
    OPT_TH_THRESHOLDS,
    grounding_metric_table,
    grounding_threshold_metrics,
    select_grounding_thresholds,
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


# --- per-threshold metrics (official eval/metric.py) -----------------------------------------

RAMP = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])  # signed scaling: [-1, -0.5, 0, 0.5, 1]
NAN = float("nan")


def _assert_metrics(out: dict, iou: list, dice: list, precision: list, recall: list) -> None:
    for name, expected in (("iou", iou), ("dice", dice), ("precision", precision), ("recall", recall)):
        np.testing.assert_allclose(out[name], expected, err_msg=name)  # NaN == NaN here


def test_threshold_metrics_by_hand() -> None:
    out = grounding_threshold_metrics(RAMP, np.array([[0, 0, 0, 1, 1]]))
    assert out["thresholds"] == [0.1, 0.2, 0.3, 0.4, 0.5]
    # t <= 0.4: map > t = {3, 4} = mask; t = 0.5: {4}: IoU 1/2, Dice 2*1/(1+2), P 1/1, R 1/2
    _assert_metrics(out, [1, 1, 1, 1, 0.5], [1, 1, 1, 1, 2 / 3], [1] * 5, [1, 1, 1, 1, 0.5])
    # mask {2, 3, 4} at t = 0.1 and 0.5: map {3, 4} -> IoU 2/3, Dice 4/5, P 1, R 2/3; {4} -> 1/3, 1/2, 1, 1/3
    out = grounding_threshold_metrics(RAMP, np.array([[0, 0, 1, 1, 1]]), (0.1, 0.5))
    _assert_metrics(out, [2 / 3, 1 / 3], [0.8, 0.5], [1, 1], [2 / 3, 1 / 3])
    # a mask away from the hot pixels: everything 0, nothing NaN
    out = grounding_threshold_metrics(RAMP, np.array([[1, 1, 0, 0, 0]]), (0.1,))
    _assert_metrics(out, [0], [0], [0], [0])
    # the unit scaling ([0, 1]: 0, .25, .5, .75, 1) moves the cut: map > 0.5 = {3, 4}, not {4}
    out = grounding_threshold_metrics(RAMP, np.array([[0, 0, 0, 1, 1]]), (0.5,), scaling="unit")
    _assert_metrics(out, [1], [1], [1], [1])
    scaled = minmax_to_unit_range(RAMP)
    assert grounding_threshold_metrics(scaled, RAMP > 2, scaling="none") == grounding_threshold_metrics(RAMP, RAMP > 2)


def test_threshold_metrics_every_nan_case() -> None:
    hot = np.array([[0, 0, 0, 1, 1]])
    # empty mask: IoU NaN, recall 0/0 NaN; Dice 0/(2+0) = 0 and precision 0/2 = 0 stay defined
    _assert_metrics(grounding_threshold_metrics(RAMP, np.zeros((1, 5)), (0.1,)), [NAN], [0], [0], [NAN])
    # empty thresholded map (nothing above 1): IoU NaN, precision 0/0 NaN; Dice 0/(0+2) = 0, recall 0/2 = 0
    _assert_metrics(grounding_threshold_metrics(RAMP, hot, (1.0,)), [NAN], [0], [NAN], [0])
    # both empty: every metric is 0/0 -> NaN
    _assert_metrics(grounding_threshold_metrics(RAMP, np.zeros((1, 5)), (1.0,)), [NAN], [NAN], [NAN], [NAN])
    # NaN pixels are left out of the scaling and of every count, even inside the mask
    ramp_nan = np.array([[NAN, 0.0, 1.0, 2.0, 3.0, 4.0]])
    out = grounding_threshold_metrics(ramp_nan, np.array([[1, 0, 0, 0, 1, 1]]), (0.1, 0.5))
    _assert_metrics(out, [1, 0.5], [1, 2 / 3], [1, 1], [1, 0.5])
    # a mask that lies only on NaN pixels is an empty mask
    out = grounding_threshold_metrics(ramp_nan, np.array([[1, 0, 0, 0, 0, 0]]), (0.1,))
    _assert_metrics(out, [NAN], [0], [0], [NAN])
    # a constant map is scaled to zeros (warned), so map > 0.1 is empty
    with pytest.warns(RuntimeWarning, match="constant"):
        out = grounding_threshold_metrics(np.ones((1, 5)), hot, (0.1,))
    _assert_metrics(out, [NAN], [0], [NAN], [0])


def test_threshold_metrics_bad_inputs() -> None:
    with pytest.raises(DataError, match="at least one threshold"):
        grounding_threshold_metrics(RAMP, RAMP > 2, ())
    with pytest.raises(DataError, match="scaling"):
        grounding_threshold_metrics(RAMP, RAMP > 2, scaling="minmax")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="shape"):
        grounding_threshold_metrics(RAMP, np.zeros((2, 5)))


def test_threshold_metrics_iou_matches_miou() -> None:
    rng = np.random.default_rng(1)
    hmap, mask = rng.normal(size=(12, 12)), rng.random((12, 12)) > 0.7
    assert np.mean(grounding_threshold_metrics(hmap, mask)["iou"]) == pytest.approx(grounding_miou(hmap, mask))


# --- the official metric.csv table -------------------------------------------------------------


def _m(iou: list, dice: list, precision: list, recall: list, thresholds: tuple = (0.1, 0.5)) -> dict:
    return {"thresholds": list(thresholds), "iou": iou, "dice": dice, "precision": precision, "recall": recall}


TABLE_ROWS = [
    ("a", _m([1.0, 0.5], [1.0, 2 / 3], [1.0, 1.0], [1.0, 0.5]), 2.0, True),
    ("a", _m([NAN, 0.25], [0.0, 0.4], [NAN, 0.5], [0.0, 0.2]), 1.0, False),
    ("b", _m([0.5, 0.0], [0.6, 0.0], [0.5, 0.0], [0.75, 0.0]), -1.0, True),
    ("c", _m([NAN, 0.2], [0.2, 0.2], [0.2, 0.2], [0.2, 0.2]), 0.0, False),
]


def test_metric_table_by_hand() -> None:
    with pytest.warns(RuntimeWarning, match="2 iou, 1 precision"):
        table = grounding_metric_table(TABLE_ROWS)
    assert list(table) == [
        "threshold",
        "iou",
        "cnr",
        "pg",
        "dice",
        "recall",
        "precision",
        "iou_cat",
        "cnr_cat",
        "pg_cat",
        "dice_cat",
        "recall_cat",
        "precision_cat",
        "iou_a",
        "iou_b",
        "iou_c",
        "cnr_a",
        "cnr_b",
        "cnr_c",
        "pg_a",
        "pg_b",
        "pg_c",
        "dice_a",
        "dice_b",
        "dice_c",
    ]
    assert table["threshold"] == [0.1, 0.5, "mean"]

    def check(column: str, expected: list) -> None:
        np.testing.assert_allclose(table[column], expected, err_msg=column)

    # overall: plain mean over the 4 items (one NaN -> NaN, as np.mean); last row: mean of the rows
    check("iou", [NAN, (0.5 + 0.25 + 0 + 0.2) / 4, NAN])
    check("cnr", [0.5, 0.5, 0.5])  # (2 + 1 - 1 + 0) / 4 at every threshold
    check("pg", [0.5, 0.5, 0.5])
    check("dice", [1.8 / 4, (2 / 3 + 0.6) / 4, (1.8 / 4 + (2 / 3 + 0.6) / 4) / 2])
    check("recall", [1.95 / 4, 0.9 / 4, (1.95 / 4 + 0.9 / 4) / 2])
    check("precision", [NAN, 1.7 / 4, NAN])
    # _cat: mean over categories of the NaN-skipping category means (c is NaN at 0.1 and skipped)
    check("iou_cat", [(1 + 0.5) / 2, (0.375 + 0 + 0.2) / 3, ((1 + 0.5) / 2 + 0.575 / 3) / 2])
    check("cnr_cat", [1 / 6] * 3)  # (1.5 - 1 + 0) / 3
    check("pg_cat", [0.5] * 3)  # (0.5 + 1 + 0) / 3
    check("dice_cat", [1.3 / 3, (8 / 15 + 0 + 0.2) / 3, (1.3 / 3 + (8 / 15 + 0.2) / 3) / 2])
    check("recall_cat", [1.45 / 3, 0.55 / 3, (1.45 / 3 + 0.55 / 3) / 2])
    check("precision_cat", [1.7 / 3, 0.95 / 3, (1.7 / 3 + 0.95 / 3) / 2])
    # per category: NaN-skipping means; the last row skips NaN too (pandas mean)
    check("iou_a", [1.0, 0.375, 0.6875])
    check("iou_b", [0.5, 0.0, 0.25])
    check("iou_c", [NAN, 0.2, 0.2])
    check("cnr_a", [1.5] * 3)
    check("cnr_b", [-1.0] * 3)
    check("pg_a", [0.5] * 3)
    check("pg_c", [0.0] * 3)
    check("dice_a", [0.5, 8 / 15, (0.5 + 8 / 15) / 2])
    check("dice_b", [0.6, 0.0, 0.3])


def test_metric_table_rounding_and_errors() -> None:
    with pytest.warns(RuntimeWarning):
        table = grounding_metric_table(TABLE_ROWS, decimals=3)
    assert table["iou_cat"][1] == 0.192 and table["dice_a"][1] == 0.533 and table["threshold"][-1] == "mean"
    with pytest.raises(DataError, match="no rows"):
        grounding_metric_table([])
    other = [TABLE_ROWS[0], ("a", _m([1.0], [1.0], [1.0], [1.0], thresholds=(0.3,)), 0.0, True)]
    with pytest.raises(DataError, match="row 1 has thresholds"):
        grounding_metric_table(other)
    with pytest.raises(DataError, match="no 'dice'"):
        grounding_metric_table([("a", {"thresholds": [0.1], "iou": [1.0]}, 0.0, True)])
    with pytest.raises(DataError, match="2 values for 1 thresholds"):
        grounding_metric_table([("a", _m([1.0, 1.0], [1.0], [1.0], [1.0], thresholds=(0.1,)), 0.0, True)])


def test_metric_table_from_maps() -> None:
    # two real items: the table's per-category IoU is each item's per-threshold IoU
    mask_a, mask_b = np.array([[0, 0, 0, 1, 1]]), np.array([[0, 0, 1, 1, 1]])
    rows = [
        ("a", grounding_threshold_metrics(RAMP, mask_a), grounding_cnr(RAMP, mask_a), pointing_game(RAMP, mask_a)),
        ("b", grounding_threshold_metrics(RAMP, mask_b), grounding_cnr(RAMP, mask_b), pointing_game(RAMP, mask_b)),
    ]
    table = grounding_metric_table(rows)
    np.testing.assert_allclose(table["iou_a"], [1, 1, 1, 1, 0.5, 0.9])
    np.testing.assert_allclose(table["iou_b"], [2 / 3] * 4 + [1 / 3, 0.6])
    assert table["iou"][-1] == pytest.approx((grounding_miou(RAMP, mask_a) + grounding_miou(RAMP, mask_b)) / 2)
    assert table["pg"] == [1.0] * 6


# --- per-category threshold selection (official get_opt_th, first stage) -----------------------


def _t(iou: list, precision: list | None = None, recall: list | None = None) -> dict:
    """Per-threshold metrics at (0.2, 0.4, 0.6); precision/recall default to defined values."""
    precision = precision if precision is not None else [0.5] * 3
    recall = recall if recall is not None else [0.5] * 3
    dice = [0.1, 0.2, 0.3]
    return {"thresholds": [0.2, 0.4, 0.6], "iou": iou, "dice": dice, "precision": precision, "recall": recall}


VAL_ROWS = [
    ("a", _t([0.2, 0.5, 0.4])),
    ("a", _t([0.4, 0.3, NAN])),  # a: NaN-skipping means [0.3, 0.4, 0.4]: tie -> first, 0.4
    ("b", _t([0.6, 0.1, 0.0])),  # b: 0.2
    ("c", _t([NAN, NAN, NAN])),  # c: undefined everywhere -> first threshold, warned
]
TEST_ROWS = [
    ("a", _t([0.9, 0.7, 0.1], precision=[0.25, 0.75, 1.0])),
    ("a", _t([NAN] * 3, precision=[NAN] * 3, recall=[0.0] * 3)),  # empty map, mask present
    ("b", _t([0.3, 0.2, 0.1])),
    ("b", _t([NAN] * 3, precision=[0.0] * 3, recall=[NAN] * 3)),  # empty mask, map present
    ("b", _t([NAN] * 3, precision=[NAN] * 3, recall=[NAN] * 3)),  # both empty
    ("c", _t([0.8, 0.0, 0.0])),
    ("c", _t([0.5, 0.0, 0.0])),
]


def test_select_thresholds_by_hand() -> None:
    with pytest.warns(RuntimeWarning, match="'c'"):
        result = select_grounding_thresholds(VAL_ROWS, TEST_ROWS)
    a, b, c = (result["per_category"][k] for k in "abc")
    assert (a["threshold"], a["val_iou"], a["n_val"], a["n_test"]) == (0.4, pytest.approx(0.4), 2, 2)
    assert (b["threshold"], b["val_iou"], b["n_test"]) == (0.2, 0.6, 3)
    assert c["threshold"] == 0.2 and np.isnan(c["val_iou"])
    # test figures at the chosen index: a at 0.4 (the NaN item skipped), b and c at 0.2
    assert (a["iou"], a["precision"], a["recall"], a["dice"]) == pytest.approx((0.7, 0.75, (0.5 + 0.0) / 2, 0.2))
    assert (b["iou"], b["precision"], b["recall"]) == pytest.approx((0.3, 0.25, 0.5))
    assert c["iou"] == pytest.approx(0.65)
    # items: (0.7 + 0.3 + 0.8 + 0.5) / 4; categories: (0.7 + 0.3 + 0.65) / 3
    assert result["iou"] == pytest.approx(2.3 / 4) and result["iou_cat"] == pytest.approx(1.65 / 3)
    assert result["mean"]["threshold"] == pytest.approx(0.8 / 3)
    assert result["mean"]["val_iou"] == pytest.approx(0.5)  # (0.4 + 0.6) / 2, c skipped
    assert result["n_test"] == 7


def test_select_thresholds_union_rule() -> None:
    # compute_iou(only_pos=False): 0 when exactly one of map and mask is empty, NaN when both are
    with pytest.warns(RuntimeWarning):
        result = select_grounding_thresholds(VAL_ROWS, TEST_ROWS, test_iou_rule="union")
    per = result["per_category"]
    assert (per["a"]["iou"], per["b"]["iou"], per["c"]["iou"]) == pytest.approx((0.35, 0.15, 0.65))
    assert result["iou"] == pytest.approx(2.3 / 6)  # the both-empty item stays NaN and is skipped
    # the selection itself does not change
    assert per["a"]["threshold"] == 0.4 and per["a"]["val_iou"] == pytest.approx(0.4)


def test_select_thresholds_on_maps() -> None:
    # unit-scaled ramp k / 9 with the mask on the top three pixels: over OPT_TH_THRESHOLDS the IoU
    # is 3/8, 3/7, 1/2, 3/5, 3/4, 1 (map > 0.7 = {7, 8, 9}), 2/3 (map > 0.8000000000000003 = {8, 9})
    assert len(OPT_TH_THRESHOLDS) == 7 and OPT_TH_THRESHOLDS[-1] > 0.8
    ramp = np.arange(10.0)[None]
    val = [("opacity", grounding_threshold_metrics(ramp, ramp >= 7, OPT_TH_THRESHOLDS, scaling="unit"))]
    np.testing.assert_allclose(val[0][1]["iou"], [3 / 8, 3 / 7, 1 / 2, 3 / 5, 3 / 4, 1, 2 / 3])
    test = [("opacity", grounding_threshold_metrics(ramp, ramp >= 8, OPT_TH_THRESHOLDS, scaling="unit"))]
    result = select_grounding_thresholds(val, test)
    chosen = result["per_category"]["opacity"]
    assert chosen["threshold"] == pytest.approx(0.7) and chosen["val_iou"] == 1.0
    assert chosen["iou"] == pytest.approx(2 / 3) and chosen["recall"] == 1.0  # map {7, 8, 9} vs mask {8, 9}


def test_select_thresholds_errors() -> None:
    with pytest.raises(DataError, match=r"\['d'\] have no validation rows"):
        select_grounding_thresholds(VAL_ROWS[:3], [("d", _t([0.1, 0.2, 0.3]))])
    other = {**_t([0.1, 0.2, 0.3]), "thresholds": [0.1, 0.2, 0.3]}
    with pytest.raises(DataError, match="same thresholds"):
        select_grounding_thresholds(VAL_ROWS[:3], [("a", other)])
    with pytest.raises(DataError, match="test_iou_rule"):
        select_grounding_thresholds(VAL_ROWS[:3], TEST_ROWS, test_iou_rule="any")  # type: ignore[arg-type]
