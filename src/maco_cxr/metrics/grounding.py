"""Phrase-grounding metrics (CNR, mIoU, pointing game) as the official MaCo evaluation defines them.

The official protocol (docs/protocols.md section 3, fixtures/official-maco-tiny/README.md) scores a
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

The full official report is built from :func:`grounding_threshold_metrics` (IoU, Dice,
precision, recall at each threshold, eval/metric.py), :func:`grounding_metric_table` (the
``metric.csv`` of ``Pipeline.test``) and :func:`select_grounding_thresholds` (per-category
thresholds chosen on a validation split, ``Pipeline.get_opt_th``, applied to test rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


def _minmax(heatmap: Any, *, signed: bool) -> np.ndarray:
    """The official ``norm_heatmap``: mode 0 (``signed``, [-1, 1]) or mode 1 ([0, 1])."""
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
        unit = (hmap[valid] - lo) / (hi - lo)
        out[valid] = unit * 2.0 - 1.0 if signed else unit
    return out


def minmax_to_unit_range(heatmap: Any) -> np.ndarray:
    """Scale a map ``[H, W]`` linearly so that its minimum is -1 and its maximum +1 (float64).

    NaN pixels stay NaN and are ignored for the extremes. A constant map has no contrast: it
    becomes all zeros, with a warning.
    """
    return _minmax(heatmap, signed=True)


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


def score_grounding(heatmap: Any, box_mask: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> GroundingScores:
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


# --- Per-threshold metrics, the metric.csv table and validation threshold selection ---------

Scaling = Literal["signed", "unit", "none"]
GroundingRow = tuple[str, Mapping[str, Sequence[float]], float, bool]

#: The mask thresholds ``get_opt_th`` searches: ``np.arange(0.2, 0.8, 0.1)`` on the [0, 1]
#: scaled map. Float error makes that 7 values, 0.2 ... 0.8000000000000003 (0.8 included).
OPT_TH_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.2, 0.8, 0.1))
_THRESHOLD_METRICS = ("iou", "dice", "precision", "recall")


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator`` as numpy divides integer sums: NaN for a zero denominator."""
    return float(numerator / denominator) if denominator else float("nan")


def grounding_threshold_metrics(
    heatmap: Any,
    box_mask: Any,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    scaling: Scaling = "signed",
) -> dict[str, list[float]]:
    """IoU, Dice, precision and recall of ``map > t`` against a box mask, for each threshold t.

    As the official ``Pipeline.test`` (eval/common.py) and eval/metric.py do: the map ``[H, W]``
    is min-max scaled (``scaling="signed"``: to [-1, 1], ``norm_heatmap`` mode 0, the
    ``Pipeline.test`` protocol; ``"unit"``: to [0, 1], mode 1, the one ``get_opt_th`` uses;
    ``"none"``: taken as it is), thresholded strictly, and compared with ``box_mask`` ``[H, W]``
    over the finite pixels only (NaN pixels are left out of every count). With P the
    thresholded pixels and G the mask pixels:

    - ``iou`` = |P & G| / |P | G|; NaN when P or G is empty (``compute_iou``, ``only_pos=True``);
    - ``dice`` = 2 |P & G| / (|P| + |G|); NaN only when both are empty, 0 when just one is
      (``compute_dice``: numpy's 0 / 0);
    - ``precision`` = |P & G| / |P|; NaN when P is empty (``compute_precision``);
    - ``recall`` = |P & G| / |G|; NaN when G is empty (``compute_recall``).

    Returns ``{"thresholds", "iou", "dice", "precision", "recall"}``, lists with one value per
    threshold. A constant map is scaled to zeros with a warning (the official code fails on
    it). The official thresholds are ``np.arange(0.1, 0.6, 0.1)``, whose third value is
    0.30000000000000004, not 0.3; the two differ only for a pixel exactly between them.
    """
    if len(thresholds) == 0:
        raise DataError("grounding_threshold_metrics needs at least one threshold")
    if scaling not in ("signed", "unit", "none"):
        raise DataError(f"scaling must be 'signed', 'unit' or 'none'; got {scaling!r}")
    hmap, mask, valid = _map_and_mask(heatmap, box_mask)
    if scaling != "none":
        hmap = _minmax(hmap, signed=scaling == "signed")
    truth, values = mask[valid], hmap[valid]
    n_truth = int(truth.sum())
    out: dict[str, list[float]] = {"thresholds": [float(t) for t in thresholds]}
    out.update({name: [] for name in _THRESHOLD_METRICS})
    for t in thresholds:
        pred = values > t
        n_pred, n_both = int(pred.sum()), int(np.logical_and(pred, truth).sum())
        out["iou"].append(_iou(pred, truth))
        out["dice"].append(_ratio(2 * n_both, n_pred + n_truth))
        out["precision"].append(_ratio(n_both, n_pred))
        out["recall"].append(_ratio(n_both, n_truth))
    return out


