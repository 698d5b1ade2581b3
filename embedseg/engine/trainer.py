"""The training loop: config in, run directory out.

`train` reads as the steps of a run: check the run directory, take the checkpoint to resume from
(refused when the config trains differently), seed, build the parts (data set, device, network),
restore them from the checkpoint, only then write the run directory, and `TrainingRun.fit` steps the
optimiser, logging, evaluating and checkpointing as the config asks.

A run survives being stopped: last.pt holds the weights, the optimiser, the schedule, every RNG
state and the step, and the step fixes the place in the epoch, so `--resume` continues with the
very next batch. With `train.deterministic` and `train.num_workers: 0` the resumed run ends with the
weights of an uninterrupted one, bit for bit; with worker processes only when it stopped at the end
of an epoch (workers that start afresh draw other augmentations for the rest of one). SIGINT and
SIGTERM finish the current step, save last.pt and raise `TrainingInterrupted`. A non-finite loss or
gradient is caught before the optimiser steps (`train.on_nonfinite`), and no checkpoint is ever
written with non-finite weights.

Under torchrun N processes train one model with DistributedDataParallel, `train.batch_size` being
the batch of all of them together (what that makes equal to one process: `TrainingRun`); rank 0
alone writes, and signals and non-finite steps stop every rank after the same step.
"""
from __future__ import annotations

import fnmatch
import functools
import itertools
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from tqdm import tqdm

import embedseg
from embedseg.config import Config, ConfigError, config_from_dict, dump_config
from embedseg.data.transforms import TrainTransform, TransformedDataset
from embedseg.engine import distributed
from embedseg.engine.checkpoint import changed_keys, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from embedseg.engine.evaluator import config_evaluators, run_groupers, run_groupers_distributed, score_groupers
from embedseg.engine.faults import (
    NonFiniteError,
    StopSignals,
    TrainingInterrupted,
    first_nonfinite_entry,
    ignore_stop_signals,
    nonfinite_fault,
)
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
    """Train the model of `config`, writing config.yaml, env.txt, log.jsonl and checkpoints/.

    Under torchrun the processes train one model together (see `embedseg.engine.distributed` and
    `TrainingRun`); rank 0 alone checks and writes the run directory.
    """
    run_dir = Path(run_dir)
    check_batch_split(config.train.batch_size, distributed.launched_world_size())
    with distributed.process_group(select_device(config.train.device)) as device:
        distributed.on_main(check_run_dir, run_dir, resume, overwrite)
        checkpoint = distributed.on_main(resumable_checkpoint, config, run_dir) if resume else None
        if config.train.threads:
            torch.set_num_threads(config.train.threads)  # before env.txt, which records the thread count
        with deterministic_algorithms(config.train.deterministic):
            seed_everything(config.seed)  # the same initial weights on every rank
            # data set, device and network first: a start that fails on them leaves the run directory untouched
            run = TrainingRun.build(config, run_dir, device)
            if distributed.rank() > 0:  # augmentations of its own on every rank
                seed_everything(rank_seed(config.seed, distributed.rank()))
            if checkpoint is not None:  # before env.txt is written: a refused resume leaves every file as it was
                run.restore(checkpoint)
            distributed.on_main(open_run_dir, config, run_dir, resume, overwrite)
            with StopSignals() as stop:
                run.fit(stop)
    return run_dir


