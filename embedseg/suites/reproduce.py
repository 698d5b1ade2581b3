"""`embedseg reproduce`: train, tune and evaluate every row of a suite that has no result yet.

Each (row, seed) runs in `<runs>/<suite>/<budget>/<run>/seed<k>` (rows that name the same run share
its network) through three steps, each skipped when its output is there: training (resumed from
checkpoints/last.pt when it stopped part-way; not done at all when a finished run of any suite under
`<runs>` at this budget trained the same recipe, whose network is then linked in: embedseg.suites.training),
`embedseg tune` of the row's grouper on the config's tune split (into tuned.yaml, again when the tuning
there ran another search, e.g. after a grouper's search space changed; copied from a run of another suite
with the same network when that one ran the same search: find_tuning), and the evaluation of
that grouper on val with the tuned parameters, which writes row_<row>.json. A row with its row_<row>.json
is finished and never retrained, so a second call continues where the first stopped.

`embedseg table --all` keeps a copy of each finished result beside the suite.yaml, in
`experiments/<suite>/results/<budget>/<row>/seed<k>.json` (keep_results), where it outlives the runs
folder; with `skip_kept` a (row, seed) kept there counts as finished too, so a new runs folder runs only
the seeds the suite has no result for.

An external row (`external: true`) has no network: seed k scores the label images that the other program's
k-th run (a training seed of its own, or a repeat) wrote into `<run dir>/labels/` (embedseg.suites.external),
so several runs give it a mean and std like ours; a seed stays missing until its label images are there.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import embedseg
from embedseg.config import load_config
from embedseg.engine.evaluator import compare_groupers
from embedseg.engine.metrics_file import record_scores
from embedseg.engine.run import TUNED_FILE, load_run
from embedseg.engine.trainer import train
from embedseg.engine.tuning import copy_tuning, read_tuned, tune_run, tuning_key
from embedseg.outputs import write_json
from embedseg.suites.external import LABELS_DIR, labels_present, read_timing, score_labels
from embedseg.suites.spec import EXPERIMENTS, Row, Suite
from embedseg.suites.training import (
    TRAINING_FILE,
    find_training,
    finished_training,
    recipe_key,
    record_training,
    reuse_training,
    training_recipe,
)

log = logging.getLogger(__name__)


def row_dir(runs: Path, suite: Suite, budget: str, row: Row, seed: int) -> Path:
    return Path(runs) / suite.name / budget / row.run_name / f"seed{seed}"


def result_file(run_dir: Path, row: Row) -> Path:
    """A finished row: its scores and what produced them."""
    return run_dir / f"row_{row.slug}.json"


def run_results(suite: Suite, budget: str, runs: Path, row: Row) -> dict[int, Path]:
    """Seed -> the row_<row>.json of every finished seed of `row` under `runs`."""
    folder = row_dir(runs, suite, budget, row, 0).parent
    return {int(p.parent.name[4:]): p for p in folder.glob(f"seed*/{result_file(folder, row).name}")}


def kept_dir(suite: Suite, budget: str) -> Path:
    """Where the suite's finished results are kept (module docstring): beside its suite.yaml."""
    return suite.folder / "results" / budget


def kept_results(suite: Suite, budget: str, row: Row) -> dict[int, Path]:
    """Seed -> the kept copy of the row's result."""
    return {int(p.stem[4:]): p for p in (kept_dir(suite, budget) / row.slug).glob("seed*.json")}


def keep_results(suite: Suite, budget: str, runs: Path) -> list[Path]:
    """Keep a copy of every finished result of `suite` under `runs` (replacing the kept copy of the same
    row and seed); the copies written."""
    return [write_json(kept_dir(suite, budget) / row.slug / f"seed{seed}.json", strict_result(json.loads(path.read_text())),
                       indent=2)
            for row in suite.rows for seed, path in sorted(run_results(suite, budget, runs, row).items())]


def strict_result(result: dict) -> dict:
    """`result` with its scores' NaN (COCO's APm of images without a medium object, say) as null, so
    that a result file is strict JSON that any reader takes."""
    scores = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in result["scores"].items()}
    return {**result, "scores": scores}


def row_overrides(suite: Suite, row: Row, budget: str, seed: int) -> list[str]:
    """The --set overrides that make the row's config this suite row at this budget and seed (the
    budget's last: a smoke budget shrinks whatever the row sets)."""
    return [*row.overrides, *suite.budget_overrides(budget), f"seed={seed}", f"name={suite.name}_{row.slug}_s{seed}"]


