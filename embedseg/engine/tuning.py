"""Choose each grouper's parameters on the tune split, with the same budget for every grouper.

A trial is one grouping block (the grouper's parameters and its post-processing chain) scored by
one metric over every tune image. The network runs once per tune image; its outputs are cached on
disk (embedseg.engine.output_cache) for the duration of the search. The values tried come from the
search spaces declared next to the code: `Grouper.search_space` for the grouper's own parameters and
the `search_space` of each post-processing step in the block's chain (key `postprocess[i].param`).
The search is coordinate ascent from the config's block: each parameter in turn takes every value of
its axis with the others held at the best setting so far; rounds repeat until one changes nothing or
`trials` distinct settings have been scored. Every grouper gets the same `trials`.

tune.json records per grouper a `key` (tuning_key): a hash of everything its trials depend on, so
that the same search on the same network elsewhere (embedseg.suites.reproduce) is copied, not run again.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from embedseg.config import Config, digest, read_yaml, resolved_dict, spatial_embedding
from embedseg.data.tune import TUNE_SPLIT
from embedseg.engine.evaluator import config_evaluators, run_groupers, score_groupers
from embedseg.engine.output_cache import FORMAT as CACHE_FORMAT
from embedseg.engine.output_cache import cache_outputs
from embedseg.engine.run import TUNED_FILE, build_predictor, dataset_for_split, find_checkpoint, load_run
from embedseg.grouping import GROUPERS, POSTPROCESS, build_grouper, default_groupers
from embedseg.grouping.registry import step_block
from embedseg.outputs import write_json, write_text

# metric -> the evaluation that computes it; matching metrics by prefix
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "agnostic_AP", "agnostic_AP50", "agnostic_AP75")
MATCHING_FAMILIES = {"match_AP": "matching_ap", "SBD": "sbd", "abs_DiC": "dic", "mAPr": "map_r"}
LOWER_IS_BETTER = ("abs_DiC",)


@dataclass
class Trial:
    block: dict  # the grouping block scored
    score: float  # the metric over the tune images (NaN when nothing could be scored)


def metric_family(metric: str) -> str:
    """'coco' or the matching metric ('matching_ap', 'sbd', 'dic', 'map_r') that reports `metric`."""
    if metric in COCO_METRICS:
        return "coco"
    for prefix, family in MATCHING_FAMILIES.items():
        if metric.startswith(prefix):
            return family
    raise ValueError(f"--metric {metric!r} cannot be tuned for; choose one of {', '.join(COCO_METRICS)}, "
                     "match_AP50 (or another IoU), SBD, abs_DiC, mAPr")


def search_axes(name: str, block: dict) -> dict[str, list]:
    """The values to try per parameter of grouping block `block` of grouper `name`."""
    axes = dict(GROUPERS.get(name).search_space)
    for i, entry in enumerate(block.get("postprocess") or []):
        step, _ = step_block(entry, i)
        for param, values in getattr(POSTPROCESS.get(step), "search_space", {}).items():
            axes[f"postprocess[{i}].{param}"] = values
    return axes


def with_value(block: dict, key: str, value) -> dict:
    """A copy of `block` with parameter `key` (as `search_axes` names it) set to `value`."""
    out = copy.deepcopy(block)
    if key.startswith("postprocess["):
        index, param = key[len("postprocess["):].split("].", 1)
        i = int(index)
        step, params = step_block(out["postprocess"][i], i)
        out["postprocess"][i] = {"name": step, **params, param: value}
    else:
        out[key] = value
    return out


def coordinate_search(score: Callable[[dict], float], start: dict, axes: dict[str, list],
                      trials: int) -> tuple[Trial, list[Trial]]:
    """(best trial, every trial in the order scored) of the coordinate ascent from `start` that
    maximises `score` (NaN counts as the worst) with at most `trials` distinct blocks scored."""
    scored: dict[str, Trial] = {}

    def trial(block: dict) -> Trial | None:
        key = json.dumps(block, sort_keys=True)
        if key not in scored and len(scored) < trials:
            scored[key] = Trial(block, score(block))
        return scored.get(key)

    def better(a: Trial, b: Trial) -> bool:
        return not math.isnan(a.score) and (math.isnan(b.score) or a.score > b.score)

    best = trial(start)
    changed = True
    while changed and len(scored) < trials:
        changed = False
        for key, values in axes.items():
            for value in values:
                candidate = trial(with_value(best.block, key, value))
                if candidate is not None and better(candidate, best):
                    best, changed = candidate, True
    return best, list(scored.values())


def tune_grouper(name: str, start: dict, dataset, cache, evaluators: Callable[[], list], metric: str,
                 trials: int, oracle: Sequence[str] = ()) -> tuple[Trial, list[Trial]]:
    """Coordinate search for grouper `name` from block `start`, maximising `metric` (minimising abs_DiC)
    over the images of `dataset` whose network outputs `cache[i]` holds (with the `oracle`'s ground
    truth put in), scored by fresh `evaluators()` for every trial."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    bar = tqdm(total=trials, desc=f"tune {name}", disable=None, leave=False)

    def score(block: dict) -> float:
        bar.update()
        run = run_groupers(None, dataset, {name: build_grouper(name, **block)}, evaluators, keep_images=0,
                           progress=False, cache=cache, oracle=oracle)
        scores = score_groupers(run)[name]
        if metric not in scores:
            raise ValueError(f"--metric {metric!r} is not among the scores ({', '.join(scores)}); check "
                             "eval.iou_thresholds / eval.map_r_thresholds")
        return sign * scores[metric]

    start = start_block(name, start)
    best, tried = coordinate_search(score, start, search_axes(name, start), trials)
    bar.close()
    unsign = [Trial(t.block, sign * t.score) for t in (best, *tried)]
    return unsign[0], unsign[1:]


