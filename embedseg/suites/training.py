"""One training per network across suites: a run records its training recipe, and a row whose recipe a
finished run under the same runs folder and budget already trained gets that run's network.

The recipe is the resolved config without what only evaluation reads: the name, the eval and grouping
blocks, and how often the trainer logs and saves. eval and grouping stay when the run evaluates while it
trains (train.eval_every > 0), as they then choose best.pt; data.val_split, which picks the split it
evaluates on, stays always. Its key is a hash of the recipe as sorted JSON.

`training.json` in a run directory, written once its training finished:

    {"key": "3f9c...", "recipe": {...}, "trained_in": "<suite>/<budget>/<run>/seed<k>" (the folder,
     under the runs folder, where the network was trained), "seconds": 1187.2 (the wall-clock of its
     training steps, all parts of a resumed training together, from log.jsonl; null without one)}
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from embedseg.config import Config, config_from_dict, digest, dump_config, resolved_dict
from embedseg.engine.checkpoint import load_checkpoint
from embedseg.outputs import write_json

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"
POST_HOC_TRAIN_KEYS = ("log_every", "checkpoint_every")  # when the trainer logs and saves: same weights
COPIED_FILES = ("env.txt", "log.jsonl")  # what training wrote besides its config and checkpoints


def training_recipe(config: Config) -> dict:
    """What decides the weights a training ends with (module docstring)."""
    recipe = resolved_dict(config)
    del recipe["name"]
    for key in POST_HOC_TRAIN_KEYS:
        del recipe["train"][key]
    if not config.train.eval_every:
        del recipe["eval"], recipe["grouping"]
    return recipe


def recipe_key(recipe: dict) -> str:
    return digest(recipe)


def record_training(run_dir: Path, runs: Path, config: Config, trained_in: Path) -> dict:
    """Write (and return) the run's training.json: its network, trained with `config`, is finished."""
    recipe = training_recipe(config)
    record = {"key": recipe_key(recipe), "recipe": recipe, "trained_in": relative(trained_in, runs),
              "seconds": training_seconds(run_dir / "log.jsonl")}
    write_json(run_dir / TRAINING_FILE, record, indent=2)
    return record


def training_seconds(log_file: str | Path) -> float | None:
    """The wall-clock of a run's training steps: the elapsed_s that each part of the training (one, or
    more for a resumed run, each starting again from 0) ended with in log.jsonl, summed."""
    log_file = Path(log_file)
    if not log_file.is_file():
        return None
    elapsed = [r["elapsed_s"] for r in map(json.loads, log_file.read_text().splitlines()) if "elapsed_s" in r]
    return sum(a for a, b in zip(elapsed, [*elapsed[1:], 0.0]) if b < a) if elapsed else None


def finished_training(run_dir: Path, runs: Path, config: Config | None = None) -> dict | None:
    """The training.json of `run_dir` when its network is finished (for `config`'s recipe, when given),
    else None. A run trained before training.json existed gets one from its last.pt, when that reached
    the steps of the config it was trained with."""
    last, path = run_dir / "checkpoints" / "last.pt", run_dir / TRAINING_FILE
    if not last.is_file():
        return None
    key = None if config is None else recipe_key(training_recipe(config))
    if path.is_file():
        record = json.loads(path.read_text())
        if key in (None, record["key"]):
            return record
    checkpoint = load_checkpoint(last)
    trained = config_from_dict(checkpoint["config"], where=str(last))
    if checkpoint.get("step", 0) < trained.train.steps or key not in (None, recipe_key(training_recipe(trained))):
        return None
    return record_training(run_dir, runs, trained, run_dir)


def find_training(runs: Path, budget: str, key: str, run_dir: Path) -> Path | None:
    """A run directory other than `run_dir` under `runs` (any suite, this budget) whose network of
    recipe `key` finished; one that cannot be read is passed over."""
    for last in sorted(Path(runs).glob(f"*/{budget}/*/seed*/checkpoints/last.pt")):
        folder = last.parents[1]
        if folder.resolve() == Path(run_dir).resolve():
            continue
        try:
            record = finished_training(folder, runs)
        except (OSError, ValueError, KeyError) as e:
            log.debug("%s passed over: %s", folder, e)
            continue
        if record is not None and record["key"] == key:
            return folder
    return None


def reuse_training(source: Path, run_dir: Path, runs: Path, config: Config) -> dict:
    """Fill `run_dir` with the finished network of `source` (same recipe): its checkpoints hard-linked
    (copied where links are not possible), env.txt and log.jsonl copied, config.yaml the row's own. The
    run's own tuning and scores (tuned.yaml, tune.json, metrics.json, row_*.json) are not taken."""
    record = json.loads((source / TRAINING_FILE).read_text())
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for checkpoint in sorted((source / "checkpoints").glob("*.pt")):
        target = run_dir / "checkpoints" / checkpoint.name
        target.unlink(missing_ok=True)
        try:
            target.hardlink_to(checkpoint)
        except OSError:
            shutil.copy2(checkpoint, target)
    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, run_dir / name)
    dump_config(config, run_dir / "config.yaml")
    log.info("%s: network of %s reused (same training recipe %s), not trained again", relative(run_dir, runs),
             record["trained_in"], record["key"])
    return record_training(run_dir, runs, config, runs / record["trained_in"])


def relative(path: Path, runs: Path) -> str:
    """`path` under the runs folder, as recorded in training.json."""
    path, runs = Path(path).resolve(), Path(runs).resolve()
    return path.relative_to(runs).as_posix() if path.is_relative_to(runs) else str(path)
