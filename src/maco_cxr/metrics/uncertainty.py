"""Evaluation figures to act on: validation-chosen thresholds, bootstrap intervals, calibration.

- :func:`select_thresholds` picks a per-class operating point on a validation split (Youden's
  J or maximum F1) and :func:`apply_thresholds` scores test data at it, next to the fixed 0.5
  of :func:`~maco_cxr.metrics.classification.classification_report`.
- :func:`bootstrap_metric_ci` and :func:`bootstrap_mean_ci` give seeded percentile bootstrap
  intervals, resampling items or whole groups (patients).
- :func:`reliability_curve` bins predicted probabilities against observed frequencies and
  gives the expected calibration error.

Every threshold here means "positive when score > threshold", as in the classification
report. Labels follow the dataset contract (1, 0, NaN unknown; NaN rows are left out of their
class). All functions are pure: arrays in, floats, dicts or dataclasses out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.metrics import roc_curve

from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import nan_mean, to_numpy, warn_undefined
from maco_cxr.metrics.classification import _as_label_score_matrices, _class_name

ThresholdMethod = Literal["youden", "max_f1"]
_RATES = ("f1_positive", "acc", "sensitivity", "specificity")


# --- Thresholds -------------------------------------------------------------------------------


def _known(labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(labels[:, k])
    return labels[keep, k].astype(np.int64), scores[keep, k]


def _best_threshold(truth: np.ndarray, score: np.ndarray, method: ThresholdMethod) -> float:
    """The ``>`` threshold of the best cut of one class with both label values present."""
    fpr, tpr, cuts = roc_curve(truth, score, drop_intermediate=False)
    # cuts[0] = inf (nothing positive), then every distinct score, descending; cut i makes
    # "score >= cuts[i]" positive. Counts are integers so that ties are exact.
    n_pos, n_neg = int(truth.sum()), int(truth.size - truth.sum())
    tp, fp = np.rint(tpr * n_pos).astype(np.int64), np.rint(fpr * n_neg).astype(np.int64)
    if method == "youden":
        i = int(np.argmax(tp * n_neg - fp * n_pos))  # J * n_pos * n_neg
    else:
        f1 = 2 * tp / (tp + fp + n_pos)  # 2TP / (2TP + FP + FN), n_pos > 0
        i = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[0])
    # argmax and the flatnonzero both take the first best cut: ties go to the highest threshold
    if i == 0:
        return float(cuts[1])  # nothing is above the highest score
    if i == cuts.size - 1:
        return float(np.nextafter(cuts[i], -np.inf))  # everything positive
    upper, lower = cuts[i], cuts[i + 1]
    middle = (upper + lower) / 2.0
    return float(middle if lower <= middle < upper else lower)


def select_thresholds(
    y_true: Any,
    y_score: Any,
    class_names: Sequence[str],
    method: ThresholdMethod = "youden",
) -> dict[str, float]:
    """Choose each class's threshold on validation labels and scores ``[N, K]`` (or ``[N]``).

    ``method="youden"`` maximises Youden's J = sensitivity + specificity - 1 = TPR - FPR;
    ``"max_f1"`` maximises the F1 of the positive label. Returns ``{class_name: threshold}``,
    positive meaning ``score > threshold``: the midpoint between the lowest validation score
    called positive and the highest called negative (just below the lowest score when all
    are positive). Ties go to the highest threshold. A class whose known labels take a single
    value has no operating point: NaN, with a warning naming it. Pass the result to
    :func:`apply_thresholds` with the test split.
    """
    if method not in ("youden", "max_f1"):
        raise DataError(f"method must be 'youden' or 'max_f1'; got {method!r}")
    labels, scores = _as_label_score_matrices(y_true, y_score)
    if len(class_names) != labels.shape[1]:
        raise DataError(f"{len(class_names)} class_names given for {labels.shape[1]} score columns")
    out: dict[str, float] = {}
    for k, name in enumerate(class_names):
        truth, score = _known(labels, scores, k)
        if np.unique(truth).size < 2:
            warn_undefined(
                f"no {method} threshold for {_class_name(class_names, k)}: its {truth.size} known "
                "validation labels take a single value (NaN)"
            )
            out[name] = float("nan")
            continue
        out[name] = _best_threshold(truth, score, method)
    return out


def _rates_at(truth: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """F1 of the positive label, accuracy, sensitivity and specificity at ``score > threshold``."""
    if truth.size == 0 or np.isnan(threshold):
        return {key: float("nan") for key in _RATES}
    pred = score > threshold
    positive = truth == 1
    tp = int(np.sum(pred & positive))
    fp = int(np.sum(pred & ~positive))
    fn = int(np.sum(~pred & positive))
    tn = int(np.sum(~pred & ~positive))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "f1_positive": ratio(2 * tp, 2 * tp + fp + fn),
        "acc": (tp + tn) / truth.size,
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
    }


def apply_thresholds(
    y_true: Any,
    y_score: Any,
    class_names: Sequence[str],
    thresholds: Mapping[str, float] | float,
    *,
    fixed: float = 0.5,
) -> dict[str, Any]:
    """Score labels and scores ``[N, K]`` at chosen per-class thresholds and at a fixed one.

    ``thresholds`` maps every class name to its threshold (e.g. from :func:`select_thresholds`
    on the validation split) or is one number for all. For each class and each of the two
    operating points: ``f1_positive`` = 2TP / (2TP + FP + FN) (the F1 of the positive label,
    scikit-learn ``average="binary"``), ``acc``, ``sensitivity`` = TP / (TP + FN) and
    ``specificity`` = TN / (TN + FP), each NaN when its denominator is 0. Returns
    ``{"per_class": {name: {"n", "n_pos", "chosen": {"threshold", ...}, "fixed": {"threshold",
    ...}}}, "mean": {"chosen": {...}, "fixed": {...}}}``; the means skip NaN values.
    """
    labels, scores = _as_label_score_matrices(y_true, y_score)
    if len(class_names) != labels.shape[1]:
        raise DataError(f"{len(class_names)} class_names given for {labels.shape[1]} score columns")
    if isinstance(thresholds, Mapping):
        missing = [name for name in class_names if name not in thresholds]
        if missing:
            raise DataError(f"thresholds has no value for classes {missing}; give one per class name")
        chosen = {name: float(thresholds[name]) for name in class_names}
    else:
        chosen = {name: float(thresholds) for name in class_names}
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(class_names):
        truth, score = _known(labels, scores, k)
        per_class[name] = {
            "n": int(truth.size),
            "n_pos": int(truth.sum()),
            "chosen": {"threshold": chosen[name], **_rates_at(truth, score, chosen[name])},
            "fixed": {"threshold": float(fixed), **_rates_at(truth, score, fixed)},
        }
    mean = {
        point: {key: nan_mean([c[point][key] for c in per_class.values()]) for key in _RATES}
        for point in ("chosen", "fixed")
    }
    return {"per_class": per_class, "mean": mean}


# --- Bootstrap --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with its percentile bootstrap interval.

    ``n_valid`` counts the replicates with a defined (finite) value, out of ``n_resamples``;
    ``low`` and ``high`` are NaN when none is.
    """

    estimate: float
    low: float
    high: float
    n_valid: int
    n_resamples: int
    confidence: float


