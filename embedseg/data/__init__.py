"""Data sets of the sample contract in `embedseg.data.base`; importing this registers them all."""
from __future__ import annotations

from embedseg.data.base import DATASETS
from embedseg.data.cityscapes import CityscapesDataset
from embedseg.data.coco import CocoDataset
from embedseg.data.folder import FolderDataset, resolve_root, write_dataset
from embedseg.data.synthetic import SyntheticShapes

__all__ = ["DATASETS", "CityscapesDataset", "CocoDataset", "FolderDataset", "SyntheticShapes", "build_dataset",
           "resolve_root", "write_dataset"]


def build_dataset(name: str, split: str, **params):
    """`DATASETS.build(name, split=split, **params)`: unknown names/parameters fail with the known ones."""
    return DATASETS.build(name, split=split, **params)
