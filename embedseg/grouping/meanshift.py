"""Mean-shift grouping in embedding space (De Brabandere et al. 2017), vectorised in torch."""
from __future__ import annotations

from typing import ClassVar

import torch

from embedseg.distances import squared_distances
from embedseg.grouping.base import (
    MIN_SIZES,
    Grouper,
    foreground_embeddings,
    masks_from_assignment,
    no_masks,
    pixel_values,
    random_generator,
    subsample,
)
from embedseg.grouping.registry import GROUPERS

# Convergence of the shifts: a centre that moves less than TOL (embedding units) has converged, and
# no centre is shifted more than MAX_ITER times a round.
TOL = 1e-3
MAX_ITER = 20
# At most this many instances an image: a guard against embeddings that do not separate (an untrained
# network), where every few pixels could start a cluster. The data sets here hold up to 375 objects an image.
MAX_INSTANCES = 500


@GROUPERS.register("meanshift")
class MeanShiftGrouper(Grouper):
    """Seed, shift, cut out, repeat, until the foreground is used up.

    1. seed: the unassigned foreground pixel of highest seediness (random priority, drawn with
       `random_state`, when there is no seediness map);
    2. shift the centre to the mean of the unassigned embeddings within `bandwidth` (flat kernel)
       until it moves less than TOL;
    3. the unassigned pixels within `bandwidth` of the converged centre form one instance
       (dropped when smaller than `min_size` pixels, but used up all the same).

    Made fast without changing what it finds on separated clusters:

    - steps 1-2 run on at most `sample_size` unassigned pixels drawn with `random_state` (a
      centre is a mean over hundreds of pixels, so a sample estimates it as well as all of them);
      step 3 then takes every unassigned pixel within `bandwidth` of the new centres in one
      [N, K] distance computation (the centre found first wins where balls overlap). Pixels the sample
      missed (a small object, say) stay unassigned and are seeded in the next pass, until fewer
      than `min_size` pixels are left or a pass finds no new centre.
    - up to `seeds_per_round` seeds are shifted at once: the highest-priority pixel, then the
      highest one farther than `bandwidth` from the seeds taken so far, and so on. Seeds are
      accepted in priority order; one whose converged centre lies within `bandwidth` of an
      accepted centre found the same mode and is dropped (as scikit-learn's MeanShift does).

    Proposal score = seediness of the seed (1 without a seediness map).
    """

    search_space: ClassVar[dict[str, list]] = {"bandwidth": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0], "min_size": MIN_SIZES}

    def __init__(self, bandwidth: float = 1.0, min_size: int = 20, sample_size: int | None = 2048,
                 seeds_per_round: int = 64, random_state: int = 0, postprocess: list[str | dict] | None = None):
        super().__init__(postprocess)
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        if sample_size is not None and sample_size < 1:
            raise ValueError(f"sample_size must be >= 1 or None (no subsampling), got {sample_size}")
        if seeds_per_round < 1:
            raise ValueError(f"seeds_per_round must be >= 1, got {seeds_per_round}")
        self.bandwidth, self.min_size = bandwidth, min_size
        self.sample_size, self.seeds_per_round, self.random_state = sample_size, seeds_per_round, random_state

    def propose(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_index, x, image_size = foreground_embeddings(outputs)
        generator = random_generator(self.random_state)
        seediness = pixel_values(outputs, "seediness", pixel_index)
        priority = seediness if seediness is not None else torch.rand(len(x), generator=generator)
        x_sq = x.pow(2).sum(1)
        radius_sq = self.bandwidth**2

        assignment = torch.full((len(x),), -1, dtype=torch.long)
        centres = x.new_zeros((0, x.shape[1]))
        seed_scores = []
        while len(centres) < MAX_INSTANCES:
            pool = torch.nonzero(assignment < 0).squeeze(1)
            if len(pool) < max(1, self.min_size):
                break
            sample = pool[subsample(len(pool), self.sample_size, generator)]
            new_centres, new_seeds = self._find_modes(x[sample], x_sq[sample], priority[sample], centres)
            if len(new_centres) == 0:
                break
            # Cut out: every unassigned pixel within the bandwidth of a new centre; where balls overlap
            # the centre found first takes it, as when the clusters are cut out one after the other.
            within = squared_distances(x[pool], new_centres, x_sq[pool]) < radius_sq  # [P, K]
            first = torch.where(within, torch.arange(len(new_centres)), len(new_centres)).min(1).values
            taken = first < len(new_centres)
            assignment[pool[taken]] = first[taken] + len(centres)
            centres = torch.cat([centres, new_centres])
            seed_scores.append(priority[sample[new_seeds]] if seediness is not None else torch.ones(len(new_seeds)))

        if len(centres) == 0:
            return no_masks(image_size)
        masks, kept = masks_from_assignment(assignment, pixel_index, len(centres), image_size, self.min_size)
        return masks, torch.cat(seed_scores)[kept]

    def _find_modes(self, xs: torch.Tensor, xs_sq: torch.Tensor, priority: torch.Tensor,
                    known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Converged centres [K, D] new with respect to `known`, and their seeds (indices into xs)."""
        radius_sq = self.bandwidth**2
        remaining = torch.ones(len(xs), dtype=torch.bool)
        accepted, accepted_seeds = [known], []
        budget = MAX_INSTANCES - len(known)
        while remaining.any() and budget > 0:
            seeds = self._pick_seeds(xs, xs_sq, priority, remaining)
            modes = self._shift(xs[remaining], xs_sq[remaining], xs[seeds])
            # Accept in priority order; a mode within the bandwidth of an accepted one is a duplicate.
            near_known = (squared_distances(modes, torch.cat(accepted)) < radius_sq).any(1).tolist()
            near_each_other = (squared_distances(modes, modes) < radius_sq).numpy()
            fresh = []
            for i in range(len(seeds)):  # at most seeds_per_round steps over precomputed rows
                if not near_known[i] and not near_each_other[i, fresh].any() and len(fresh) < budget:
                    fresh.append(i)
            remaining[seeds] = False  # seeds are used up even when dropped, so every round progresses
            if fresh:
                new = modes[fresh]
                remaining &= squared_distances(xs, new, xs_sq).min(1).values >= radius_sq
                accepted.append(new)
                accepted_seeds.append(seeds[fresh])
                budget -= len(fresh)
        if not accepted_seeds:
            return xs.new_zeros((0, xs.shape[1])), torch.zeros(0, dtype=torch.long)
        return torch.cat(accepted[1:]), torch.cat(accepted_seeds)

    def _pick_seeds(self, xs, xs_sq, priority, remaining) -> torch.Tensor:
        """Up to seeds_per_round remaining points, by priority, each farther than bandwidth from the others."""
        eligible = remaining.clone()
        lowest = torch.tensor(float("-inf"))
        seeds = []
        while len(seeds) < self.seeds_per_round and eligible.any():
            j = int(torch.argmax(torch.where(eligible, priority, lowest)))
            seeds.append(j)
            d2 = squared_distances(xs, xs[j:j + 1], xs_sq)[:, 0]
            eligible &= d2 >= self.bandwidth**2
            eligible[j] = False
        return torch.as_tensor(seeds, dtype=torch.long)

    def _shift(self, xr: torch.Tensor, xr_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Flat-kernel mean shift of all `centres` [B, D] at once over the points xr [R, D]."""
        for _ in range(MAX_ITER):
            within = (squared_distances(xr, centres, xr_sq) < self.bandwidth**2).float()  # [R, B]
            counts = within.sum(0)
            means = (within.T @ xr) / counts.clamp_min(1)[:, None]
            new = torch.where(counts[:, None] > 0, means, centres)  # an empty window keeps its centre
            moved = (new - centres).norm(dim=1).max()
            centres = new
            if moved < TOL:
                break
        return centres
