"""Squared Euclidean distances between two sets of vectors, shared by the losses and the groupers."""
from __future__ import annotations

import torch


def squared_distances(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||a_i - b_j||^2 for a [..., M, D] and b [..., N, D] as [..., M, N], clamped at 0 against rounding.

    Expanded as |a|^2 - 2 a.b + |b|^2: one matrix product and memory M*N instead of M*N*D. `a_sq`
    (|a_i|^2, [..., M]) may be passed when the caller reuses it. The expansion loses precision when
    the vectors lie far from the origin compared with their distances: centre them first then.
    """
    a_sq = a.pow(2).sum(-1) if a_sq is None else a_sq
    return (a_sq.unsqueeze(-1) - 2.0 * (a @ b.transpose(-1, -2)) + b.pow(2).sum(-1).unsqueeze(-2)).clamp_min_(0)
