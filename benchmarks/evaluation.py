"""Time and peak memory of the streaming evaluators as the number of images grows.

    .venv/bin/python benchmarks/evaluation.py [--images 100 300 1000] [--size 1024] [--instances 50] [--json PATH]

Each image is a synthetic size x size label map with --instances rectangles of random sizes on a
jittered grid; its prediction is a perturbed copy (every box shifted and resized by a few pixels, one
in ten dropped, a few false boxes added) with random scores. The images go one by one through the
COCO and the matching evaluators (coco, matching_ap, sbd, dic, map_r), as `embedseg evaluate` feeds
them, and are then scored. Each image count runs in a fresh subprocess, so that peaks do not carry
over, and the table gives:

- seconds: wall-clock time of generating, processing and scoring every image;
- peak RSS MB: the subprocess's maximum resident set size (resource.getrusage ru_maxrss), which
  includes the Python interpreter, numpy, pycocotools and one image's dense masks;
- kept MB: the size of the evaluators' per-image records (pickled), all that grows with the images.
"""
from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from embedseg.evaluation import build_evaluators, evaluate_all
from embedseg.structures import Instances

METRICS = ["coco", "matching_ap", "sbd", "dic", "map_r"]


def boxes(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """[count, 4] (y0, y1, x0, x1): one box per cell of a square grid, of random size inside its cell."""
    side = int(np.ceil(np.sqrt(count)))
    cell = size // side
    cells = rng.permutation(side * side)[:count]
    y0 = cells // side * cell + rng.integers(0, cell // 4, count)
    x0 = cells % side * cell + rng.integers(0, cell // 4, count)
    heights, widths = rng.integers(cell // 4, cell * 3 // 4, (2, count))
    return np.stack([y0, y0 + heights, x0, x0 + widths], axis=1)


def paint(box_list: np.ndarray, size: int) -> np.ndarray:
    label_map = np.zeros((size, size), np.int32)
    for k, (y0, y1, x0, x1) in enumerate(box_list, start=1):
        label_map[max(y0, 0):y1, max(x0, 0):x1] = k
    return label_map


def image_pair(i: int, size: int, count: int) -> tuple[Instances, Instances]:
    """Ground truth and a perturbed, scored prediction of synthetic image i."""
    rng = np.random.default_rng(i)
    truth = boxes(rng, size, count)
    kept = truth[rng.random(count) >= 0.1] + rng.integers(-3, 4, (1, 4))
    predicted = np.concatenate([kept, boxes(rng, size, max(1, count // 20))])  # plus a few false boxes
    gt = Instances.from_label_map(paint(truth, size))
    label_map = paint(predicted, size)
    ids = np.unique(label_map)[1:]
    return gt, Instances.from_label_map(label_map, scores=rng.random(len(ids)))


def measure(images: int, size: int, count: int) -> dict:
    """One row: every image through the evaluators, then scored (run in its own process)."""
    t0 = time.perf_counter()
    evaluators = build_evaluators(METRICS, ["box"])
    for i in range(images):
        gt, pred = image_pair(i, size, count)
        for evaluator in evaluators:
            evaluator.process(gt, pred)
    kept = sum(len(pickle.dumps(e.state())) for e in evaluators)
    metrics = evaluate_all(evaluators)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {"images": images, "size": size, "instances": count, "seconds": seconds, "peak_rss_mb": peak_kb / 1024,
            "kept_mb": kept / 2**20, "AP": metrics["AP"], "match_AP50": metrics["match_AP50"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # internal: measure one count, print JSON
    args = parser.parse_args()
    if args.row is not None:
        print(json.dumps(measure(args.row, args.size, args.instances)))
        return 0
    rows = []
    for images in args.images:
        command = [sys.executable, __file__, "--row", str(images), "--size", str(args.size),
                   "--instances", str(args.instances)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.splitlines()[-1]))
    print(f"Streaming evaluation ({', '.join(METRICS)}) of {args.size}x{args.size} images with "
          f"{args.instances} instances each\n")
    print("| images | seconds | peak RSS MB | kept MB | AP | match_AP50 |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['kept_mb']:.1f} | "
              f"{100 * r['AP']:.1f} | {100 * r['match_AP50']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
