"""Validation thresholds, bootstrap intervals and calibration against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import nan_mean
from maco_cxr.metrics.classification import roc_auc_per_class
from maco_cxr.metrics.uncertainty import (
    BootstrapCI,
    apply_thresholds,
    bootstrap_mean_ci,
    bootstrap_metric_ci,
    reliability_curve,
    select_thresholds,
)

NAN = np.nan
# Validation class: scores descending 0.9(+) 0.8(+) 0.4(-) 0.35(+) 0.2(-) 0.1(-); 3 positives, 3 negatives.
VAL_Y = np.array([0, 0, 1, 1, 0, 1])
VAL_S = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])


def test_youden_and_max_f1_by_hand() -> None:
    # cut "score >= c": c = 0.8 -> TP 2 FP 0: J = 2/3, F1 = 4/5; c = 0.35 -> TP 3 FP 1: J = 2/3, F1 = 6/7.
    # Youden ties -> the higher cut, threshold midway between 0.8 and the next score 0.4;
    # max F1 -> the cut at 0.35, threshold midway between 0.35 and 0.2.
    assert select_thresholds(VAL_Y, VAL_S, ["x"]) == {"x": pytest.approx(0.6)}
    assert select_thresholds(VAL_Y, VAL_S, ["x"], method="max_f1") == {"x": pytest.approx(0.275)}


def test_threshold_edge_cuts() -> None:
    # best F1 with everything positive (0.1 is a positive): just below the lowest score
    t = select_thresholds(np.array([0, 1, 1, 1]), np.array([0.4, 0.1, 0.2, 0.3]), ["x"], "max_f1")["x"]
    assert 0.1 - 1e-12 < t < 0.1
    # scores ranked the wrong way: J <= 0 everywhere, the first cut (nothing positive) wins
    assert select_thresholds(np.array([1, 0]), np.array([0.1, 0.9]), ["x"])["x"] == 0.9
    # adjacent distinct scores still give a threshold between them
    lo, hi = 0.5, np.nextafter(0.5, 1.0)
    t = select_thresholds(np.array([0, 1]), np.array([lo, hi]), ["x"])["x"]
    assert (hi > t) and (lo <= t)


def test_select_thresholds_per_class_nan_labels_and_undefined() -> None:
    labels = np.column_stack([VAL_Y, [0, 0, 0, 0, 0, 0], [NAN, NAN, 1, 1, 0, 0]])
    scores = np.column_stack([VAL_S, VAL_S, [0.5, 0.5, 0.9, 0.7, 0.3, 0.1]])
    with pytest.warns(RuntimeWarning, match="no youden threshold for hernia"):
        chosen = select_thresholds(labels, scores, ["x", "hernia", "z"])
    assert chosen["x"] == pytest.approx(0.6) and np.isnan(chosen["hernia"])
    assert chosen["z"] == pytest.approx(0.5)  # NaN rows left out: 0.9, 0.7 positive, 0.3, 0.1 negative
    with pytest.raises(DataError, match="method"):
        select_thresholds(VAL_Y, VAL_S, ["x"], method="gmean")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="class_names"):
        select_thresholds(VAL_Y, VAL_S, ["x", "y"])


def test_apply_thresholds_by_hand() -> None:
    test_y, test_s = np.array([1, 0, 1, 0]), np.array([0.7, 0.55, 0.3, 0.1])
    report = apply_thresholds(test_y, test_s, ["x"], {"x": 0.275})
    x = report["per_class"]["x"]
    # 0.275: predictions 1 1 1 0 -> TP 2 FP 1 FN 0 TN 1
    assert x["chosen"] == pytest.approx(
        {"threshold": 0.275, "f1_positive": 4 / 5, "acc": 3 / 4, "sensitivity": 1.0, "specificity": 0.5}
    )
    # fixed 0.5: predictions 1 1 0 0 -> TP 1 FP 1 FN 1 TN 1
    assert x["fixed"] == pytest.approx(
        {"threshold": 0.5, "f1_positive": 0.5, "acc": 0.5, "sensitivity": 0.5, "specificity": 0.5}
    )
    assert (x["n"], x["n_pos"]) == (4, 2)
    assert report["mean"]["chosen"]["f1_positive"] == pytest.approx(0.8)


def test_apply_thresholds_nan_and_errors() -> None:
    labels = np.array([[1, 0], [1, 0], [NAN, 0]])
    scores = np.array([[0.9, 0.6], [0.2, 0.1], [0.5, 0.2]])
    report = apply_thresholds(labels, scores, ["a", "b"], {"a": 0.5, "b": NAN})
    a, b = report["per_class"]["a"]["chosen"], report["per_class"]["b"]
    # a: known rows 0, 1 (both positive): TP 1 FN 1, no negatives -> specificity NaN
    assert (a["sensitivity"], a["acc"], a["f1_positive"]) == pytest.approx((0.5, 0.5, 2 / 3))
    assert np.isnan(a["specificity"])
    # b: a NaN threshold (undefined on validation) gives NaN figures; at 0.5 one false positive
    assert all(np.isnan(b["chosen"][k]) for k in ("f1_positive", "acc", "sensitivity", "specificity"))
    assert b["fixed"]["f1_positive"] == 0.0  # labels 0 0 0, predictions 1 0 0: 0 / (0 + 1 + 0)
    assert b["fixed"]["specificity"] == pytest.approx(2 / 3) and np.isnan(b["fixed"]["sensitivity"])
    # one number for every class
    assert apply_thresholds(labels, scores, ["a", "b"], 0.15)["per_class"]["b"]["chosen"]["threshold"] == 0.15
    with pytest.raises(DataError, match=r"no value for classes \['b'\]"):
        apply_thresholds(labels, scores, ["a", "b"], {"a": 0.5})


def test_f1_positive_zero_over_zero_is_nan() -> None:
    # no positives and none predicted: 2TP + FP + FN = 0
    x = apply_thresholds(np.array([0, 0]), np.array([0.1, 0.2]), ["x"], 0.5)["per_class"]["x"]["chosen"]
    assert np.isnan(x["f1_positive"]) and x["acc"] == 1.0 and x["specificity"] == 1.0


# --- bootstrap --------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 60)
SCORES = LABELS * 0.3 + RNG.random(60)


def test_bootstrap_reproducible_and_seeded() -> None:
    first = bootstrap_metric_ci(roc_auc_score, LABELS, SCORES, n_resamples=300, seed=7)
    again = bootstrap_metric_ci(roc_auc_score, LABELS, SCORES, n_resamples=300, seed=7)
    other = bootstrap_metric_ci(roc_auc_score, LABELS, SCORES, n_resamples=300, seed=8)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert first.estimate == other.estimate == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert isinstance(first, BootstrapCI) and first.n_resamples == 300 and first.confidence == 0.95


def test_bootstrap_covers_estimate_and_narrows_with_confidence() -> None:
    ci = bootstrap_metric_ci(roc_auc_score, LABELS, SCORES, n_resamples=500)
    assert ci.low < ci.estimate < ci.high and ci.n_valid == 500
    narrow = bootstrap_metric_ci(roc_auc_score, LABELS, SCORES, n_resamples=500, confidence=0.5)
    assert ci.low < narrow.low < narrow.high < ci.high
    values = RNG.normal(size=80)
    mean_ci = bootstrap_mean_ci(values)
    assert mean_ci.low < mean_ci.estimate < mean_ci.high and mean_ci.estimate == pytest.approx(values.mean())


def test_bootstrap_known_values() -> None:
    # a constant: every replicate equals it, the interval has zero width
    ci = bootstrap_mean_ci(np.full(25, 0.7))
    assert ci.low == ci.high == ci.estimate == pytest.approx(0.7) and (ci.n_valid, ci.n_resamples) == (1000, 1000)
    # one item: every replicate is that item
    ci = bootstrap_metric_ci(lambda y, s: float(np.mean(s)), np.array([1]), np.array([0.25]), n_resamples=10)
    assert (ci.estimate, ci.low, ci.high, ci.n_valid) == (0.25, 0.25, 0.25, 10)
    # NaN items are skipped by the mean (CNR of an empty box)
    with pytest.warns(RuntimeWarning, match="of 50 bootstrap replicates"):
        ci = bootstrap_mean_ci(np.array([NAN, 2.0, 2.0]), n_resamples=50)
    assert ci.estimate == 2.0 and ci.low == ci.high == 2.0 and ci.n_valid < 50  # all-NaN draws skipped


def test_bootstrap_skips_undefined_auc_replicates() -> None:
    # 1 positive in 8: many resamples hold no positive; roc_auc_score raises there, our AUC gives NaN
    labels, scores = np.array([1, 0, 0, 0, 0, 0, 0, 0]), np.linspace(0.9, 0.1, 8)
    with pytest.warns(RuntimeWarning, match="replicates gave an undefined value"):
        ci = bootstrap_metric_ci(roc_auc_score, labels, scores, n_resamples=200)
    assert 0 < ci.n_valid < 200 and ci.estimate == 1.0 and (ci.low, ci.high) == pytest.approx((1.0, 1.0))
    with pytest.warns(RuntimeWarning, match="replicates gave an undefined value"):
        ours = bootstrap_metric_ci(lambda y, s: nan_mean(roc_auc_per_class(y, s)), labels, scores, n_resamples=200)
    assert ours.n_valid == ci.n_valid  # same draws, same undefined replicates
    with pytest.warns(RuntimeWarning):
        none = bootstrap_metric_ci(lambda y, s: NAN, labels, scores, n_resamples=5)
    assert none.n_valid == 0 and np.isnan(none.low) and np.isnan(none.high)


def test_group_resampling_keeps_patients_whole() -> None:
    # 4 patients with 5 images each, all images of a patient valued as the patient's id
    patients = np.repeat(["p0", "p1", "p2", "p3"], 5)
    values = np.repeat([0.0, 1.0, 2.0, 3.0], 5)
    seen: list[np.ndarray] = []

    def record(y: np.ndarray, s: np.ndarray) -> float:
        seen.append(s.copy())
        return float(np.mean(y))

    by_patient = bootstrap_metric_ci(record, values, np.arange(20), groups=patients, n_resamples=200, seed=3)
    assert len(seen) == 201  # the point estimate on all rows, then the replicates
    for draw in seen[1:]:
        counts = np.bincount(draw, minlength=20).reshape(4, 5)
        assert (counts == counts[:, :1]).all()  # every image of a drawn patient, equally often
        assert draw.size == 20  # 4 patients drawn
    # so every replicate mean is a mean of 4 patient values: a multiple of 1/4
    means = np.array([np.mean(values[d]) for d in seen[1:]])
    assert np.allclose(means * 4, np.round(means * 4))
    # resampling images instead ignores the clustering: replicate means off the quarter grid, narrower CI
    seen.clear()
    by_image = bootstrap_metric_ci(record, values, np.arange(20), n_resamples=200, seed=3)
    means = np.array([np.mean(values[d]) for d in seen[1:]])
    assert not np.allclose(means * 4, np.round(means * 4))
    assert by_image.high - by_image.low < by_patient.high - by_patient.low


def test_group_resampling_unequal_groups() -> None:
    groups = np.array([10, 10, 10, 20, 30, 30])
    seen: list[np.ndarray] = []
    bootstrap_mean_ci(np.arange(6.0), groups=groups, n_resamples=100)
    bootstrap_metric_ci(
        lambda y, s: seen.append(s.copy()) or 0.0, np.zeros(6), np.arange(6), groups=groups, n_resamples=100
    )
    for draw in seen[1:]:
        counts = np.bincount(draw, minlength=6)
        assert counts[0] == counts[1] == counts[2] and counts[4] == counts[5]
        assert counts[[0, 3, 4]].sum() == 3  # 3 groups drawn


def test_bootstrap_bad_inputs() -> None:
    with pytest.raises(DataError, match="groups must be"):
        bootstrap_mean_ci(np.arange(4.0), groups=[1, 2, 3])
    with pytest.raises(DataError, match="n_resamples"):
        bootstrap_mean_ci(np.arange(4.0), n_resamples=0)
    with pytest.raises(DataError, match="confidence"):
        bootstrap_mean_ci(np.arange(4.0), confidence=95)
    with pytest.raises(DataError, match="at least one item"):
        bootstrap_mean_ci(np.array([]))
    with pytest.raises(DataError, match="same number of rows"):
        bootstrap_metric_ci(roc_auc_score, np.zeros(3), np.zeros(4))
    with pytest.raises(DataError, match=r"\[N\]"):
        bootstrap_mean_ci(np.zeros((2, 2)))


# --- calibration ------------------------------------------------------------------------------


def test_reliability_by_hand() -> None:
    y, p = np.array([0, 1, 1, 0, 1]), np.array([0.05, 0.15, 0.5, 0.6, 0.95])
    curve = reliability_curve(y, p, n_bins=2)
    # bin [0, 0.5]: 0.05, 0.15, 0.5 (0.5 belongs to the lower bin) -> mean 0.7/3, 2 of 3 positive
    # bin (0.5, 1]: 0.6, 0.95 -> mean 0.775, 1 of 2 positive
    np.testing.assert_allclose(curve.bin_edges, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(curve.mean_predicted, [0.7 / 3, 0.775])
    np.testing.assert_allclose(curve.observed_frequency, [2 / 3, 0.5])
    np.testing.assert_array_equal(curve.counts, [3, 2])
    # ECE = 3/5 * |2/3 - 0.7/3| + 2/5 * |0.5 - 0.775| = 0.26 + 0.11
    assert curve.ece == pytest.approx(0.37) and curve.n == 5


def test_reliability_matches_sklearn_and_empty_bins() -> None:
    y = RNG.integers(0, 2, 200)
    p = np.clip(y * 0.4 + RNG.random(200) * 0.5, 0, 1)
    curve = reliability_curve(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    filled = curve.counts > 0
    np.testing.assert_allclose(curve.observed_frequency[filled], prob_true)
    np.testing.assert_allclose(curve.mean_predicted[filled], prob_pred)
    sparse = reliability_curve(np.array([0, 1]), np.array([0.05, 0.95]), n_bins=4)
    np.testing.assert_array_equal(sparse.counts, [1, 0, 0, 1])
    assert np.isnan(sparse.mean_predicted[1]) and np.isnan(sparse.observed_frequency[2])
    assert sparse.ece == pytest.approx(0.05)  # each bin off by 0.05, weights 1/2


def test_reliability_perfect_and_errors() -> None:
    # one positive in four, all predicted 0.25: calibrated, ECE 0; a NaN label is left out
    assert reliability_curve(np.array([1, 0, 0, 0, NAN]), np.full(5, 0.25)).ece == 0.0
    with pytest.raises(DataError, match=r"probabilities in \[0, 1\]"):
        reliability_curve(np.array([0, 1]), np.array([-0.1, 2.0]))
    with pytest.raises(DataError, match="n_bins"):
        reliability_curve(np.array([0, 1]), np.array([0.1, 0.2]), n_bins=0)
    with pytest.raises(DataError, match="one class"):
        reliability_curve(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(DataError, match="no item with a known label"):
        reliability_curve(np.array([NAN]), np.array([0.5]))
