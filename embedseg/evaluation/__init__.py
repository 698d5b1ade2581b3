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

__all__ = ["evaluate_coco", "evaluate_matching", "matching_ap", "sbd", "dic", "abs_dic", "map_r",
           "pairwise_iou", "MATCHING_METRICS", "format_table", "metric_columns"]
