"""Run the network once per image, every grouper on the same outputs, and score them (COCO AP and
the matching metrics the config names)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from embedseg.evaluation import evaluate_coco, evaluate_matching
from embedseg.evaluation.matching import MAP_R_THRESHOLDS
from embedseg.structures import Instances


@dataclass
class GroupingRun:
    """Everything one pass over a split produced, kept for metrics, tables and figures."""

    ground_truth: list = field(default_factory=list)  # Instances per image
    crowd: list = field(default_factory=list)  # ignore mask per image (or None)
    predictions: dict = field(default_factory=dict)  # grouper -> list of Instances
    group_ms: dict = field(default_factory=dict)  # grouper -> ms per image
    network_ms: list = field(default_factory=list)
    images: list = field(default_factory=list)  # the first few images, for figures
    names: list = field(default_factory=list)  # name of every image scored (its image_id where it has none)
    split_images: int = 0  # images in the split, of which the first len(names) were scored


def ground_truth_instances(sample: dict) -> Instances:
    return Instances.from_label_map(sample["instances"], labels=sample["semantic"])


def run_groupers(predictor, dataset, groupers: dict, max_images: int | None = None, keep_images: int = 4,
                 progress: bool = True) -> GroupingRun:
    run = GroupingRun(predictions={n: [] for n in groupers}, group_ms={n: [] for n in groupers},
                      split_images=len(dataset))
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for i in tqdm(range(n), desc="evaluate", disable=None if progress else True, leave=False):
        sample = dataset[i]
        t0 = time.perf_counter()
        outputs = predictor(sample["image"])
        run.network_ms.append(1000 * (time.perf_counter() - t0))
        for name, grouper in groupers.items():
            t0 = time.perf_counter()
            run.predictions[name].append(grouper(outputs))
            run.group_ms[name].append(1000 * (time.perf_counter() - t0))
        run.ground_truth.append(ground_truth_instances(sample))
        run.names.append(str(sample.get("name", sample["image_id"])))
        ignore = sample["instances"] < 0
        run.crowd.append(ignore if ignore.any() else None)
        if i < keep_images:
            run.images.append(sample["image"])
    return run


def score_groupers(run: GroupingRun, class_names: list[str], max_dets: int = 1000, metrics=("coco",),
                   iou_thresholds=(0.5,), map_r_thresholds=MAP_R_THRESHOLDS) -> dict[str, dict]:
    """The `metrics` (coco, matching_ap, sbd, dic, map_r) of every grouper in one flat dict each,
    plus its timing (median / p90 ms per image)."""
    crowd = run.crowd if any(c is not None for c in run.crowd) else None
    matching = [m for m in metrics if m != "coco"]
    results = {}
    for name, predictions in run.predictions.items():
        scores = {}
        if "coco" in metrics:
            scores.update(evaluate_coco(run.ground_truth, predictions, class_names=class_names,
                                        max_dets=max_dets, crowd=crowd))
        if matching:
            scores.update(evaluate_matching(run.ground_truth, predictions, matching, iou_thresholds,
                                            map_r_thresholds, crowd=crowd))
        ms = np.asarray(run.group_ms[name])
        scores.update(
            group_ms_median=float(np.median(ms)), group_ms_p90=float(np.percentile(ms, 90)),
            network_ms_median=float(np.median(run.network_ms)),
            instances_per_image=float(np.mean([len(p) for p in predictions])),
        )
        results[name] = scores
    return results


def compare_groupers(config, model, class_names: list[str], names: list[str] | None = None, split: str | None = None,
                     max_images: int | None = None, progress: bool = True,
                     metrics: list[str] | None = None) -> tuple[dict[str, dict], GroupingRun]:
    """Every grouper of `names` on the same network outputs of `split`: (metrics per grouper, the run).

    By default every registered grouper runs, the config's grouping blocks first and with their
    parameters; the others with their defaults. The network runs once per image; the timings
    are of grouping alone. `metrics` defaults to the config's eval.metrics plus "coco" (the
    comparison table shows COCO AP).
    """
    from embedseg.engine.run import build_groupers, build_predictor, dataset_for_split
    from embedseg.grouping import GROUPERS

    if names is None:
        names = list(config.grouping) + [n for n in GROUPERS.names() if n not in config.grouping]
    groupers = build_groupers(config, names)
    dataset = dataset_for_split(config, split or config.eval.split)
    predictor = build_predictor(config, model)
    ev = config.eval
    run = run_groupers(predictor, dataset, groupers, max_images, ev.num_overlays, progress)
    if metrics is None:
        metrics = list(ev.metrics) if "coco" in ev.metrics else ["coco", *ev.metrics]
    return score_groupers(run, class_names, ev.max_dets, metrics, ev.iou_thresholds, ev.map_r_thresholds), run


def format_grouping_table(results: dict[str, dict]) -> str:
    """Markdown: COCO AP, AP50, AP75 (percent), instances per image, median / p90 ms per image of grouping."""
    lines = ["| grouper | AP | AP50 | AP75 | inst/img | ms median | ms p90 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in results.items():
        ap = [f"{100 * m[k]:.1f}" if k in m and np.isfinite(m[k]) else "-" for k in ("AP", "AP50", "AP75")]
        lines.append(f"| {name} | {' | '.join(ap)} | {m['instances_per_image']:.1f} | "
                     f"{m['group_ms_median']:.1f} | {m['group_ms_p90']:.1f} |")
    return "\n".join(lines)
