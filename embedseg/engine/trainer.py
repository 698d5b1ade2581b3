"""The training loop: config in, run directory out."""
from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import embedseg
from embedseg.config import Config, dump_config
from embedseg.data.transforms import TrainTransform, TransformedDataset
from embedseg.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from embedseg.engine.evaluator import run_groupers, score_groupers
from embedseg.engine.run import (build_groupers, build_network, build_predictor, dataset_for_split, seed_everything,
                                 select_device)
from embedseg.losses import build_criterion

log = logging.getLogger(__name__)


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


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run unless asked to resume it or overwrite it."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume:
            return
        if not overwrite:
            raise FileExistsError(
                f"run directory {run_dir} exists and is not empty; use --resume to continue it, "
                f"--overwrite to replace it, or --out to choose another directory"
            )
        shutil.rmtree(run_dir)
    elif resume:
        raise FileNotFoundError(f"--resume: run directory {run_dir} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)


def write_env(path: Path) -> None:
    lines = [
        f"embedseg {embedseg.__version__}",
        f"python {sys.version.split()[0]}",
        f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})",
        f"platform {platform.platform()}",
        f"threads {torch.get_num_threads()}",
        "argv " + " ".join(sys.argv),
    ]
    path.write_text("\n".join(lines) + "\n")


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


def train(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Train the model of `config`, writing config.yaml, env.txt, log.jsonl and checkpoints/."""
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume, overwrite)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if not resume:
        dump_config(config, run_dir / "config.yaml")
    write_env(run_dir / "env.txt")
    seed_everything(config.seed)
    device = select_device(config.train.device)

    dataset = dataset_for_split(config, config.data.train_split)
    if len(dataset) < config.train.batch_size:
        raise ValueError(f"the {config.data.train_split} split has {len(dataset)} images, fewer than "
                         f"train.batch_size = {config.train.batch_size}")
    if config.train.bf16 and not fast_bf16(device):
        log.warning("train.bf16: this %s has no native bfloat16, so steps will be slower than in float32; "
                    "consider --set train.bf16=false", device.type)
    transform = TrainTransform.from_config(config.data)
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = build_network(config, dataset.num_classes).to(device, memory_format=memory_format)
    criterion = build_criterion(config.loss).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    total = config.train.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, config.train.warmup_steps, config.train.schedule))

    step, best_ap = 0, -1.0
    if resume:
        ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        step, best_ap = ckpt["step"], ckpt.get("best_ap", -1.0)
        log.info("resumed %s at step %d", run_dir, step)

    def checkpoint(name: str) -> None:
        save_checkpoint(run_dir / "checkpoints" / name, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, best_ap=best_ap, rng=rng_state(),
                        config=config.to_dict(), num_classes=dataset.num_classes,
                        class_names=list(dataset.class_names))

    batches = infinite_batches(TransformedDataset(dataset, transform), config.train.batch_size,
                               config.train.num_workers, config.seed, start_epoch=step * config.train.batch_size // len(dataset))
    model.train()
    t_start, seen = time.perf_counter(), 0
    bar = tqdm(total=total, initial=step, desc="train", disable=None, dynamic_ncols=True)
    with open(run_dir / "log.jsonl", "a") as log_file:
        while step < total:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(batches).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.bf16):
                outputs = model(batch["image"].contiguous(memory_format=memory_format))
            # float32 losses (a no-op without bf16); contiguous: the losses read whole channel planes
            outputs = {k: v.float().contiguous() for k, v in outputs.items()}
            losses = criterion(outputs, batch, step=step)  # step: ramps of the loss weights
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(batch["image"])
            bar.update(1)
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(f"loss became {losses['loss'].item()} at step {step}; try a lower train.lr")
            if step % config.train.log_every == 0 or step == total:
                elapsed = time.perf_counter() - t_start
                record = {"step": step, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                          "images_per_s": seen / elapsed, "elapsed_s": elapsed}
                record.update({k: float(v.detach()) for k, v in losses.items()})
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.1f}")
            if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
                ap = validation_ap(config, model, dataset)
                log_file.write(json.dumps({"step": step, "val_AP": ap}) + "\n")
                model.train()
                if ap > best_ap:
                    best_ap = ap
                    checkpoint("best.pt")
            if step % config.train.checkpoint_every == 0 and step < total:
                checkpoint("last.pt")
    bar.close()
    checkpoint("last.pt")
    log.info("trained %d steps in %.0f s (%.1f images/s)", total, time.perf_counter() - t_start,
             seen / max(1e-9, time.perf_counter() - t_start))
    return run_dir


def validation_ap(config: Config, model, train_dataset) -> float:
    """COCO AP of the first grouper on the validation split (for picking best.pt)."""
    val = dataset_for_split(config, config.data.val_split)
    first = next(iter(config.grouping))
    run = run_groupers(build_predictor(config, model), val, build_groupers(config, [first]),
                       max_images=config.eval.max_images, keep_images=0, progress=False)
    return score_groupers(run, list(train_dataset.class_names), config.eval.max_dets)[first]["AP"]
