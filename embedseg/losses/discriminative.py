"""Discriminative loss of De Brabandere, Neven and Van Gool (CVPRW 2017), vectorised."""
from __future__ import annotations

import torch
from torch import nn

from embedseg.losses.base import LOSSES, InstanceIndex, mean_over_images, safe_norm


@LOSSES.register("discriminative")
class DiscriminativeLoss(nn.Module):
    """Pull pixels to their instance mean, push instance means apart, keep means near the origin.

    Per image (background id 0 forms no cluster, ids < 0 are ignored):
        var  = mean_c mean_{i in c} max(0, ||mu_c - x_i|| - delta_v)^2
        dist = mean_{cA != cB} max(0, 2 delta_d - ||mu_cA - mu_cB||)^2     (0 with one instance)
        reg  = mean_c ||mu_c||
    Each term is averaged over the images holding at least one instance;
    loss = alpha * var + beta * dist + gamma * reg.

    All instances of the batch are handled at once with index_add/bincount; the push term looks
    at the pairs inside each image only: memory O(P*D + sum_b K_b^2 * D) for P labelled pixels.
    """

    def __init__(self, delta_v: float = 0.5, delta_d: float = 1.5, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 0.001):
        super().__init__()
        if delta_v < 0 or delta_d <= 0:
            raise ValueError(f"need delta_v >= 0 and delta_d > 0, got delta_v={delta_v}, delta_d={delta_d}")
        self.delta_v, self.delta_d = delta_v, delta_d
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def forward(self, embedding: torch.Tensor, instances: torch.Tensor) -> dict[str, torch.Tensor]:
        if embedding.dim() != 4 or embedding.shape[0:1] + embedding.shape[2:] != instances.shape:
            raise ValueError(
                f"embedding [B,D,H,W] and instances [B,H,W] must agree, got {tuple(embedding.shape)} "
                f"and {tuple(instances.shape)}"
            )
        index = InstanceIndex.build(instances)
        x = index.pixel_embeddings(embedding)  # [P, D]
        mu = index.cluster_means(x)  # [K, D]

        # Pull: hinged distance of each pixel to its mean, averaged per instance, then per image.
        pull = (safe_norm(mu[index.pixel_cluster] - x) - self.delta_v).clamp_min(0).pow(2)
        pull_per_cluster = mu.new_zeros(index.num_clusters).index_add_(0, index.pixel_cluster, pull)
        pull_per_cluster = pull_per_cluster / index.cluster_size
        var_img, has = index.per_image_mean(pull_per_cluster)

        # Push: ordered pairs of different instances inside the same image.
        same_image = index.cluster_image[:, None] == index.cluster_image[None, :]
        a, b = torch.nonzero(same_image & ~torch.eye(index.num_clusters, dtype=torch.bool, device=mu.device)).T
        push = (2 * self.delta_d - safe_norm(mu[a] - mu[b])).clamp_min(0).pow(2)
        pair_image = index.cluster_image[a]
        pair_count = torch.bincount(pair_image, minlength=index.num_images)
        dist_img = mu.new_zeros(index.num_images).index_add_(0, pair_image, push) / pair_count.clamp_min(1)

        reg_img, _ = index.per_image_mean(safe_norm(mu))

        var = mean_over_images(var_img, has, embedding)
        dist = mean_over_images(dist_img, has, embedding)
        reg = mean_over_images(reg_img, has, embedding)
        loss = self.alpha * var + self.beta * dist + self.gamma * reg
        return {"loss": loss, "var": var, "dist": dist, "reg": reg}

    def compute(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        return self(outputs["embedding"], batch["instances"])
