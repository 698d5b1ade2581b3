"""`embedseg reproduce`: train, tune and evaluate every row of a suite that has no result yet.

Each (row, seed) runs in `<runs>/<suite>/<budget>/<run>/seed<k>` (rows that name the same run share
its network) through three steps, each skipped when its output is there: training (resumed from
checkpoints/last.pt when it stopped part-way), `embedseg tune` of the row's grouper on the config's
tune split (into tuned.yaml), and the evaluation of that grouper on val with the tuned parameters,
which writes row_<row>.json. A row with its row_<row>.json is finished and never retrained, so a
second call continues where the first stopped.
"""
from __future__ import annotations

import logging
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import embedseg
from embedseg.config import load_config
from embedseg.engine.checkpoint import load_checkpoint
from embedseg.engine.evaluator import compare_groupers
from embedseg.engine.metrics_file import record_scores
from embedseg.engine.run import load_run
from embedseg.engine.trainer import train
from embedseg.engine.tuning import tune_run, tuned_groupers
from embedseg.outputs import write_json
from embedseg.suites.spec import Row, Suite

log = logging.getLogger(__name__)

def row_dir(runs: Path, suite: Suite, budget: str, row: Row, seed: int) -> Path:
    return Path(runs) / suite.name / budget / row.run_name / f"seed{seed}"


def result_file(run_dir: Path, row: Row) -> Path:
    """A finished row: its scores and what produced them."""
    return run_dir / f"row_{row.slug}.json"


def row_overrides(suite: Suite, row: Row, budget: str, seed: int) -> list[str]:
    """The --set overrides that make the row's config this suite row at this budget and seed."""
    return [*suite.budget_overrides(budget), *row.overrides, f"seed={seed}", f"name={suite.name}_{row.slug}_s{seed}"]


def reproduce(suite: Suite, budget: str, seeds: int, runs: Path) -> list[Path]:
    """Run every unfinished (row, seed) of `suite` at `budget`; the run directories of the suite's rows."""
    done = []
    for row in suite.rows:
        if row.config_for(budget) is None:
            log.info("%s: %r has no config for the %s budget; skipped", suite.name, row.name, budget)
            continue
        for seed in range(seeds):
            run_dir = row_dir(runs, suite, budget, row, seed)
            if result_file(run_dir, row).is_file():
                log.info("%s: %r seed %d is finished (%s)", suite.name, row.name, seed, result_file(run_dir, row))
            else:
                run_row(suite, row, budget, seed, run_dir)
            done.append(run_dir)
    return done


def run_row(suite: Suite, row: Row, budget: str, seed: int, run_dir: Path) -> dict:
    """Train (or resume), tune and evaluate one row at one seed; write and return its row_<row>.json."""
    config = load_config(row.config_for(budget), row_overrides(suite, row, budget, seed))
    seconds = {}
    start = time.perf_counter()
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file() or load_checkpoint(last).get("step", 0) < config.train.steps:
        log.info("%s: %r seed %d: training -> %s", suite.name, row.name, seed, run_dir)
        overwrite = run_dir.is_dir() and not last.is_file()  # a start that failed before its first checkpoint
        train(config, run_dir, resume=last.is_file(), overwrite=overwrite)
        seconds["train"] = time.perf_counter() - start
    if row.grouper not in tuned_groupers(run_dir):
        log.info("%s: %r seed %d: tuning %s on the tune split", suite.name, row.name, seed, row.grouper)
        start = time.perf_counter()
        tune_run(run_dir, [row.grouper], suite.budget_trials(budget), suite.tune_metric, overrides=suite.evaluate)
        seconds["tune"] = time.perf_counter() - start
    start = time.perf_counter()
    config, model, ckpt = load_run(run_dir, suite.evaluate)
    split = config.eval.split
    results, run = compare_groupers(config, model, ckpt["class_names"], [row.grouper], split, config.eval.max_images)
    record_scores(run_dir, config, ckpt, split, results, run)
    seconds["evaluate"] = time.perf_counter() - start
    result = {"suite": suite.name, "row": row.name, "budget": budget, "seed": seed, "grouper": row.grouper,
              "split": split, "images": len(run.names), "split_images": run.split_images,
              "scores": results[row.grouper], "grouping": config.grouping[row.grouper],
              "tuned_by": {"metric": suite.tune_metric, "trials": suite.budget_trials(budget)},
              "seconds": seconds, "config": str(row.config_for(budget)), "overrides": row_overrides(suite, row, budget,
                                                                                                      seed),
              **provenance()}
    write_json(result_file(run_dir, row), result, indent=2)
    return result


def provenance() -> dict:
    """When, with which code and on which machine a result was made."""
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "commit": code_version(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                       f"{'cuda ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}"}


def code_version() -> str:
    """The git commit of the package's checkout (with -dirty for uncommitted changes), else its version."""
    repo = Path(embedseg.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"embedseg {embedseg.__version__}"
    return commit + ("-dirty" if dirty else "")
