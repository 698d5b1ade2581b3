"""Spatial embeddings with learned margins (Neven, De Brabandere, Proesmans and Van Gool, CVPR 2019).

The network's embedding has 2 + n_sigma channels, read as:

    e[0:2]          the pixel's position in the image plus a learned offset towards its instance's
                    centre; the model adds the positions (`model.coord_scale` s > 0 makes channels 0, 1
                    equal s * (y, x) + offset, embedseg.models.deeplab), so e is in units of 1/s pixels
    e[2:2+n_sigma]  the raw margin: each instance k gets sigma_k = mean of it over k's pixels, one
                    value (isotropic) or one per axis

Instance k's Gaussian kernel gathers a soft mask over all the pixels j of its image:

    phi_k(j) = exp(-sum_d exp(sigma_k,d) * (e_j,d - c_k,d)^2)

with the centre c_k the mean of e over k's pixels ("mean", as the paper) or the position s * (y, x)
of k's medoid pixel ("medoid", as EmbedSeg; here the pixel with the least L1 distance to the
instance's other pixels, so the centre always lies on the object). The loss per image is

    instance = mean_k lovasz_hinge(2 phi_k - 1, mask_k)        (Berman et al. 2018, over the image)
    smooth   = mean_k mean_{i in k} mean_d (sigma_i,d - sigma_k,d)^2     (sigma_k held fixed)
    seed     = (foreground_weight * sum_{i in an instance} (seed_i - phi_k(i))^2 + sum_{background} seed_i^2)
               / number of labelled pixels                   (phi held fixed: it is the seed's target)

and loss = instance_weight * instance + smooth_weight * smooth + seed_weight * seed, the first two
averaged over the images holding an instance, the seed term over all images. Pixels with ids < 0
are ignored. The paper's margin is exp(10 sigma) with a head initialised to give narrow kernels;
here exp(sigma) with the default head, so the first kernels are about one unit wide, and s sets
how many pixels a unit is.

Vectorised over instances: the kernels of every instance of every image are first evaluated
without gradients ([B, K, H*W]); the pairs (instance, pixel) where phi_k >= kernel_floor or the
pixel is k's are kept, and the loss is computed on those alone. A dropped background pixel has
hinge error 2 phi < 2 kernel_floor; with kernel_floor 0 only kernel values below the dtype's
smallest normal number are dropped, and the result equals the per-instance Lovasz hinge over the
whole image (tests/test_spatial.py checks it against a loop).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from embedseg.losses.base import ImageClusters, mean_over_images, preceding_sum
from embedseg.losses.registry import LOSSES

CENTRES = ("mean", "medoid")


@LOSSES.register("spatial")
class SpatialEmbeddingLoss(nn.Module):
    """Offsets to the instance centre and a margin per instance, trained through the soft mask each
    instance's kernel gathers (see the module docstring). Reports instance, smooth and seed."""

    inputs = ("outputs.embedding", "outputs.seediness", "batch.instances")

    def __init__(self, n_sigma: int = 1, center: str = "mean", coord_scale: float | None = None,
                 instance_weight: float = 1.0, smooth_weight: float = 10.0, seed_weight: float = 1.0,
                 foreground_weight: float = 10.0, kernel_floor: float = 1e-3):
        super().__init__()
        if n_sigma not in (1, 2):
            raise ValueError(f"n_sigma must be 1 (isotropic margin) or 2 (one per axis), got {n_sigma}")
        if center not in CENTRES:
            raise ValueError(f"center must be one of {', '.join(CENTRES)}, got {center!r}")
        if center == "medoid" and not (coord_scale and coord_scale > 0):
            raise ValueError("center 'medoid' needs coord_scale > 0, the model's coord_scale (pixels -> units)")
        if not 0.0 <= kernel_floor < 0.5:
            raise ValueError(f"kernel_floor must be in [0, 0.5), got {kernel_floor}")
        self.n_sigma, self.center, self.coord_scale = n_sigma, center, coord_scale
        self.instance_weight, self.smooth_weight, self.seed_weight = instance_weight, smooth_weight, seed_weight
        self.foreground_weight, self.kernel_floor = foreground_weight, kernel_floor

    def forward(self, embedding: torch.Tensor, seediness: torch.Tensor, instances: torch.Tensor) -> dict:
        b, d, h, w = embedding.shape
        if d != 2 + self.n_sigma or instances.shape != (b, h, w):
            raise ValueError(f"spatial loss with n_sigma {self.n_sigma} needs embedding [B, {2 + self.n_sigma}, H, W] "
                             f"and instances [B, H, W], got {tuple(embedding.shape)} and {tuple(instances.shape)}")
        if embedding.dtype != torch.float64:  # float32 at least (a bf16 forward gives bf16 outputs)
            embedding, seediness = embedding.float(), seediness.float()
        clusters = ImageClusters.build(instances)
        has = clusters.num_clusters > 0
        positions = embedding[:, :2].flatten(2)  # [B, 2, N]
        sigma_pixels = clusters.gather(embedding[:, 2:])  # [P, n]
        sigma = clusters.means(sigma_pixels)  # [B, K, n]
        centres = self.centres(clusters, embedding, (h, w))  # [B, K, 2]

        smooth_pixels = (sigma_pixels - clusters.at_pixels(sigma).detach()).pow(2).mean(1)
        smooth_image = (clusters.means(smooth_pixels) * clusters.valid).sum(1) / clusters.num_clusters.clamp_min(1)

        pairs = kernel_pairs(positions.detach(), centres.detach(), sigma.detach(), clusters, instances,
                             self.kernel_floor)
        batch, k, pixel, inside = pairs
        kernel = torch.exp(-(sigma[batch, k].exp() * (positions[batch, :, pixel] - centres[batch, k]).pow(2)).sum(1))
        hinge = lovasz_hinge_rows(kernel, inside, batch * clusters.max_clusters + k, clusters.size.flatten())
        instance_image = (hinge.view_as(clusters.size) * clusters.valid).sum(1) / clusters.num_clusters.clamp_min(1)

        seed = self.seed_term(seediness.flatten(1), instances.flatten(1), pairs, kernel.detach())
        instance = mean_over_images(instance_image, has, embedding)
        smooth = mean_over_images(smooth_image, has, embedding)
        loss = self.instance_weight * instance + self.smooth_weight * smooth + self.seed_weight * seed
        return {"loss": loss, "instance": instance, "smooth": smooth, "seed": seed}

    def centres(self, clusters: ImageClusters, embedding: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[B, K, 2] centre of each instance, in embedding units."""
        if self.center == "mean":
            return clusters.means(clusters.gather(embedding[:, :2]))
        return l1_medoids(clusters, size).to(embedding.dtype) * self.coord_scale

    def seed_term(self, seed: torch.Tensor, ids: torch.Tensor, pairs: tuple, kernel: torch.Tensor) -> torch.Tensor:
        """Mean over images of the seed regression: an instance pixel's target is its own kernel's value."""
        batch, _, pixel, inside = pairs
        target = torch.zeros_like(seed)
        target[batch[inside], pixel[inside]] = kernel[inside]
        weight = torch.where(ids > 0, self.foreground_weight, 1.0) * (ids >= 0)
        per_image = (weight * (seed - target).pow(2)).sum(1) / (ids >= 0).sum(1).clamp_min(1)
        return per_image.mean()


def kernel_pairs(positions: torch.Tensor, centres: torch.Tensor, sigma: torch.Tensor, clusters: ImageClusters,
                 instances: torch.Tensor, floor: float) -> tuple[torch.Tensor, ...]:
    """The (image, instance, pixel) triples the loss needs, and whether the pixel is the instance's.

    positions [B, 2, N], centres [B, K, 2], sigma [B, K, n] (no gradients): every pixel of an
    instance with it, and every other labelled pixel whose kernel value reaches `floor` (> 0 with
    floor 0). Returns (batch, k, pixel, inside), each [M].
    """
    b, k = clusters.size.shape
    ids = instances.flatten(1)
    own = torch.full_like(ids, -1)
    own.view(-1)[clusters.pixel] = clusters.slot % max(k, 1)  # each instance pixel's k, -1 elsewhere
    # phi >= floor  <=>  sum_d s_d (e_d - c_d)^2 <= -log(floor)
    limit = -math.log(floor if floor > 0 else torch.finfo(positions.dtype).tiny)
    scale = sigma.exp().expand(b, k, 2)
    keep = []
    for image in range(b):  # one [K_b, N] table at a time bounds the memory
        k_b = int(clusters.num_clusters[image])
        e, c, s = positions[image], centres[image, :k_b], scale[image, :k_b]
        sq = (e[0] - c[:, :1]).square_().mul_(s[:, :1]) + (e[1] - c[:, 1:]).square_().mul_(s[:, 1:])
        near = (sq <= limit) & (ids[image] >= 0)
        near |= torch.arange(k_b, device=ids.device).unsqueeze(1) == own[image]
        keep.append(torch.nonzero(near))
    counts = torch.tensor([len(t) for t in keep], device=ids.device)
    batch = torch.repeat_interleave(torch.arange(b, device=ids.device), counts)
    kk, pixel = torch.cat(keep).unbind(1) if keep else (ids.new_zeros(0), ids.new_zeros(0))
    return batch, kk, pixel, own[batch, pixel] == kk


def lovasz_hinge_rows(kernel: torch.Tensor, inside: torch.Tensor, row: torch.Tensor, row_size: torch.Tensor
                      ) -> torch.Tensor:
    """Lovasz hinge of each row's soft mask (logits 2 kernel - 1) against its ground truth, all rows at once.

    kernel, inside, row: [M] entries, each in one row (0..R-1); row_size [R]: the number of `inside`
    entries of each row (its object's size; every object pixel must be an entry). Entries left out
    of a row count as background with error 0. Returns [R] (0 for empty rows).
    """
    errors = torch.where(inside, 2.0 - 2.0 * kernel, 2.0 * kernel)
    # Sort by row, then by decreasing error: the Lovasz extension weighs the sorted errors by the
    # increments of the Jaccard loss along that order.
    order = torch.argsort(row.double() * 4.0 + (2.0 - errors.detach().double()))
    errors, inside, row = errors[order], inside[order], row[order]
    counts = torch.bincount(row, minlength=len(row_size))
    first = preceding_sum(counts)[row]  # sorted position of the row's first entry
    positive = inside.to(errors.dtype)
    hits = positive.cumsum(0) - preceding_sum(positive)[first]
    misses = (torch.arange(len(row), device=row.device) - first + 1) - hits
    objects = row_size[row].to(errors.dtype)
    jaccard = 1.0 - (objects - hits) / (objects + misses)
    previous = torch.cat([jaccard.new_zeros(1), jaccard[:-1]])
    increments = torch.where(torch.arange(len(row), device=row.device) == first, jaccard, jaccard - previous)
    return errors.new_zeros(len(row_size)).index_add_(0, row, errors * increments.detach())


def l1_medoids(clusters: ImageClusters, size: tuple[int, int]) -> torch.Tensor:
    """[B, K, 2] (y, x) of each instance's L1 medoid: its pixel with the least sum of |dy| + |dx| to the
    instance's other pixels (the first in raster order on ties). Per axis, the sum comes from the
    pixels sorted by (instance, coordinate) and prefix sums; O(P log P)."""
    h, w = size
    local = clusters.pixel % (h * w)
    coords = torch.stack([local // w, local % w], 1)  # [P, 2] int64
    slot, sizes = clusters.slot, clusters.size.flatten()
    cost = torch.zeros(len(slot), dtype=torch.long, device=slot.device)
    for axis in range(2):
        value = coords[:, axis]
        order = torch.argsort(slot * (max(h, w) + 1) + value)
        v, s = value[order], slot[order]
        first = preceding_sum(sizes)[s]  # sorted position of the instance's first pixel
        rank = torch.arange(len(v), device=v.device) - first
        preceding = preceding_sum(v)
        below = preceding - preceding[first]  # sum of the instance's smaller values
        total = torch.zeros_like(sizes).index_add_(0, s, v)[s]
        above = total - below - v
        cost[order] += v * rank - below + above - v * (sizes[s] - rank - 1)
    best = torch.full_like(sizes, torch.iinfo(torch.long).max).scatter_reduce(0, slot, cost, "amin")
    index = torch.arange(len(slot), device=slot.device)
    chosen = torch.full_like(sizes, len(slot)).scatter_reduce(
        0, slot, torch.where(cost == best[slot], index, len(slot)), "amin")
    centres = torch.zeros(len(sizes), 2, dtype=torch.long, device=slot.device)
    found = chosen < len(slot)
    centres[found] = coords[chosen[found]]
    return centres.view(*clusters.size.shape, 2)
