"""Run the network once per image, every grouper on the same outputs, and score them with COCO AP."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from embedseg.evaluation import evaluate_coco
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


def ground_truth_instances(sample: dict) -> Instances:
    return Instances.from_label_map(sample["instances"], labels=sample["semantic"])


def run_groupers(predictor, dataset, groupers: dict, max_images: int | None = None, keep_images: int = 4,
                 progress: bool = True) -> GroupingRun:
    run = GroupingRun(predictions={n: [] for n in groupers}, group_ms={n: [] for n in groupers})
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
        ignore = sample["instances"] < 0
        run.crowd.append(ignore if ignore.any() else None)
        if i < keep_images:
            run.images.append(sample["image"])
    return run


def score_groupers(run: GroupingRun, class_names: list[str], max_dets: int = 100) -> dict[str, dict]:
    """COCO metrics of every grouper plus its timing (median / p90 ms per image)."""
    crowd = run.crowd if any(c is not None for c in run.crowd) else None
    results = {}
    for name, predictions in run.predictions.items():
        metrics = evaluate_coco(run.ground_truth, predictions, class_names=class_names, max_dets=max_dets,
                                crowd=crowd)
        ms = np.asarray(run.group_ms[name])
        metrics.update(
            group_ms_median=float(np.median(ms)), group_ms_p90=float(np.percentile(ms, 90)),
            network_ms_median=float(np.median(run.network_ms)),
            instances_per_image=float(np.mean([len(p) for p in predictions])),
        )
        results[name] = metrics
    return results
