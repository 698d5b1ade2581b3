"""Images per second of the training data pipeline alone, beside the model's training step rate.

    .venv/bin/python benchmarks/data.py [--configs experiments/quickstart.yaml experiments/dsb2018/cpu.yaml]
        [--workers 0 1 2] [--batches 30] [--steps 5] [--threads 2] [--set KEY=VALUE ...] [--json PATH]

For each config, the training split goes through the trainer's own loader (`epoch_loader`: data set,
augmentation, collation; nothing moves to the model) with each --workers count:

- start s: seconds until the first batch (for workers: starting them, which every epoch pays once);
- data img/s: images per second over the next --batches batches.

Beside it, the model alone: forward, loss, backward and optimiser step of the config's network on
one batch already in memory, on --threads torch threads, as images per second (the median of --steps
steps after one warm-up). Where data img/s is well above the model's, loading keeps up without workers.
A config whose data is missing (real data sets come from EMBEDSEG_DATA) is reported and skipped. The
table is printed in Markdown; --json PATH also writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/grouping.py

import torch

from embedseg.config import load_config
from embedseg.data.transforms import TrainTransform, TransformedDataset
from embedseg.engine.run import seed_everything
from embedseg.engine.trainer import TrainingRun, epoch_loader, training_dataset


def data_rate(config, workers: int, batches: int) -> dict:
    """Seconds to the first batch and images/s over the next `batches` of the trainer's loader."""
    dataset = TransformedDataset(training_dataset(config), TrainTransform.from_config(config.data))
    batches = min(batches, len(dataset) // config.train.batch_size - 1)
    start = time.perf_counter()
    loader = iter(epoch_loader(dataset, config.train.batch_size, workers, config.seed))
    next(loader)
    first = time.perf_counter()
    for _ in range(batches):
        next(loader)
    seconds = time.perf_counter() - first
    return {"start_s": first - start, "data_images_per_s": batches * config.train.batch_size / seconds,
            "batches": batches}


def model_rate(config, steps: int) -> float:
    """Images/s of the training step alone (network, losses, backward, AdamW) on one batch in memory."""
    run = TrainingRun.build(config, Path(tempfile.gettempdir()), torch.device("cpu"))
    loader = epoch_loader(TransformedDataset(run.dataset, run.transform), config.train.batch_size, 0, config.seed)
    batch = next(iter(loader))
    run.network.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        run.train_step(batch)
        times.append(time.perf_counter() - start)
    return config.train.batch_size / statistics.median(times[1:])


def benchmark(config_file: str, args) -> list[dict]:
    config = load_config(config_file, args.set)
    try:
        training_dataset(config)
    except (FileNotFoundError, ValueError) as e:
        print(f"{config_file}: skipped ({e})")
        return []
    seed_everything(config.seed)
    step_rate = model_rate(config, args.steps)
    rows = []
    for workers in args.workers:
        row = {"config": config_file, "workers": workers, "batch_size": config.train.batch_size,
               **data_rate(config, workers, args.batches), "model_images_per_s": step_rate}
        rows.append(row)
        print(f"| {config_file} | {workers} | {row['start_s']:.2f} | {row['data_images_per_s']:.1f} | "
              f"{step_rate:.1f} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["experiments/quickstart.yaml", "experiments/dsb2018/cpu.yaml"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=30, help="batches timed after the first (at most an epoch)")
    parser.add_argument("--steps", type=int, default=5, help="model steps timed after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the model steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads\n")
    print("| config | workers | start s | data img/s | model step img/s |\n|---|---:|---:|---:|---:|")
    rows = [row for config_file in args.configs for row in benchmark(config_file, args)]
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
