"""Multi-label classification metrics as the official MaCo evaluation computes them.

AUC per class with scikit-learn, accuracy and F1 (scikit-learn ``average="weighted"``) at a
threshold of 0.5 where a score counts as positive only when it is strictly greater than the
threshold (the official code uses ``np.round``, which sends 0.5 to 0), and their macro means.
Labels follow the dataset contract: 1 positive, 0 negative, NaN unknown; unknown labels are
left out of the class they belong to only.
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


def roc_auc_per_class(
    y_true: Any, y_score: Any, class_names: Sequence[str] | None = None
) -> np.ndarray:
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
    """Per-class AUC, accuracy and weighted F1 plus their NaN-aware macro means.

    Returns ``{"per_class": {name: {"auc", "acc", "f1", "n", "n_pos"}}, "mean_auc",
    "mean_acc", "mean_f1", "threshold"}``; ``n`` counts the known labels of the class.
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
            f1 = float(f1_score(truth, pred, average="weighted", zero_division=0))
        else:
            acc = f1 = float("nan")
        per_class[name] = {
            "auc": float(aucs[k]),
            "acc": acc,
            "f1": f1,
            "n": int(truth.size),
            "n_pos": int(truth.sum()),
        }
    return {
        "per_class": per_class,
        "mean_auc": nan_mean([c["auc"] for c in per_class.values()]),
        "mean_acc": nan_mean([c["acc"] for c in per_class.values()]),
        "mean_f1": nan_mean([c["f1"] for c in per_class.values()]),
        "threshold": float(threshold),
    }


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
