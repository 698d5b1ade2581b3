"""Per-pixel class loss for the semantic head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedseg.losses.base import compact_ids
from embedseg.losses.registry import LOSSES


def gap_pixels(instances: torch.Tensor, width: int) -> torch.Tensor:
    """[B, H, W] bool: background pixels with two different instances within `width` px (a square window).

    The window test stands in for U-Net's d1 + d2 distance map (Ronneberger et al. 2015): it marks
    the thin background between touching objects, found with two max-pools instead of distance
    transforms.
    """
    if instances.numel() and int(instances.max()) >= 2**24:  # float32 holds integers exactly up to 2^24
        instances = compact_ids(instances)
    ids = instances.float().unsqueeze(1)
    positive = torch.where(ids > 0, ids, torch.full_like(ids, float("inf")))
    window = {"kernel_size": 2 * width + 1, "stride": 1, "padding": width}
    largest = F.max_pool2d(ids.clamp_min(0), **window)
    smallest = -F.max_pool2d(-positive, **window)
    return ((ids == 0) & (largest > 0) & (smallest < largest)).squeeze(1)


@LOSSES.register("cross_entropy")
class SemanticCrossEntropy(nn.Module):
    """Cross-entropy of the C+1 class logits (0 = background); pixels with class < 0 are ignored.

    `class_weights` (C+1 values) rebalances rare classes against the background. `gap_weight` > 0
    weighs the background pixels between touching instances (`gap_pixels` with `gap_width`)
    1 + gap_weight times: a foreground that bleeds over those few pixels merges the objects
    for every grouper, so they are worth more than their count.
    """

    inputs = ("outputs.semantic", "batch.semantic", "batch.instances")

    def __init__(self, class_weights: list[float] | None = None, gap_weight: float = 0.0, gap_width: int = 2):
        super().__init__()
        if gap_weight < 0 or gap_width < 1:
            raise ValueError(f"need gap_weight >= 0 and gap_width >= 1, got {gap_weight}, {gap_width}")
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)
        self.gap_weight, self.gap_width = gap_weight, gap_width

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                instances: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        valid = target >= 0
        if not valid.any():
            return {"loss": logits.sum() * 0.0}
        per_pixel = F.cross_entropy(logits, target.clamp_min(-1), ignore_index=-1, reduction="none")
        # Weighted mean as F.cross_entropy's: divided by the summed weights of the counted pixels.
        weight = valid.to(per_pixel.dtype)
        if self.weight is not None:
            weight = weight * self.weight[target.clamp_min(0)]
        if self.gap_weight > 0 and instances is not None:
            weight = weight * (1 + self.gap_weight * gap_pixels(instances, self.gap_width))
        return {"loss": (weight * per_pixel).sum() / weight.sum()}
