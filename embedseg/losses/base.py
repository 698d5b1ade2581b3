"""Loss registry and the shared per-instance statistics of a batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from embedseg.registry import Registry

LOSSES = Registry("loss")


def safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean norm whose gradient is 0 (not NaN) at the origin."""
    return x.pow(2).sum(dim).clamp_min(1e-12).sqrt()


@dataclass
class InstanceIndex:
    """Every labelled pixel of a batch tied to a batch-wide cluster index (vectorised bookkeeping).

    pixel_cluster[P]: cluster of each instance pixel; pixel_flat[P]: its index in the flattened
    [B*H*W] batch; cluster_image[K]: image of each cluster; cluster_size[K]: its pixel count;
    num_images: B. Clusters are numbered image by image in increasing id order, so any relabelling
    of the ids of one image permutes clusters within that image and changes no loss value.
    """

    pixel_cluster: torch.Tensor
    pixel_flat: torch.Tensor
    cluster_image: torch.Tensor
    cluster_size: torch.Tensor
    num_images: int

    @property
    def num_clusters(self) -> int:
        return len(self.cluster_image)

    @classmethod
    def build(cls, instances: torch.Tensor) -> "InstanceIndex":
        if instances.dim() != 3:
            raise ValueError(f"instances must be [B, H, W], got shape {tuple(instances.shape)}")
        b, h, w = instances.shape
        flat = instances.reshape(-1).long()
        pixel_flat = torch.nonzero(flat > 0).squeeze(1)
        image = pixel_flat // (h * w)
        # One key per (image, id); unique() numbers them consecutively, image-major.
        key = image * (int(flat.max().item()) + 1) + flat[pixel_flat] if len(pixel_flat) else image
        keys, pixel_cluster, sizes = torch.unique(key, return_inverse=True, return_counts=True)
        cluster_image = torch.zeros(len(keys), dtype=torch.long, device=instances.device)
        cluster_image[pixel_cluster] = image
        return cls(pixel_cluster, pixel_flat, cluster_image, sizes, b)

    def pixel_embeddings(self, embedding: torch.Tensor) -> torch.Tensor:
        """[P, D] embeddings of the instance pixels."""
        d = embedding.shape[1]
        return embedding.permute(0, 2, 3, 1).reshape(-1, d)[self.pixel_flat]

    def cluster_means(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[K, D] mean of the pixel values of each cluster (index_add, no loop)."""
        sums = pixel_values.new_zeros(self.num_clusters, pixel_values.shape[1])
        sums.index_add_(0, self.pixel_cluster, pixel_values)
        return sums / self.cluster_size.unsqueeze(1).to(pixel_values.dtype)

    def per_image_mean(self, cluster_values: torch.Tensor):
        """Mean over the clusters of each image -> ([B] values, [B] bool: image has clusters)."""
        counts = torch.bincount(self.cluster_image, minlength=self.num_images)
        sums = cluster_values.new_zeros(self.num_images).index_add_(0, self.cluster_image, cluster_values)
        return sums / counts.clamp_min(1), counts > 0


def mean_over_images(per_image: torch.Tensor, has_instances: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Average of a per-image term over the images that hold at least one instance.

    With no such image the result is a zero that still depends on `anchor`, so backward() works.
    """
    if has_instances.any():
        return per_image[has_instances].mean()
    return anchor.sum() * 0.0
