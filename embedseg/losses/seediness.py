"""Seediness regression: how good a seed each pixel is for grouping its instance."""
from __future__ import annotations

import math

import torch
from torch import nn

from embedseg.losses.base import ImageClusters, PixelSample, gather_pixels, mean_over_images, sample_pixels
from embedseg.losses.registry import LOSSES


@LOSSES.register("seed_distance")
class SeedDistanceLoss(nn.Module):
    """Regress seediness to exp(-||x_i - mu_c||^2 / (2 sigma^2)) on instance pixels, 0 on background.

    A pixel whose embedding sits at its instance's mean is the ideal mean-shift seed. The target
    is computed from detached embeddings so this term trains the seediness head only.
    Squared error, averaged separately over foreground and background pixels and then summed,
    so small objects are not drowned by background.
    """

    inputs = ("outputs.seediness", "outputs.embedding", "batch.instances")

    def __init__(self, sigma: float = 0.5):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = sigma

    def targets(self, embedding: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        clusters = ImageClusters.build(instances)
        x = clusters.gather(embedding.detach())
        sq = (x - clusters.at_pixels(clusters.means(x))).pow(2).sum(1)
        target = embedding.new_zeros(instances.numel())
        target[clusters.pixel] = torch.exp(-sq / (2 * self.sigma**2))
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


@LOSSES.register("seed_iou")
class SeedIoULoss(nn.Module):
    """Regress seediness to the quality of the mask grown from a pixel (after Fathi et al. 2017).

    Target, for a drawn pixel p of instance A in its image (pixels with id < 0 left out):

        M_tau(p)  = {q : sigma(p, q) > tau} = {q : ||e_p - e_q||^2 < log(2 / tau - 1)}
        target(p) = mean over tau in `taus` of IoU(M_tau(p), A);   target = 0 on background pixels

    computed from detached embeddings, so this term trains the seediness head only. The loss is
    the squared error between the predicted seediness (already in [0, 1]) and the target at the
    drawn pixels, averaged per image over its drawn pixels, then over the images that have any.
    Pixels are drawn like the metric loss draws them (`sample_pixels`: up to
    `pixels_per_instance` per instance and for the background, `max_pixels` per image), so small
    objects and the background get their share of seeds. With `pixel_stride` s > 1 the masks and
    instances are counted on every s-th pixel of every s-th row only (IoU of the subsampled
    masks, ~s^2 times cheaper; the seeds themselves are drawn from all pixels).

    Where this differs from the paper, as we read it: Fathi et al. grow the masks the same way
    but train a classification head per threshold (target: the instance's class when the mask's
    IoU with it is >= 0.5, else background) and take a pixel's seediness from those class
    scores. Our network contract has one seediness channel and a separate (C+1)-class semantic
    head, so we regress the IoU itself, a graded version of the same signal, averaged over the
    thresholds so one map serves every tau the grouper may use; classes come from the semantic
    head. Squared error rather than BCE because the targets are soft and the head outputs
    probabilities, not logits.

    Cost: the [M, N] similarity test of M drawn pixels against the N (subsampled) pixels of their
    image runs in chunks of seeds holding at most `chunk_elements` entries for the whole batch;
    with the pixels sorted by id, the mask pixels inside an instance are a difference of prefix
    sums. Memory O(chunk_elements + B*N*D + B*M*D) whatever the number of instances, time
    O(B*M*N*(D + T)) for T taus.
    """

    inputs = ("outputs.seediness", "outputs.embedding", "batch.instances")

    def __init__(self, taus: list[float] = (0.25, 0.5, 0.75, 0.9), pixels_per_instance: int = 8,
                 max_pixels: int = 256, include_background: bool = True, pixel_stride: int = 1,
                 chunk_elements: int = 2**22):
        super().__init__()
        taus = [float(t) for t in taus]
        if not taus or not all(0.0 < t < 1.0 for t in taus):
            raise ValueError(f"taus must be a non-empty list of values in (0, 1), got {taus}")
        if min(pixels_per_instance, max_pixels, pixel_stride, chunk_elements) < 1:
            raise ValueError(f"need pixels_per_instance, max_pixels, pixel_stride and chunk_elements >= 1, got "
                             f"{pixels_per_instance}, {max_pixels}, {pixel_stride}, {chunk_elements}")
        self.taus = taus
        # sigma(p, q) > tau  <=>  ||e_p - e_q||^2 < log(2 / tau - 1)
        self.sq_thresholds = [math.log(2.0 / t - 1.0) for t in taus]
        self.pixels_per_instance, self.max_pixels = pixels_per_instance, max_pixels
        self.include_background, self.pixel_stride = include_background, pixel_stride
        self.chunk_elements = chunk_elements

    def sample(self, instances: torch.Tensor) -> PixelSample:
        return sample_pixels(instances, self.pixels_per_instance, self.max_pixels, self.include_background)

    @torch.no_grad()
    def targets(self, embedding: torch.Tensor, instances: torch.Tensor, sample: PixelSample) -> torch.Tensor:
        """[B, M] target of each drawn pixel of `sample` (0 on background and padding slots)."""
        embedding = embedding.detach()
        if embedding.dtype != torch.float64:  # float32 at least: pixel counts must stay exact
            embedding = embedding.float()
        grid = embedding[:, :, ::self.pixel_stride, ::self.pixel_stride].flatten(2)  # [B, D, N]
        labels = instances[:, ::self.pixel_stride, ::self.pixel_stride].flatten(1).long()
        # |e_p - e_q|^2 = |e_p|^2 + |e_q|^2 - 2 e_p.e_q, around the image's mean embedding (less
        # cancellation), in the [B, D, N] layout (contiguous, fast).
        centre = grid.mean(2, keepdim=True)
        seeds = gather_pixels(embedding, sample.index) - centre.transpose(1, 2)  # [B, M, D]
        # Pixels sorted by id within each image: an instance is a contiguous range [first, last),
        # so the mask pixels inside it are a difference of two prefix sums (no one-hot by id).
        labels, order = labels.sort(dim=1)
        pixels = torch.gather(grid - centre, 2, order.unsqueeze(1).expand_as(grid))  # [B, D, N], id order
        first = torch.searchsorted(labels, sample.ids, side="left")  # [B, M]
        last = torch.searchsorted(labels, sample.ids, side="right")
        size = last - first  # 0 for an instance with no pixel on the strided grid: IoU 0
        # Ignored pixels (id < 0) get an infinite norm, so they join no mask.
        pixel_sq = pixels.pow(2).sum(1).masked_fill(labels < 0, math.inf)  # [B, N]
        seed_sq = seeds.pow(2).sum(2)  # [B, M]
        b, n = labels.shape
        m = seeds.shape[1]
        target = embedding.new_zeros(b, m)
        step = max(1, self.chunk_elements // max(1, b * (n + 1)))
        sq = prefix = None
        for start in range(0, m, step):  # chunks of seeds bound the [B, chunk, N] tensors
            chunk = slice(start, start + step)
            c = len(range(m)[chunk])
            if sq is None or sq.shape[1] != c:  # reused: fresh multi-MB tensors cost page faults
                sq, grown = embedding.new_empty(b, c, n), embedding.new_empty(b, c, n)
                prefix = embedding.new_zeros(b, c, n + 1)  # prefix[..., 0] stays 0
            torch.baddbmm(pixel_sq.unsqueeze(1), seeds[:, chunk], pixels, alpha=-2.0, out=sq)
            sq += seed_sq[:, chunk].unsqueeze(2)  # [B, c, N] squared distances
            iou = 0.0
            for threshold in self.sq_thresholds:
                torch.lt(sq, threshold, out=grown)  # the mask, as 0/1 floats (exact counts below 2^24)
                torch.cumsum(grown, dim=2, out=prefix[:, :, 1:])
                inter = prefix.gather(2, last[:, chunk].unsqueeze(2)) - prefix.gather(2, first[:, chunk].unsqueeze(2))
                inter = inter.squeeze(2)
                iou = iou + inter / (prefix[:, :, -1] + size[:, chunk] - inter).clamp_min(1)
            target[:, chunk] = iou / len(self.sq_thresholds)
        return torch.where(sample.valid & (sample.ids > 0), target, 0.0)

    def forward(self, seediness: torch.Tensor, embedding: torch.Tensor, instances: torch.Tensor):
        if seediness.dim() == 4:
            seediness = seediness.squeeze(1)
        if seediness.shape != instances.shape or embedding.shape[0:1] + embedding.shape[2:] != instances.shape:
            raise ValueError(f"seediness [B,1,H,W], embedding [B,D,H,W] and instances [B,H,W] must agree, got "
                             f"{tuple(seediness.shape)}, {tuple(embedding.shape)} and {tuple(instances.shape)}")
        sample = self.sample(instances)
        target = self.targets(embedding, instances, sample)
        predicted = seediness.flatten(1).gather(1, sample.index)
        valid = sample.valid.to(predicted.dtype)
        count = valid.sum(1)
        per_image = ((predicted - target).pow(2) * valid).sum(1) / count.clamp_min(1)
        foreground = valid * (sample.ids > 0)
        # Diagnostic: mean target on instance pixels, i.e. how well the embedding separates right now.
        fg_target = (target * foreground).sum(1) / foreground.sum(1).clamp_min(1)
        return {"loss": mean_over_images(per_image, count > 0, seediness),
                "target": mean_over_images(fg_target, foreground.sum(1) > 0, seediness).detach()}