def _check_threshold_metrics(metrics: Mapping[str, Sequence[float]], where: str) -> np.ndarray:
    """Return the thresholds of one per-threshold metrics dict after checking its lists."""
    if "thresholds" not in metrics:
        raise DataError(f"{where}: the metrics dict has no 'thresholds'; build it with grounding_threshold_metrics")
    thresholds = np.asarray(metrics["thresholds"], dtype=np.float64)
    for name in _THRESHOLD_METRICS:
        if name not in metrics:
            raise DataError(f"{where}: the metrics dict has no {name!r}; build it with grounding_threshold_metrics")
        if len(metrics[name]) != thresholds.size:
            raise DataError(f"{where}: {name!r} has {len(metrics[name])} values for {thresholds.size} thresholds")
    return thresholds


def _stack_rows(rows: Sequence[Sequence[Any]], what: str) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Categories ``[N]``, thresholds ``[T]`` and each metric as ``[N, T]`` from grounding rows."""
    if not rows:
        raise DataError(f"{what} got no rows; nothing to report")
    categories = [str(row[0]) for row in rows]
    thresholds = _check_threshold_metrics(rows[0][1], f"{what} row 0")
    for i, row in enumerate(rows[1:], start=1):
        other = _check_threshold_metrics(row[1], f"{what} row {i}")
        if other.shape != thresholds.shape or not np.array_equal(other, thresholds):
            raise DataError(
                f"{what} row {i} has thresholds {other.tolist()} but row 0 has {thresholds.tolist()}; "
                "compute every row with the same thresholds"
            )
    values = {
        name: np.array([row[1][name] for row in rows], dtype=np.float64).reshape(len(rows), -1)
        for name in _THRESHOLD_METRICS
    }
    return categories, thresholds, values


def _category_means(values: np.ndarray, categories: list[str], order: list[str]) -> dict[str, np.ndarray]:
    """NaN-skipping mean ``[T]`` of each category's rows of ``values`` ``[N, T]``."""
    cats = np.asarray(categories)
    return {c: np.array([nan_mean(col) for col in values[cats == c].T]) for c in order}


