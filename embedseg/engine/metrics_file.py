"""metrics.json of a run: the scores of each split and grouper, each with what it was scored on.

    {"val": {"meanshift": {"AP": 0.73, ..., "scored_on": {"split": "val", "images": 100,
                                                         "split_images": 100, "image_names": [...],
                                                         "grouper": {"name": "meanshift", ...},
                                                         "max_dets": 1000, "checkpoint": "best.pt",
                                                         "step": 1200}}},
     "val[:5]": {...}}

A score with test-time augmentation (eval.tta) records "tta": true in its scored_on (absent when off).

A score of the first N images of a split only (eval.max_images, `evaluate --max-images N` with N below
the split's size) is stored under "<split>[:N]", so it never replaces the numbers of the whole split.
"""
from __future__ import annotations

import json
from pathlib import Path

from embedseg.engine.run import find_checkpoint
from embedseg.grouping import GROUPERS
from embedseg.outputs import write_json


def metrics_key(split: str, num_images: int, split_images: int) -> str:
    """The entry of metrics.json for a score of the first `num_images` of the `split_images` images of `split`."""
    return split if num_images >= split_images else f"{split}[:{num_images}]"


def grouper_parameters(name: str, params: dict | None) -> dict:
    """Every parameter the grouper `name` ran with: its defaults, updated by the config's `params`."""
    defaults = {p: spec.default for p, spec in GROUPERS.parameters(name).items() if spec.default is not spec.empty}
    return {"name": name, **defaults, **(params or {})}


def scored_on(split: str, image_names: list[str], split_images: int, grouper: dict, max_dets: int,
              checkpoint: str, step: int, tta: bool) -> dict:
    """What one entry of metrics.json was scored on (the `scored_on` record of the module docstring)."""
    return {"split": split, "images": len(image_names), "split_images": split_images,
            "image_names": list(image_names), "grouper": grouper, "max_dets": max_dets,
            "checkpoint": checkpoint, "step": step, **({"tta": True} if tta else {})}


def record_metrics(path: Path, key: str, results: dict[str, dict], provenance: dict[str, dict]) -> list[str]:
    """Merge `results` (grouper -> scores) with their `provenance` (grouper -> scored_on) into
    metrics.json[key], written atomically. Returns a note for every entry that this replaces and that
    was scored on other images, parameters or weights."""
    try:
        metrics = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix it or move it away") from None
    entries = metrics.setdefault(key, {})
    notes = []
    for name, scores in results.items():
        new = json.loads(json.dumps(provenance[name], default=str))  # as it reads back from the file
        old = entries.get(name, {}).get("scored_on")
        if old is not None and old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            notes.append(f"{path.name}: {key}/{name} replaced; the earlier entry was scored with another "
                         f"{', '.join(changed)}")
        entries[name] = dict(scores, scored_on=new)
    write_json(path, metrics, indent=2)
    return notes


def record_scores(run_dir: Path, config, ckpt: dict, split: str, results: dict, run) -> tuple[str, list[str]]:
    """Merge `results` into metrics.json with what they were scored on: (the entry's key, notes on
    entries replaced that had been scored otherwise)."""
    checkpoint = find_checkpoint(run_dir).name
    provenance = {name: scored_on(split, run.names, run.split_images, grouper_parameters(name, config.grouping.get(name)),
                                  config.eval.max_dets, checkpoint, ckpt.get("step"), config.eval.tta)
                  for name in results}
    key = metrics_key(split, len(run.names), run.split_images)
    return key, record_metrics(run_dir / "metrics.json", key, results, provenance)