def check_batch_split(batch_size: int, processes: int) -> None:
    """train.batch_size is the batch of one step over all processes: it must divide among them."""
    if batch_size % processes:
        raise ConfigError(f"train.batch_size = {batch_size} does not divide among {processes} processes; "
                          f"train.batch_size is the batch of all processes together: use a multiple of {processes}")


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of the augmentations of rank > 0 (rank 0 goes on from `seed`), distinct for every rank and
    for every step a run on another number of processes resumes at."""
    return (seed + 7919 * rank + 104729 * step) % 2**32


# ----------------------------------------------------------------------------- the run directory

# What train, evaluate, compare-grouping, tune and reproduce write into a run directory (checkpoints/ holds
# CHECKPOINT_FILES). `--overwrite` removes these and nothing else, and refuses a folder that holds more.
RUN_FILES = ("config.yaml", "env.txt", "log.jsonl", "metrics.json", "images_*.csv", "overlays_*.png", "spatial_*.png",
             "grouping_*.md", "grouping_*.json", "grouping_*.png", "tuned.yaml", "tune.json", "row_*.json",
             "training.json")
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


def epoch_loader(dataset, batch_size: int, num_workers: int, seed: int, skip: int = 0, *, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False):
    """The batches of one epoch from batch `skip` on: a shuffle drawn from `seed` (the same whatever
    `skip`), the incomplete last batch dropped; the workers' seeds come from the same generator.

    `batch_size` is the global batch: with `world_size` processes, `rank` gets its slice of each batch
    of the one shuffle that every rank draws alike, so N processes take the images of one process's
    steps, and a step's place in the epoch is the same on every rank. (torch's DistributedSampler
    would deal the images out by stride and pad the epoch, which changes both.)
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(dataset, generator=generator), batch_size,
                                          drop_last=True)
    per_rank = batch_size // world_size
    slices = (batch[rank * per_rank:(rank + 1) * per_rank] for batch in itertools.islice(order, skip, None))
    return torch.utils.data.DataLoader(dataset, batch_sampler=slices, num_workers=num_workers, generator=generator,
                                       worker_init_fn=functools.partial(start_worker, rank=rank) if num_workers else None,
                                       pin_memory=pin_memory)


def start_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader `worker_init_fn`: stop signals are left to the main process; the workers of rank > 0
    draw other augmentations than rank 0's (torch seeds worker w with the loader's base seed + w, and
    the base seed comes from the epoch's generator, the same on every rank)."""
    ignore_stop_signals(worker_id)
    if rank:
        torch.manual_seed((torch.initial_seed() + 65537 * rank) % 2**63)


def training_dataset(config: Config):
    """The train split; it must fill at least one batch, and its images must stack into batches."""
    dataset = dataset_for_split(config, config.data.train_split)
    if len(dataset) < config.train.batch_size:
        raise ValueError(f"the {config.data.train_split} split has {len(dataset)} images, fewer than "
                         f"train.batch_size = {config.train.batch_size}")
    check_image_sizes(dataset, config)
    return dataset


def check_image_sizes(dataset, config: Config) -> None:
    """Before the first step, from the images' headers where the dataset lists them (`image_sizes`): a
    file that is not an image or is above the pixel limit is refused (by `image_sizes`), and so are
    images of different sizes when batches of more than one image are stacked without `data.crop_size`."""
    sizes = dataset.image_sizes() if hasattr(dataset, "image_sizes") else {}
    if not sizes or config.data.crop_size is not None or config.train.batch_size == 1:
        return
    (first, size), *others = sizes.items()
    other = next(((path, s) for path, s in others if s != size), None)
    if other is not None:
        raise ValueError(f"the {config.data.train_split} split holds images of different sizes ({first} is "
                         f"{size[0]}x{size[1]}, {other[0]} is {other[1][0]}x{other[1][1]}), which batches of "
                         f"train.batch_size = {config.train.batch_size} cannot stack: set data.crop_size (a side "
                         "no larger than the smallest image) or train.batch_size: 1")


