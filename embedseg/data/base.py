"""The sample contract every dataset follows.

A dataset yields raw numpy samples; `embedseg.data.transforms` turns them into tensors:

    {"image": uint8 [H, W, 3], "instances": int32 [H, W] (0 = background, <0 = ignore),
     "semantic": int64 [H, W] (0 = background, 1..C, <0 = ignore), "image_id": int, "name": str}

Every dataset has `num_classes` (C, without background) and `class_names` (C names). Datasets
are registered in `embedseg.data.registry.DATASETS`; image and label files are read with
`embedseg.data.io`.
"""
from __future__ import annotations


def checked_index(index, length: int, dataset: str) -> int:
    """`index` as a non-negative int below `length` (negative counts from the end), else IndexError."""
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"{dataset} index {index} out of range for {length} images")
    return index
