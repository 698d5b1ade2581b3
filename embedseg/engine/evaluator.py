"""Run the network once per image and every grouper on the same outputs, scoring each prediction as it
comes (streaming evaluators: nothing dense is kept beyond the few images drawn in figures).

`run_groupers` does one process's pass (optionally over a shard of the images, optionally reading the
network outputs from an `OutputCache`); `gather_run` collects the passes of the ranks of a
torch.distributed process group on rank 0, in image order; `score_groupers` turns a pass into metrics.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from embedseg.engine.oracle import apply_oracle
from embedseg.engine.output_cache import reuse_or_cache
from embedseg.evaluation import build_evaluators, evaluate_all
from embedseg.evaluation.matching import MatchingEvaluator
from embedseg.structures import Instances


@dataclass
class GroupingRun:
    """What one pass over a split keeps: each grouper's evaluators (fed every image), timings, names,
    and the first `keep_images` images with their network outputs, ground truth and predictions, for figures."""

    evaluators: dict = field(default_factory=dict)  # grouper -> its evaluators
    group_ms: dict = field(default_factory=dict)  # grouper -> ms per image
    instances: dict = field(default_factory=dict)  # grouper -> instances per image
    network_ms: list = field(default_factory=list)  # ms per image (of reading it, with an output cache)
    indices: list = field(default_factory=list)  # dataset index of every image scored
    names: list = field(default_factory=list)  # name of every image scored (its image_id where it has none)
    intensity: list = field(default_factory=list)  # mean intensity in [0, 1] of every image scored
    split_images: int = 0  # images in the split
    images: list = field(default_factory=list)  # the first few images, for figures
    outputs: list = field(default_factory=list)  # their network outputs (as the groupers read them)
    ground_truth: list = field(default_factory=list)  # their ground truth (Instances)
    predictions: dict = field(default_factory=dict)  # grouper -> their predictions (Instances)


def ground_truth_instances(sample: dict) -> Instances:
    return Instances.from_label_map(sample["instances"], labels=sample["semantic"])


def run_groupers(predictor, dataset, groupers: dict, evaluators: Callable[[], list], max_images: int | None = None,
                 keep_images: int = 4, progress: bool = True, indices: Sequence[int] | None = None,
                 cache=None, oracle: Sequence[str] = ()) -> GroupingRun:
    """Every grouper on the network outputs of each image; each prediction goes to that grouper's
    evaluators (`evaluators()` makes a fresh list per grouper) and is then dropped.

    The images are the first `max_images` of `dataset` (all by default), or `indices` of them; with
    an `OutputCache` as `cache` their outputs are read from it and `predictor` is not run. `oracle`
    puts ground truth in place of outputs (embedseg.engine.oracle).
    """
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    run = GroupingRun(evaluators={name: evaluators() for name in groupers}, group_ms={name: [] for name in groupers},
                      instances={name: [] for name in groupers}, predictions={name: [] for name in groupers},
                      split_images=len(dataset))
    for i in tqdm(range(n) if indices is None else indices, desc="evaluate", disable=None if progress else True,
                  leave=False):
        sample = dataset[i]
        t0 = time.perf_counter()
        outputs = predictor(sample["image"]) if cache is None else cache[i]
        run.network_ms.append(1000 * (time.perf_counter() - t0))
        outputs = apply_oracle(oracle, outputs, sample)
        truth = ground_truth_instances(sample)
        ignore = sample["instances"] < 0
        keep = len(run.images) < keep_images
        for name, grouper in groupers.items():
            t0 = time.perf_counter()
            prediction = grouper(outputs)
            run.group_ms[name].append(1000 * (time.perf_counter() - t0))
            run.instances[name].append(len(prediction))
            for evaluator in run.evaluators[name]:
                evaluator.process(truth, prediction, ignore if ignore.any() else None)
            if keep:
                run.predictions[name].append(prediction)
        run.indices.append(i)
        run.names.append(str(sample.get("name", sample["image_id"])))
        run.intensity.append(float(np.mean(sample["image"])) / 255)
        if keep:
            run.images.append(sample["image"])
            run.outputs.append(outputs)
            run.ground_truth.append(truth)
    return run


def gather_run(run: GroupingRun) -> GroupingRun | None:
    """Rank 0 of the torch.distributed process group gets every rank's `run` merged in dataset-index
    order (evaluator records, timings, names); the other ranks get None. Figures keep rank 0's images.

    Scoring the merged run gives exactly the metrics of one process that ran every image: each
    evaluator's per-image records are the same and are merged in the same order.
    """
    import torch.distributed as dist

    payload = {"indices": run.indices, "names": run.names, "intensity": run.intensity, "network_ms": run.network_ms,
               "group_ms": run.group_ms, "instances": run.instances,
               "states": {name: [ev.state() for ev in evs] for name, evs in run.evaluators.items()}}
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(payload, gathered, dst=0)
    if gathered is None:
        return None
    order = sorted((i, rank, k) for rank, part in enumerate(gathered) for k, i in enumerate(part["indices"]))

    def merged(per_rank: list[list]) -> list:  # one list per rank -> one list in image order
        return [per_rank[rank][k] for _, rank, k in order]

    run.indices = merged([p["indices"] for p in gathered])
    run.names = merged([p["names"] for p in gathered])
    run.intensity = merged([p["intensity"] for p in gathered])
    run.network_ms = merged([p["network_ms"] for p in gathered])
    for name, evaluators in run.evaluators.items():
        run.group_ms[name] = merged([p["group_ms"][name] for p in gathered])
        run.instances[name] = merged([p["instances"][name] for p in gathered])
        for j, evaluator in enumerate(evaluators):
            evaluator.reset()
            evaluator.merge([merged([p["states"][name][j] for p in gathered])])
    return run


def run_groupers_distributed(predictor, dataset, groupers: dict, evaluators: Callable[[], list],
                             max_images: int | None = None, keep_images: int = 4,
                             progress: bool = True) -> GroupingRun | None:
    """`run_groupers` under an initialised torch.distributed process group: rank r runs images
    r, r + world, ... of the first `max_images`; rank 0 returns the gathered run, the others None."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    run = run_groupers(predictor, dataset, groupers, evaluators, keep_images=keep_images,
                       progress=progress and rank == 0, indices=range(rank, n, world))
    return gather_run(run)


