"""Evaluation metrics: pure functions, arrays (numpy or torch) in, floats, dicts or dataclasses out.

One module per task: classification (AUC / ACC / F1), grounding (CNR / mIoU / pointing game),
segmentation (the three named Dice figures), detection (COCO AP) and retrieval (recall@k).
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
    pointing_game,
    score_grounding,
    summarise_grounding,
)
from maco_cxr.metrics.retrieval import image_text_recall, recall_at_k
from maco_cxr.metrics.segmentation import (
    dice_foreground_dataset,
    dice_mean_over_classes,
    dice_per_image_mean,
    segmentation_report,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
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
