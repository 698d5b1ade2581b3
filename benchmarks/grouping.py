"""Time per image of every grouper on planted clusters, beside plain scikit-learn MeanShift and hdbscan.

    .venv/bin/python benchmarks/grouping.py [--cases 256x20 256x40 ...] [--repeats 5] [--threads 2]
        [--sklearn-cases 256x20 256x40] [--sklearn-seeds peaks 500] [--hdbscan-cases 256x20]
        [--quick] [--json PATH]

Each case SIZExK is one synthetic image of SIZE x SIZE pixels holding K instances: Voronoi cells
of K random sites, cut to the disc around their site that leaves about 75% of the image
foreground, so neighbouring instances touch. Every instance has its own embedding centre
(D=64, on a sphere of radius 3, at least 2.5 apart) and its pixels scatter around it with
Gaussian noise of 0.05 per dimension (about 0.4 in norm, as a discriminative loss with
delta_v = 0.5 leaves them); seediness falls from 1 at the site to 0 at the cell's edge; class
probabilities are 0.9 for the instance's class (two classes).

The spatial grouper reads a spatial embedding of the same cells instead (each pixel points at its
site with 0.5 px of noise, one margin whose kernel is 0.5 at 3 px), and oracle_centres reads the
planted instances, as eval.oracle hands them over.

Every registered grouper runs with its default parameters (mean-shift bandwidth 1.0), and the
spatial grouper once more with join_threshold 0.2 (what tuning chose on CVPPP) for the cost of
scoring each new mask against the kernels near it (it also joins the cells whose site lies 3-4.6 px
from an earlier one's, where that kernel is between 0.5 and 0.2, so it loses some AP), timed as
the median wall-clock ms of --repeats calls after one warm-up on --threads torch threads. Beside
them, once per case (they are slow), the plain uses on every foreground pixel:

- sklearn MeanShift: `sklearn.cluster.MeanShift(bandwidth=1.0, seeds=...)`, every pixel
  labelled, in two seedings (--sklearn-seeds): the embeddings at the local maxima of the
  seediness map (3x3 windows, seediness >= 0.5; about one per instance here, the seeds our
  mean-shift would start from), and 500 foreground pixels drawn at random (the plain use, when
  nothing tells where objects are). Its own grid seeding (`bin_seeding=True`) puts no seed near
  the data in 64-d, and seeding from every pixel would take hours;
- plain hdbscan: `hdbscan.HDBSCAN(min_cluster_size=20)` on all D=64 embeddings (over a minute
  per 256x256 image, so by default only in the 256x20 case; --hdbscan-cases picks others).

Their clusters of at least 20 pixels become instances (score = mean membership strength x class
confidence for hdbscan, class confidence for MeanShift). AP is COCO mask AP against the planted
instances. The table is printed in Markdown; --json PATH also writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

# OpenMP threads that spin while waiting for each other lose their time slices to any other busy
# process: on a shared 2-core machine 2 torch threads then run 10-20x slower than 1. Passive
# waiting (set before torch loads OpenMP; export OMP_WAIT_POLICY=ACTIVE to compare) avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from scipy import ndimage

from embedseg.evaluation import evaluate_coco
from embedseg.grouping import GROUPERS, build_grouper
from embedseg.grouping.base import as_tensor, foreground_embeddings, instances_from_masks, masks_from_assignment
from embedseg.structures import Instances

MIN_SIZE = 20
BANDWIDTH = 1.0


# ----------------------------------------------------------------------------- planted clusters


def planted_outputs(size: int, instances: int, dim: int = 64, foreground: float = 0.75, num_classes: int = 2,
                    noise: float = 0.05, radius: float = 3.0, min_separation: float = 2.5, seed: int = 0):
    """(grouper outputs, ground-truth Instances) of one synthetic image; see the module docstring."""
    rng = np.random.default_rng(seed)
    sites = rng.uniform(0, size, (instances, 2)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    site_distance = np.full((size, size), np.inf, np.float32)
    nearest = np.zeros((size, size), np.int32)
    for k, (sy, sx) in enumerate(sites):  # one site at a time: no [K, H, W] array at 512x512
        d = np.sqrt((yy - sy) ** 2 + (xx - sx) ** 2)
        closer = d < site_distance
        site_distance[closer], nearest[closer] = d[closer], k + 1
    reach = np.quantile(site_distance, foreground)
    label_map = np.where(site_distance <= reach, nearest, 0).astype(np.int32)
    ids = np.unique(label_map[label_map > 0])
    label_map = np.searchsorted(np.concatenate([[0], ids]), label_map).astype(np.int32)  # ids 1..K, no gaps
    k = len(ids)

    for _ in range(100):  # random directions in 64-d are nearly orthogonal: this rarely repeats
        centres = rng.normal(size=(k + 1, dim))
        centres *= radius / np.linalg.norm(centres, axis=1, keepdims=True)
        gaps = np.linalg.norm(centres[1:, None] - centres[None, 1:], axis=-1) + np.eye(k) * 1e9
        if gaps.min() >= min_separation:
            break
    else:
        raise RuntimeError(f"could not place {k} centres {min_separation} apart on a sphere of radius {radius}")
    embedding = np.empty((dim, size, size), np.float32)
    for c in range(dim):  # channel by channel keeps the float64 temporaries small
        embedding[c] = centres[label_map, c] + noise * rng.standard_normal((size, size))

    classes = np.concatenate([[0], rng.integers(1, num_classes + 1, k)])
    semantic_map = classes[label_map]
    semantic = np.full((num_classes + 1, size, size), 0.1 / num_classes, np.float32)
    semantic[semantic_map, yy.astype(int), xx.astype(int)] = 0.9
    strength = np.concatenate([[0.0], rng.uniform(0.6, 1.0, k)])
    seediness = np.where(label_map > 0, np.clip(1 - site_distance / reach, 0, 1) * strength[label_map], 0.0)
    # the spatial grouper reads a spatial embedding instead: every pixel points at its own site (in image
    # units, 0.5 px of noise) with a margin whose kernel is 0.5 at 3 px
    site_of = np.concatenate([[0.0, 0.0], sites[ids - 1].ravel()]).reshape(-1, 2)[label_map]  # [H, W, 2]
    pointed = (site_of + 0.5 * rng.standard_normal((size, size, 2))) / size
    margin = np.full((1, size, size), np.log(np.log(2.0) * size ** 2 / 9.0))
    spatial = np.concatenate([pointed.transpose(2, 0, 1), margin]).astype(np.float32)
    outputs = {"embedding": embedding, "spatial_embedding": spatial, "semantic": semantic,
               "seediness": seediness.astype(np.float32), "instances": label_map}  # instances: for oracle groupers
    return outputs, Instances.from_label_map(label_map, labels=semantic_map)


def grouper_inputs(grouper, outputs: dict) -> dict:
    """The planted outputs as `grouper` reads them: the spatial embedding for a spatial grouper."""
    return {**outputs, "embedding": outputs["spatial_embedding"]} if getattr(grouper, "spatial", False) else outputs


# ----------------------------------------------------------------------------- plain baselines


def seediness_peaks(seediness, size: int = 3, threshold: float = 0.5) -> torch.Tensor:
    """Flat indices of the local maxima (in size x size windows) of the seediness map above threshold."""
    seediness = np.asarray(seediness)
    peaks = (seediness == ndimage.maximum_filter(seediness, size=size)) & (seediness >= threshold)
    return torch.from_numpy(np.flatnonzero(peaks))


def sklearn_meanshift(outputs: dict, seeds: str = "peaks") -> Instances:
    """scikit-learn MeanShift on every foreground pixel, seeded with the seediness peaks or N random pixels."""
    from sklearn.cluster import MeanShift

    pixel_index, x, image_size = foreground_embeddings(outputs)
    if len(x) == 0:
        return Instances.empty(*image_size)
    if seeds == "peaks":
        start = as_tensor(outputs["embedding"]).flatten(1).T[seediness_peaks(outputs["seediness"])]
    else:
        start = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:int(seeds)]]
    labels = MeanShift(bandwidth=BANDWIDTH, seeds=start.numpy()).fit(x.numpy()).labels_
    labels = torch.from_numpy(labels.astype(np.int64))
    masks, kept = masks_from_assignment(labels, pixel_index, int(labels.max()) + 1, image_size, MIN_SIZE)
    return instances_from_masks(masks, torch.ones(len(kept)), outputs)


def plain_hdbscan(outputs: dict) -> Instances:
    import hdbscan

    pixel_index, x, image_size = foreground_embeddings(outputs)
    if len(x) <= MIN_SIZE:
        return Instances.empty(*image_size)
    clusterer = hdbscan.HDBSCAN(min_cluster_size=MIN_SIZE).fit(x.double().numpy())
    labels = torch.from_numpy(clusterer.labels_.astype(np.int64))
    k = int(labels.max()) + 1
    strength = torch.from_numpy(clusterer.probabilities_.astype(np.float32))
    member = labels >= 0
    membership = (torch.zeros(k).index_add_(0, labels[member], strength[member])
                  / torch.bincount(labels[member], minlength=k).clamp_min(1))
    masks, kept = masks_from_assignment(labels, pixel_index, k, image_size, MIN_SIZE)
    return instances_from_masks(masks, membership[kept], outputs)


# ----------------------------------------------------------------------------- timing


def time_grouper(grouper, outputs: dict, repeats: int) -> tuple[Instances, list[float]]:
    """The grouper's result and the wall-clock ms of each of `repeats` calls (after a warm-up when repeats > 1)."""
    result = grouper(outputs) if repeats > 1 else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = grouper(outputs)
        times.append(1000 * (time.perf_counter() - t0))
    return result, times