def score_groupers(run: GroupingRun) -> dict[str, dict]:
    """The metrics of every grouper's evaluators in one flat dict each, plus its timing (median / p90
    ms per image) and instances per image."""
    results = {}
    for name, evaluators in run.evaluators.items():
        scores = evaluate_all(evaluators)
        ms = np.asarray(run.group_ms[name])
        scores.update(
            group_ms_median=float(np.median(ms)), group_ms_p90=float(np.percentile(ms, 90)),
            network_ms_median=float(np.median(run.network_ms)),
            instances_per_image=float(np.mean(run.instances[name])),
        )
        results[name] = scores
    return results


def image_scores(run: GroupingRun) -> list[dict]:
    """One row per image and grouper: the image's name and mean intensity (bright-field and fluorescence
    images fall apart by it), the grouper's instances and ms, and the per-image scores of its matching
    evaluator (`MatchingEvaluator.image_scores`) where it has one. To find which images fail."""
    rows = []
    for name, evaluators in run.evaluators.items():
        matching = next((ev.image_scores() for ev in evaluators if isinstance(ev, MatchingEvaluator)), None)
        for k, image in enumerate(run.names):
            rows.append({"image": image, "grouper": name, "intensity": round(run.intensity[k], 4),
                         "instances": run.instances[name][k], "group_ms": round(run.group_ms[name][k], 2),
                         **(matching[k] if matching else {})})
    return rows


def config_evaluators(config, class_names: list[str], metrics: Sequence[str] | None = None) -> Callable[[], list]:
    """A maker of fresh evaluators for `metrics` (default: the config's eval.metrics) with the config's
    eval settings (max_dets, iou_thresholds, map_r_thresholds)."""
    ev = config.eval
    metrics = list(ev.metrics if metrics is None else metrics)
    return lambda: build_evaluators(metrics, class_names, ev.max_dets, ev.iou_thresholds, ev.map_r_thresholds)


def compare_groupers(config, model, class_names: list[str], names: list[str] | None = None, split: str | None = None,
                     max_images: int | None = None, progress: bool = True, metrics: list[str] | None = None,
                     cache_dir: str | Path | None = None, overwrite_cache: bool = False
                     ) -> tuple[dict[str, dict], GroupingRun]:
    """Every grouper of `names` on the same network outputs of `split`: (metrics per grouper, the run).

    By default every grouper that fits the run (`default_groupers`) runs, the config's grouping
    blocks first and with their parameters; the others with their defaults. The network runs once
    per image; the timings are of grouping alone. `metrics` defaults to the config's eval.metrics
    plus "coco" (the comparison table shows COCO AP). With `cache_dir` the network outputs come from
    the output cache there when it holds this network's outputs of these images, else they are
    computed and cached there first (see engine.output_cache); a cache of another network or split
    is replaced only with `overwrite_cache`.
    """
    from embedseg.config import spatial_embedding
    from embedseg.engine.run import build_groupers, build_predictor, dataset_for_split
    from embedseg.grouping import default_groupers

    if names is None:
        names = default_groupers(list(config.grouping), spatial_embedding(config))
    groupers = build_groupers(config, names)
    split = split or config.eval.split
    dataset = dataset_for_split(config, split)
    predictor = build_predictor(config, model)
    ev = config.eval
    cache = None
    if cache_dir is not None:
        n = len(dataset) if max_images is None else min(max_images, len(dataset))
        cache = reuse_or_cache(predictor, dataset, cache_dir, range(n), network_pass_key(config, model, split),
                               overwrite_cache, progress)
    if metrics is None:
        metrics = list(ev.metrics) if "coco" in ev.metrics else ["coco", *ev.metrics]
    run = run_groupers(predictor, dataset, groupers, config_evaluators(config, class_names, metrics), max_images,
                       ev.num_overlays, progress, cache=cache, oracle=ev.oracle)
    return score_groupers(run), run


def network_pass_key(config, model, split: str) -> dict:
    """What a cached network pass depends on: the weights (a digest), the model block, the split's data and
    eval.tta (recorded only when on, so that caches written before the option existed still match)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"weights_sha1": digest.hexdigest(), "model": dict(config.model), "split": split,
            "dataset": {**config.data.dataset, **config.data.split_params.get(split, {})},
            **({"tta": True} if config.eval.tta else {})}


def format_grouping_table(results: dict[str, dict]) -> str:
    """Markdown: COCO AP, AP50, AP75 (percent), instances per image, median / p90 ms per image of grouping."""
    lines = ["| grouper | AP | AP50 | AP75 | inst/img | ms median | ms p90 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in results.items():
        ap = [f"{100 * m[k]:.1f}" if k in m and np.isfinite(m[k]) else "-" for k in ("AP", "AP50", "AP75")]
        lines.append(f"| {name} | {' | '.join(ap)} | {m['instances_per_image']:.1f} | "
                     f"{m['group_ms_median']:.1f} | {m['group_ms_p90']:.1f} |")
    return "\n".join(lines)
