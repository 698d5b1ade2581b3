"""Seediness regression: how good a seed each pixel is for grouping its instance."""
from __future__ import annotations

import torch
from torch import nn

from embedseg.losses.base import LOSSES, InstanceIndex


@LOSSES.register("seed_distance")
class SeedDistanceLoss(nn.Module):
    """Regress seediness to exp(-||x_i - mu_c||^2 / (2 sigma^2)) on instance pixels, 0 on background.

    A pixel whose embedding sits at its instance's mean is the ideal mean-shift seed. The target
    is computed from detached embeddings so this term trains the seediness head only.
    Squared error, averaged separately over foreground and background pixels and then summed,
    so small objects are not drowned by background.
    """

    def __init__(self, sigma: float = 0.5):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = sigma

    def targets(self, embedding: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        index = InstanceIndex.build(instances)
        x = index.pixel_embeddings(embedding.detach())
        mu = index.cluster_means(x)
        sq = (x - mu[index.pixel_cluster]).pow(2).sum(1)
        target = torch.zeros(instances.numel(), dtype=embedding.dtype, device=embedding.device)
        target[index.pixel_flat] = torch.exp(-sq / (2 * self.sigma**2))
        return target.view_as(instances)

    def forward(self, seediness: torch.Tensor, embedding: torch.Tensor, instances: torch.Tensor):
        seediness = seediness.squeeze(1)
        target = self.targets(embedding, instances)
        err = (seediness - target).pow(2)
        fg, bg = instances > 0, instances == 0
        loss = seediness.sum() * 0.0
        if fg.any():
            loss = loss + err[fg].mean()
        if bg.any():
            loss = loss + err[bg].mean()
        return {"loss": loss}

    def compute(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        return self(outputs["seediness"], outputs["embedding"], batch["instances"])
