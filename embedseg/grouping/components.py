"""Baseline: connected components of the predicted foreground, class by class."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage

from embedseg.grouping.base import MIN_SIZES, Grouper, as_tensor, foreground_mask, no_masks
from embedseg.grouping.registry import GROUPERS


@GROUPERS.register("components")
class ConnectedComponentsGrouper(Grouper):
    """Each 4-connected region of one predicted class of at least `min_size` pixels is an instance;
    embeddings are ignored.

    Touching objects of one class merge, which is exactly what embeddings must fix.
    Proposal score = mean seediness inside the region (1 without one).
    """

    search_space: ClassVar[dict[str, list]] = {"min_size": MIN_SIZES}
    spatial: ClassVar[bool | None] = None

    def __init__(self, min_size: int = 20, postprocess: list[str | dict] | None = None):
        super().__init__(postprocess)
        self.min_size = min_size

    def propose(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
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
            return no_masks((h, w))
        masks = torch.from_numpy(np.concatenate(masks))
        if "seediness" in outputs:
            seed = as_tensor(outputs["seediness"]).flatten()
            m = masks.flatten(1).float()
            seed_scores = (m @ seed) / m.sum(1)
        else:
            seed_scores = torch.ones(len(masks))
        return masks, seed_scores
