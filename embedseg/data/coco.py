"""COCO instance annotations (json with RLE or polygon masks) + an image folder.

Layout (paths relative to `root`, `{split}` replaced by the split name)::

    <root>/<annotations>     default annotations/instances_{split}2017.json
    <root>/<images>/<file_name of each json image>    default {split}2017/

Classes: the json `categories` sorted by id become 1..C, or only those named in `categories`
(in that order); annotations of other categories are dropped (background). `iscrowd=1`
regions become ignore pixels (instances = -1, semantic = -1) wherever no non-crowd instance
lies, so losses skip them and the evaluator scores them as COCO crowd regions. Overlapping
instances: the smaller one is painted on top, so no instance vanishes under a larger one.
Instance ids are 1..N in the json order of the image's non-crowd annotations.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from embedseg.data.base import checked_index
from embedseg.data.io import image_size, read_image, resolve_root
from embedseg.data.registry import DATASETS

logger = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CocoDataset: annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot read {path}: not valid JSON, {err}") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path}: not a COCO instances file, missing key(s) {', '.join(missing)}")
    return data


def annotation_rle(ann: dict, height: int, width: int, source: Path) -> dict:
    """The compressed RLE of one annotation's `segmentation` (polygons, RLE or uncompressed RLE)."""
    segm = ann.get("segmentation")
    where = f"{source}: annotation id {ann.get('id')} (image id {ann.get('image_id')})"
    if isinstance(segm, list):  # polygons [[x1, y1, x2, y2, ...], ...]
        polygons = [p for p in segm if len(p) >= 6]
        if not polygons:
            raise ValueError(f"{where}: segmentation holds no polygon with at least 3 points")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise ValueError(f"{where}: RLE size {segm['size']} (HxW) differs from the image's "
                             f"{[height, width]}")
        if isinstance(segm["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(segm, height, width)
        counts = segm["counts"].encode("ascii") if isinstance(segm["counts"], str) else segm["counts"]
        return {"size": segm["size"], "counts": counts}
    raise ValueError(f"{where}: segmentation must be polygons or an RLE dict, got {type(segm).__name__}")


def check_file_name(info: dict, source: Path) -> None:
    """Refuse an image entry whose `file_name` is missing, absolute or climbs out of the image folder."""
    if not isinstance(info, dict) or not isinstance(info.get("file_name"), str) or not info["file_name"]:
        raise ValueError(f"{source}: image entry {str(info)[:80]} has no file_name (expected a path relative "
                         "to the image folder)")
    name, where = info["file_name"], f"{source}: image id {info.get('id')}"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor or ".." in PureWindowsPath(name).parts:
        raise ValueError(f"{where}: file_name {name!r} points outside the image folder (absolute, or with '..'); "
                         "expected a path relative to the image folder")


def check_annotation(ann, image_ids: set[int], source: Path) -> None:
    """Refuse an annotation without a known `image_id` or a `category_id`, or whose `segmentation` is
    neither a list of polygons nor an RLE dict (checked when the dataset is built, before any image is read)."""
    if not isinstance(ann, dict):
        raise ValueError(f"{source}: annotation {str(ann)[:80]} is not a JSON object")  # noqa: TRY004 - bad input
    where = f"{source}: annotation id {ann.get('id')}"
    for key in ("image_id", "category_id", "segmentation"):
        if key not in ann:
            raise ValueError(f"{where} has no {key}; every annotation needs image_id, category_id and segmentation")
    if ann["image_id"] not in image_ids:
        raise ValueError(f"{where} is of image id {ann['image_id']}, but the file lists no image with that id")
    segm = ann["segmentation"]
    if isinstance(segm, list) and not all(isinstance(p, list) for p in segm):
        raise ValueError(f"{where}: segmentation is a flat list of numbers; polygons are a list of lists "
                         "[[x1, y1, x2, y2, ...], ...], one list per polygon")
    if not isinstance(segm, list) and not (isinstance(segm, dict) and "counts" in segm and "size" in segm):
        raise ValueError(f"{where}: segmentation must be polygons [[x1, y1, ...], ...] or an RLE dict with "
                         f"counts and size, got {str(segm)[:80]}")


def paint_instances(masks: np.ndarray, crowd: np.ndarray | None) -> np.ndarray:
    """Label map int32 [H, W] from non-crowd masks [H, W, N] (ids 1..N) and a crowd mask.

    Smaller instances win overlaps (painted on top); crowd pixels not covered by an instance
    become -1. One max-reduction over ranks instead of a loop over instances.
    """
    height, width, n = masks.shape
    label = np.zeros((height, width), np.int32)
    if n:
        areas = masks.sum(axis=(0, 1), dtype=np.int64)
        # rank 1 = largest ... n = smallest; equal areas: the later annotation on top
        order = np.lexsort((np.arange(n), -areas))
        rank = np.empty(n, np.uint16 if n < np.iinfo(np.uint16).max else np.int32)
        rank[order] = np.arange(1, n + 1)
        top = (masks * rank).max(axis=2)
        id_of_rank = np.zeros(n + 1, np.int32)
        id_of_rank[rank] = np.arange(1, n + 1)
        label = id_of_rank[top]
    if crowd is not None:
        label[(label == 0) & crowd] = -1
    return label


@DATASETS.register("coco")
class CocoDataset(Dataset):
    """COCO instances json + images as samples of the `embedseg.data.base` contract.

    `image_id` is the index in the json's image order (`coco_ids[i]` holds the json id) and
    `name` the file stem. `skip_empty` drops images without a non-crowd instance of the kept
    categories (useful for training).
    """

    def __init__(self, root: str, split: str = "val", annotations: str = "annotations/instances_{split}2017.json",
                 images: str = "{split}2017", categories: list[str] | None = None, skip_empty: bool = False):
        self.root = resolve_root(root, "CocoDataset")
        self.split = split
        self.annotation_file = self.root / annotations.format(split=split)
        self.image_dir = self.root / images.format(split=split)
        data = _read_json(self.annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"CocoDataset: image folder {self.image_dir} does not exist "
                                    f"(images of {self.annotation_file})")

        by_id = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        if categories is None:
            kept = sorted(by_id)
        else:
            id_of_name = {name: cid for cid, name in by_id.items()}
            unknown = [c for c in categories if c not in id_of_name]
            if unknown:
                raise ValueError(f"CocoDataset: categories {unknown} are not in {self.annotation_file}; "
                                 f"known: {', '.join(by_id[c] for c in sorted(by_id))}")
            kept = [id_of_name[c] for c in categories]
        if not kept:
            raise ValueError(f"CocoDataset: no categories to keep in {self.annotation_file}")
        self.class_names = [by_id[c] for c in kept]
        self.num_classes = len(self.class_names)
        self.class_of_category = {cid: k + 1 for k, cid in enumerate(kept)}

        self.images = list(data["images"])
        for info in self.images:
            check_file_name(info, self.annotation_file)
        image_ids = {info.get("id") for info in self.images}
        self.annotations: dict[int, list[dict]] = defaultdict(list)
        for ann in data["annotations"]:
            check_annotation(ann, image_ids, self.annotation_file)
            if int(ann["category_id"]) in self.class_of_category:
                self.annotations[int(ann["image_id"])].append(ann)
        if skip_empty:
            self.images = [im for im in self.images
                           if any(not a.get("iscrowd", 0) for a in self.annotations.get(int(im["id"]), ()))]
        if not self.images:
            raise ValueError(f"CocoDataset: {self.annotation_file} lists no images"
                             + (" with instances of the kept categories" if skip_empty else "") + ": empty split")
        self.coco_ids = [int(im["id"]) for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"CocoDataset(annotations={str(self.annotation_file)!r}, images={len(self)}, classes={self.num_classes})"

    def image_sizes(self) -> dict[Path, tuple[int, int]]:
        """(width, height) of every image file: from the json where it says, else from the file's header."""
        paths = [self.image_dir / info["file_name"] for info in self.images]
        return {path: (int(info["width"]), int(info["height"])) if "width" in info and "height" in info
                else image_size(path) for path, info in zip(paths, self.images)}

    def __getitem__(self, index) -> dict:
        index = checked_index(index, len(self), "CocoDataset")
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"CocoDataset: image {path} (id {info['id']} in {self.annotation_file}) "
                                    "does not exist")
        image = read_image(path)
        height, width = image.shape[:2]
        if (int(info.get("height", height)), int(info.get("width", width))) != (height, width):
            raise ValueError(f"size mismatch: image {path} is {width}x{height} (WxH) but "
                             f"{self.annotation_file} says {info['width']}x{info['height']}")
        anns = self.annotations.get(int(info["id"]), [])
        instances_anns = [a for a in anns if not a.get("iscrowd", 0)]
        crowd_anns = [a for a in anns if a.get("iscrowd", 0)]

        def decode(group):
            rles = [annotation_rle(a, height, width, self.annotation_file) for a in group]
            return mask_utils.decode(rles).astype(bool) if rles else np.zeros((height, width, 0), bool)

        crowd = decode(crowd_anns).any(axis=2) if crowd_anns else None
        instances = paint_instances(decode(instances_anns), crowd)
        classes = np.array([0] + [self.class_of_category[int(a["category_id"])] for a in instances_anns], np.int64)
        semantic = np.where(instances < 0, -1, classes[np.maximum(instances, 0)])
        return {"image": image, "instances": instances, "semantic": semantic, "image_id": index,
                "name": Path(info["file_name"]).stem}