def worker_errors_in_one_line(loader):
    """The batches of a DataLoader. A data error in a worker process reaches this process with the
    worker's traceback in its message; it is raised again with the original message alone."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, ValueError) as e:
            lines = str(e).strip().splitlines()
            if len(lines) < 2 or "DataLoader worker" not in lines[0]:
                raise
            raise type(e)(f"{lines[-1].split(': ', 1)[-1]} (in a data loader worker; `embedseg data check` "
                          "lists every such file)") from None
        yield batch


def validation_ap(config: Config, model, train_dataset) -> float | None:
    """COCO AP of the first grouper on the validation split (for picking best.pt). On several processes
    each runs its shard of the images and rank 0 scores them all (the same AP); the others get None."""
    val = dataset_for_split(config, config.data.val_split)
    first = next(iter(config.grouping))
    groupers = run_groupers_distributed if distributed.world_size() > 1 else run_groupers
    run = groupers(build_predictor(config, model), val, build_groupers(config, [first]),
                   config_evaluators(config, list(train_dataset.class_names), ["coco"]),
                   max_images=config.eval.max_images, keep_images=0, progress=False)
    return None if run is None else score_groupers(run)[first]["AP"]


# ----------------------------------------------------------------------------- resuming, determinism

# Keys that cannot change what a run computes: a run may be resumed with them changed (evaluation
# leaves the training RNGs as it found them; on_nonfinite acts only where a run without it stops).
RESUME_FREE_KEYS = ("name", "train.log_every", "train.checkpoint_every", "train.eval_every", "train.on_nonfinite",
                    "data.val_split", "eval", "grouping")


def resumable_checkpoint(config: Config, run_dir: Path) -> dict:
    """checkpoints/last.pt of the run, refused (ConfigError naming the keys) when it was trained with a
    config that differs in a key that changes the training."""
    path = run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    free = RESUME_FREE_KEYS
    if config.data.val_split != config.data.train_split:
        free += (f"data.split_params.{config.data.val_split}",)
    saved = config_from_dict(checkpoint["config"], where=str(path)).to_dict()  # keys added since: their defaults
    changed = {key: values for key, values in changed_keys(saved, config.to_dict()).items()
               if not any(key == k or key.startswith(k + ".") for k in free)}
    if changed:
        listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ConfigError(f"--resume: {path} was trained with another config ({listed}); a run continues exactly "
                          f"only with the config it started with ({run_dir / 'config.yaml'}), changed at most in "
                          f"{', '.join(RESUME_FREE_KEYS)}")
    return checkpoint


@contextmanager
def deterministic_algorithms(enabled: bool):
    """torch.use_deterministic_algorithms inside the block (train.deterministic), with the CUDA settings
    it needs: a fixed cuBLAS workspace, cuDNN without autotuning. The previous settings come back after."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                cudnn.benchmark, cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(True)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        cudnn.benchmark, cudnn.deterministic = previous[2:]


