"""Statistics of a batch's instances shared by the losses: per-image clusters, pixel samples, distances."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean norm whose gradient is 0 (not NaN) at the origin."""
    return x.pow(2).sum(dim).clamp_min(1e-12).sqrt()


def preceding_sum(x: torch.Tensor) -> torch.Tensor:
    """Each entry's sum of the entries before it (of group sizes: where each group starts when sorted)."""
    return x.cumsum(0) - x


def compact_ids(instances: torch.Tensor) -> torch.Tensor:
    """The positive ids renumbered 1..K in increasing order (over the whole tensor); 0 and ids < 0 kept."""
    positive = instances > 0
    present = torch.unique(instances[positive])  # sorted
    return torch.where(positive, torch.searchsorted(present, instances) + 1, instances)


@dataclass
class ImageClusters:
    """The instances of each image of a batch numbered 0..K_b-1, and their pixels gathered.

    pixel[P]: flat index into the [B * H * W] batch of every pixel of an instance (background and
    ignored pixels take no part); slot[P]: that pixel's cluster as b * K + k, with K = max_clusters;
    size[B, K]: pixels per cluster (0 in the slots beyond an image's K_b); num_clusters[B]: K_b.
    Clusters are numbered in increasing id order, so relabelling the ids of an image permutes its
    clusters and changes no loss value. `build` scans the map once; the losses' per-pixel work is on
    the labelled pixels only.
    """

    pixel: torch.Tensor
    slot: torch.Tensor
    size: torch.Tensor
    num_clusters: torch.Tensor

    @property
    def max_clusters(self) -> int:
        return self.size.shape[1]

    @property
    def valid(self) -> torch.Tensor:
        """[B, max_clusters] bool: the slot holds a cluster of that image."""
        return torch.arange(self.max_clusters, device=self.size.device) < self.num_clusters[:, None]

    @classmethod
    def build(cls, instances: torch.Tensor) -> ImageClusters:
        if instances.dim() != 3:
            raise ValueError(f"instances must be [B, H, W], got shape {tuple(instances.shape)}")
        ids = instances.reshape(len(instances), -1).long()
        foreground = ids > 0
        ids = torch.where(foreground, ids, 0)
        if foreground.any() and int(ids.max()) >= 2**20:  # huge ids: renumber them compactly first
            ids = compact_ids(ids)
        # Which ids occur in each image, then each id's rank among them: O(B * max id), no sort.
        present = torch.zeros(len(ids), int(ids.max()) + 1 if ids.numel() else 1, dtype=torch.bool,
                              device=ids.device).scatter_(1, ids, True)
        present[:, 0] = False
        num_clusters = present.sum(1)
        k = int(num_clusters.max()) if len(ids) else 0
        rank = present.long().cumsum(1) - 1
        pixel = torch.nonzero(foreground.flatten()).squeeze(1)
        image = pixel // ids.shape[1]
        slot = image * k + rank.flatten()[image * rank.shape[1] + ids.flatten()[pixel]]
        size = torch.bincount(slot, minlength=len(ids) * k).view(len(ids), k)
        return cls(pixel, slot, size, num_clusters)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """values [B, D, H, W] -> [P, D] at the instance pixels."""
        n = values.shape[2] * values.shape[3]
        return values.flatten(2)[self.pixel // n, :, self.pixel % n]

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """values [P] or [P, D] at the instance pixels -> [B, K] or [B, K, D] per-cluster sums."""
        out = values.new_zeros((self.size.numel(), *values.shape[1:])).index_add_(0, self.slot, values)
        return out.view(*self.size.shape, *values.shape[1:])

    def means(self, values: torch.Tensor) -> torch.Tensor:
        """values [P] or [P, D] at the instance pixels -> [B, K] or [B, K, D] per-cluster means."""
        size = self.size.clamp_min(1).to(values.dtype)
        return self.sums(values) / (size if values.dim() == 1 else size.unsqueeze(2))

    def at_pixels(self, table: torch.Tensor) -> torch.Tensor:
        """table [B, K, ...] per cluster -> [P, ...]: each instance pixel's cluster entry."""
        return table.flatten(0, 1)[self.slot]


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
    rank = torch.arange(len(pix), device=device) - preceding_sum(counts)[group]
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
    slot = torch.arange(len(pix), device=device) - preceding_sum(per_image)[image]
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
