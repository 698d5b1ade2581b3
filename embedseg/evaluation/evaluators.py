"""Streaming evaluators: one image at a time in, metrics out, no dense mask kept.

Every evaluator has the shape detectron2 made familiar, adapted to our `Instances`:

    evaluator.reset()
    evaluator.process(ground_truth, prediction, crowd=None)  # one image: Instances, Instances, bool [H, W] or None
    evaluator.evaluate() -> dict                               # the metrics of every image processed
    evaluator.state() -> list                                  # per-image records, plain and picklable
    evaluator.merge([state, ...])                              # append records made by other evaluators

`process` takes the image's ground truth and one grouper's prediction rather than detectron2's
(inputs, outputs): our groupers already return `Instances` and the ground truth comes from the
sample, so the evaluator needs neither the image nor the network outputs. `state` / `merge` let
the ranks of a distributed evaluation send their images' records to one process, which merges
them in image order and scores them as if it had processed every image itself.
"""
from __future__ import annotations

from collections.abc import Sequence

from embedseg.evaluation.coco import COCOEvaluator
from embedseg.evaluation.matching import MAP_R_THRESHOLDS, MATCHING_METRICS, MatchingEvaluator


def build_evaluators(metrics: Sequence[str] = ("coco",), class_names: list[str] | None = None, max_dets: int = 1000,
                     iou_thresholds: Sequence[float] = (0.5,),
                     map_r_thresholds: Sequence[float] = MAP_R_THRESHOLDS) -> list:
    """Fresh evaluators for `metrics` (the config's eval.metrics: coco and any of the matching metrics)."""
    unknown = [m for m in metrics if m != "coco" and m not in MATCHING_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choices: coco, {', '.join(MATCHING_METRICS)}")
    evaluators = []
    if "coco" in metrics:
        evaluators.append(COCOEvaluator(class_names, max_dets))
    matching = [m for m in metrics if m != "coco"]
    if matching:
        evaluators.append(MatchingEvaluator(matching, iou_thresholds, map_r_thresholds))
    return evaluators


def evaluate_all(evaluators: Sequence) -> dict:
    """The metrics of every evaluator in one flat dict."""
    out = {}
    for evaluator in evaluators:
        out.update(evaluator.evaluate())
    return out