def grounding_metric_table(rows: Iterable[GroundingRow], *, decimals: int | None = None) -> dict[str, list[Any]]:
    """The official ``metric.csv`` of a grounding run, as ordered columns of equal length.

    ``rows`` are ``(category, metrics, cnr, pointing)`` items: ``metrics`` from
    :func:`grounding_threshold_metrics` (every row with the same thresholds), ``cnr`` from
    :func:`grounding_cnr` and ``pointing`` from :func:`pointing_game`. The result is what
    ``Pipeline.test`` (eval/common.py) writes before ``res.round(3).to_csv(index=False)``; a
    ``pandas.DataFrame(table)`` of it is that file. Layout, one row per threshold and a last
    row "mean":

    - ``threshold``: the thresholds, then the string ``"mean"``;
    - ``iou, cnr, pg, dice, recall, precision``: the mean over all items at that threshold, a
      plain ``np.mean``, so one NaN item makes it NaN (as official); "mean" row: ``np.mean``
      of the rows above;
    - ``iou_cat, cnr_cat, pg_cat, dice_cat, recall_cat, precision_cat``: the mean over
      categories of each category's NaN-skipping item mean (official ``dict_mean``); "mean"
      row: ``np.mean`` of the rows above;
    - ``iou_<category>`` for each category, then ``cnr_<category>``, ``pg_<category>`` and
      ``dice_<category>`` (the official table has no per-category recall or precision): the
      category's NaN-skipping item mean; "mean" row: NaN-skipping mean of the rows above (the
      official pandas ``mean``).

    CNR and pointing game do not depend on the threshold, so their columns repeat one value.
    Categories keep the order in which they first appear. ``decimals`` rounds every number
    as pandas ``round`` does (the official file uses 3); None keeps full precision. NaN item
    values are counted in a warning.
    """
    rows = [(row[0], row[1], float(row[2]), bool(row[3])) for row in rows]
    categories, thresholds, values = _stack_rows(rows, "grounding_metric_table")
    n_thr = thresholds.size
    values["cnr"] = np.repeat(np.array([r[2] for r in rows])[:, None], n_thr, axis=1)
    values["pg"] = np.repeat(np.array([float(r[3]) for r in rows])[:, None], n_thr, axis=1)
    undefined = {name: int(np.isnan(v).any(axis=1).sum()) for name, v in values.items()}
    if any(undefined.values()):
        counts = ", ".join(f"{n} {name}" for name, n in undefined.items() if n)
        warn_undefined(
            f"items with a NaN value at some threshold: {counts} (of {len(rows)}); the overall "
            "columns are NaN there (the official np.mean), the _cat and per-category columns skip them"
        )
    order = list(dict.fromkeys(categories))
    per_category = {name: _category_means(v, categories, order) for name, v in values.items()}
    table: dict[str, list[Any]] = {"threshold": [*thresholds.tolist(), "mean"]}
    columns = ("iou", "cnr", "pg", "dice", "recall", "precision")
    for name in columns:
        overall = values[name].mean(axis=0)
        table[name] = [*overall.tolist(), float(np.mean(overall))]
    for name in columns:
        by_threshold = np.array([nan_mean([per_category[name][c][t] for c in order]) for t in range(n_thr)])
        table[f"{name}_cat"] = [*by_threshold.tolist(), float(np.mean(by_threshold))]
    for name in ("iou", "cnr", "pg", "dice"):
        for c in order:
            means = per_category[name][c]
            table[f"{name}_{c}"] = [*means.tolist(), nan_mean(means)]
    if decimals is not None:
        table = {
            k: [v if isinstance(v, str) else float(np.round(v, decimals)) for v in col] for k, col in table.items()
        }
    return table