def start_block(name: str, block: dict | None) -> dict:
    """The config's block of grouper `name` with each searched parameter it leaves out at its default,
    so that the search and tuned.yaml name every value they set."""
    block = copy.deepcopy(block or {})
    for param, spec in GROUPERS.parameters(name).items():
        if param in GROUPERS.get(name).search_space and param not in block:
            block[param] = spec.default
    return block


def tuning_key(config: Config, name: str, metric: str, trials: int) -> str:
    """What the trials of tuning grouper `name` depend on besides the weights, hashed: the run's
    resolved config (its name aside, of the grouping blocks only `name`'s), the values searched, the
    metric, the trials and the precision the outputs are cached in (CACHE_FORMAT)."""
    setup = resolved_dict(config)
    del setup["name"]
    setup["grouping"] = {name: setup["grouping"].get(name)}
    search = {"config": setup, "grouper": name, "axes": search_axes(name, setup["grouping"][name] or {}),
              "metric": metric, "trials": trials, "cache_format": CACHE_FORMAT}
    return digest(search)


def read_tuned(run_dir: Path) -> dict:
    """The run's tuned.yaml ({} when it has none)."""
    path = Path(run_dir) / TUNED_FILE
    return read_yaml(path) if path.is_file() else {}


def tuned_groupers(run_dir: Path) -> list[str]:
    """The groupers whose parameters `embedseg tune` chose for the run."""
    return list(read_tuned(run_dir).get("grouping") or {})


