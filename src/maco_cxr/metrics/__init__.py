"""Evaluation metrics: pure functions, arrays (numpy or torch) in, floats, dicts or dataclasses out.

One module per task: classification (AUC / ACC / weighted and macro F1), grounding (CNR /
mIoU / pointing game and the official per-threshold IoU, Dice, precision, recall), segmentation
(the three named Dice figures), detection (COCO AP) and retrieval (recall@k); plus uncertainty
(validation-chosen thresholds, bootstrap confidence intervals, calibration).
"""

from maco_cxr.metrics.classification import (
    RocCurve,
    classification_report,
    roc_auc_per_class,
    roc_curve_points,
)
from maco_cxr.metrics.detection import coco_detection_ap
from maco_cxr.metrics.grounding import (
    DEFAULT_THRESHOLDS,
    GroundingScores,
    boxes_to_mask,
    grounding_cnr,
    grounding_miou,
    minmax_to_unit_range,
    OPT_TH_THRESHOLDS,
    grounding_metric_table,
    grounding_threshold_metrics,
    pointing_game,
    score_grounding,
    select_grounding_thresholds,
    summarise_grounding,
)
from maco_cxr.metrics.retrieval import image_text_recall, recall_at_k
from maco_cxr.metrics.uncertainty import (
    BootstrapCI,
    ReliabilityCurve,
    apply_thresholds,
    bootstrap_mean_ci,
    bootstrap_metric_ci,
    reliability_curve,
    select_thresholds,
)
from maco_cxr.metrics.segmentation import (
    dice_foreground_dataset,
    dice_mean_over_classes,
    dice_per_image_mean,
    segmentation_report,
)

__all__ = [
    "BootstrapCI",
    "DEFAULT_THRESHOLDS",
    "OPT_TH_THRESHOLDS",
    "ReliabilityCurve",
    "apply_thresholds",
    "bootstrap_mean_ci",
    "bootstrap_metric_ci",
    "grounding_metric_table",
    "grounding_threshold_metrics",
    "reliability_curve",
    "select_grounding_thresholds",
    "select_thresholds",
    "GroundingScores",
    "RocCurve",
    "boxes_to_mask",
    "classification_report",
    "coco_detection_ap",
    "dice_foreground_dataset",
    "dice_mean_over_classes",
    "dice_per_image_mean",
    "grounding_cnr",
    "grounding_miou",
    "image_text_recall",
    "minmax_to_unit_range",
    "pointing_game",
    "recall_at_k",
    "roc_auc_per_class",
    "roc_curve_points",
    "score_grounding",
    "segmentation_report",
    "summarise_grounding",
]
