"""Cityscapes instance segmentation from the `*_instanceIds.png` ground truth.

Layout (the official one)::

    <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<name>_gtFine_instanceIds.png     (annotations: gtCoarse -> gtCoarse/..._gtCoarse_...)

An instanceIds pixel holds `label_id * 1000 + k` for an instance k of a thing class and the
plain `label_id` (< 1000) elsewhere. The 8 evaluated thing classes (label ids 24-28, 31-33)
become classes 1..8, or only those named in `classes`, in that order (other things are
background). Ignore (instances = semantic = -1): pixels of a kept thing class without an
instance id (groups the annotators did not split) and pixels whose label id is in
`IGNORE_LABEL_IDS` (the void regions 0-3 and the caravan/trailer classes 29-30, which Cityscapes
does not evaluate). Instances are renumbered 1..N in raw id order.
"""
from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import Dataset

from embedseg.data.base import checked_index
from embedseg.data.io import check_same_size, read_image, read_label, resolve_root
from embedseg.data.registry import DATASETS

logger = logging.getLogger(__name__)

# label id -> name of the thing classes that Cityscapes evaluates (cityscapesscripts labels.py)
THING_CLASSES = {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train",
                 32: "motorcycle", 33: "bicycle"}
IGNORE_LABEL_IDS = (0, 1, 2, 3, 29, 30)  # unlabeled, ego vehicle, rectification border, out of roi, caravan, trailer
IMAGE_SUFFIX = "_leftImg8bit"


def convert_instance_ids(ids: np.ndarray, class_of_label: dict[int, int], ignore_label_ids) -> tuple:
    """(instances int32, semantic int64) from a raw instanceIds map [H, W] (non-negative ints).

    Look-up tables over the raw values present (ids stay below 34000), so one indexing pass.
    """
    flat = ids.ravel()
    values = np.flatnonzero(np.bincount(flat)) if flat.size else np.zeros(0, np.int64)
    label = np.where(values >= 1000, values // 1000, values)
    value_class = np.array([class_of_label.get(int(c), 0) for c in label], np.int64)
    is_instance = (values >= 1000) & (value_class > 0)
    ignore = np.isin(label, list(ignore_label_ids)) | ((values < 1000) & (value_class > 0))
    top = int(values.max()) + 1 if values.size else 1
    lut_instance = np.zeros(top, np.int32)
    lut_instance[values[is_instance]] = np.arange(1, int(is_instance.sum()) + 1)
    lut_instance[values[ignore]] = -1
    lut_semantic = np.zeros(top, np.int64)
    lut_semantic[values[is_instance]] = value_class[is_instance]
    lut_semantic[values[ignore]] = -1
    return lut_instance[ids], lut_semantic[ids]


@DATASETS.register("cityscapes")
class CityscapesDataset(Dataset):
    """Cityscapes images with instance and class maps from `*_instanceIds.png`.

    image_id is the index in sorted file order; name is `<city>_<seq>_<frame>`.
    """

    def __init__(self, root: str, split: str = "train", classes: list[str] | None = None,
                 annotations: str = "gtFine"):
        self.root = resolve_root(root, "CityscapesDataset")
        self.split = split
        self.annotations = annotations
        names = list(THING_CLASSES.values())
        classes = names if classes is None else list(classes)
        unknown = [c for c in classes if c not in names]
        if unknown or not classes:
            raise ValueError(f"CityscapesDataset: classes {unknown or classes} are not Cityscapes thing "
                             f"classes; choose from {', '.join(names)}")
        label_of_name = {name: lid for lid, name in THING_CLASSES.items()}
        self.class_names = classes
        self.num_classes = len(classes)
        self.class_of_label = {label_of_name[c]: k + 1 for k, c in enumerate(classes)}

        image_dir = self.root / "leftImg8bit" / split
        label_dir = self.root / annotations / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"CityscapesDataset: folder {folder} does not exist")
        self.image_paths = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}.png"))
        if not self.image_paths:
            raise ValueError(f"CityscapesDataset: no <city>/*{IMAGE_SUFFIX}.png images in {image_dir}: empty split")
        self.names = [p.name[: -len(IMAGE_SUFFIX + ".png")] for p in self.image_paths]
        self.label_paths = [label_dir / p.parent.name / f"{n}_{annotations}_instanceIds.png"
                            for p, n in zip(self.image_paths, self.names)]
        missing = [(i, m) for i, m in zip(self.image_paths, self.label_paths) if not m.is_file()]
        if missing:
            raise FileNotFoundError(
                f"CityscapesDataset: image {missing[0][0]} has no instance map {missing[0][1]}"
                + (f" ({len(missing)} images without one)" if len(missing) > 1 else ""))

    def __len__(self) -> int:
        return len(self.image_paths)

    def __repr__(self) -> str:
        return f"CityscapesDataset(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"

    def __getitem__(self, index) -> dict:
        index = checked_index(index, len(self), "CityscapesDataset")
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image = read_image(image_path)
        ids = read_label(label_path, "instanceIds map")
        check_same_size(ids, label_path, "instance map", image, image_path)
        instances, semantic = convert_instance_ids(ids, self.class_of_label, IGNORE_LABEL_IDS)
        return {"image": image, "instances": instances, "semantic": semantic, "image_id": index,
                "name": self.names[index]}