def tune_run(run_dir: str | Path, names: list[str] | None = None, trials: int = 24, metric: str = "AP",
             overwrite: bool = False, overrides: list[str] = (), write: bool = True
             ) -> dict[str, tuple[Trial, Trial, list[Trial]]]:
    """Tune the groupers `names` (default: every one that fits the run, `default_groupers`, the config's
    first) of a trained run on its tune split, with the run's config and `overrides` (eval keys, say).
    Their chosen blocks go into tuned.yaml and every trial into tune.json, beside the entries of
    groupers tuned before (a grouper already there is tuned again only with `overwrite`; with `write`
    False nothing is written).
    Returns grouper -> (the config's trial, the best trial, every trial)."""
    run_dir = Path(run_dir)
    family = metric_family(metric)  # a bad metric, grouper or budget fails before the network runs
    if trials < 1:
        raise ValueError(f"--trials must be at least 1, got {trials}")
    config, model, ckpt = load_run(run_dir, overrides, tuned=False)
    names = names or default_groupers(list(config.grouping), spatial_embedding(config))
    for name in names:
        GROUPERS.get(name)
    done = [n for n in names if n in tuned_groupers(run_dir)]
    if done and write and not overwrite:
        raise FileExistsError(f"{run_dir / TUNED_FILE} already holds {', '.join(done)}; use --overwrite to tune "
                              "again, or --groupers to tune others")
    dataset = dataset_for_split(config, TUNE_SPLIT)
    evaluators = config_evaluators(config, ckpt["class_names"], [family])
    results = {}
    with tempfile.TemporaryDirectory(prefix="embedseg-tune-") as folder:  # the network runs once per image
        cache = cache_outputs(build_predictor(config, model), dataset, folder)
        for name in names:
            best, tried = tune_grouper(name, config.grouping.get(name), dataset, cache, evaluators, metric, trials,
                                       config.eval.oracle)
            results[name] = (tried[0], best, tried)
    tuned_on = {"split": TUNE_SPLIT, "images": len(dataset), "data_tune": config.data.tune, "oracle": config.eval.oracle,
                "metric": metric, "trials": trials, "checkpoint": find_checkpoint(run_dir).name, "step": ckpt.get("step")}
    if write:
        write_tuned(run_dir, results, {name: {**tuned_on, "key": tuning_key(config, name, metric, trials)}
                                       for name in results})
    return results


def write_tuned(run_dir: Path, results: dict, tuned_on: dict[str, dict]) -> None:
    """Merge the chosen blocks into tuned.yaml and the trials into tune.json (`tuned_on`: per grouper,
    what it was tuned on)."""
    tuned = read_tuned(run_dir)
    trials_path = run_dir / "tune.json"
    trials = json.loads(trials_path.read_text()) if trials_path.is_file() else {}
    for name, (first, best, tried) in results.items():
        tuned.setdefault("grouping", {})[name] = best.block
        tuned.setdefault("tuned", {})[name] = {**tuned_on[name], "config_score": first.score, "tuned_score": best.score,
                                               "trials_scored": len(tried)}
        trials[name] = {**tuned_on[name], "trials": [{"block": t.block, "score": t.score} for t in tried]}
    write_json(trials_path, trials, indent=1)
    header = ("# Grouping parameters chosen by `embedseg tune` on the tune split (carved from train, never\n"
              "# trained on); evaluate, compare-grouping and predict use them (--untuned: the config's own).\n")
    write_text(run_dir / TUNED_FILE, header + yaml.safe_dump(tuned, sort_keys=False, default_flow_style=None))


def copy_tuning(source: Path, run_dir: Path, name: str) -> None:
    """Give run `run_dir` the tuning of grouper `name` that run `source` holds (its tuned.yaml block and
    tune.json trials), as if tuned there: for the same search on the same network (tuning_key)."""
    tuned = read_tuned(source)
    tried = [Trial(t["block"], t["score"]) for t in json.loads((source / "tune.json").read_text())[name]["trials"]]
    best = next(t for t in tried if t.block == tuned["grouping"][name])
    tuned_on = {k: v for k, v in tuned["tuned"][name].items() if k not in ("config_score", "tuned_score", "trials_scored")}
    write_tuned(run_dir, {name: (tried[0], best, tried)}, {name: {**tuned_on, "copied_from": str(source)}})


def format_tuning(results: dict, metric: str) -> str:
    """Markdown: per grouper the metric with the config's parameters and with the chosen ones, the
    trials spent and the parameters that changed."""
    lines = [f"| grouper | {metric} config | {metric} tuned | trials | changed |", "|---|---:|---:|---:|---|"]
    for name, (first, best, tried) in results.items():
        changed = ", ".join(f"{k}: {first.block.get(k)} -> {v}" for k, v in best.block.items()
                            if first.block.get(k) != v) or "-"
        scale = 1 if metric in LOWER_IS_BETTER else 100
        values = [f"{scale * t.score:.2f}" if np.isfinite(t.score) else "-" for t in (first, best)]
        lines.append(f"| {name} | {values[0]} | {values[1]} | {len(tried)} | {changed} |")
    return "\n".join(lines)
