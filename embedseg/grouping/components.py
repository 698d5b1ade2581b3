"""Baseline: connected components of the predicted foreground, class by class."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from embedseg.grouping.base import GROUPERS, as_tensor, foreground_mask, instances_from_masks
from embedseg.structures import Instances


@GROUPERS.register("components")
class ConnectedComponentsGrouper:
    """Each 4-connected region of one predicted class is an instance; embeddings are ignored.

    Touching objects of one class merge, which is exactly what embeddings must fix.
    Score = mean seediness inside the region (1 without one) x mean class probability.
    """

    def __init__(self, min_size: int = 20):
        self.min_size = min_size

    def __call__(self, outputs: dict) -> Instances:
        fg = foreground_mask(outputs).numpy()
        h, w = fg.shape
        classes = as_tensor(outputs["semantic"]).argmax(0).numpy() if "semantic" in outputs else fg.astype(int)
        masks = []
        for c in np.unique(classes[fg]):
            regions, n = ndimage.label(classes == c)
            if n == 0:
                continue
            sizes = np.bincount(regions.ravel(), minlength=n + 1)
            keep = np.nonzero(sizes >= self.min_size)[0]
            keep = keep[keep > 0]
            masks.append(regions[None] == keep[:, None, None])
        if not masks:
            return Instances.empty(h, w)
        masks = torch.from_numpy(np.concatenate(masks))
        if "seediness" in outputs:
            seed = as_tensor(outputs["seediness"]).flatten()
            m = masks.flatten(1).float()
            seed_scores = (m @ seed) / m.sum(1)
        else:
            seed_scores = torch.ones(len(masks))
        return instances_from_masks(masks, seed_scores, outputs)
