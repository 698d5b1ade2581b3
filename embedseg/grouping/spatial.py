"""Seeds and learned margins of spatial embeddings (Neven et al. 2019; embedseg.losses.spatial)."""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from embedseg.grouping.base import MIN_SIZES, Grouper, as_tensor, foreground_embeddings, no_masks, pixel_values
from embedseg.grouping.registry import GROUPERS

MAX_LOG_SCALE = 50.0  # exp(50) = 5e21: a kernel narrower than any pixel spacing


@GROUPERS.register("spatial")
class SpatialGrouper(Grouper):
    """One mask per seed, gathered by the seed's own kernel.

    Reads outputs["embedding"] [2 + n_sigma, H, W] as the spatial loss trains it (channels 0, 1: the
    position each pixel points at; the rest: its raw margin) and outputs["seediness"]. Over the
    foreground pixels, again and again: take the unclaimed pixel of highest seediness, stop when it
    is below `seed_threshold`; its kernel phi(j) = exp(-sum_d exp(sigma_d) (e_j,d - e_seed,d)^2) with
    the seed's margin sigma gathers the proposal {j : phi(j) > 0.5}; the proposal's unclaimed pixels
    become a mask when they are at least `min_size` pixels and at least `min_unclaimed` of the
    proposal. The proposal is claimed either way, so no seed is tried twice. Before those checks,
    unclaimed pixels whose mean kernel value under an earlier mask's kernel (that mask's seed and
    margin) is at least `join_threshold` join that mask, however few: a piece of one object whose
    offsets fall short of its centre (a leaf's stalk). None of them lies inside an earlier kernel
    (phi <= 0.5 there), so 0.5 never joins. Score: the mean seediness over the final mask. The seed
    map regresses each pixel's kernel value, so that mean predicts how well the mask's pixels gather
    at one centre: a stalk or tip grown from one high seed ranks below a whole object. At most
    `max_instances` masks; each seed looks only at the pixels whose position is within its kernel's
    reach along y (a slice of the pixels sorted once by position).
    """

    search_space: ClassVar[dict[str, list]] = {"seed_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                               "min_size": MIN_SIZES, "min_unclaimed": [0.3, 0.5, 0.7],
                                               "join_threshold": [0.1, 0.2, 0.3, 0.5]}
    spatial: ClassVar[bool | None] = True

    def __init__(self, seed_threshold: float = 0.5, min_size: int = 10, min_unclaimed: float = 0.5,
                 join_threshold: float = 0.5, max_instances: int = 2000, postprocess: list[str | dict] | None = None):
        super().__init__(postprocess)
        if not 0.0 <= seed_threshold < 1.0:
            raise ValueError(f"seed_threshold must be in [0, 1), got {seed_threshold}")
        if not 0.0 < min_unclaimed <= 1.0:
            raise ValueError(f"min_unclaimed must be in (0, 1], got {min_unclaimed}")
        if not 0.0 < join_threshold <= 0.5:
            raise ValueError(f"join_threshold must be in (0, 0.5] (0.5: never join), got {join_threshold}")
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.seed_threshold, self.min_size = seed_threshold, min_size
        self.min_unclaimed, self.join_threshold, self.max_instances = min_unclaimed, join_threshold, max_instances

    def propose(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_index, x, (h, w) = foreground_embeddings(outputs)
        if x.shape[1] not in (3, 4):
            raise ValueError(f"the spatial grouper needs a spatial embedding [2 + n_sigma, H, W] (loss: spatial), "
                             f"got {x.shape[1]} channels")
        seediness = pixel_values(outputs, "seediness", pixel_index)
        if seediness is None:
            raise KeyError("the spatial grouper needs outputs['seediness'], the seed map")
        if len(x) == 0:
            return no_masks((h, w))
        # the greedy loop runs in numpy, whose calls on the small per-seed arrays cost a fraction of torch's;
        # the pixels are sorted by e_y, so each seed's band is a contiguous slice
        x = x.double().numpy()
        order = np.argsort(x[:, 0], kind="stable")
        positions = x[order, :2]
        scale = np.exp(np.minimum(x[order, 2:], MAX_LOG_SCALE))  # finite, so each seed lies in its own kernel
        reach = np.sqrt(math.log(2.0) / scale.min(1)) * (1 + 1e-9)  # phi > 0.5 needs |e_y - c_y| < reach
        seediness_sorted = seediness.numpy()[order]
        seeds = np.flatnonzero(seediness_sorted >= self.seed_threshold)
        seeds = seeds[np.argsort(-seediness_sorted[seeds], kind="stable")]  # highest first (ties: the lower e_y)
        free = np.ones(len(x), dtype=bool)  # in no proposal yet
        masks = []
        centres, scales = np.zeros((self.max_instances, 2)), np.zeros((self.max_instances, scale.shape[1]))
        joins = self.join_threshold < 0.5  # no new mask has a pixel in an earlier kernel (phi <= 0.5)
        join_reach = -math.log(self.join_threshold)  # phi >= join_threshold: sum_d scale_d (e_d - c_d)^2 <= this
        for seed in seeds:
            if not free[seed]:
                continue
            low, high = np.searchsorted(positions[:, 0], positions[seed, 0] + np.array([-reach[seed], reach[seed]]))
            kernel = np.exp(-(scale[seed] * (positions[low:high] - positions[seed]) ** 2).sum(1))
            proposal = low + np.flatnonzero(kernel > 0.5)
            mask = proposal[free[proposal]]
            free[proposal] = False
            k = len(masks)
            if joins and k and len(mask):
                # a mean kernel value >= join_threshold needs a pixel there, so only the kernels that reach
                # the new pixels' bounding box that far are scored
                pointed = positions[mask]
                box_gap = np.maximum(0, np.maximum(pointed.min(0) - centres[:k], centres[:k] - pointed.max(0)))
                near = np.flatnonzero((scales[:k] * box_gap ** 2).sum(1) <= join_reach)
                if len(near):
                    membership = np.exp(-(scales[near] * (pointed[:, None] - centres[near]) ** 2).sum(2)).mean(0)
                    best = membership.argmax()
                    if membership[best] >= self.join_threshold:
                        masks[near[best]] = np.concatenate([masks[near[best]], mask])
                        continue
            if len(mask) < max(1, self.min_size) or len(mask) < self.min_unclaimed * len(proposal):
                continue
            masks.append(mask)
            centres[k], scales[k] = positions[seed], scale[seed]
            if k + 1 == self.max_instances:
                break
        if not masks:
            return no_masks((h, w))
        members, sizes = np.concatenate(masks), np.array([len(m) for m in masks])
        mean_seediness = np.add.reduceat(seediness_sorted[members], np.cumsum(sizes) - sizes) / sizes
        image_masks = torch.zeros(len(masks), h * w, dtype=torch.bool)
        image_masks[torch.repeat_interleave(torch.arange(len(masks)), torch.from_numpy(sizes)),
                    pixel_index[torch.from_numpy(order[members])]] = True
        return image_masks.view(-1, h, w), as_tensor(mean_seediness.astype(np.float32))
