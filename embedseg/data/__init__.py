"""Data sets of the sample contract in `embedseg.data.base`; importing this registers them all.

`DATASETS` and `build_dataset` live in `embedseg.data.registry`, the image and label readers in
`embedseg.data.io`.
"""
from __future__ import annotations

from embedseg.data.cityscapes import CityscapesDataset
from embedseg.data.coco import CocoDataset
from embedseg.data.folder import FolderDataset, write_dataset
from embedseg.data.io import read_image, read_label, resolve_root
from embedseg.data.registry import DATASETS, build_dataset
from embedseg.data.synthetic import SyntheticShapes

__all__ = ["DATASETS", "CityscapesDataset", "CocoDataset", "FolderDataset", "SyntheticShapes", "build_dataset",
           "read_image", "read_label", "resolve_root", "write_dataset"]
