"""External rows: label images another program made (a published method run on the same box), scored
by this framework's evaluators against a config's eval split, beside the rows of ours.

The label images lie in `<run dir>/labels/`: one per image of the split, `<image name>.png` or `.tif`
(read with PIL, 8 or 16 bit), 0 = background, one id per instance. Label images carry no score and no
class: every instance gets score 1.0 and the one class of the data set. An optional `labels/timing.json`
holds the program's own timings: `{"seconds": {"train": 1743}, "network_ms_median": 209, ...}`; its
`seconds` go into the row's result, its `*_ms_median` / `*_ms_p90` values into the scores.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedseg.config import Config, ConfigError
from embedseg.data.io import LABEL_EXTENSIONS, read_label
from embedseg.engine.evaluator import config_evaluators, ground_truth_instances
from embedseg.engine.run import dataset_for_split
from embedseg.evaluation import evaluate_all
from embedseg.structures import Instances

LABELS_DIR = "labels"
TIMING_FILE = "timing.json"


def labels_present(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in LABEL_EXTENSIONS for p in folder.iterdir())


def predicted_labels(folder: Path, name: str, size: tuple[int, int], split: str) -> np.ndarray:
    """The label image of image `name` in `folder`; a missing one or one of another size than the image
    (`size`: height, width) is an error naming the file."""
    path = next((folder / f"{name}{s}" for s in LABEL_EXTENSIONS if (folder / f"{name}{s}").is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{folder} has no label image {name}.png or {name}.tif for image {name!r} of the "
                                f"{split} split: the program must predict every image of the split")
    label = read_label(path, "predicted label image")
    if label.shape != tuple(size):
        raise ValueError(f"{path} is {label.shape[1]}x{label.shape[0]} (WxH) but image {name!r} of the {split} "
                         f"split is {size[1]}x{size[0]}")
    return label


def score_labels(config: Config, folder: Path) -> tuple[dict, list[str], int]:
    """(scores, names of the images scored, images in the split) of the label images in `folder` on the
    config's eval split (its first eval.max_images), with the config's metrics (COCO always) and thresholds."""
    split, ev = config.eval.split, config.eval
    dataset = dataset_for_split(config, split)
    if len(dataset.class_names) != 1:
        raise ConfigError(f"label images carry no class, so an external row needs a data set of one class; "
                          f"{config.data.dataset} has {len(dataset.class_names)} ({', '.join(dataset.class_names)})")
    metrics = list(ev.metrics) if "coco" in ev.metrics else ["coco", *ev.metrics]
    evaluators = config_evaluators(config, list(dataset.class_names), metrics)()
    names, counts = [], []
    for i in range(len(dataset) if ev.max_images is None else min(ev.max_images, len(dataset))):
        sample = dataset[i]
        names.append(str(sample.get("name", sample["image_id"])))
        prediction = Instances.from_label_map(predicted_labels(folder, names[-1], sample["instances"].shape, split))
        counts.append(len(prediction))
        ignore = sample["instances"] < 0
        for evaluator in evaluators:
            evaluator.process(ground_truth_instances(sample), prediction, ignore if ignore.any() else None)
    scores = dict(evaluate_all(evaluators), instances_per_image=float(np.mean(counts)) if counts else 0.0)
    return scores, names, len(dataset)


def read_timing(folder: Path) -> tuple[dict, dict]:
    """(seconds, ms scores) of the optional timing.json in `folder`."""
    path = folder / TIMING_FILE
    if not path.is_file():
        return {}, {}
    try:
        timing = json.loads(path.read_text())
        seconds = {k: float(v) for k, v in timing.get("seconds", {}).items()}
        ms = {k: float(v) for k, v in timing.items() if k.endswith(("_ms_median", "_ms_p90"))}
    except (ValueError, AttributeError, TypeError):  # not JSON, not an object, not numbers
        raise ValueError(f"{path}: expected a JSON object such as {{\"seconds\": {{\"train\": 1743}}, "
                         f"\"network_ms_median\": 209}}") from None
    return seconds, ms
