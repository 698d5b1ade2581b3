"""Building blocks shared by the backbones, ASPP, decoders and heads."""
from __future__ import annotations

from torch import nn


def norm(channels: int) -> nn.Module:
    # GroupNorm works with the small batches of CPU and high-resolution training alike.
    return nn.GroupNorm(min(32, max(1, channels // 4)), channels)


def conv_norm_relu(in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        norm(out_ch),
        nn.ReLU(inplace=True),
    )
