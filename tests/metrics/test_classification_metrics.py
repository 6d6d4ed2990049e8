"""Classification metrics against hand-computed AUC, accuracy, weighted and macro F1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maco_cxr.errors import DataError
from maco_cxr.metrics import classification_report, roc_auc_per_class, roc_curve_points

NAN = np.nan
# Three classes, four images. Class 2 has only negative labels; class 1 has one unknown label.
Y_TRUE = np.array(
    [
        [0, 1, 0],
        [0, NAN, 0],
        [1, 0, 0],
        [1, 1, 0],
    ]
)
Y_SCORE = np.array(
    [
        [0.10, 0.9, 0.5],
        [0.40, 0.0, 0.6],
        [0.35, 0.2, 0.2],
        [0.80, 0.1, 0.1],
    ]
)


def test_auc_per_class_by_hand() -> None:
    # class 0: positive/negative pairs (0.35 vs 0.10 yes, 0.35 vs 0.40 no, 0.80 vs both yes) -> 3/4
    # class 1: row 1 unknown; pairs (0.9 vs 0.2 yes, 0.1 vs 0.2 no) -> 1/2
    # class 2: negatives only -> undefined
    with pytest.warns(RuntimeWarning, match="class 2"):
        aucs = roc_auc_per_class(Y_TRUE, Y_SCORE)
    np.testing.assert_allclose(aucs[:2], [0.75, 0.5])
    assert np.isnan(aucs[2])


def test_report_by_hand() -> None:
    with pytest.warns(RuntimeWarning, match="hernia"):
        report = classification_report(Y_TRUE, Y_SCORE, ["a", "b", "hernia"])
    a, b, c = (report["per_class"][k] for k in ("a", "b", "hernia"))
    # ACC, positive iff score > 0.5 (0.5 itself is negative, as np.round in the official code):
    # a: pred [0,0,0,1] vs [0,0,1,1] -> 3/4; b (known rows 0,2,3): pred [1,0,0] vs [1,0,1] -> 2/3;
    # hernia: pred [0,1,0,0] vs [0,0,0,0] -> 3/4
    assert (a["acc"], b["acc"], c["acc"]) == pytest.approx((0.75, 2 / 3, 0.75))
    # weighted F1. a: label 0 P=2/3 R=1 F1=0.8, label 1 P=1 R=1/2 F1=2/3, supports 2/2 -> 0.7333
    # b: label 0 P=1/2 R=1 F1=2/3 (support 1), label 1 P=1 R=1/2 F1=2/3 (support 2) -> 2/3
    # hernia: label 0 P=1 R=3/4 F1=6/7 (support 4), label 1 support 0 -> 6/7
    weighted = ((0.8 + 2 / 3) / 2, 2 / 3, 6 / 7)
    assert (a["f1_weighted"], b["f1_weighted"], c["f1_weighted"]) == pytest.approx(weighted)
    # macro F1: the unweighted mean of the same two label F1s. a and b as above (equal F1s or
    # supports); hernia: label 1 is predicted once, P = 0/1, so F1_1 = 0 -> (6/7 + 0) / 2
    macro = ((0.8 + 2 / 3) / 2, 2 / 3, 3 / 7)
    assert (a["f1_macro"], b["f1_macro"], c["f1_macro"]) == pytest.approx(macro)
    assert "f1" not in a and "mean_f1" not in report  # renamed: say which F1
    assert (a["n"], a["n_pos"], b["n"], b["n_pos"], c["n_pos"]) == (4, 2, 3, 2, 0)
    assert report["mean_auc"] == pytest.approx((0.75 + 0.5) / 2)  # NaN class skipped
    assert report["mean_acc"] == pytest.approx((0.75 + 2 / 3 + 0.75) / 3)
    assert report["mean_f1_weighted"] == pytest.approx(sum(weighted) / 3)
    assert report["mean_f1_macro"] == pytest.approx(sum(macro) / 3)
    assert report["threshold"] == 0.5


def test_f1_macro_all_negative_class() -> None:
    # labels and predictions all negative: only label 0 is present, its F1 is 1 -> macro 1 (sklearn)
    with pytest.warns(RuntimeWarning, match="undefined"):
        report = classification_report(np.array([0.0, 0.0, 0.0]), np.array([0.1, 0.2, 0.5]), ["x"])
    assert report["per_class"]["x"]["f1_macro"] == 1.0 and report["per_class"]["x"]["f1_weighted"] == 1.0


def test_threshold_is_strict_and_configurable() -> None:
    labels, scores = np.array([0.0, 1.0]), np.array([0.3, 0.3])
    assert classification_report(labels, scores, ["x"], threshold=0.3)["per_class"]["x"]["acc"] == 0.5
    assert classification_report(labels, scores, ["x"], threshold=0.2)["per_class"]["x"]["acc"] == 0.5
    assert classification_report(labels, np.array([0.1, 0.3]), ["x"], threshold=0.2)["mean_acc"] == 1.0


def test_torch_and_one_dimensional_inputs() -> None:
    aucs = roc_auc_per_class(torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([0.1, 0.4, 0.35, 0.8]))
    assert aucs.shape == (1,) and aucs[0] == pytest.approx(0.75)


def test_all_unknown_class_is_nan_not_an_error() -> None:
    labels = np.array([[1.0, NAN], [0.0, NAN]])
    with pytest.warns(RuntimeWarning):
        report = classification_report(labels, np.array([[0.9, 0.1], [0.2, 0.3]]), ["a", "b"])
    assert report["per_class"]["b"]["n"] == 0 and np.isnan(report["per_class"]["b"]["acc"])
    assert np.isnan(report["per_class"]["b"]["f1_weighted"]) and np.isnan(report["per_class"]["b"]["f1_macro"])
    assert report["mean_f1_weighted"] == 1.0 and report["mean_f1_macro"] == 1.0
    assert report["mean_auc"] == 1.0 and report["mean_acc"] == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(DataError, match="-1"):
        roc_auc_per_class(np.array([0.0, 1.0, -1.0]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(DataError, match="non-finite"):
        roc_auc_per_class(np.array([0.0, 1.0]), np.array([0.1, NAN]))
    with pytest.raises(DataError, match="shape"):
        roc_auc_per_class(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(DataError, match="class_names"):
        classification_report(Y_TRUE, Y_SCORE, ["only one"])


def test_roc_curve_points_by_hand() -> None:
    # descending scores 0.8(+) 0.4(-) 0.35(+) 0.1(-) with a NaN-labelled row left out
    curve = roc_curve_points(np.array([0.0, 0.0, 1.0, 1.0, NAN]), np.array([0.1, 0.4, 0.35, 0.8, 0.99]))
    np.testing.assert_allclose(curve.fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curve.tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(curve.thresholds[1:], [0.8, 0.4, 0.35, 0.1])
    assert curve.auc == pytest.approx(0.75)
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(curve.auc)


def test_roc_curve_points_single_label_value() -> None:
    with pytest.warns(RuntimeWarning, match="single value"):
        curve = roc_curve_points(np.array([1.0, 1.0]), np.array([0.2, 0.7]))
    assert curve.fpr.size == 0 and np.isnan(curve.auc)
