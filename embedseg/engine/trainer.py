"""The training loop: config in, run directory out.

`train` reads as the steps of a run: check the run directory, seed, build the parts (data set,
device, network), only then write the run directory, restore the parts from the last checkpoint
when resuming, and `TrainingRun.fit` steps the optimiser, logging, evaluating and checkpointing as
the config asks.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from tqdm import tqdm

import embedseg
from embedseg.config import Config, dump_config
from embedseg.data.transforms import TrainTransform, TransformedDataset
from embedseg.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from embedseg.engine.evaluator import run_groupers, score_groupers
from embedseg.engine.run import (
    build_groupers,
    build_network,
    build_predictor,
    dataset_for_split,
    seed_everything,
    select_device,
)
from embedseg.losses import build_criterion
from embedseg.outputs import describe_entries, write_text, written_name

log = logging.getLogger(__name__)


def train(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Train the model of `config`, writing config.yaml, env.txt, log.jsonl and checkpoints/."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)  # before env.txt, which records the thread count
    seed_everything(config.seed)
    # data set, device and network first: a start that fails on them leaves the run directory untouched
    run = TrainingRun.build(config, run_dir, select_device(config.train.device))
    open_run_dir(config, run_dir, resume, overwrite)
    if resume:
        run.restore(run_dir / "checkpoints" / "last.pt")
    run.fit()
    return run_dir


# ----------------------------------------------------------------------------- the run directory

# What train, evaluate and compare-grouping write into a run directory (checkpoints/ holds
# CHECKPOINT_FILES). `--overwrite` removes these and nothing else, and refuses a folder that holds more.
RUN_FILES = ("config.yaml", "env.txt", "log.jsonl", "metrics.json", "overlays_*.png",
             "grouping_*.md", "grouping_*.json", "grouping_*.png")
CHECKPOINT_FILES = ("last.pt", "best.pt")


def run_entries(run_dir: Path) -> tuple[list[Path], list[str]]:
    """(files a run wrote, names of everything else) in `run_dir`; checkpoints/ is looked into."""
    ours, foreign = [], []

    def classify(entry: Path, patterns: tuple[str, ...], name: str) -> None:
        is_ours = entry.is_file() and not entry.is_symlink() and \
            any(fnmatch.fnmatchcase(written_name(entry.name), p) for p in patterns)
        if is_ours:
            ours.append(entry)
        else:
            foreign.append(name + ("/" if entry.is_dir() else ""))

    for entry in sorted(run_dir.iterdir()):
        if entry.name == "checkpoints" and entry.is_dir() and not entry.is_symlink():
            for checkpoint in sorted(entry.iterdir()):
                classify(checkpoint, CHECKPOINT_FILES, f"checkpoints/{checkpoint.name}")
        else:
            classify(entry, RUN_FILES, entry.name)
    return ours, foreign


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is built or written, an --out that training may not use.

    A new run needs an empty or missing folder; `resume` one with checkpoints/last.pt; `overwrite`
    one that holds a previous run (config.yaml and env.txt) and nothing a run does not write.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file, not a folder; choose another --out")
    if resume:
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            where = "does not exist" if not run_dir.is_dir() else "holds no checkpoints/last.pt"
            raise FileNotFoundError(f"--resume: run directory {run_dir} {where}; there is no run to continue")
        return
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    _, foreign = run_entries(run_dir)
    if foreign or not all((run_dir / name).is_file() for name in ("config.yaml", "env.txt")):
        held = f"holds {describe_entries(foreign)}, which no run writes" if foreign else "is not a run directory"
        raise FileExistsError(f"--out {run_dir} {held}; training (even with --overwrite) never replaces it: "
                              "choose another --out")
    if not overwrite and not (run_dir / "checkpoints" / "last.pt").is_file():
        raise FileExistsError(f"run directory {run_dir} holds a run that stopped before its first checkpoint; "
                              "use --overwrite to replace it, or --out to choose another directory")
    if not overwrite:
        raise FileExistsError(f"run directory {run_dir} holds a run; use --resume to continue it, --overwrite "
                              "to replace it, or --out to choose another directory")


def open_run_dir(config: Config, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Make (or reuse, when resuming) the run directory and write config.yaml and env.txt into it.

    With `overwrite`, a previous run's files are removed first (checked again, so that nothing a user
    put there meanwhile is removed).
    """
    if overwrite and not resume and run_dir.is_dir():
        check_run_dir(run_dir, resume, overwrite)
        ours, _ = run_entries(run_dir)
        for path in sorted(ours, key=lambda p: p.name in ("config.yaml", "env.txt")):  # recognisable to the end
            path.unlink()
        if (run_dir / "checkpoints").is_dir():
            (run_dir / "checkpoints").rmdir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        dump_config(config, run_dir / "config.yaml")
    write_env(run_dir / "env.txt")


