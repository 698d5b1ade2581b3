"""Per-pixel prediction heads: embedding, seediness and semantic class scores."""
from __future__ import annotations

from torch import nn

from embedseg.models.aspp import conv_norm_relu


class Head(nn.Module):
    """3x3 conv block, then a 1x1 projection to `out_ch` channels."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int):
        super().__init__()
        self.body = conv_norm_relu(in_ch, hidden, 3)
        self.out = nn.Conv2d(hidden, out_ch, 1)

    def forward(self, x):
        return self.out(self.body(x))
