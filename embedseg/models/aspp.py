"""Atrous Spatial Pyramid Pooling (Chen et al., DeepLab v3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedseg.models.layers import conv_norm_relu


class ASPP(nn.Module):
    """Parallel 1x1, dilated 3x3 convolutions and image pooling, fused by a 1x1 convolution."""

    def __init__(self, in_ch: int, out_ch: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_norm_relu(in_ch, out_ch, 1)] + [conv_norm_relu(in_ch, out_ch, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))
        self.project = conv_norm_relu(out_ch * (len(rates) + 2), out_ch, 1)

    def forward(self, x):
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="nearest")
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))