def write_env(path: Path) -> None:
    lines = [
        f"embedseg {embedseg.__version__}",
        f"python {sys.version.split()[0]}",
        f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})",
        f"platform {platform.platform()}",
        f"threads {torch.get_num_threads()}",
        "argv " + " ".join(sys.argv),
    ]
    write_text(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- schedule, precision, data


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then poly (power 0.9, as DeepLab), cosine or constant decay."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "poly":
        return (1 - t) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs natively here: a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # private torch.cpu checks, hence getattr: a torch without them only loses the warning
    return any(getattr(torch.cpu, check, lambda: True)() for check in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


def infinite_batches(dataset, batch_size: int, num_workers: int, seed: int, start_epoch: int = 0):
    """Shuffled batches forever; each epoch reshuffles with its own seed (reproducible on resume)."""
    epoch = start_epoch
    while True:
        generator = torch.Generator().manual_seed(seed + epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                             num_workers=num_workers, generator=generator,
                                             persistent_workers=False)
        yield from loader
        epoch += 1


def training_dataset(config: Config):
    """The train split; it must fill at least one batch."""
    dataset = dataset_for_split(config, config.data.train_split)
    if len(dataset) < config.train.batch_size:
        raise ValueError(f"the {config.data.train_split} split has {len(dataset)} images, fewer than "
                         f"train.batch_size = {config.train.batch_size}")
    return dataset


def validation_ap(config: Config, model, train_dataset) -> float:
    """COCO AP of the first grouper on the validation split (for picking best.pt)."""
    val = dataset_for_split(config, config.data.val_split)
    first = next(iter(config.grouping))
    run = run_groupers(build_predictor(config, model), val, build_groupers(config, [first]),
                       max_images=config.eval.max_images, keep_images=0, progress=False)
    return score_groupers(run, list(train_dataset.class_names), config.eval.max_dets)[first]["AP"]


# ----------------------------------------------------------------------------- the run


class Throughput:
    """Images seen and seconds since the first step, for the log and the final summary."""

    def __init__(self) -> None:
        self.start, self.images = time.perf_counter(), 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def per_second(self) -> float:
        return self.images / max(1e-9, self.elapsed())


@dataclass
class TrainingRun:
    """The parts of one training run and where it stands (step, best validation AP)."""

    config: Config
    run_dir: Path
    device: torch.device
    dataset: torch.utils.data.Dataset
    transform: TrainTransform
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0
    best_ap: float = -1.0

    @classmethod
    def build(cls, config: Config, run_dir: Path, device: torch.device) -> TrainingRun:
        """Data set, augmentation, network, losses, AdamW and the warm-up + decay schedule (the network's
        initial weights are drawn from the RNG seeded just before)."""
        dataset = training_dataset(config)
        if config.train.bf16 and not fast_bf16(device):
            log.warning("train.bf16: this %s has no native bfloat16, so steps will be slower than in float32; "
                        "consider --set train.bf16=false", device.type)
        transform = TrainTransform.from_config(config.data)
        model = build_network(config, dataset.num_classes).to(device, memory_format=memory_format(config))
        criterion = build_criterion(config.loss).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
        total, warmup, schedule = config.train.steps, config.train.warmup_steps, config.train.schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, schedule))
        return cls(config, run_dir, device, dataset, transform, model, criterion, optimizer, scheduler)

    def restore(self, path: Path) -> None:
        """Weights, optimiser, schedule, RNG states, step and best AP from a checkpoint of this run."""
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        self.step, self.best_ap = ckpt["step"], ckpt.get("best_ap", -1.0)
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def save(self, name: str) -> None:
        save_checkpoint(self.run_dir / "checkpoints" / name, model=self.model.state_dict(),
                        optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), step=self.step,
                        best_ap=self.best_ap, rng=rng_state(), config=self.config.to_dict(),
                        num_classes=self.dataset.num_classes, class_names=list(self.dataset.class_names))

    def fit(self) -> None:
        """Step until train.steps; log, evaluate and checkpoint on the way; save last.pt at the end."""
        train_config, total = self.config.train, self.config.train.steps
        batches = self.batches()
        self.model.train()
        throughput = Throughput()
        bar = tqdm(total=total, initial=self.step, desc="train", disable=None, dynamic_ncols=True)
        with open(self.run_dir / "log.jsonl", "a") as log_file:
            while self.step < total:
                batch = next(batches)
                losses, grad_norm = self.train_step(batch)
                throughput.images += len(batch["image"])
                bar.update(1)
                if self.step % train_config.log_every == 0 or self.step == total:
                    record = self.log_record(losses, grad_norm, throughput)
                    write_record(log_file, record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.1f}")
                if train_config.eval_every and self.step % train_config.eval_every == 0 and self.step < total:
                    self.evaluate(log_file)
                if self.step % train_config.checkpoint_every == 0 and self.step < total:
                    self.save("last.pt")
        bar.close()
        self.save("last.pt")
        log.info("trained %d steps in %.0f s (%.1f images/s)", total, throughput.elapsed(), throughput.per_second())

    def batches(self):
        """Augmented batches on the device, continuing the epoch sequence where a resumed run stopped."""
        config = self.config
        dataset = TransformedDataset(self.dataset, self.transform)
        start_epoch = self.step * config.train.batch_size // len(self.dataset)
        for batch in infinite_batches(dataset, config.train.batch_size, config.train.num_workers, config.seed,
                                      start_epoch=start_epoch):
            yield {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_step(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """One optimiser step on `batch`; returns the loss terms and the gradient norm before clipping."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.bf16):
            outputs = self.model(batch["image"].contiguous(memory_format=memory_format(self.config)))
        outputs = {k: v.float() for k, v in outputs.items()}  # losses in float32 (a no-op without bf16)
        losses = self.criterion(outputs, batch, step=self.step)  # step: ramps of the loss weights
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"loss became {losses['loss'].item()} at step {self.step}; try a lower train.lr")
        return losses, grad_norm

    def log_record(self, losses: dict, grad_norm: torch.Tensor, throughput: Throughput) -> dict:
        elapsed = throughput.elapsed()
        record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                  "images_per_s": throughput.images / elapsed, "elapsed_s": elapsed}
        record.update({k: float(v.detach()) for k, v in losses.items()})
        return record

    def evaluate(self, log_file: IO[str]) -> None:
        """Log the validation AP; a new best is saved as best.pt."""
        ap = validation_ap(self.config, self.model, self.dataset)
        write_record(log_file, {"step": self.step, "val_AP": ap})
        self.model.train()
        if ap > self.best_ap:
            self.best_ap = ap
            self.save("best.pt")


def memory_format(config: Config) -> torch.memory_format:
    return torch.channels_last if config.train.channels_last else torch.contiguous_format


def write_record(log_file: IO[str], record: dict) -> None:
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
