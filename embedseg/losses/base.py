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
        # Index [B, D, H*W] directly: no transposed copy of the whole map (about 2x faster
        # forward + backward than permute + reshape + index at 4x64x256x256).
        n = embedding.shape[2] * embedding.shape[3]
        return embedding.flatten(2)[self.pixel_flat // n, :, self.pixel_flat % n]

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


# sample_pixels sorts int64 keys (group << _RANDOM_BITS) | random: groups numbered below 2**_GROUP_BITS.
_RANDOM_BITS, _GROUP_BITS = 40, 22


@dataclass
class PixelSample:
    """Pixels drawn per group (each instance; the background too when asked), packed per image.

    index[B, M]: flat pixel index inside its image (0 in padding slots); valid[B, M]: slot holds a
    pixel; group[B, M]: batch-wide group number (-1 in padding); ids[B, M]: the pixel's id
    (0 = background); group_count[G]: how many pixels of each group were drawn.
    """

    index: torch.Tensor
    valid: torch.Tensor
    group: torch.Tensor
    ids: torch.Tensor
    group_count: torch.Tensor

    def sampled_count(self) -> torch.Tensor:
        """[B, M] number of drawn pixels of each slot's group (1 in padding, never 0)."""
        return torch.where(self.valid, self.group_count[self.group.clamp_min(0)], 1)


def sample_pixels(instances: torch.Tensor, per_group: int, max_per_image: int,
                  include_background: bool = True) -> PixelSample:
    """Draw up to `per_group` pixels of every group of every image, at most `max_per_image` per image.

    Groups are the instances (id > 0) and, with `include_background`, the background (id 0);
    ids < 0 are never drawn. Within a group the pixels are drawn uniformly without replacement
    (random keys from torch's global RNG), so a group smaller than `per_group` gives all of its
    pixels. When an image's groups hold more than `max_per_image` drawn pixels,
    they are kept round-robin: every group's first pixel (groups in random order), then every
    group's second, ...; so each group keeps floor or ceil of max_per_image / groups pixels and
    tiny objects are never squeezed out by large ones (with more groups than the budget, a random
    subset of groups keeps one pixel each).

    Which pixels are drawn depends only on the random keys, never on the id values, so any
    relabelling of the ids draws the same pixels. Cost: one sort of the P labelled pixels and one
    of the at most G * per_group kept ones (int64 keys: group in the high bits, 40 random bits in
    the low ones), O(P log P) time and O(P) memory; the result is O(B * max_per_image).
    """
    if per_group < 1 or max_per_image < 1:
        raise ValueError(f"need per_group >= 1 and max_per_image >= 1, got {per_group} and {max_per_image}")
    b, h, w = instances.shape
    n, device = h * w, instances.device
    flat = instances.reshape(-1).long()
    pix = torch.nonzero(flat >= 0 if include_background else flat > 0).squeeze(1)
    image, ids = pix // n, flat[pix]
    key = image * (int(ids.max().item()) + 1 if len(pix) else 1) + ids  # one key per (image, id), image-major
    if len(pix) and int(key.max().item()) >= 2**_GROUP_BITS:  # huge ids: renumber the groups 0..G-1 first
        key = torch.unique(key, return_inverse=True)[1]
    random_bits = torch.randint(0, 2**_RANDOM_BITS, (len(pix),), device=device)
    # Sorting (group, random) puts each group's pixels together in random order: rank = position in group.
    order = torch.argsort((key << _RANDOM_BITS) | random_bits)
    pix, image, ids, random_bits = pix[order], image[order], ids[order], random_bits[order]
    _, group, counts = torch.unique_consecutive(key[order], return_inverse=True, return_counts=True)
    rank = torch.arange(len(pix), device=device) - (counts.cumsum(0) - counts)[group]
    # A rank >= max_per_image can never make the budget (its group alone fills it first).
    cap = min(per_group, max_per_image)
    if b * (cap + 1) >= 2 ** (63 - _RANDOM_BITS):
        raise ValueError(f"sample_pixels: batch {b} x min(per_group, max_per_image) = {cap} is too large")
    keep = rank < cap
    pix, image, ids, group, rank, random_bits = (t[keep] for t in (pix, image, ids, group, rank, random_bits))
    # Round-robin budget per image: order by (image, rank, random), keep the first max_per_image.
    order = torch.argsort(((image * (cap + 1) + rank) << _RANDOM_BITS) | random_bits)
    pix, image, ids, group = pix[order], image[order], ids[order], group[order]
    per_image = torch.bincount(image, minlength=b)
    slot = torch.arange(len(pix), device=device) - (per_image.cumsum(0) - per_image)[image]
    keep = slot < max_per_image
    pix, image, ids, group, slot = pix[keep], image[keep], ids[keep], group[keep], slot[keep]
    m = int(min(max_per_image, per_image.max().item())) if b else 0
    index = torch.zeros(b, m, dtype=torch.long, device=device)
    valid = torch.zeros(b, m, dtype=torch.bool, device=device)
    group_slots = torch.full((b, m), -1, dtype=torch.long, device=device)
    id_slots = torch.zeros(b, m, dtype=torch.long, device=device)
    index[image, slot], valid[image, slot] = pix - image * n, True
    group_slots[image, slot], id_slots[image, slot] = group, ids
    return PixelSample(index, valid, group_slots, id_slots, torch.bincount(group, minlength=len(counts)))


def gather_pixels(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, C, H, W], index [B, M] flat pixel indices -> [B, M, C] (no copy of the whole map)."""
    b, c = values.shape[:2]
    return torch.gather(values.flatten(2), 2, index.unsqueeze(1).expand(b, c, -1)).transpose(1, 2)


def pairwise_sq_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, M, D] x [B, N, D] -> [B, M, N] squared Euclidean distances, >= 0.

    Expanded as |a|^2 + |b|^2 - 2 a.b (memory B*M*N, not B*M*N*D); both sets are shifted by the
    mean of `a` first, which leaves distances unchanged and limits the cancellation error.
    """
    centre = a.mean(1, keepdim=True)
    a, b = a - centre, b - centre
    sq = a.pow(2).sum(-1).unsqueeze(2) + b.pow(2).sum(-1).unsqueeze(1) - 2 * torch.bmm(a, b.transpose(1, 2))
    return sq.clamp_min(0)
