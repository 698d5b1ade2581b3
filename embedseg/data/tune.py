"""The tune split: images carved out of the training split, on which grouping parameters are chosen.

With `data.tune: {fraction: 0.1, seed: 0}` a fixed random tenth of the training split's images
becomes the split "tune" and the training split keeps the rest, so training never sees them and
the split a config reports (val) is never used to choose anything. The carving depends only on the
number of images, the fraction and the seed.
"""
from __future__ import annotations

import numpy as np

from embedseg.data.base import checked_index

TUNE_SPLIT = "tune"


def tune_indices(num_images: int, fraction: float, seed: int = 0) -> np.ndarray:
    """The sorted indices, among `num_images`, of the tune split: round(fraction x num_images) of
    them (at least 1), drawn with `seed`; the training split keeps at least one image."""
    count = max(1, round(fraction * num_images))
    if count >= num_images:
        raise ValueError(f"data.tune.fraction = {fraction} leaves no training image of {num_images}; "
                         "choose a smaller fraction")
    return np.sort(np.random.default_rng(seed).permutation(num_images)[:count])


class Subset:
    """The images `indices` of `dataset`, in that order, with its class names (the sample contract
    of embedseg.data.base)."""

    def __init__(self, dataset, indices, name: str):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.name = name
        self.num_classes = dataset.num_classes
        self.class_names = dataset.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[checked_index(index, len(self), self.name)]]

    def image_sizes(self) -> dict:
        """(width, height) of the subset's image files, where the dataset lists them (else {})."""
        sizes = list(self.dataset.image_sizes().items()) if hasattr(self.dataset, "image_sizes") else []
        return dict(sizes[i] for i in self.indices) if sizes else {}


def split_train(dataset, fraction: float, seed: int, part: str):
    """`part` ("tune" or "train") of a training split carved as `tune_indices` says."""
    tune = tune_indices(len(dataset), fraction, seed)
    if part == TUNE_SPLIT:
        return Subset(dataset, tune, TUNE_SPLIT)
    keep = np.setdiff1d(np.arange(len(dataset)), tune)
    return Subset(dataset, keep, "train without tune")
