"""Multi-label classification metrics as the official MaCo evaluation computes them.

AUC per class with scikit-learn, accuracy and two F1 scores at a threshold of 0.5 where a
score counts as positive only when it is strictly greater than the threshold (the official
code uses ``np.round``, which sends 0.5 to 0), and their means over classes:

- ``f1_weighted``: the official figure (eval/metric.py ``F1``, ZeroShot/utils/metrics.py
  ``compute_f1``): per class, scikit-learn ``f1_score(average="weighted")``, the F1 of the
  negative and of the positive label weighted by their support. Dominated by the majority
  (usually negative) label, so it stays high for a classifier that never predicts positive.
- ``f1_macro``: per class, ``f1_score(average="macro")``, the unweighted mean of those two F1s.

Labels follow the dataset contract: 1 positive, 0 negative, NaN unknown; unknown labels are
left out of the class they belong to only. Per-class thresholds chosen on a validation split
are in :mod:`maco_cxr.metrics.uncertainty`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score, roc_curve

from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import check_same_shape, nan_mean, to_numpy, warn_undefined


@dataclass(frozen=True)
class RocCurve:
    """Points of one class's ROC curve (known labels only) and its area (NaN if undefined)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def _as_label_score_matrices(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and scores and return them as float64 ``[N, K]`` matrices."""
    labels = to_numpy(y_true).astype(np.float64)
    scores = to_numpy(y_score).astype(np.float64)
    check_same_shape(labels, scores, "y_true", "y_score")
    if labels.ndim == 1:
        labels, scores = labels[:, None], scores[:, None]
    if labels.ndim != 2:
        raise DataError(f"y_true must be [N] or [N, K]; got shape {labels.shape}")
    if not np.all(np.isfinite(scores)):
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise DataError(f"y_score has a non-finite value at (row {bad[0]}, class {bad[-1]}); scores must be finite")
    known = labels[~np.isnan(labels)]
    invalid = np.setdiff1d(np.unique(known), [0.0, 1.0])
    if invalid.size:
        raise DataError(
            f"y_true holds values {invalid.tolist()}; labels must be 1, 0 or NaN (unknown). "
            "Map uncertain labels (e.g. CheXpert -1) to 0, 1 or NaN first"
        )
    return labels, scores


def _class_name(class_names: Sequence[str] | None, k: int) -> str:
    return class_names[k] if class_names is not None else f"class {k}"


def roc_auc_per_class(y_true: Any, y_score: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """ROC-AUC of each class ``[K]`` from labels and scores ``[N, K]`` (or ``[N]``).

    Rows whose label is NaN are left out of that class only. A class whose known labels take a
    single value has no defined AUC: it gets NaN and a ``RuntimeWarning`` naming it.
    """
    labels, scores = _as_label_score_matrices(y_true, y_score)
    aucs = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        known = ~np.isnan(labels[:, k])
        values = labels[known, k]
        if np.unique(values).size < 2:
            warn_undefined(
                f"AUC of {_class_name(class_names, k)} is undefined (NaN): its {values.size} known "
                f"labels are all {values[0] if values.size else 'missing'}"
            )
            continue
        aucs[k] = roc_auc_score(values, scores[known, k])
    return aucs


def classification_report(
    y_true: Any, y_score: Any, class_names: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Per-class AUC, accuracy, weighted and macro F1, plus their NaN-aware means over classes.

    Returns ``{"per_class": {name: {"auc", "acc", "f1_weighted", "f1_macro", "n", "n_pos"}},
    "mean_auc", "mean_acc", "mean_f1_weighted", "mean_f1_macro", "threshold"}``; ``n``
    counts the known labels of the class. A score is positive when it is ``> threshold``.

    - ``f1_weighted``: scikit-learn ``f1_score(average="weighted")`` of the class, i.e.
      (n_neg * F1_neg + n_pos * F1_pos) / n: the official MaCo "F1".
    - ``f1_macro``: ``f1_score(average="macro")``, (F1_neg + F1_pos) / 2 over the label values
      present in the labels or predictions (1.0 when both are all negative).

    Both use ``zero_division=0``. ``mean_*`` average over classes, skipping NaN (e.g. an
    undefined AUC or a class without known labels).
    """
    labels, scores = _as_label_score_matrices(y_true, y_score)
    if len(class_names) != labels.shape[1]:
        raise DataError(f"{len(class_names)} class_names given for {labels.shape[1]} score columns")
    aucs = roc_auc_per_class(labels, scores, class_names)
    per_class: dict[str, dict[str, float]] = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(labels[:, k])
        truth = labels[known, k].astype(np.int64)
        pred = (scores[known, k] > threshold).astype(np.int64)
        if truth.size:
            acc = float(np.mean(truth == pred))
            f1_weighted = float(f1_score(truth, pred, average="weighted", zero_division=0))
            f1_macro = float(f1_score(truth, pred, average="macro", zero_division=0))
        else:
            acc = f1_weighted = f1_macro = float("nan")
        per_class[name] = {
            "auc": float(aucs[k]),
            "acc": acc,
            "f1_weighted": f1_weighted,
            "f1_macro": f1_macro,
            "n": int(truth.size),
            "n_pos": int(truth.sum()),
        }
    means = {
        f"mean_{key}": nan_mean([c[key] for c in per_class.values()])
        for key in ("auc", "acc", "f1_weighted", "f1_macro")
    }
    return {"per_class": per_class, **means, "threshold": float(threshold)}


def roc_curve_points(y_true: Any, y_score: Any) -> RocCurve:
    """ROC curve of one class from labels and scores ``[N]``; NaN labels are left out.

    A class with a single known label value gets empty point arrays, ``auc`` NaN and a warning.
    """
    labels, scores = _as_label_score_matrices(y_true, y_score)
    if labels.shape[1] != 1:
        raise DataError(f"roc_curve_points takes one class ([N]); got {labels.shape[1]} columns")
    known = ~np.isnan(labels[:, 0])
    values, class_scores = labels[known, 0], scores[known, 0]
    if np.unique(values).size < 2:
        warn_undefined(f"ROC curve is undefined: the {values.size} known labels take a single value")
        empty = np.empty(0)
        return RocCurve(fpr=empty, tpr=empty, thresholds=empty, auc=float("nan"))
    fpr, tpr, thresholds = roc_curve(values, class_scores)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, auc=float(roc_auc_score(values, class_scores)))
