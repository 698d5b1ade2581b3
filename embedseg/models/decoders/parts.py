"""The skip fusions the decoders are made of."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedseg.models.layers import conv_norm_relu


class SkipFusion(nn.Module):
    """Upsample coarse features bilinearly to a skip's resolution, concatenate the skip (through
    `skip`) and run `fuse` on the result."""

    def __init__(self, skip: nn.Module, fuse: nn.Module):
        super().__init__()
        self.skip, self.fuse = skip, fuse

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.skip(skip)
        coarse = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([coarse, skip], dim=1))


def low_level_fusion(low_channels: int, context_channels: int, channels: int) -> SkipFusion:
    """DeepLab v3+ (Chen et al. 2018): the ASPP context joins the stride-4 features, reduced by a 1x1
    conv to a quarter of `channels` (so the context dominates), then two 3x3 convs give `channels`."""
    reduced = max(8, channels // 4)
    return SkipFusion(
        skip=conv_norm_relu(low_channels, reduced, 1),
        fuse=nn.Sequential(conv_norm_relu(context_channels + reduced, channels, 3),
                           conv_norm_relu(channels, channels, 3)))


def stem_fusion(fine_channels: int, in_channels: int, out_channels: int) -> SkipFusion:
    """Stride-4 decoder features join the stride-2 stem features (reduced to an eighth of
    `in_channels`) in one 3x3 conv: object boundaries then sit within a pixel or two."""
    reduced = max(8, in_channels // 8)
    return SkipFusion(skip=conv_norm_relu(fine_channels, reduced, 1),
                      fuse=conv_norm_relu(in_channels + reduced, out_channels, 3))