def select_rows(suite: Suite, rows: str | None) -> list[Row]:
    """The suite's rows whose name contains `rows` (case-insensitive); all of them for None."""
    if rows is None:
        return suite.rows
    chosen = [row for row in suite.rows if rows.lower() in row.name.lower()]
    if not chosen:
        names = ", ".join(repr(row.name) for row in suite.rows)
        raise ValueError(f"--rows {rows!r} matches no row of {suite.name}; its rows: {names}")
    return chosen


def reproduce(suite: Suite, budget: str, seeds: int, runs: Path, rows: str | None = None,
              skip_kept: bool = False) -> list[Path]:
    """Run every unfinished (row, seed) of `suite` at `budget` (only the rows whose name contains `rows`,
    when given; with `skip_kept`, a kept result counts as finished); the run directories of those rows."""
    done = []
    for row in select_rows(suite, rows):
        if row.config_for(budget) is None:
            log.info("%s: %r has no config for the %s budget; skipped", suite.name, row.name, budget)
            continue
        kept = kept_results(suite, budget, row) if skip_kept else {}
        for seed in range(seeds):
            run_dir = row_dir(runs, suite, budget, row, seed)
            if result_file(run_dir, row).is_file():
                log.info("%s: %r seed %d is finished (%s)", suite.name, row.name, seed, result_file(run_dir, row))
            elif seed in kept:
                log.info("%s: %r seed %d is kept (%s)", suite.name, row.name, seed, kept[seed])
                continue
            elif row.external:
                score_external_row(suite, row, budget, seed, run_dir)
            else:
                run_row(suite, row, budget, seed, runs)
            done.append(run_dir)
    return done


def run_row(suite: Suite, row: Row, budget: str, seed: int, runs: Path) -> dict:
    """Train (or resume, or reuse), tune and evaluate one row at one seed; write and return its row_<row>.json."""
    config = load_config(row.config_for(budget), row_overrides(suite, row, budget, seed))
    run_dir = row_dir(runs, suite, budget, row, seed)
    training = train_row(suite, row, budget, seed, runs, config)
    seconds = {"train": training["seconds"]}
    start = time.perf_counter()
    evaluate = tune_row(suite, row, budget, run_dir, runs)
    seconds["tune"] = time.perf_counter() - start
    start = time.perf_counter()
    config, model, ckpt = load_run(run_dir, evaluate)
    split = config.eval.split
    results, run = compare_groupers(config, model, ckpt["class_names"], [row.grouper], split, config.eval.max_images)
    if not row.evaluate:  # an ablation's scores stay in its row's result, out of the run's metrics.json
        record_scores(run_dir, config, ckpt, split, results, run)
    seconds["evaluate"] = time.perf_counter() - start
    result = {"suite": suite.name, "row": row.name, "budget": budget, "seed": seed, "grouper": row.grouper,
              "split": split, "images": len(run.names), "split_images": run.split_images,
              "scores": results[row.grouper], "grouping": config.grouping[row.grouper],
              "tuned_by": {"metric": suite.tune_metric, "trials": suite.budget_trials(budget)}, "seconds": seconds,
              "network": {"trained_in": training["trained_in"], "recipe_key": training["key"]},
              "config": config_name(row.config_for(budget)), "overrides": row_overrides(suite, row, budget, seed),
              "evaluate": evaluate, **provenance()}
    write_json(result_file(run_dir, row), strict_result(result), indent=2)
    return result


def train_row(suite: Suite, row: Row, budget: str, seed: int, runs: Path, config) -> dict:
    """The training.json of the row's finished network: already there, linked from a run of the same
    recipe, or trained (resumed from last.pt when a training stopped part-way)."""
    run_dir = row_dir(runs, suite, budget, row, seed)
    finished = finished_training(run_dir, runs, config)
    if finished is not None:
        return finished
    last = run_dir / "checkpoints" / "last.pt"
    source = None if last.is_file() else find_training(runs, budget, recipe_key(training_recipe(config)), run_dir)
    if source is not None:
        return reuse_training(source, run_dir, runs, config)
    log.info("%s: %r seed %d: training -> %s", suite.name, row.name, seed, run_dir)
    overwrite = run_dir.is_dir() and not last.is_file()  # a start that failed before its first checkpoint
    train(config, run_dir, resume=last.is_file(), overwrite=overwrite)
    return record_training(run_dir, runs, config, run_dir)


