"""COCO AP on constructed cases whose precision-recall curves are known."""

from __future__ import annotations

import numpy as np
import pytest

from maco_cxr.errors import DataError
from maco_cxr.metrics import coco_detection_ap

BOX = [10.0, 10.0, 110.0, 110.0]
NONE = np.zeros((0, 4))


def _pred(boxes: list[list[float]], scores: list[float]) -> dict[str, np.ndarray]:
    return {"boxes": np.asarray(boxes, dtype=float).reshape(-1, 4), "scores": np.asarray(scores, dtype=float)}


def test_perfect_predictions() -> None:
    result = coco_detection_ap([_pred([BOX], [0.9]), _pred([BOX], [0.8])], [np.array([BOX]), np.array([BOX])])
    assert result == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_images_without_boxes_change_nothing() -> None:
    preds = [_pred([BOX], [0.9]), _pred([], [])]
    truths = [np.array([BOX]), {"boxes": NONE}]
    assert coco_detection_ap(preds, truths) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_one_of_two_boxes_found() -> None:
    # recall reaches 1/2 at precision 1: the 101-point curve is 1 at recall 0, 0.01, ..., 0.50
    # (51 points) and 0 beyond -> 51/101 at every IoU threshold
    other = [200.0, 200.0, 260.0, 260.0]
    result = coco_detection_ap([_pred([BOX], [0.9])], [np.array([BOX, other])])
    assert result == pytest.approx({"AP": 51 / 101, "AP50": 51 / 101, "AP75": 51 / 101})


def test_iou_062_counts_at_ap50_not_ap75() -> None:
    # gt 100x100, prediction 100x62 inside it: IoU 0.62 -> matched at thresholds 0.50, 0.55, 0.60
    # of the ten 0.50:0.95 -> AP 3/10
    result = coco_detection_ap([_pred([[0, 0, 100, 62]], [0.9])], [np.array([[0.0, 0.0, 100.0, 100.0]])])
    assert result == pytest.approx({"AP": 0.3, "AP50": 1.0, "AP75": 0.0})


def test_false_positive_ranked_first_halves_precision() -> None:
    # scores: FP 0.9 (image without truth), TP 0.8 -> precision 1/2 at recall 1, interpolated
    # precision 1/2 at every recall -> AP 0.5; ranked last it costs nothing -> AP 1
    truths = [np.array([BOX]), NONE]
    assert coco_detection_ap([_pred([BOX], [0.8]), _pred([BOX], [0.9])], truths)["AP50"] == pytest.approx(0.5)
    assert coco_detection_ap([_pred([BOX], [0.8]), _pred([BOX], [0.7])], truths)["AP50"] == pytest.approx(1.0)


def test_no_truth_or_no_predictions() -> None:
    nothing = coco_detection_ap([_pred([BOX], [0.5])], [NONE])
    assert all(np.isnan(v) for v in nothing.values())
    assert coco_detection_ap([_pred([], [])], [np.array([BOX])]) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    coco_detection_ap([_pred([BOX], [0.9])], [np.array([BOX])])
    assert capsys.readouterr().out == ""


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="1 prediction entries but 2"):
        coco_detection_ap([_pred([BOX], [0.9])], [NONE, NONE])
    with pytest.raises(DataError, match="2 scores for 1 boxes"):
        coco_detection_ap([_pred([BOX], [0.9, 0.8])], [NONE])
    with pytest.raises(DataError, match="need 'boxes' and 'scores'"):
        coco_detection_ap([{"boxes": np.array([BOX])}], [NONE])
    with pytest.raises(DataError, match="x_max < x_min"):
        coco_detection_ap([_pred([[5, 5, 1, 9]], [0.9])], [NONE])
