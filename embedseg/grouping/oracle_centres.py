"""Oracle grouping: every foreground pixel joins the nearest ground-truth instance centre in embedding
space (within `threshold`), as De Brabandere et al. 2017 threshold around the true centres to
separate the embedding's error from the clustering's. Needs `eval.oracle: [instances]`."""
from __future__ import annotations

from typing import ClassVar

import torch

from embedseg.distances import squared_distances
from embedseg.grouping.base import Grouper, foreground_embeddings, no_masks
from embedseg.grouping.registry import GROUPERS


@GROUPERS.register("oracle_centres")
class OracleCentresGrouper(Grouper):
    """Each ground-truth instance's mean embedding over its pixels is a centre; every foreground pixel
    within `threshold` of a centre joins the nearest one. Proposal score 1."""

    search_space: ClassVar[dict[str, list]] = {"threshold": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]}
    oracle = True

    def __init__(self, threshold: float = 1.5, postprocess: list[str | dict] | None = None):
        super().__init__(postprocess)
        if threshold <= 0:
            raise ValueError(f"oracle_centres: threshold must be a positive embedding distance, got {threshold}")
        self.threshold = threshold

    def propose(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "instances" not in outputs:
            raise KeyError("the oracle_centres grouper needs the ground-truth instances: set eval.oracle: [instances]")
        pixel_index, x, (h, w) = foreground_embeddings(outputs)
        labels = torch.as_tensor(outputs["instances"]).flatten().long()
        ids = torch.unique(labels[labels > 0])
        if len(ids) == 0 or len(x) == 0:
            return no_masks((h, w))
        embedding = torch.as_tensor(outputs["embedding"]).float().flatten(1).T  # [H*W, D]
        member = labels[None] == ids[:, None]  # [K, H*W]
        centres = (member.float() @ embedding) / member.sum(1, keepdim=True)  # [K, D]
        d2 = squared_distances(x, centres)  # [N, K]
        nearest = d2.argmin(1)
        inside = d2.gather(1, nearest[:, None])[:, 0] < self.threshold ** 2
        masks = torch.zeros(len(ids), h * w, dtype=torch.bool)
        masks[nearest[inside], pixel_index[inside]] = True
        keep = masks.any(1)
        return masks[keep].view(-1, h, w), torch.ones(int(keep.sum()))