def score_external_row(suite: Suite, row: Row, budget: str, seed: int, run_dir: Path) -> dict | None:
    """Score the label images of one run of an external row (in `<run_dir>/labels/`) and write its
    row_<row>.json; None, after one log line saying where they go, while there are none."""
    labels = run_dir / LABELS_DIR
    if not labels_present(labels):
        log.warning("%s: %r seed %d has no label images yet: put them (<image name>.png or .tif, 0 = background) "
                    "in %s, as experiments/%s/README.md tells; that seed stays missing until then", suite.name,
                    row.name, seed, labels, suite.name)
        return None
    overrides = [*row.overrides, *suite.budget_overrides(budget), *suite.evaluate, *row.evaluate]
    config = load_config(row.config_for(budget), overrides)
    log.info("%s: %r: scoring the label images in %s", suite.name, row.name, labels)
    start = time.perf_counter()
    scores, names, split_images = score_labels(config, labels)
    seconds, ms = read_timing(labels)
    result = {"suite": suite.name, "row": row.name, "budget": budget, "seed": seed, "external": True,
              "labels": str(labels), "split": config.eval.split, "images": len(names), "split_images": split_images,
              "scores": {**scores, **ms}, "seconds": {**seconds, "evaluate": time.perf_counter() - start},
              "config": config_name(row.config_for(budget)), "overrides": overrides, **provenance()}
    write_json(result_file(run_dir, row), strict_result(result), indent=2)
    return result


def tune_row(suite: Suite, row: Row, budget: str, run_dir: Path, runs: Path) -> list[str]:
    """Tune the row's grouper on the tune split (into the run's tuned.yaml, unless the same search is there); the
    overrides its evaluation runs with. A row with its own `evaluate` overrides (an ablation) keeps
    its choice to itself: it goes into those overrides, not into tuned.yaml."""
    evaluate = [*suite.evaluate, *row.evaluate]
    trials = suite.budget_trials(budget)
    if row.evaluate:
        log.info("%s: %r: tuning %s on the tune split (%s)", suite.name, row.name, row.grouper, row.evaluate)
        best = tune_run(run_dir, [row.grouper], trials, suite.tune_metric, overrides=evaluate, write=False)
        return [*evaluate, f"grouping.{row.grouper}={json.dumps(best[row.grouper][1].block)}"]
    key = tuning_key(load_config(run_dir / "config.yaml", evaluate), row.grouper, suite.tune_metric, trials)
    tuned = (read_tuned(run_dir).get("tuned") or {}).get(row.grouper)
    if tuned is not None and tuned.get("key") == key:
        return evaluate
    if tuned is not None:
        log.info("%s: %r: %s was tuned with another search or config; tuning it again", suite.name, row.name,
                 row.grouper)
    source = find_tuning(runs, budget, run_dir, row.grouper, key)
    if source is not None:
        log.info("%s: %r: tuning of %s copied from %s (same network and search)", suite.name, row.name,
                 row.grouper, source)
        copy_tuning(source, run_dir, row.grouper)
    else:
        log.info("%s: %r: tuning %s on the tune split", suite.name, row.name, row.grouper)
        tune_run(run_dir, [row.grouper], trials, suite.tune_metric, overwrite=True, overrides=evaluate)
    return evaluate


def find_tuning(runs: Path, budget: str, run_dir: Path, name: str, key: str) -> Path | None:
    """A run under `runs` (any suite, this budget) other than `run_dir`, with the network `run_dir` has
    (the same training.json trained_in), that tuned grouper `name` with search `key` (tuning_key)."""
    network = json.loads((run_dir / TRAINING_FILE).read_text())["trained_in"]
    for path in sorted(Path(runs).glob(f"*/{budget}/*/seed*/{TUNED_FILE}")):
        folder = path.parent
        training = folder / TRAINING_FILE
        if folder.resolve() == run_dir.resolve() or not training.is_file():
            continue
        if json.loads(training.read_text())["trained_in"] != network:
            continue
        if (read_tuned(folder).get("tuned") or {}).get(name, {}).get("key") == key:
            return folder
    return None


def config_name(path: Path) -> str:
    """A row's config as its result records it: relative to experiments/ for a shipped one, so that the
    results kept in the repository (keep_results) name no folder of the machine that made them."""
    return path.relative_to(EXPERIMENTS).as_posix() if path.is_relative_to(EXPERIMENTS) else str(path)


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
