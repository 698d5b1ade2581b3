"""Tiny on-disk samples of every file-based dataset format, written by the tests themselves."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils


def box(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with 0s."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))  # run starts, then the end
    counts = np.diff(np.r_[0, change]).tolist()
    return {"size": list(mask.shape), "counts": counts if counts[-1] else counts[:-1]}


COCO_SHAPE = (20, 30)  # H, W of the tiny COCO image
COCO_MASKS = {  # the known pixels of every annotation
    "dog_rle": box(COCO_SHAPE, 2, 8, 3, 10),
    "cat_uncompressed": box(COCO_SHAPE, 10, 18, 2, 7),
    "dog_crowd": box(COCO_SHAPE, 5, 15, 5, 15),  # overlaps dog_rle and cat_uncompressed
    "bird_rle": box(COCO_SHAPE, 1, 4, 20, 28),
}
COCO_POLYGON = [[20.0, 10.0, 28.0, 10.0, 28.0, 17.0, 20.0, 17.0]]  # a cat, x/y corner points


def write_coco_sample(root: Path) -> Path:
    """<root>/annotations/instances_val.json + <root>/val/a.png (RLE, uncompressed RLE, polygon,
    crowd) and <root>/val/b.png (no annotations)."""
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    h, w = COCO_SHAPE
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "val" / "a.png")
    Image.fromarray(np.full((12, 16), 30, np.uint8)).save(root / "val" / "b.png")  # grey
    m = COCO_MASKS
    anns = [
        {"id": 1, "image_id": 7, "category_id": 18, "iscrowd": 0, "segmentation": compressed_rle(m["dog_rle"])},
        {"id": 2, "image_id": 7, "category_id": 17, "iscrowd": 0,
         "segmentation": uncompressed_rle(m["cat_uncompressed"])},
        {"id": 3, "image_id": 7, "category_id": 18, "iscrowd": 1, "segmentation": compressed_rle(m["dog_crowd"])},
        {"id": 4, "image_id": 7, "category_id": 17, "iscrowd": 0, "segmentation": COCO_POLYGON},
        {"id": 5, "image_id": 7, "category_id": 16, "iscrowd": 0, "segmentation": compressed_rle(m["bird_rle"])},
    ]
    data = {"images": [{"id": 7, "file_name": "a.png", "height": h, "width": w},
                       {"id": 9, "file_name": "b.png", "height": 12, "width": 16}],
            "annotations": anns,
            "categories": [{"id": 18, "name": "dog"}, {"id": 16, "name": "bird"}, {"id": 17, "name": "cat"}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


COCO_PARAMS = {"annotations": "annotations/instances_{split}.json", "images": "{split}"}

# Cityscapes: raw instanceIds of the planted regions (label_id * 1000 + k, or a plain label id)
CITY_SHAPE = (16, 24)


def cityscapes_ids() -> np.ndarray:
    ids = np.full(CITY_SHAPE, 7, np.int64)  # road
    ids[0:3, :] = 23  # sky
    ids[4:8, 1:5] = 26000  # car 0
    ids[4:8, 6:10] = 26001  # car 1
    ids[9:14, 1:3] = 24000  # person 0
    ids[9:14, 4:7] = 24  # a person group without instance ids -> ignore
    ids[9:12, 8:12] = 29000  # caravan -> ignore
    ids[14:16, :] = 1  # ego vehicle -> ignore
    ids[4:9, 14:18] = 33000  # bicycle 0
    ids[10:13, 18:22] = 26  # car group without ids -> ignore
    return ids


def write_cityscapes_sample(root: Path, split: str = "train", annotations: str = "gtFine") -> Path:
    for k, (city, frame) in enumerate((("aachen", "000000_000019"), ("bonn", "000001_000019"))):
        image_dir = root / "leftImg8bit" / split / city
        label_dir = root / annotations / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(CITY_SHAPE + (3,), 50 + k, np.uint8)).save(
            image_dir / f"{city}_{frame}_leftImg8bit.png")
        ids = cityscapes_ids() if k == 0 else np.full(CITY_SHAPE, 7)
        Image.fromarray(ids.astype(np.uint16)).save(label_dir / f"{city}_{frame}_{annotations}_instanceIds.png")
    return root


def write_folder_sample(root: Path, split: str = "train", stems=("a", "b"), size=(12, 10)) -> Path:
    """RGB images, 8-bit masks with two instances each (3x3 and 3x4 pixels)."""
    for sub in ("images", "masks"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    h, w = size
    for k, stem in enumerate(stems):
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(root / split / "images" / f"{stem}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[1:4, 1:4] = 1
        mask[5:8, 2:6] = 2
        Image.fromarray(mask).save(root / split / "masks" / f"{stem}.png")
    return root


@pytest.fixture
def coco_sample(tmp_path) -> Path:
    return write_coco_sample(tmp_path / "coco")


@pytest.fixture
def cityscapes_sample(tmp_path) -> Path:
    return write_cityscapes_sample(tmp_path / "cityscapes")


@pytest.fixture
def folder_sample(tmp_path) -> Path:
    return write_folder_sample(tmp_path / "folder")


@pytest.fixture
def samples():
    """This module: the sample writers and their known contents (a conftest cannot be imported by name)."""
    import sys

    return sys.modules[__name__]
