"""Seed sampling and mask growing of Fathi et al. 2017 ("Semantic Instance Segmentation via Deep Metric Learning")."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from embedseg.distances import squared_distances
from embedseg.grouping.base import (
    MIN_SIZES,
    Grouper,
    foreground_embeddings,
    no_masks,
    pixel_values,
    random_generator,
    subsample,
)
from embedseg.grouping.registry import GROUPERS
from embedseg.losses.metric import pair_similarity
from embedseg.structures import Instances


@GROUPERS.register("seeds")
class SeedsGrouper(Grouper):
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
       metric loss); masks smaller than `min_size` pixels are dropped. Proposal score = seediness
       of the seed (1 without a seediness map).
    3. Duplicates (`select`, after the post-processing chain and the class confidence): a mask whose
       IoU with a better-scored kept mask exceeds `iou_threshold` is dropped. The masks of one seed
       at several taus score the same, and the smallest tau (the largest mask) comes first. This
       runs last so that it also removes the repeats the chain makes: `split_disconnected` can cut
       a loose mask into parts that repeat a tighter mask of the same seed.
    """

    search_space: ClassVar[dict[str, list]] = {"tau": [0.3, 0.5, 0.7], "min_seediness": [0.05, 0.1, 0.2, 0.3], "iou_threshold": [0.3, 0.5, 0.7],
                    "min_size": MIN_SIZES}

    def __init__(self, tau: float | list[float] = 0.5, max_seeds: int = 100, power: float = 1.0,
                 min_seediness: float = 0.1, iou_threshold: float = 0.5, min_size: int = 20,
                 num_candidates: int | None = 4096, exclude_covered: bool = True, random_state: int = 0,
                 postprocess: list[str | dict] | None = None):
        super().__init__(postprocess)
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
        self.exclude_covered, self.random_state = exclude_covered, random_state

    def propose(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_index, x, (h, w) = foreground_embeddings(outputs)
        if len(x) == 0:
            return no_masks((h, w))
        seediness = pixel_values(outputs, "seediness", pixel_index)
        seediness = torch.ones(len(x)) if seediness is None else seediness

        candidates = subsample(len(x), self.num_candidates, random_generator(self.random_state))
        seeds = candidates[self._choose_seeds(x[candidates], seediness[candidates])]
        if len(seeds) == 0:
            return no_masks((h, w))

        similarity = pair_similarity(squared_distances(x[seeds], x).T)  # [N, K] -> [K, N] below
        masks_fg = torch.cat([(similarity > t).T for t in self.taus])  # [T*K, N]: all seeds at tau 1, then tau 2, ...
        seed_scores = seediness[seeds].repeat(len(self.taus))
        big = masks_fg.sum(1) >= max(1, self.min_size)
        masks = torch.zeros(int(big.sum()), h * w, dtype=torch.bool)
        masks[:, pixel_index] = masks_fg[big]
        return masks.view(-1, h, w), seed_scores[big]

    def select(self, instances: Instances) -> Instances:
        """The instances that survive non-maximum suppression at `iou_threshold`, best score first."""
        keep = mask_nms(torch.from_numpy(instances.masks).flatten(1), torch.from_numpy(instances.scores),
                        self.iou_threshold)
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
            d2 = squared_distances(xc, xc[j:j + 1], xc_sq)[:, 0]
            min_sq_distance = torch.minimum(min_sq_distance, d2)
            eligible[j] = False
            if self.exclude_covered:
                eligible &= pair_similarity(d2) <= covered_similarity
        return torch.as_tensor(seeds, dtype=torch.long)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [K, M] of boolean masks a [K, P] and b [M, P] (any pixel layout), by one matrix product."""
    same = b is a
    a = a.float()
    b = a if same else b.float()
    intersection = a @ b.T
    area_a = a.sum(1)
    area_b = area_a if same else b.sum(1)
    union = area_a[:, None] + area_b[None] - intersection
    return intersection / union.clamp_min(1)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (best score first) of the masks [K, P] kept by greedy non-maximum suppression.

    A mask is dropped when its IoU with a better-scored kept mask exceeds `iou_threshold`; ties in
    score keep the earlier mask. The IoUs are taken over the pixels some mask covers only.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    ordered = masks[order]
    ordered = ordered[:, ordered.any(0)]
    overlaps = (mask_iou(ordered, ordered) > iou_threshold).numpy()
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):  # sequential by nature, but only K steps over precomputed rows
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[torch.as_tensor(keep, dtype=torch.long)]
