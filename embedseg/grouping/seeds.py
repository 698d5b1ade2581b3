"""Seed sampling and mask growing of Fathi et al. 2017 ("Semantic Instance Segmentation via Deep Metric Learning")."""
from __future__ import annotations

import torch

from embedseg.grouping.base import (GROUPERS, foreground_embeddings, instances_from_masks, mask_nms, pixel_values,
                                    random_generator, split_disconnected, squared_distances, subsample)
from embedseg.losses.metric import pair_similarity
from embedseg.structures import Instances


@GROUPERS.register("seeds")
class SeedsGrouper:
    """Greedy seeds, one mask per seed and threshold, duplicates suppressed.

    1. Seeds: the candidate of highest seediness first; then, again and again, the candidate
       maximising seediness(p) * (min distance in embedding space from p to the seeds taken)**power,
       up to `max_seeds`. Candidates are at most `num_candidates` foreground pixels drawn with
       `random_state` (all of them in smaller images). The choice stops early when no candidate
       with seediness >= `min_seediness` is left; with `exclude_covered`, a candidate already
       inside a taken seed's mask (similarity above the largest tau) is no longer a candidate,
       since its mask would repeat that seed's.
    2. Masks: for each seed and each tau in `tau`, the foreground pixels p with
       sigma(seed, p) = 2 / (1 + exp(||e_seed - e_p||^2)) > tau (the pixel-pair similarity of the
       metric loss); masks smaller than `min_size` pixels are dropped.
    3. Score = seediness of the seed (1 without a seediness map) x class confidence; a mask whose
       IoU with a better-scored kept mask exceeds `iou_threshold` is dropped (the masks of one
       seed at several taus score the same; the smallest tau, i.e. the largest mask, comes first).
       With `split_disconnected`, each 4-connected part of a mask is a mask of its own before this
       suppression (far-apart look-alikes share an embedding when the image holds hundreds of objects).
    """

    def __init__(self, tau: float | list[float] = 0.5, max_seeds: int = 100, power: float = 1.0,
                 min_seediness: float = 0.1, iou_threshold: float = 0.5, min_size: int = 20,
                 num_candidates: int | None = 4096, exclude_covered: bool = True, split_disconnected: bool = False,
                 random_state: int = 0):
        taus = [tau] if isinstance(tau, (int, float)) else list(tau)
        if not taus or not all(0.0 < t < 1.0 for t in taus):
            raise ValueError(f"tau must be a similarity in (0, 1) or a non-empty list of them, got {tau!r}")
        if max_seeds < 1:
            raise ValueError(f"max_seeds must be >= 1, got {max_seeds}")
        if power < 0:
            raise ValueError(f"power must be >= 0, got {power}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if num_candidates is not None and num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1 or None (every foreground pixel), got {num_candidates}")
        self.taus = sorted(taus)
        self.max_seeds, self.power, self.min_seediness = max_seeds, power, min_seediness
        self.iou_threshold, self.min_size, self.num_candidates = iou_threshold, min_size, num_candidates
        self.exclude_covered, self.split_disconnected = exclude_covered, split_disconnected
        self.random_state = random_state

    def __call__(self, outputs: dict) -> Instances:
        pixel_index, x, (h, w) = foreground_embeddings(outputs)
        if len(x) == 0:
            return Instances.empty(h, w)
        seediness = pixel_values(outputs, "seediness", pixel_index)
        seediness = torch.ones(len(x)) if seediness is None else seediness

        candidates = subsample(len(x), self.num_candidates, random_generator(self.random_state))
        seeds = candidates[self._choose_seeds(x[candidates], seediness[candidates])]
        if len(seeds) == 0:
            return Instances.empty(h, w)

        similarity = pair_similarity(squared_distances(x[seeds], x).T)  # [N, K] -> [K, N] below
        masks_fg = torch.cat([(similarity > t).T for t in self.taus])  # [T*K, N]: all seeds at tau 1, then tau 2, ...
        seed_scores = seediness[seeds].repeat(len(self.taus))
        big = masks_fg.sum(1) >= max(1, self.min_size)
        masks_fg, seed_scores = masks_fg[big], seed_scores[big]
        if len(masks_fg) == 0:
            return Instances.empty(h, w)

        masks = torch.zeros(len(masks_fg), h * w, dtype=torch.bool)
        masks[:, pixel_index] = masks_fg
        masks = masks.view(-1, h, w)
        if self.split_disconnected:
            masks, seed_scores = split_disconnected(masks, seed_scores, self.min_size)
            masks_fg = masks.flatten(1)[:, pixel_index]
        instances = instances_from_masks(masks, seed_scores, outputs)
        keep = mask_nms(masks_fg, torch.from_numpy(instances.scores), self.iou_threshold)
        return instances.select(keep.numpy())

    def _choose_seeds(self, xc: torch.Tensor, seediness: torch.Tensor) -> torch.Tensor:
        """Indices into the candidates xc [C, D] of the greedily chosen seeds, in order."""
        xc_sq = xc.pow(2).sum(1)
        eligible = seediness >= self.min_seediness
        min_sq_distance = torch.full((len(xc),), float("inf"))
        covered_similarity = self.taus[-1]  # the largest tau gives the tightest mask
        seeds = []
        while len(seeds) < self.max_seeds and eligible.any():
            gain = seediness if not seeds else seediness * min_sq_distance.pow(self.power / 2)  # d**power
            gain = torch.where(eligible, gain, torch.tensor(-1.0))
            j = int(torch.argmax(gain))
            if seeds and gain[j] <= 0:  # every candidate left sits on a seed already
                break
            seeds.append(j)
            d2 = (xc_sq - 2.0 * (xc @ xc[j]) + xc_sq[j]).clamp_min_(0)
            min_sq_distance = torch.minimum(min_sq_distance, d2)
            eligible[j] = False
            if self.exclude_covered:
                eligible &= pair_similarity(d2) <= covered_similarity
        return torch.as_tensor(seeds, dtype=torch.long)
