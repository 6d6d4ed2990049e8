"""Phrase-grounding metrics (CNR, mIoU, pointing game) as the official MaCo evaluation defines them.

The official protocol (PROTOCOLS.md section 3, fixtures/official-maco-tiny/README.md) scores a
similarity map after min-max scaling it to [-1, 1]:

- CNR = (mean_in - mean_out) / sqrt(var_in + var_out), population variances, signed. As in
  the official code it is 0 when both variances are 0, and NaN when the box mask or its
  complement is empty.
- mIoU = mean over thresholds 0.1 ... 0.5 of IoU(map > t, box mask). The IoU at a threshold is
  NaN when the box mask or the thresholded map is empty, and the mean keeps NaN (the official
  code averages with ``np.mean``). After the scaling the map reaches 1, so ``map > t`` is empty
  for t < 1 only when the map is constant: NaN in practice means an empty box mask.
- Pointing game: a hit when a pixel holding the map's maximum lies in the box mask (ties count,
  as in the official code).

NaN pixels in a map (e.g. padding outside the image) are left out of every metric, as the
official code does; a map without any finite pixel is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import check_same_shape, nan_mean, to_numpy, warn_undefined

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
_FLOOR_TOLERANCE = 1e-6


class GroundingScores(NamedTuple):
    """The three grounding figures of one (image, phrase) item."""

    cnr: float
    miou: float
    pointing: bool


def _map_and_mask(heatmap: Any, box_mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the map (float64), the mask (bool) and the finite-pixel mask, checked."""
    hmap = to_numpy(heatmap).astype(np.float64)
    mask = to_numpy(box_mask) != 0
    if hmap.ndim != 2:
        raise DataError(f"heatmap must be [H, W]; got shape {hmap.shape}")
    check_same_shape(hmap, mask, "heatmap", "box_mask")
    valid = np.isfinite(hmap)
    if not valid.any():
        raise DataError(f"heatmap of shape {hmap.shape} has no finite value; check the model output")
    return hmap, mask, valid


def minmax_to_unit_range(heatmap: Any) -> np.ndarray:
    """Scale a map ``[H, W]`` linearly so that its minimum is -1 and its maximum +1 (float64).

    NaN pixels stay NaN and are ignored for the extremes. A constant map has no contrast: it
    becomes all zeros, with a warning.
    """
    hmap = to_numpy(heatmap).astype(np.float64)
    valid = np.isfinite(hmap)
    if not valid.any():
        raise DataError(f"heatmap of shape {hmap.shape} has no finite value; check the model output")
    lo, hi = hmap[valid].min(), hmap[valid].max()
    out = np.full_like(hmap, np.nan)
    if hi == lo:
        warn_undefined(f"heatmap is constant ({lo}); it is scaled to zeros")
        out[valid] = 0.0
    else:
        out[valid] = (hmap[valid] - lo) / (hi - lo) * 2.0 - 1.0
    return out


def grounding_cnr(heatmap: Any, box_mask: Any, *, normalise: bool = True) -> float:
    """Signed contrast-to-noise ratio of a map ``[H, W]`` inside vs outside a mask ``[H, W]``.

    ``normalise=True`` scales the map to [-1, 1] first (the protocol); pass False for a map
    already scaled with :func:`minmax_to_unit_range`.
    """
    hmap, mask, valid = _map_and_mask(heatmap, box_mask)
    if normalise:
        hmap = minmax_to_unit_range(hmap)
    inside, outside = hmap[mask & valid], hmap[~mask & valid]
    if inside.size == 0 or outside.size == 0:
        return float("nan")
    spread = inside.var() + outside.var()
    if spread == 0:
        return 0.0
    return float((inside.mean() - outside.mean()) / np.sqrt(spread))


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two boolean masks; NaN when either is empty (the official ``only_pos`` rule)."""
    if not pred.any() or not truth.any():
        return float("nan")
    return float(np.logical_and(pred, truth).sum() / np.logical_or(pred, truth).sum())


def grounding_miou(
    heatmap: Any,
    box_mask: Any,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    normalise: bool = True,
) -> float:
    """Mean over ``thresholds`` of IoU(map > t, box mask); NaN if any threshold's IoU is NaN.

    ``normalise=True`` scales the map to [-1, 1] first (the protocol).
    """
    if len(thresholds) == 0:
        raise DataError("grounding_miou needs at least one threshold")
    hmap, mask, valid = _map_and_mask(heatmap, box_mask)
    if normalise:
        hmap = minmax_to_unit_range(hmap)
    truth = mask[valid]
    values = hmap[valid]
    return float(np.mean([_iou(values > t, truth) for t in thresholds]))


def pointing_game(heatmap: Any, box_mask: Any) -> bool:
    """True when a pixel holding the map's maximum lies inside the mask (False for an empty mask)."""
    hmap, mask, valid = _map_and_mask(heatmap, box_mask)
    peak = valid & (hmap == hmap[valid].max())
    return bool((peak & mask).any())


