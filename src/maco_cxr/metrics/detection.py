"""COCO box AP (AP at IoU 0.50:0.95, AP50, AP75) through pycocotools, built in memory.

docs/protocols.md section 6 reports these three figures for RSNA Pneumonia. Boxes are
``x_min, y_min, x_max, y_max`` in pixels; labels are optional (default: one class, 1).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import to_numpy


def _import_coco() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError("coco_detection_ap needs pycocotools; install it with `pip install pycocotools`") from err
    return COCO, COCOeval


def _boxes(value: Any, where: str) -> np.ndarray:
    arr = to_numpy(value).astype(np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(f"{where} must be [M, 4] boxes (x_min, y_min, x_max, y_max); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise DataError(f"{where} holds a non-finite box or one with x_max < x_min or y_max < y_min")
    return arr


def _labels(entry: Mapping[str, Any], n: int, where: str) -> np.ndarray:
    if "labels" not in entry:
        return np.ones(n, dtype=np.int64)
    labels = to_numpy(entry["labels"]).astype(np.int64).reshape(-1)
    if labels.size != n:
        raise DataError(f"{where}: {labels.size} labels for {n} boxes")
    return labels


def _xywh(box: np.ndarray) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def coco_detection_ap(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any] | Any],
) -> dict[str, float]:
    """COCO box AP over a test set: ``{"AP", "AP50", "AP75"}``, NaN when there is no ground truth.

    ``predictions[i]`` holds ``"boxes"`` ``[M, 4]``, ``"scores"`` ``[M]`` and optionally
    ``"labels"`` ``[M]`` for image i; ``ground_truths[i]`` is ``[G, 4]`` boxes or a mapping with
    ``"boxes"`` (and optionally ``"labels"``). Images without boxes on either side are fine.
    COCO keeps the 100 best-scored predictions per image.
    """
    if len(predictions) != len(ground_truths):
        raise DataError(f"{len(predictions)} prediction entries but {len(ground_truths)} ground-truth entries")
    images, annotations, results = [], [], []
    categories: set[int] = set()
    for i, (pred, truth) in enumerate(zip(predictions, ground_truths)):
        images.append({"id": i})
        truth_map = truth if isinstance(truth, Mapping) else {"boxes": truth}
        if "boxes" not in truth_map or "boxes" not in pred or "scores" not in pred:
            raise DataError(
                f"image {i}: predictions need 'boxes' and 'scores', ground truths 'boxes'; "
                f"got {sorted(pred)} and {sorted(truth_map)}"
            )
        gt_boxes = _boxes(truth_map["boxes"], f"ground_truths[{i}]")
        for box, label in zip(gt_boxes, _labels(truth_map, len(gt_boxes), f"ground_truths[{i}]")):
            xywh = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
            categories.add(int(label))
        pred_boxes = _boxes(pred["boxes"], f"predictions[{i}]['boxes']")
        scores = to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
        if scores.size != len(pred_boxes):
            raise DataError(f"predictions[{i}]: {scores.size} scores for {len(pred_boxes)} boxes")
        for box, score, label in zip(pred_boxes, scores, _labels(pred, len(pred_boxes), f"predictions[{i}]")):
            results.append({"image_id": i, "category_id": int(label), "bbox": _xywh(box), "score": float(score)})
            categories.add(int(label))
    nan = {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if not annotations:
        return nan
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    coco_cls, coco_eval_cls = _import_coco()
    with contextlib.redirect_stdout(io.StringIO()):
        truth_api = coco_cls()
        truth_api.dataset = {
            "info": {},  # pycocotools 2.0.10's loadRes copies it
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in sorted(categories)],
        }
        truth_api.createIndex()
        result_api = truth_api.loadRes(results)
        evaluator = coco_eval_cls(truth_api, result_api, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) if v >= 0 else float("nan") for v in evaluator.stats[:3]]
    return dict(zip(("AP", "AP50", "AP75"), stats))
