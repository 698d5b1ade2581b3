"""Mean-shift grouping in embedding space (De Brabandere et al. 2017), vectorised in torch."""
from __future__ import annotations

import torch

from embedseg.grouping.base import GROUPERS, as_tensor, foreground_mask, instances_from_masks
from embedseg.structures import Instances


@GROUPERS.register("meanshift")
class MeanShiftGrouper:
    """Seed, shift, cut out, repeat, until the foreground is used up.

    1. seed: the unassigned foreground pixel of highest seediness (random when there is no
       seediness map, drawn with `random_state`);
    2. shift the centre to the mean of the unassigned embeddings within `bandwidth` (flat kernel)
       until it moves less than `tol`;
    3. the unassigned pixels within `bandwidth` of the converged centre form one instance
       (dropped when smaller than `min_size` pixels, but used up all the same).
    Each step is one [N, D] distance computation over the N remaining foreground pixels.
    Score = seediness of the seed (1 without a seediness map) x mean class probability.
    """

    def __init__(self, bandwidth: float = 1.0, min_size: int = 20, max_iter: int = 20, tol: float = 1e-3,
                 max_instances: int = 500, random_state: int = 0):
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        self.bandwidth, self.min_size, self.max_iter, self.tol = bandwidth, min_size, max_iter, tol
        self.max_instances, self.random_state = max_instances, random_state

    def __call__(self, outputs: dict) -> Instances:
        embedding = as_tensor(outputs["embedding"])
        d, h, w = embedding.shape
        fg = foreground_mask(outputs).flatten()
        pixel_index = torch.nonzero(fg).squeeze(1)
        x = embedding.flatten(1).T[pixel_index].contiguous()  # [N, D]
        has_seediness = "seediness" in outputs
        priority = (as_tensor(outputs["seediness"]).flatten()[pixel_index] if has_seediness
                    else torch.rand(len(pixel_index), generator=torch.Generator().manual_seed(self.random_state)))

        remaining = torch.arange(len(pixel_index))  # indices into x of unassigned pixels
        masks, seed_scores = [], []
        while len(remaining) >= self.min_size and len(masks) < self.max_instances:
            xr = x[remaining]
            seed = priority[remaining].argmax()
            center = xr[seed]
            for _ in range(self.max_iter):
                within = (xr - center).pow(2).sum(1) < self.bandwidth**2
                new_center = xr[within].mean(0)
                moved = (new_center - center).norm()
                center = new_center
                if moved < self.tol:
                    break
            members = (xr - center).pow(2).sum(1) < self.bandwidth**2
            members[seed] = True  # the seed is always used up, so the loop always progresses
            if members.sum() >= self.min_size:
                mask = torch.zeros(h * w, dtype=torch.bool)
                mask[pixel_index[remaining[members]]] = True
                masks.append(mask.view(h, w))
                seed_scores.append(float(priority[remaining[seed]]) if has_seediness else 1.0)
            remaining = remaining[~members]

        if not masks:
            return Instances.empty(h, w)
        return instances_from_masks(torch.stack(masks), torch.tensor(seed_scores), outputs)
