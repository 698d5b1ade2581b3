"""Evaluation: COCO mask AP (pycocotools), matching metrics (AP at IoU t, SBD, DiC, mAP^r), tables."""
from embedseg.evaluation.coco import evaluate_coco
from embedseg.evaluation.matching import (
    MATCHING_METRICS,
    abs_dic,
    dic,
    evaluate_matching,
    map_r,
    matching_ap,
    pairwise_iou,
    sbd,
)
from embedseg.evaluation.tables import format_table, metric_columns

__all__ = [
    "MATCHING_METRICS",
    "abs_dic",
    "dic",
    "evaluate_coco",
    "evaluate_matching",
    "format_table",
    "map_r",
    "matching_ap",
    "metric_columns",
    "pairwise_iou",
    "sbd",
]