def _union_iou(iou: np.ndarray, precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """IoU under ``compute_iou(only_pos=False)``: NaN only when map and mask are both empty.

    Derived from the ``only_pos`` values: precision is NaN exactly when the thresholded map is
    empty and recall exactly when the mask is, and with one of them empty the IoU is 0.
    """
    empty_map, empty_mask = np.isnan(precision), np.isnan(recall)
    out = np.where(empty_map | empty_mask, 0.0, iou)
    return np.where(empty_map & empty_mask, np.nan, out)


def select_grounding_thresholds(
    val_rows: Iterable[Sequence[Any]],
    test_rows: Iterable[Sequence[Any]],
    *,
    test_iou_rule: Literal["only_pos", "union"] = "only_pos",
) -> dict[str, Any]:
    """Choose each category's mask threshold on validation rows and score test rows at it.

    Rows are ``(category, metrics, ...)`` with ``metrics`` from
    :func:`grounding_threshold_metrics` (rows for :func:`grounding_metric_table` work as they
    are; later entries are ignored); val and test rows must share their thresholds. The
    selection is the first stage of the official ``Pipeline.get_opt_th`` (eval/common.py,
    ``opt_th_only_pos.csv``): for each category the threshold that maximises the
    NaN-skipping mean IoU (``only_pos`` rule: NaN when map or mask is empty) of its
    validation items; ties go to the first (lowest) threshold. The official search runs on
    the [0, 1] scaled map over :data:`OPT_TH_THRESHOLDS`, so build the rows with
    ``grounding_threshold_metrics(hmap, mask, OPT_TH_THRESHOLDS, scaling="unit")`` to
    reproduce it. A threshold whose category mean is NaN is passed over (numpy's ``argmax``
    would pick it; that needs every item of the category NaN there); a category NaN at every
    threshold gets the first one with a warning, as the official code does.

    Not reproduced: the second stage of ``get_opt_th`` (``opt_th.csv``), a per-category
    confidence gate (the maximum of the raw map clipped to [0, 2], halved, or a softmax
    probability; a map below it counts as empty), which ``Pipeline.test_use_opt_th`` applies
    before thresholding; it only matters for sets with box-free (negative) items.

    ``test_iou_rule``: ``"only_pos"`` scores test IoU with the same rule as the selection;
    ``"union"`` with ``compute_iou(only_pos=False)``, the ``test_use_opt_th`` default: 0
    instead of NaN when exactly one of map and mask is empty. Returns ``{"per_category":
    {category: {"threshold", "val_iou", "n_val", "n_test", "iou", "dice", "precision",
    "recall"}}, "mean": {"threshold", "val_iou"}, "iou", "iou_cat", "n_test"}``: test
    figures are NaN-skipping means over the category's test items at its threshold; ``iou``
    is the NaN-skipping mean over all test items (``np.nanmean(ious)``), ``iou_cat`` the mean
    over categories (``dict_mean``) and ``mean`` the mean over categories of the chosen
    thresholds and validation IoUs (the official "mean" column). Categories keep their
    validation order; a test category without validation rows is an error.
    """
    if test_iou_rule not in ("only_pos", "union"):
        raise DataError(f"test_iou_rule must be 'only_pos' or 'union'; got {test_iou_rule!r}")
    val_cats, thresholds, val = _stack_rows(list(val_rows), "select_grounding_thresholds (val)")
    test_cats, test_thresholds, test = _stack_rows(list(test_rows), "select_grounding_thresholds (test)")
    if test_thresholds.shape != thresholds.shape or not np.array_equal(test_thresholds, thresholds):
        raise DataError(
            f"test rows have thresholds {test_thresholds.tolist()} but val rows {thresholds.tolist()}; "
            "compute both splits with the same thresholds"
        )
    order = list(dict.fromkeys(val_cats))
    unknown = sorted(set(test_cats) - set(order))
    if unknown:
        raise DataError(f"test categories {unknown} have no validation rows; no threshold can be chosen for them")
    if test_iou_rule == "union":
        test = {**test, "iou": _union_iou(test["iou"], test["precision"], test["recall"])}
    val_iou = _category_means(val["iou"], val_cats, order)
    test_means = {name: _category_means(v, test_cats, order) for name, v in test.items()}
    val_arr, test_arr = np.asarray(val_cats), np.asarray(test_cats)
    per_category: dict[str, dict[str, float | int]] = {}
    chosen_index: dict[str, int] = {}
    for c in order:
        scores = val_iou[c]
        if np.isnan(scores).all():
            warn_undefined(f"category {c!r}: validation IoU is NaN at every threshold; the first one is taken")
            k = 0
        else:
            k = int(np.nanargmax(scores))
        chosen_index[c] = k
        per_category[c] = {
            "threshold": float(thresholds[k]),
            "val_iou": float(scores[k]),
            "n_val": int((val_arr == c).sum()),
            "n_test": int((test_arr == c).sum()),
            **{name: float(test_means[name][c][k]) for name in _THRESHOLD_METRICS},
        }
    item_iou = np.array([test["iou"][i, chosen_index[c]] for i, c in enumerate(test_cats)])
    return {
        "per_category": per_category,
        "mean": {
            "threshold": float(np.mean([v["threshold"] for v in per_category.values()])),
            "val_iou": nan_mean([v["val_iou"] for v in per_category.values()]),
        },
        "iou": nan_mean(item_iou),
        "iou_cat": nan_mean([v["iou"] for v in per_category.values()]),
        "n_test": len(test_cats),
    }
