"""Evaluation: COCO mask AP (pycocotools), matching metrics (AP at IoU t, SBD, DiC, mAP^r), streaming
evaluators of both, tables."""
from embedseg.evaluation.coco import COCOEvaluator, evaluate_coco
from embedseg.evaluation.evaluators import build_evaluators, evaluate_all
from embedseg.evaluation.matching import (
    MATCHING_METRICS,
    MatchingEvaluator,
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
    "COCOEvaluator",
    "MatchingEvaluator",
    "abs_dic",
    "build_evaluators",
    "dic",
    "evaluate_all",
    "evaluate_coco",
    "evaluate_matching",
    "format_table",
    "map_r",
    "matching_ap",
    "metric_columns",
    "pairwise_iou",
    "sbd",
]