def parse_case(text: str) -> tuple[int, int]:
    try:
        size, instances = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"case {text!r}: expected SIZExINSTANCES, e.g. 256x40") from None
    return size, instances


def run_case(size: int, instances: int, args) -> list[dict]:
    outputs, gt = planted_outputs(size, instances, dim=args.dim, seed=args.seed)
    foreground = int(gt.areas().sum())
    rows = []
    methods = [(name, build_grouper(name), args.repeats) for name in GROUPERS.names()]
    methods.append(("spatial, join_threshold 0.2", build_grouper("spatial", join_threshold=0.2), args.repeats))
    case = f"{size}x{instances}"
    if case in args.sklearn_cases:
        for seeds in args.sklearn_seeds:
            label = "seediness peaks" if seeds == "peaks" else f"{seeds} random seeds"
            methods.append((f"sklearn MeanShift (all pixels, {label})", partial(sklearn_meanshift, seeds=seeds), 1))
    if case in args.hdbscan_cases:
        methods.append(("hdbscan (all pixels)", plain_hdbscan, 1))
    for name, grouper, repeats in methods:
        pred, times = time_grouper(grouper, grouper_inputs(grouper, outputs), repeats)
        metrics = evaluate_coco([gt], [pred])
        rows.append({"size": size, "instances": len(gt), "foreground_pixels": foreground, "method": name,
                     "ms_median": statistics.median(times), "ms_all": times, "AP": metrics["AP"],
                     "AP50": metrics["AP50"], "AP75": metrics["AP75"], "found": len(pred)})
        print(f"  {case} {name}: {statistics.median(times):.1f} ms, AP {metrics['AP']:.3f}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| image | instances | fg pixels | method | ms / image | AP | AP50 | AP75 | found |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']}x{r['size']} | {r['instances']} | {r['foreground_pixels']} | {r['method']} | "
                     f"{r['ms_median']:.1f} | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} | {100 * r['AP75']:.1f} | "
                     f"{r['found']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=parse_case, nargs="+", metavar="SIZExK",
                        default=[(256, 20), (256, 40), (256, 80), (512, 20), (512, 80)],
                        help="image side x instances (default 256x20 256x40 256x80 512x20 512x80)")
    parser.add_argument("--sklearn-cases", nargs="*", default=["256x20", "256x40"], metavar="SIZExK",
                        help="cases that also run sklearn MeanShift on every pixel (default 256x20 256x40; "
                             "pass the option with no case to skip it)")
    parser.add_argument("--sklearn-seeds", nargs="+", default=["peaks", "500"], metavar="peaks|N",
                        help="seedings of sklearn MeanShift, one row each: the seediness peaks and/or N random "
                             "foreground pixels (default: peaks 500)")
    parser.add_argument("--hdbscan-cases", nargs="*", default=["256x20"], metavar="SIZExK",
                        help="cases that also run plain hdbscan on every pixel, over a minute each "
                             "(default 256x20; pass the option with no case to skip it)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per grouper (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimensions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="small run: 128x10 and 256x40, 3 repeats, both plain baselines at 128x10 only")
    parser.add_argument("--json", metavar="PATH", help="also write the setup and rows as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.repeats = [(128, 10), (256, 40)], 3
        args.sklearn_cases = args.hdbscan_cases = ["128x10"]
    torch.set_num_threads(args.threads)

    setup = {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
             "cpus": os.cpu_count(), "torch": torch.__version__,
             "python": platform.python_version(), "load_average_at_start": os.getloadavg()[0],
             "repeats": args.repeats, "dim": args.dim, "bandwidth": BANDWIDTH, "min_size": MIN_SIZE}
    print(f"grouping benchmark: {setup}", flush=True)
    rows = []
    for size, instances in args.cases:
        rows += run_case(size, instances, args)
    setup["load_average_at_end"] = os.getloadavg()[0]
    print(f"\nTime per image (median wall-clock ms; plain baselines timed once) and COCO mask AP (percent) "
          f"on planted clusters, D={args.dim}, {setup['threads']} torch threads "
          f"(OMP_WAIT_POLICY={setup['omp_wait_policy']}), load average "
          f"{setup['load_average_at_start']:.1f} -> {setup['load_average_at_end']:.1f}:\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
