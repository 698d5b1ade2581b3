"""Speed and memory of the vectorised embedding losses against per-instance Python-loop references.

    .venv/bin/python benchmarks/losses.py [--instances 5 20 50] [--repeats 5] [--json PATH]

For a batch of B=4 images of 256x256 pixels with D=64 embeddings and K instances each, it times
forward + backward of `discriminative`, `metric` and `spatial` (embedseg.losses; spatial on the
first 3 channels: 2 positions (plus the pixels' own at 1/16 unit per pixel) and a margin, with a fixed
random seed map) and of straightforward loop
versions of the same formulas (tests/loss_references.py: loops over images, instances and instance
pairs), and prints a Markdown table:

- time: best (minimum) wall-clock seconds of forward + backward over --repeats runs after one warm-up,
  on --threads CPU threads;
- peak MB: the largest total size of tensor memory allocated during one forward + backward
  and alive at once (the inputs, allocated before, are not counted), replayed from the CPU
  allocator's allocation and free events that torch.profiler records (profile_memory=True).
  It counts tensor storage only, not Python objects or allocator slack, and is the same
  measure for both versions; "n/a" when this torch build does not expose the events.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from embedseg.losses import DiscriminativeLoss, MetricLoss, SpatialEmbeddingLoss

# ----------------------------------------------------------------------------- loop versions (the baseline timed)
# The loop formulas are the test suite's known answers (tests/loss_references.py); the benchmark adds
# the loop version of the pixel sampling that the metric loss needs.

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loss_references import discriminative_loss_loop, metric_loss_loop, spatial_loss_loop


def sample_groups_loop(instances, per_group=32, max_pixels=1024, include_background=True):
    """Per image {id: flat pixel indices}: up to per_group random pixels of each group, then at most
    max_pixels per image taken round-robin over the groups (the rule of embedseg's sample_pixels)."""
    samples = []
    for b in range(instances.shape[0]):
        lab = instances[b].flatten()
        ids = [i for i in lab.unique().tolist() if i > 0 or (include_background and i == 0)]
        candidates = {}
        for i in ids:
            pix = torch.nonzero(lab == i).squeeze(1)
            candidates[i] = pix[torch.randperm(len(pix))[:per_group]]
        taken, total, rank = {i: 0 for i in ids}, 0, 0
        while total < max_pixels and rank < per_group:
            for k in torch.randperm(len(ids)).tolist():
                i = ids[k]
                if rank < len(candidates[i]) and total < max_pixels:
                    taken[i] += 1
                    total += 1
            rank += 1
        samples.append({i: candidates[i][:taken[i]] for i in ids if taken[i]})
    return samples


def metric_loss_sampled_loop(embedding, instances):
    """The metric loss's loop version on pixels drawn by `sample_groups_loop` (MetricLoss's defaults)."""
    return metric_loss_loop(embedding, sample_groups_loop(instances))


def spatial(loss, coord_scale: float = 1 / 16):
    """A loss of (embedding, seediness, instances) as one of (embedding, instances): the embedding's first
    three channels, the first two plus coord_scale * (y, x) as the model adds them, and a seed map drawn
    once per shape."""
    seed_maps = {}

    def fn(embedding, instances):
        b, _, h, w = embedding.shape
        seed_map = seed_maps.setdefault((b, h, w), torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(0)))
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        positions = embedding[:, :2] + coord_scale * torch.stack([yy, xx]).to(embedding.dtype)
        return loss(torch.cat([positions, embedding[:, 2:3]], 1), seed_map, instances)
    return fn


# ----------------------------------------------------------------------------- inputs and measuring