def score_grounding(
    heatmap: Any, box_mask: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> GroundingScores:
    """CNR, mIoU and pointing game of one raw map ``[H, W]`` and its box mask ``[H, W]``."""
    hmap, mask, _ = _map_and_mask(heatmap, box_mask)
    scaled = minmax_to_unit_range(hmap)
    return GroundingScores(
        cnr=grounding_cnr(scaled, mask, normalise=False),
        miou=grounding_miou(scaled, mask, thresholds, normalise=False),
        pointing=pointing_game(scaled, mask),
    )


def boxes_to_mask(
    boxes: Any,
    height: int,
    width: int,
    *,
    box_format: Literal["xyxy", "xywh"] = "xyxy",
) -> np.ndarray:
    """Rasterise boxes ``[M, 4]`` (or one box ``[4]``) into a boolean mask ``[height, width]``.

    Pixel rule, the official one (``box_transfer`` + ``box2mask``): a box starts at column
    c0 = floor(x) and row r0 = floor(y) and spans floor(w) columns and floor(h) rows, i.e.
    pixel (r, c) is inside when c0 <= c < c0 + floor(w) and r0 <= r < r0 + floor(h). For
    ``xyxy`` boxes w = x1 - x0 and h = y1 - y0. Values within 1e-6 below an integer count as
    that integer (float error from mapping boxes). Boxes are clipped to the grid; the union of
    all boxes is returned (an empty box list gives an empty mask).
    """
    arr = to_numpy(boxes).astype(np.float64)
    if arr.size == 0:
        return np.zeros((height, width), dtype=bool)
    arr = arr.reshape(-1, 4) if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(f"boxes must be [M, 4] or [4]; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"boxes hold a non-finite coordinate: {arr.tolist()}")
    x, y = arr[:, 0], arr[:, 1]
    if box_format == "xyxy":
        w, h = arr[:, 2] - x, arr[:, 3] - y
    elif box_format == "xywh":
        w, h = arr[:, 2], arr[:, 3]
    else:
        raise DataError(f"box_format must be 'xyxy' or 'xywh'; got {box_format!r}")
    if np.any(w < 0) or np.any(h < 0):
        raise DataError(f"boxes with negative width or height ({box_format}): {arr.tolist()}")
    c0 = np.floor(x + _FLOOR_TOLERANCE).astype(np.int64)
    r0 = np.floor(y + _FLOOR_TOLERANCE).astype(np.int64)
    c1 = c0 + np.floor(w + _FLOOR_TOLERANCE).astype(np.int64)
    r1 = r0 + np.floor(h + _FLOOR_TOLERANCE).astype(np.int64)
    mask = np.zeros((height, width), dtype=bool)
    rows = zip(np.clip(r0, 0, height), np.clip(r1, 0, height))
    cols = zip(np.clip(c0, 0, width), np.clip(c1, 0, width))
    for (top, bottom), (left, right) in zip(rows, cols):
        mask[top:bottom, left:right] = True
    return mask


def _mean_scores(rows: list[tuple[float, float, bool]]) -> dict[str, float | int]:
    cnr, miou, pointing = zip(*rows)
    return {
        "n": len(rows),
        "cnr": nan_mean(list(cnr)),
        "miou": nan_mean(list(miou)),
        "pointing": float(np.mean(np.asarray(pointing, dtype=np.float64))),
    }


def summarise_grounding(items: Iterable[tuple[str, float, float, bool]]) -> dict[str, Any]:
    """Aggregate ``(category, cnr, miou, pointing)`` items into the reported figures.

    Returns ``{"n", "cnr", "miou", "pointing", "n_nan_cnr", "n_nan_miou", "per_category":
    {category: {"n", "cnr", "miou", "pointing"}}, "category_mean": {"cnr", "miou",
    "pointing"}}``. Item means skip NaN values (the count of skipped values is reported and
    warned about); the category mean averages the per-category figures (skipping a category
    whose values are all NaN). Categories keep the order in which they first appear.
    """
    rows = [(str(c), float(cnr), float(miou), bool(pg)) for c, cnr, miou, pg in items]
    if not rows:
        raise DataError("summarise_grounding got no items; nothing to report")
    n_nan_cnr = sum(np.isnan(r[1]) for r in rows)
    n_nan_miou = sum(np.isnan(r[2]) for r in rows)
    if n_nan_cnr or n_nan_miou:
        warn_undefined(
            f"{n_nan_cnr} CNR and {n_nan_miou} mIoU values of {len(rows)} items are NaN "
            "(empty box masks or constant maps) and are left out of the means"
        )
    by_category: dict[str, list[tuple[float, float, bool]]] = {}
    for category, cnr, miou, pg in rows:
        by_category.setdefault(category, []).append((cnr, miou, pg))
    per_category = {c: _mean_scores(r) for c, r in by_category.items()}
    overall = _mean_scores([r[1:] for r in rows])
    return {
        **overall,
        "n_nan_cnr": int(n_nan_cnr),
        "n_nan_miou": int(n_nan_miou),
        "per_category": per_category,
        "category_mean": {
            key: nan_mean([v[key] for v in per_category.values()]) for key in ("cnr", "miou", "pointing")
        },
    }
