"""`embedseg data check`: statistics of a data set and every problem in it, each naming its file.

For the `folder` layout the files are matched here (so every image without a mask is listed,
not only the first) and each pair is read with the same loader the dataset uses. For other
formats (`coco`, `cityscapes`, ...) the registered dataset is built per split and every
sample is loaded; a sample that fails to load is one problem, with the loader's message.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from embedseg.data.folder import SplitFiles, label_file_pattern, load_labelled_image
from embedseg.data.io import IMAGE_EXTENSIONS, read_class_names, resolve_root
from embedseg.data.registry import DATASETS, build_dataset


@dataclass
class SplitReport:
    """Counts, sizes, instances and classes of one split, with its problems and warnings."""

    split: str
    num_images: int = 0  # images found (loaded or not)
    sizes: Counter = field(default_factory=Counter)  # "WxH" -> images
    instances: list = field(default_factory=list)  # instances per loaded image
    class_counts: Counter = field(default_factory=Counter)  # class name -> instances
    ignore_images: int = 0  # images with ignore (-1) pixels
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def add(self, sample_image: np.ndarray, instances: np.ndarray, semantic: np.ndarray, class_names) -> None:
        self.sizes[f"{sample_image.shape[1]}x{sample_image.shape[0]}"] += 1
        classes = instance_classes(instances, semantic)
        self.instances.append(len(classes))
        for c, n in zip(*np.unique(classes, return_counts=True)):
            self.class_counts[class_names[c - 1] if 0 < c <= len(class_names) else f"class {c}"] += int(n)
        self.ignore_images += bool((instances < 0).any())


def instance_classes(instances: np.ndarray, semantic: np.ndarray) -> np.ndarray:
    """Class of every positive instance id (majority of its semantic pixels), in id order."""
    inside = instances > 0
    ids, sem = instances[inside].astype(np.int64), semantic[inside].astype(np.int64)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    sem = np.maximum(sem, 0)
    pairs, counts = np.unique(ids * (int(sem.max()) + 1) + sem, return_counts=True)
    pair_id, pair_class = np.divmod(pairs, int(sem.max()) + 1)
    # per id, the class with the most pixels: sort by (id, count) and take each id's last entry
    order = np.lexsort((counts, pair_id))
    last = np.r_[pair_id[order][1:] != pair_id[order][:-1], True]
    return pair_class[order][last]


def _check_folder_split(root, split: str, class_names: list[str], progress: bool) -> SplitReport:
    report = SplitReport(split)
    split_dir = root / split
    if not split_dir.is_dir():
        report.problems.append(f"split folder {split_dir} does not exist")
        return report
    try:
        files = SplitFiles.index(split_dir)
    except (FileNotFoundError, ValueError) as err:
        report.problems.append(str(err))
        return report
    report.num_images = len(files.images)
    if not files.images:
        report.problems.append(f"empty split: no images ({'/'.join(IMAGE_EXTENSIONS)}) in {files.image_dir}")
    for stem in files.without("masks"):
        report.problems.append(f"image without mask: {files.images[stem]} "
                               f"(no {label_file_pattern(files.mask_dir, stem)})")
    if files.semantic is not None:
        for stem in files.without("semantic"):
            report.problems.append(f"image without semantic map: {files.images[stem]} "
                                   f"(no {label_file_pattern(files.semantic_dir, stem)})")
    for stem in files.orphan_masks():
        report.warnings.append(f"mask without image: {files.masks[stem]}")
    for stem in tqdm(sorted(files.images), desc=f"check {split}", unit="img", disable=None if progress else True):
        if stem not in files.masks or (files.semantic is not None and stem not in files.semantic):
            continue
        semantic_path = files.semantic[stem] if files.semantic is not None else None
        try:
            image, instances, semantic = load_labelled_image(files.images[stem], files.masks[stem], semantic_path,
                                                             class_names)
        except (OSError, ValueError) as err:
            report.problems.append(str(err))
            continue
        report.add(image, instances, semantic, class_names)
        if not (instances > 0).any():
            report.warnings.append(f"no instances in mask {files.masks[stem]}")
    return report


def _check_dataset_split(name: str, params: dict, split: str, progress: bool) -> tuple[SplitReport, list]:
    report = SplitReport(split)
    try:
        dataset = build_dataset(name, split, **params)
    except (OSError, ValueError) as err:
        report.problems.append(str(err))
        return report, []
    report.num_images = len(dataset)
    class_names = list(dataset.class_names)
    for index in tqdm(range(len(dataset)), desc=f"check {split}", unit="img", disable=None if progress else True):
        try:
            sample = dataset[index]
        except (OSError, ValueError) as err:
            report.problems.append(str(err))
            continue
        report.add(sample["image"], sample["instances"], sample["semantic"], class_names)
        if not (sample["instances"] > 0).any():
            report.warnings.append(f"no instances in sample {sample.get('name', index)!r} of split {split}")
    return report, class_names


def check_dataset(root: str, splits: list[str], format: str = "folder", params: dict | None = None,
                  progress: bool = True) -> list[SplitReport]:
    """One `SplitReport` per split of the data set at `root` in `format` (a DATASETS name)."""
    params = dict(params or {}, root=root)
    DATASETS.check_params(format, params, reserved=("split",))
    if format != "folder":
        return [_check_dataset_split(format, params, split, progress)[0] for split in splits]
    root_dir = resolve_root(root, "data check")
    class_names = params.get("class_names")
    if class_names is None:
        classes_file = root_dir / "classes.txt"
        class_names = read_class_names(classes_file) if classes_file.is_file() else ["object"]
    return [_check_folder_split(root_dir, split, list(class_names), progress) for split in splits]


def format_report(reports: list[SplitReport], root: str, format: str) -> str:
    """Plain-text report: one block of statistics per split, then every problem and warning."""
    lines = [f"data check: {root} (format {format})", ""]
    lines.append(f"{'split':<10} {'images':>7} {'loaded':>7} {'instances':>10} {'per image mean':>15} "
                 f"{'min':>5} {'max':>5} {'with ignore':>12}")
    for r in reports:
        n = np.asarray(r.instances)
        stats = (f"{n.sum():>10} {n.mean():>15.2f} {n.min():>5} {n.max():>5}" if n.size
                 else f"{'-':>10} {'-':>15} {'-':>5} {'-':>5}")
        lines.append(f"{r.split:<10} {r.num_images:>7} {len(n):>7} {stats} {r.ignore_images:>12}")
    for r in reports:
        if not r.instances:
            continue
        lines.append("")
        lines.append(f"{r.split}: sizes (WxH): " + ", ".join(f"{s} x{c}" for s, c in r.sizes.most_common()))
        lines.append(f"{r.split}: instances per class: "
                     + (", ".join(f"{c} {k}" for c, k in sorted(r.class_counts.items())) or "none"))
    problems = [p for r in reports for p in r.problems]
    warnings = [w for r in reports for w in r.warnings]
    lines += ["", f"problems: {len(problems)}"] + [f"  - {p}" for p in problems]
    if warnings:
        lines += [f"warnings: {len(warnings)}"] + [f"  - {w}" for w in warnings]
    return "\n".join(lines)
