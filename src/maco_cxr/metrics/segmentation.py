"""The three Dice figures that segmentation papers report under one name (docs/protocols.md section 5).

- :func:`dice_per_image_mean`: Dice per image, averaged over ALL images; an image whose ground
  truth is empty scores 1 if the prediction is empty too, else 0 (the official
  model-selection metric).
- :func:`dice_foreground_dataset`: foreground Dice with the pixels of the whole test set pooled.
- :func:`dice_mean_over_classes`: mean of the pooled background and foreground Dice (mmseg's
  ``mDice`` for two classes, NaN-skipping over classes).

They differ a lot for the same model (about 90 vs 64 on SIIM), so reports always name them.
Masks are binary (nonzero prediction = foreground); target pixels equal to ``ignore_index``
(e.g. padding) are left out of every count. Images may differ in size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import check_same_shape, nan_mean, to_numpy

IGNORE_INDEX = 255


@dataclass(frozen=True)
class _Counts:
    """Per-image pixel counts ``[N]`` over the valid (not ignored) pixels."""

    pred_fg: np.ndarray
    true_fg: np.ndarray
    both_fg: np.ndarray
    pred_bg: np.ndarray
    true_bg: np.ndarray
    both_bg: np.ndarray


def _as_mask_list(masks: Any, name: str) -> list[np.ndarray]:
    """Accept one ``[N, H, W]`` array or a sequence of ``[H, W]`` masks."""
    if isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)):
        arrays = [to_numpy(m) for m in masks]
    else:
        stacked = to_numpy(masks)
        if stacked.ndim != 3:
            raise DataError(f"{name} must be [N, H, W] or a list of [H, W] masks; got shape {stacked.shape}")
        arrays = list(stacked)
    for i, m in enumerate(arrays):
        if m.ndim != 2:
            raise DataError(f"{name}[{i}] must be a [H, W] mask; got shape {m.shape}")
    return arrays


def _count(preds: Any, targets: Any, ignore_index: int | None) -> _Counts:
    pred_list = _as_mask_list(preds, "preds")
    target_list = _as_mask_list(targets, "targets")
    if len(pred_list) != len(target_list):
        raise DataError(f"{len(pred_list)} predicted masks but {len(target_list)} target masks")
    if not pred_list:
        raise DataError("no masks given; Dice needs at least one image")
    rows = []
    for i, (pred, target) in enumerate(zip(pred_list, target_list)):
        check_same_shape(pred, target, f"preds[{i}]", f"targets[{i}]")
        valid = target != ignore_index if ignore_index is not None else np.ones(target.shape, dtype=bool)
        bad = np.setdiff1d(np.unique(target[valid]), [0, 1])
        if bad.size:
            raise DataError(
                f"targets[{i}] holds values {bad.tolist()}; targets must be 0, 1 or ignore_index ({ignore_index})"
            )
        bad = np.setdiff1d(np.unique(pred), [0, 1])
        if bad.size:
            raise DataError(
                f"preds[{i}] holds values {bad.tolist()[:5]}; threshold probabilities into a 0/1 mask first"
            )
        p, t = pred[valid] != 0, target[valid] == 1
        rows.append((p.sum(), t.sum(), (p & t).sum(), (~p).sum(), (~t).sum(), (~p & ~t).sum()))
    return _Counts(*(np.asarray(col, dtype=np.float64) for col in zip(*rows)))


def _dice(both: float, pred: float, true: float) -> float:
    """2|P and T| / (|P| + |T|); NaN when both sets are empty."""
    total = pred + true
    return float(2.0 * both / total) if total > 0 else float("nan")


def _per_image(c: _Counts) -> np.ndarray:
    """Foreground Dice of each image; an empty truth scores 1 for an empty prediction, else 0."""
    total = c.pred_fg + c.true_fg
    scores = np.where(c.pred_fg == 0, 1.0, 0.0)
    has_truth = c.true_fg > 0
    scores[has_truth] = 2.0 * c.both_fg[has_truth] / total[has_truth]
    return scores


def _mean_over_classes(c: _Counts) -> float:
    background = _dice(c.both_bg.sum(), c.pred_bg.sum(), c.true_bg.sum())
    foreground = _dice(c.both_fg.sum(), c.pred_fg.sum(), c.true_fg.sum())
    return nan_mean([background, foreground])


def dice_foreground_dataset(preds: Any, targets: Any, *, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Foreground Dice with every pixel of the test set pooled (NaN if no foreground anywhere)."""
    c = _count(preds, targets, ignore_index)
    return _dice(c.both_fg.sum(), c.pred_fg.sum(), c.true_fg.sum())


def dice_per_image_mean(preds: Any, targets: Any, *, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Per-image foreground Dice averaged over all images; empty truth: 1 if prediction empty, else 0."""
    c = _count(preds, targets, ignore_index)
    return float(np.mean(_per_image(c)))


def dice_mean_over_classes(preds: Any, targets: Any, *, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Mean of the pooled background Dice and foreground Dice (NaN-skipping, as mmseg's mDice)."""
    c = _count(preds, targets, ignore_index)
    return _mean_over_classes(c)


COUNT_FIELDS = ("pred_fg", "true_fg", "both_fg", "pred_bg", "true_bg", "both_bg")


def mask_counts(pred: Any, target: Any, *, ignore_index: int | None = IGNORE_INDEX) -> dict[str, int]:
    """The pixel counts of one image that every Dice figure is computed from.

    Lets a distributed evaluation send six numbers per image instead of two full masks, and
    :func:`segmentation_report_from_counts` give exactly what :func:`segmentation_report` gives.
    """
    c = _count([pred], [target], ignore_index)
    return {name: int(getattr(c, name)[0]) for name in COUNT_FIELDS}


def segmentation_report_from_counts(counts: Sequence[dict[str, int]]) -> dict[str, float | int]:
    """:func:`segmentation_report` from per-image :func:`mask_counts`."""
    if not counts:
        raise DataError("no images given; Dice needs at least one image")
    return _report(_Counts(*(np.asarray([row[name] for row in counts], dtype=np.float64) for name in COUNT_FIELDS)))


def segmentation_report(preds: Any, targets: Any, *, ignore_index: int | None = IGNORE_INDEX) -> dict[str, float | int]:
    """All three named Dice figures plus the background Dice and image counts, in one pass."""
    return _report(_count(preds, targets, ignore_index))


def per_image_dice(counts: dict[str, int]) -> float:
    """One image's foreground Dice with the per-image rule (empty truth: 1 if empty prediction)."""
    c = _Counts(*(np.asarray([counts[name]], dtype=np.float64) for name in COUNT_FIELDS))
    return float(_per_image(c)[0])


def _report(c: _Counts) -> dict[str, float | int]:
    return {
        "dice_per_image_mean": float(np.mean(_per_image(c))),
        "dice_foreground_dataset": _dice(c.both_fg.sum(), c.pred_fg.sum(), c.true_fg.sum()),
        "dice_background_dataset": _dice(c.both_bg.sum(), c.pred_bg.sum(), c.true_bg.sum()),
        "dice_mean_over_classes": _mean_over_classes(c),
        "n_images": int(c.true_fg.size),
        "n_empty_targets": int(np.sum(c.true_fg == 0)),
    }
