"""Pixel-pair metric loss of Fathi et al. 2017 ("Semantic Instance Segmentation via Deep Metric Learning")."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from embedseg.distances import squared_distances
from embedseg.losses.base import gather_pixels, mean_over_images, sample_pixels
from embedseg.losses.registry import LOSSES

# Squared distances of different-instance pairs are floored here before -log(1 - sigma): the
# term is +inf at distance 0. The floor caps it at about 9.9 (values only; gradients stay finite).
MIN_SQ_DISTANCE = 1e-4
# From this squared distance on, -log(1 - sigma) (< 2 exp(-30) ~ 2e-13) is evaluated at it and its
# gradient is 0: the true gradients would become subnormal floats, which slow CPU arithmetic ~10x.
FAR_SQ_DISTANCE = 30.0


def pair_similarity(sq_distance: torch.Tensor) -> torch.Tensor:
    """sigma(p, q) = 2 / (1 + exp(||e_p - e_q||^2)), from the squared distance; in (0, 1], 1 at distance 0.

    Written as 2 * sigmoid(-d^2), which never overflows for large distances.
    """
    return 2.0 * torch.sigmoid(-sq_distance)


def neg_log_similarity(sq_distance: torch.Tensor) -> torch.Tensor:
    """-log sigma = log(1 + exp(d^2)) - log 2 = softplus(d^2) - log 2: 0 at d^2 = 0, ~d^2 far away."""
    return pair_loss(sq_distance, torch.ones_like(sq_distance, dtype=torch.bool))


def neg_log_dissimilarity(sq_distance: torch.Tensor) -> torch.Tensor:
    """-log(1 - sigma) = -log tanh(d^2 / 2), with d^2 clamped to [MIN_SQ_DISTANCE, FAR_SQ_DISTANCE].

    The term is +inf at d^2 = 0 and decays like 2 exp(-d^2); see pair_loss.
    """
    return pair_loss(sq_distance, torch.zeros_like(sq_distance, dtype=torch.bool))


def pair_loss(sq_distance: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """-log sigma where `same`, -log(1 - sigma) elsewhere, elementwise in d = ||e_p - e_q||^2:

        -log sigma       = softplus(d) - log 2       derivative  sigmoid(d)
        -log(1 - sigma)  = -log tanh(d / 2)          derivative  -1 / sinh(d)

    In the second form d is floored at MIN_SQ_DISTANCE (+inf at 0) and its derivative is 0 from
    FAR_SQ_DISTANCE on (|value| < 2e-13 there; no subnormal floats, which slow CPU arithmetic
    ~10x); the clamped ranges get a zero derivative, as clamp() would give. The derivative is
    computed in the forward pass and saved, so backward is one product: much less work and
    memory than differentiating the expression op by op.
    """
    return _PairLoss.apply(sq_distance, same)


class _PairLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sq_distance, same):
        apart = sq_distance.clamp(MIN_SQ_DISTANCE, FAR_SQ_DISTANCE)
        value = torch.where(same, F.softplus(sq_distance) - math.log(2.0), -torch.log(torch.tanh(0.5 * apart)))
        if ctx.needs_input_grad[0]:
            inside = (sq_distance > MIN_SQ_DISTANCE) & (sq_distance < FAR_SQ_DISTANCE)
            derivative = torch.where(same, torch.sigmoid(sq_distance),
                                     torch.where(inside, -1.0 / torch.sinh(apart), 0.0))
            ctx.save_for_backward(derivative)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        (derivative,) = ctx.saved_tensors
        return grad_output * derivative, None


@LOSSES.register("metric")
class MetricLoss(nn.Module):
    """Weighted logistic loss over pixel pairs (Fathi et al. 2017, eq. 1-2).

    Per image, `sample_pixels` draws up to `pixels_per_instance` pixels of every instance (and of
    the background, as one more group, when `include_background`), at most `max_pixels` per image
    (round-robin over the groups when the budget binds); ids < 0 never take part. Over all
    ordered pairs (p, q), p != q, of drawn pixels of one image:

        l_pq = -log sigma(p, q)        if p and q lie in the same group
             = -log(1 - sigma(p, q))   otherwise,      sigma = 2 / (1 + exp(||e_p - e_q||^2))
        w_pq = 1 / (n_A * n_B)         n_A, n_B: drawn pixels of the groups A of p and B of q
        image loss = sum_pq w_pq l_pq / sum_pq w_pq

    Why these weights: the n_A drawn pixels are a uniform sample of A, so sum over the drawn
    pairs of A x B of l_pq / (n_A n_B) is an unbiased estimate of the mean pair loss over A x B,
    and the image loss estimates the all-pixel loss with weights 1 / (|A| |B|) (the true sizes):
    every instance pair counts the same however large its objects are. As p != q, a group of
    n pixels has n(n-1) same pairs of weight 1/n^2, so a one-pixel group has no same pairs.
    `loss` is averaged over the images with at least one pair; `same` and `diff` are the same
    ratio restricted to same-group and different-group pairs (diagnostics, each averaged over the
    images that have such pairs), so loss is a weighted mix of them, not their sum.

    Cost per batch: sampling O(P log P) for P labelled pixels; the pair stage holds [B, M, M]
    tensors (M <= max_pixels) and one [B, M, D] gather, i.e. memory O(P + B*M*(M + D)) and time
    O(B*M^2*D), whatever the number of instances K: with K*pixels_per_instance above the budget,
    each instance keeps about max_pixels / K pixels instead of the pair count growing with K^2.
    """

    inputs = ("outputs.embedding", "batch.instances")

    def __init__(self, pixels_per_instance: int = 32, max_pixels: int = 1024, include_background: bool = True):
        super().__init__()
        if pixels_per_instance < 1 or max_pixels < 2:
            raise ValueError(f"need pixels_per_instance >= 1 and max_pixels >= 2, got {pixels_per_instance} "
                             f"and {max_pixels}")
        self.pixels_per_instance, self.max_pixels = pixels_per_instance, max_pixels
        self.include_background = include_background

    def forward(self, embedding: torch.Tensor, instances: torch.Tensor) -> dict[str, torch.Tensor]:
        if embedding.dim() != 4 or embedding.shape[0:1] + embedding.shape[2:] != instances.shape:
            raise ValueError(
                f"embedding [B,D,H,W] and instances [B,H,W] must agree, got {tuple(embedding.shape)} "
                f"and {tuple(instances.shape)}"
            )
        sample = sample_pixels(instances, self.pixels_per_instance, self.max_pixels, self.include_background)
        x = gather_pixels(embedding, sample.index)  # [B, M, D]
        x = x - x.mean(1, keepdim=True)  # centred: no regulariser keeps these embeddings near the origin
        sq = squared_distances(x, x)  # [B, M, M]

        # sum_{p != q} w_pq l_pq with w_pq = v_p v_q, v = 1 / n_group (0 in padding slots), as the
        # bilinear form v^T L v minus its diagonal: no [B, M, M] weight tensor is built.
        v = sample.valid / sample.sampled_count().to(embedding.dtype)  # [B, M]
        same = sample.group.unsqueeze(2) == sample.group.unsqueeze(1)
        losses = pair_loss(sq, same)  # [B, M, M]

        def off_diagonal_form(matrix):  # [B, M, M] -> [B]: sum_{p != q} v_p matrix_pq v_q
            full = torch.bmm(matrix, v.unsqueeze(2)).squeeze(2).mul(v).sum(1)
            return full - (v.pow(2) * matrix.diagonal(dim1=1, dim2=2)).sum(1)

        def weighted_mean(total, weight_sum):
            return mean_over_images(total / weight_sum.clamp_min(1e-12), weight_sum > 1e-12, embedding)

        values = {"loss": weighted_mean(off_diagonal_form(losses), v.sum(1).pow(2) - v.pow(2).sum(1))}
        with torch.no_grad():  # diagnostics, never differentiated
            for key, mask in (("same", same), ("diff", ~same)):
                mask = mask.to(losses.dtype)
                values[key] = weighted_mean(off_diagonal_form(losses * mask), off_diagonal_form(mask))
        return values
