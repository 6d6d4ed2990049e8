"""Evaluation metrics: pure functions, arrays (numpy or torch) in, floats, dicts or dataclasses out.

One module per task: classification (AUC / ACC / weighted and macro F1), grounding (CNR /
mIoU / pointing game and the official per-threshold IoU, Dice, precision, recall), segmentation
(the three named Dice figures), detection (COCO AP) and retrieval (recall@k); plus uncertainty
(validation-chosen thresholds, bootstrap confidence intervals, calibration) and paired tests of two
models on the same items (DeLong for AUCs, paired bootstrap for any figure).

Submodules are imported on first use of one of their names, so importing one metric does not
load scikit-learn for the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BootstrapCI": "uncertainty",
    "DEFAULT_THRESHOLDS": "grounding",
    "GroundingScores": "grounding",
    "OPT_TH_THRESHOLDS": "grounding",
    "PairedTest": "paired",
    "ReliabilityCurve": "uncertainty",
    "RocCurve": "classification",
    "apply_thresholds": "uncertainty",
    "bootstrap_mean_ci": "uncertainty",
    "bootstrap_metric_ci": "uncertainty",
    "boxes_to_mask": "grounding",
    "classification_report": "classification",
    "coco_detection_ap": "detection",
    "delong_covariance": "paired",
    "delong_test": "paired",
    "dice_foreground_dataset": "segmentation",
    "dice_mean_over_classes": "segmentation",
    "dice_per_image_mean": "segmentation",
    "grounding_cnr": "grounding",
    "grounding_metric_table": "grounding",
    "grounding_miou": "grounding",
    "grounding_threshold_metrics": "grounding",
    "image_text_recall": "retrieval",
    "minmax_to_unit_range": "grounding",
    "paired_bootstrap_test": "paired",
    "pointing_game": "grounding",
    "recall_at_k": "retrieval",
    "reliability_curve": "uncertainty",
    "roc_auc_per_class": "classification",
    "roc_curve_points": "classification",
    "score_grounding": "grounding",
    "segmentation_report": "segmentation",
    "select_grounding_thresholds": "grounding",
    "select_thresholds": "uncertainty",
    "summarise_grounding": "grounding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"maco_cxr.metrics.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'maco_cxr.metrics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
