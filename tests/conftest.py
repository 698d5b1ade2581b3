"""Shared fixtures: the real data root (skipped with a reason when absent) and tiny configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("EMBEDSEG_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data sets not found at {root} (set EMBEDSEG_DATA to their folder)")
    return root


TINY_CONFIG = """
name: tiny
seed: 0
data:
  dataset: {name: synthetic, size: 64, num_images: 8, max_objects: 4, min_radius: 5, max_radius: 10}
  split_params: {val: {num_images: 2}}
model: {name: deeplab, backbone: resnet18, width: 0.125, output_stride: 16, embedding_dim: 8}
loss:
  embedding: {name: discriminative, weight: 1.0}
  semantic: {name: cross_entropy, weight: 1.0}
  seediness: {name: seed_distance, weight: 1.0}
train: {steps: 2, batch_size: 2, log_every: 1, warmup_steps: 1, checkpoint_every: 1, threads: 2}
grouping:
  meanshift: {bandwidth: 1.0, min_size: 5}
  components: {min_size: 5}
eval: {num_overlays: 2}
"""


@pytest.fixture
def tiny_config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture
def coco_sample_truth(shared_data):
    """(folder, COCO json, ground truth Instances per image, crowd mask per image) of the real
    coco_panoptic_sample: two COCO val2017 images with 40 thing instances and 3 crowd regions."""
    import json

    import numpy as np
    from PIL import Image

    from embedseg.structures import Instances

    folder = shared_data / "coco_panoptic_sample"
    if not (folder / "instances_val_things.json").is_file():
        pytest.skip(f"real COCO sample not found at {folder}")
    coco = json.loads((folder / "instances_val_things.json").read_text())
    gt, crowd = [], []
    for image in sorted(coco["images"], key=lambda im: im["id"]):
        stem = Path(image["file_name"]).stem
        label_map = np.array(Image.open(folder / "val" / "masks" / f"{stem}.png")).astype(np.int64)
        classes = {a["mask_id"]: a["category_id"] for a in coco["annotations"]
                   if a["image_id"] == image["id"] and not a["iscrowd"]}
        gt.append(Instances.from_label_map(label_map, labels=classes))
        crowd.append(np.array(Image.open(folder / "val" / "ignore" / f"{stem}.png")) > 0)
    return folder, coco, gt, crowd