def make_instances(batch: int, size: int, k: int, seed: int = 0) -> torch.Tensor:
    """[B, size, size] ids: K blobs per image (nearest of K random centres, within a radius), rest background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    grid = torch.stack([yy, xx], -1).reshape(-1, 1, 2).float()
    radius = 0.7 * size / math.sqrt(k)
    out = []
    for _ in range(batch):
        centres = torch.rand(k, 2, generator=g) * size
        dist = (grid - centres).norm(dim=-1)  # [N, K]
        nearest, which = dist.min(1)
        out.append(torch.where(nearest < radius, which + 1, 0).reshape(size, size))
    return torch.stack(out)


def forward_backward(fn, embedding, instances):
    embedding.grad = None
    fn(embedding, instances)["loss"].backward()


def best_times(cases: dict, repeats: int) -> dict:
    """{key: (fn, embedding, instances)} -> {key: best forward + backward seconds}.

    One warm-up each, then `repeats` rounds that time every case once: the repeats of a case are
    spread over the whole run, so a burst of load from another process spoils one round, not
    every timing of one case. Best of N: the least disturbed (as timeit advises).
    """
    for fn, embedding, instances in cases.values():
        forward_backward(fn, embedding, instances)
    best = {key: math.inf for key in cases}
    for _ in range(repeats):
        for key, (fn, embedding, instances) in cases.items():
            start = time.perf_counter()
            forward_backward(fn, embedding, instances)
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def peak_tensor_mb(fn, embedding, instances) -> float | None:
    """Peak MB of tensor memory allocated during forward + backward and alive at once.

    Replays the CPU allocator's allocation (+bytes) and free (-bytes) events that torch.profiler
    records with profile_memory=True, in time order, and returns the running sum's maximum.
    """
    try:
        from torch.profiler import ProfilerActivity, profile

        embedding.grad = None
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            forward_backward(fn, embedding, instances)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        return peak / 2**20 if events else None
    except Exception:  # noqa: BLE001 - semi-private API: report n/a rather than a wrong figure
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[5, 20, 50], help="instances per image")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-loop", action="store_true", help="time the vectorised losses only")
    parser.add_argument("--no-memory", action="store_true", help="skip the (slower) memory profile")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    losses = {"discriminative": {"vectorised": DiscriminativeLoss(), "loop": discriminative_loss_loop},
              "metric": {"vectorised": MetricLoss(), "loop": metric_loss_sampled_loop},
              "spatial": {"vectorised": spatial(SpatialEmbeddingLoss()), "loop": spatial(spatial_loss_loop)}}
    inputs = {k: (make_instances(args.batch, args.size, k),
                  (0.5 * torch.randn(args.batch, args.dim, args.size, args.size)).requires_grad_(True))
              for k in args.instances}
    versions = ["vectorised"] if args.no_loop else ["vectorised", "loop"]
    cases = {(k, name, version): (versions_of[version], embedding, instances)
             for k, (instances, embedding) in inputs.items()
             for name, versions_of in losses.items() for version in versions}
    seconds = best_times(cases, args.repeats)
    rows = []
    for (k, name, version), (fn, embedding, instances) in cases.items():
        if version == "vectorised":
            rows.append({"loss": name, "instances": k})
        row = rows[-1]
        row[f"{version}_s"] = seconds[(k, name, version)]
        row[f"{version}_peak_mb"] = None if args.no_memory else peak_tensor_mb(fn, embedding, instances)
        if version == "loop":
            row["speedup"] = row["loop_s"] / row["vectorised_s"]

    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    print(f"B={args.batch}, D={args.dim}, {args.size}x{args.size}, forward+backward, {args.threads} threads, "
          f"best of {args.repeats}; peak MB = tensor memory alive at once (torch.profiler allocator events)\n")
    print("| loss | K | vectorised s | loop s | speed-up | vectorised peak MB | loop peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['loss']} | {r['instances']} | {r['vectorised_s']:.4f} | {fmt(r.get('loop_s'), '.4f')} | "
              f"{fmt(r.get('speedup'), '.1f')} | {fmt(r['vectorised_peak_mb'], '.1f')} | "
              f"{fmt(r.get('loop_peak_mb'), '.1f')} |")
    if args.json:
        setup = {k: getattr(args, k) for k in ("batch", "size", "dim", "repeats", "threads")}
        Path(args.json).write_text(json.dumps({"setup": setup, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