def drop_records_after(path: Path, step: int) -> None:
    """Keep the log.jsonl records of steps up to `step`: a run killed after its last checkpoint logged
    steps that the resumed run logs again (and may have left a line cut short)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text(path, "".join(kept))


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
    """The parts of one training run and where it stands (step, best validation AP, steps skipped).

    On N processes (torchrun) every rank holds the whole network, wrapped in DistributedDataParallel
    (`network`; `model` is the network itself, which checkpoints, evaluation and the checks use), and
    takes its batch_size / N images of each step's batch. Each rank's loss is the mean over its own
    images and DDP averages the gradients, so a step equals one process's step on the whole batch
    (up to the order of float sums) when the loss of the whole batch is the mean of the ranks' losses:
    true for the discriminative and metric losses when every image holds an instance (each term is a
    mean over such images) and for cross_entropy without class_weights or gap_weight on images of one
    size (a mean over pixels); not exactly for the seediness terms (means over foreground and
    background pixels, which the ranks count apart), nor for BatchNorm layers of a user's network,
    which see the rank's images only unless train.sync_bn (the built-in networks use GroupNorm, which
    normalises each image alone). Augmentations differ: each rank draws from its own generator. The
    logged loss terms are the means over ranks; a non-finite one, or a stop signal on any rank, stops
    (or skips) the step on all of them.
    """

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
    skipped_steps: int = 0  # steps left out for a non-finite loss or gradient (train.on_nonfinite: skip)
    network: torch.nn.Module | None = None  # what the steps run: `model`, in DDP on several processes

    @classmethod
    def build(cls, config: Config, run_dir: Path, device: torch.device) -> TrainingRun:
        """Data set, augmentation, network, losses, AdamW and the warm-up + decay schedule (the network's
        initial weights are drawn from the RNG seeded just before)."""
        dataset = training_dataset(config)
        if config.train.bf16 and not fast_bf16(device):
            log.warning("train.bf16: this %s has no native bfloat16, so steps will be slower than in float32; "
                        "consider --set train.bf16=false", device.type)
        transform = TrainTransform.from_config(config.data)
        model = build_network(config, dataset.num_classes)
        if config.train.sync_bn:
            model = sync_batch_norm(model, device)
        model = model.to(device, memory_format=memory_format(config))
        criterion = build_criterion(config.loss).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
        total, warmup, schedule = config.train.steps, config.train.warmup_steps, config.train.schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, schedule))
        network = data_parallel(model, device, criterion, dataset[0]["instances"].shape)
        return cls(config, run_dir, device, dataset, transform, model, criterion, optimizer, scheduler, network=network)

    def restore(self, checkpoint: dict) -> None:
        """Weights, optimiser, schedule, RNG states, step, best AP and skipped steps from a checkpoint of
        this run; log.jsonl loses the records of later steps, which the resumed run writes again."""
        images = checkpoint.get("position", {}).get("num_images", len(self.dataset))
        if images != len(self.dataset):
            raise ValueError(f"--resume: the {self.config.data.train_split} split has {len(self.dataset)} images, "
                             f"the checkpoint was trained on {images}; resuming needs the same data")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.step, self.best_ap = checkpoint["step"], checkpoint.get("best_ap", -1.0)
        self.skipped_steps = checkpoint.get("skipped_steps", 0)
        self.restore_rng(checkpoint)
        distributed.on_main(drop_records_after, self.run_dir / "log.jsonl", self.step)
        epoch, batch = self.position()
        if batch and self.config.train.num_workers and distributed.is_main():
            log.warning("train.num_workers > 0: the rest of epoch %d gets the batches of an uninterrupted run with "
                        "other augmentations (the workers start afresh), so the run will not repeat it bit for bit; "
                        "resuming mid-epoch is exact with num_workers 0 only", epoch)
        if distributed.is_main():
            log.info("resumed %s at step %d (epoch %d, batch %d)", self.run_dir, self.step, epoch, batch)

    def restore_rng(self, checkpoint: dict) -> None:
        """Every rank's RNG states as the checkpoint saved them, when it was saved by as many processes;
        on another number, rank 0 takes the first process's and the others draw afresh (`rank_seed`)."""
        states = [checkpoint["rng"], *checkpoint.get("rank_rng", [])]
        rank, world = distributed.rank(), distributed.world_size()
        if len(states) == world or rank == 0:
            set_rng_state(states[rank])
        else:
            seed_everything(rank_seed(self.config.seed, rank, self.step))
        if len(states) != world and rank == 0:
            log.warning("resuming on %d processes a run saved by %d: the same batches follow, with other "
                        "augmentations than an uninterrupted run would draw", world, len(states))

    def position(self) -> tuple[int, int]:
        """(epoch, batch within it) of the next step: each step takes one batch, an epoch len // batch_size."""
        return divmod(self.step, len(self.dataset) // self.config.train.batch_size)

    def save(self, name: str) -> None:
        """checkpoints/<name> of where the run stands, written by rank 0 (called on every rank: it holds
        every rank's RNG states); never with a non-finite weight (NonFiniteError)."""
        bad = first_nonfinite_entry(self.model)
        if bad is not None:
            raise NonFiniteError(f"after step {self.step} {bad} of the network is not finite; {name} is not written; "
                                 f"try a lower train.lr")
        epoch, batch = self.position()
        rng = distributed.gather(rng_state())
        distributed.on_main(
            functools.partial(save_checkpoint, self.run_dir / "checkpoints" / name, model=self.model.state_dict(),
                              optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                              step=self.step, position={"epoch": epoch, "batch": batch, "num_images": len(self.dataset)},
                              skipped_steps=self.skipped_steps, best_ap=self.best_ap, rng=rng[0], rank_rng=rng[1:],
                              config=self.config.to_dict(), num_classes=self.dataset.num_classes,
                              class_names=list(self.dataset.class_names)))

    def fit(self, stop: StopSignals) -> None:
        """Step until train.steps, logging, evaluating and checkpointing on the way, then save last.pt.
        After a signal caught by `stop`, save last.pt at the end of the step and raise TrainingInterrupted."""
        total, main = self.config.train.steps, distributed.is_main()
        batches = self.batches()
        self.network.train()
        throughput = Throughput()
        self.log_processes()
        signal = distributed.agreed_signal(stop.signal)
        with tqdm(total=total, initial=self.step, desc="train", disable=None if main else True,
                  dynamic_ncols=True) as bar, open(self.run_dir / "log.jsonl", "a") if main else nullcontext() as log_file:
            while self.step < total and signal is None:
                batch = next(batches)
                losses, grad_norm = self.train_step(batch)
                throughput.images += len(batch["image"]) * distributed.world_size()
                bar.update(1)
                self.after_step(losses, grad_norm, throughput, log_file, bar)
                signal = distributed.agreed_signal(stop.signal)  # a signal to any rank stops all after this step
        self.save("last.pt")
        if signal is not None:
            raise TrainingInterrupted(signal, self.step, self.run_dir / "checkpoints" / "last.pt")
        if main:
            log.info("trained %d steps in %.0f s (%.1f images/s)", total, throughput.elapsed(), throughput.per_second())

    def log_processes(self) -> None:
        world, batch_size = distributed.world_size(), self.config.train.batch_size
        if world > 1 and distributed.is_main():
            log.info("training on %d processes: %d images per process, a batch of %d per step", world,
                     batch_size // world, batch_size)

    def after_step(self, losses: dict, grad_norm: torch.Tensor, throughput: Throughput, log_file: IO[str], bar) -> None:
        """Log, evaluate and checkpoint where the config asks (the last step is saved by `fit`)."""
        train_config, total = self.config.train, self.config.train.steps
        if (self.step % train_config.log_every == 0 or self.step == total) and distributed.is_main():
            record = self.log_record(losses, grad_norm, throughput)
            write_record(log_file, record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.1f}")
        if train_config.eval_every and self.step % train_config.eval_every == 0 and self.step < total:
            self.evaluate(log_file)
        if self.step % train_config.checkpoint_every == 0 and self.step < total:
            self.save("last.pt")

    def batches(self):
        """Augmented batches on the device from the next step's place in its epoch on: a resumed run gets
        the batches an uninterrupted one would (with num_workers 0 their augmentations too, as those draw
        from torch's generator, restored with the checkpoint)."""
        train_config, cuda = self.config.train, self.device.type == "cuda"
        dataset = TransformedDataset(self.dataset, self.transform)
        epoch, skip = self.position()
        while True:
            loader = epoch_loader(dataset, train_config.batch_size, train_config.num_workers, self.config.seed + epoch,
                                  skip, rank=distributed.rank(), world_size=distributed.world_size(), pin_memory=cuda)
            for batch in worker_errors_in_one_line(loader):
                yield {k: v.to(self.device, non_blocking=cuda) if torch.is_tensor(v) else v for k, v in batch.items()}
            epoch, skip = epoch + 1, 0

    def train_step(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """One optimiser step on `batch`; returns the loss terms and the gradient norm before clipping.
        A non-finite loss or gradient is found before the weights change (see `skip_or_stop`)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.bf16):
            outputs = self.network(batch["image"].contiguous(memory_format=memory_format(self.config)))
        outputs = {k: v.float() for k, v in outputs.items()}  # losses in float32 (a no-op without bf16)
        losses = self.criterion(outputs, batch, step=self.step)  # step: ramps of the loss weights
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()  # on several processes DDP averages the gradients over the ranks here
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        losses = distributed.mean_over_ranks(losses)  # the whole batch's terms: the same fault check on every rank
        fault = nonfinite_fault(losses, grad_norm, self.model)
        if fault is None:
            self.optimizer.step()
            self.scheduler.step()
        else:
            self.skip_or_stop(fault)
        self.step += 1
        return losses, grad_norm

    def skip_or_stop(self, fault: str) -> None:
        """train.on_nonfinite: skip leaves the weights, counts the step and moves the schedule on as a step
        would; stop raises NonFiniteError."""
        where = f"step {self.step + 1}: {fault}"
        if self.config.train.on_nonfinite == "skip":
            self.skipped_steps += 1
            log.warning("%s; the step is skipped (%d so far)", where, self.skipped_steps)
            with warnings.catch_warnings():  # torch warns when a schedule moves before the first optimiser step
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            return
        last = self.run_dir / "checkpoints" / "last.pt"
        kept = f"{last} is kept as it was" if last.exists() else "no checkpoint had been written yet"
        raise NonFiniteError(f"{where}; the weights were not updated and {kept}; try a lower train.lr, or "
                             f"--set train.on_nonfinite=skip to skip such steps (with --resume to continue this run)")

    def log_record(self, losses: dict, grad_norm: torch.Tensor, throughput: Throughput) -> dict:
        elapsed = throughput.elapsed()
        world = distributed.world_size()
        record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                  "images_per_s": throughput.images / elapsed, "elapsed_s": elapsed,
                  "skipped_steps": self.skipped_steps, "processes": world,
                  "batch_size": self.config.train.batch_size, "batch_per_process": self.config.train.batch_size // world}
        record.update({k: float(v.detach()) for k, v in losses.items()})
        return record

    def evaluate(self, log_file: IO[str]) -> None:
        """Log the validation AP; a new best is saved as best.pt. The RNGs come out as they went in, so
        evaluating (and how often) leaves the training itself unchanged."""
        state = rng_state()
        ap = validation_ap(self.config, self.model, self.dataset)
        set_rng_state(state)
        ap = distributed.main_value(ap)  # rank 0's: every rank decides alike whether to save best.pt
        if distributed.is_main():
            write_record(log_file, {"step": self.step, "val_AP": ap})
        self.network.train()
        if ap > self.best_ap:
            self.best_ap = ap
            self.save("best.pt")


def sync_batch_norm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """train.sync_bn: the network's BatchNorm layers as SyncBatchNorm, whose statistics span the batches
    of all processes (one process: plain batch norm). Refused where it would do nothing or cannot run."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError("train.sync_bn = true, but the network has no BatchNorm layer to synchronise (the built-in "
                          "networks use GroupNorm, which normalises each image alone); set train.sync_bn: false")
    if device.type != "cuda" and distributed.world_size() > 1:
        raise ConfigError(f"train.sync_bn = true needs CUDA devices (torch synchronises batch norm on GPUs only), "
                          f"this run trains on {device.type}; set train.sync_bn: false")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def data_parallel(model: torch.nn.Module, device: torch.device, criterion, image_size) -> torch.nn.Module:
    """`model` in DistributedDataParallel on several processes, `model` itself on one."""
    if distributed.world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=has_unused_parameters(model, criterion, image_size, device))


def has_unused_parameters(model: torch.nn.Module, criterion, image_size, device: torch.device) -> bool:
    """Whether some parameter gets no gradient from the loss terms (a head that none reads, as the seediness
    head without a seediness loss), found by one backward of the outputs they read on a blank image. DDP
    must then look for such parameters at every step, which costs a walk over the autograd graph."""
    read = {entry.split(".", 1)[1] for term in criterion.terms.values() for entry in term.inputs
            if entry.startswith("outputs.")}
    model.eval()  # leaves batch norm statistics as they are
    outputs = model(torch.zeros(1, 3, *image_size, device=device))
    read_outputs = [value.float().sum() for key, value in outputs.items() if key in read]
    if read_outputs:
        torch.stack(read_outputs).sum().backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model.train()
    return unused


def memory_format(config: Config) -> torch.memory_format:
    return torch.channels_last if config.train.channels_last else torch.contiguous_format


def write_record(log_file: IO[str], record: dict) -> None:
    """One JSON line; a NaN or an infinity (a skipped step's loss) is written as null, as JSON has neither."""
    record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