def _group_members(groups: Any, n: int) -> list[np.ndarray] | None:
    """Item indices of each group (in order of first appearance), or None without groups."""
    if groups is None:
        return None
    ids = to_numpy(groups)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise DataError(f"groups must be [N] with N = {n} items; got shape {ids.shape}")
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    by_group = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    return [by_group[g] for g in np.argsort(first)]  # groups in order of first appearance


def bootstrap_replicates(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    groups: Any,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, np.ndarray]:
    """``statistic(all indices)`` and its ``n_resamples`` replicates over item or whole-group
    resamples (NaN where a replicate is undefined), after checking the arguments: the one draw
    that the intervals here and the paired tests of :mod:`maco_cxr.metrics.paired` share."""
    if n == 0:
        raise DataError("bootstrap needs at least one item; got none")
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise DataError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    members = _group_members(groups, n)
    estimate = float(statistic(np.arange(n)))
    if not np.isfinite(estimate):
        warn_undefined("the point estimate of the bootstrapped metric is undefined (NaN)")
    rng = np.random.default_rng(seed)
    values = np.full(n_resamples, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one summary warning below instead of one per replicate
        for r in range(n_resamples):
            if members is None:
                idx = rng.integers(0, n, size=n)
            else:
                idx = np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
            try:
                values[r] = statistic(idx)
            except ValueError:  # e.g. scikit-learn's roc_auc_score on a one-class resample
                values[r] = np.nan
    undefined = int((~np.isfinite(values)).sum())
    if undefined:
        warn_undefined(f"{undefined} of {n_resamples} bootstrap replicates gave an undefined value and were skipped")
    return estimate, values


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the finite values (NaN if none)."""
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(valid, [tail, 100.0 - tail])
    return float(low), float(high)


def _bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    groups: Any,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> BootstrapCI:
    """Percentile interval of ``statistic(indices)`` over item or whole-group resamples."""
    estimate, values = bootstrap_replicates(
        statistic, n, groups=groups, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    low, high = percentile_interval(values, confidence)
    n_valid = int(np.isfinite(values).sum())
    return BootstrapCI(estimate, low, high, n_valid, int(n_resamples), float(confidence))


def bootstrap_metric_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: Any,
    y_score: Any,
    *,
    groups: Any = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``metric(y_true, y_score)``, e.g. an AUC.

    ``y_true`` and ``y_score`` are ``[N, ...]`` arrays whose rows are the items; each replicate
    draws N rows with replacement, or, with ``groups`` ``[N]`` (e.g. patient ids), as many
    whole groups as there are, so that every item of a drawn patient comes along. The draw
    is reproducible from ``seed`` (a fresh ``numpy.random.default_rng(seed)``). A replicate
    whose metric is NaN/inf or raises ``ValueError`` (scikit-learn's ``roc_auc_score`` on a
    resample with one class) is skipped and counted out of ``n_valid``, with one warning;
    warnings raised inside replicates are silenced. The interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the valid replicates
    (numpy linear interpolation). The point estimate is the metric on all rows.
    """
    labels, scores = to_numpy(y_true), to_numpy(y_score)
    if labels.ndim == 0 or scores.ndim == 0 or labels.shape[0] != scores.shape[0]:
        raise DataError(
            f"y_true has shape {labels.shape} and y_score {scores.shape}; both need the same number of rows [N, ...]"
        )
    return _bootstrap(
        lambda idx: float(metric(labels[idx], scores[idx])),
        labels.shape[0],
        groups=groups,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )


def bootstrap_mean_ci(
    values: Any,
    *,
    groups: Any = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap interval of the mean of per-item values ``[N]`` (CNR, mIoU, ...).

    The statistic is the NaN-skipping mean, as the grounding summaries use it; resampling,
    seeding, ``groups`` and the skipping of undefined replicates (one whose items are all NaN)
    are as in :func:`bootstrap_metric_ci`.
    """
    arr = to_numpy(values).astype(np.float64)
    if arr.ndim != 1:
        raise DataError(f"values must be [N] per-item values; got shape {arr.shape}")
    return _bootstrap(
        lambda idx: nan_mean(arr[idx]),
        arr.shape[0],
        groups=groups,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )


# --- Calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityCurve:
    """Binned calibration of one class: ``n_bins`` equal-width bins over [0, 1].

    ``bin_edges`` ``[n_bins + 1]``; per bin ``[n_bins]``: ``mean_predicted`` (mean probability),
    ``observed_frequency`` (fraction of positives), both NaN for an empty bin, and ``counts``.
    ``ece`` = sum over bins of ``counts / n * |observed_frequency - mean_predicted|``.
    """

    bin_edges: np.ndarray
    mean_predicted: np.ndarray
    observed_frequency: np.ndarray
    counts: np.ndarray
    ece: float
    n: int


def reliability_curve(y_true: Any, y_prob: Any, n_bins: int = 10) -> ReliabilityCurve:
    """Reliability (calibration) curve and expected calibration error of one class ``[N]``.

    Probabilities must lie in [0, 1]; rows with a NaN label are left out. Binning follows
    scikit-learn's ``calibration_curve(strategy="uniform")``: bin k holds the probabilities in
    (edge_k, edge_k+1], the first bin also 0, so the non-empty bins give the same points.
    """
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise DataError(f"n_bins must be a positive integer; got {n_bins!r}")
    labels, probs = _as_label_score_matrices(y_true, y_prob)
    if labels.shape[1] != 1:
        raise DataError(f"reliability_curve takes one class ([N]); got {labels.shape[1]} columns")
    keep = ~np.isnan(labels[:, 0])
    truth, prob = labels[keep, 0], probs[keep, 0]
    if truth.size == 0:
        raise DataError("reliability_curve got no item with a known label")
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise DataError(
            f"y_prob must be probabilities in [0, 1]; got values in [{prob.min()}, {prob.max()}] "
            "(apply a sigmoid or softmax first)"
        )
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], prob)
    counts = np.bincount(bins, minlength=n_bins)
    sums = np.bincount(bins, weights=prob, minlength=n_bins)
    positives = np.bincount(bins, weights=truth, minlength=n_bins)
    filled = counts > 0
    mean_pred = np.full(n_bins, np.nan)
    observed = np.full(n_bins, np.nan)
    mean_pred[filled] = sums[filled] / counts[filled]
    observed[filled] = positives[filled] / counts[filled]
    ece = float(np.sum(counts[filled] / truth.size * np.abs(observed[filled] - mean_pred[filled])))
    return ReliabilityCurve(edges, mean_pred, observed, counts.astype(np.int64), ece, int(truth.size))
