"""Evaluation: COCO mask AP (pycocotools) and result tables."""
from embedseg.evaluation.coco import evaluate_coco
from embedseg.evaluation.tables import format_table

__all__ = ["evaluate_coco", "format_table"]
