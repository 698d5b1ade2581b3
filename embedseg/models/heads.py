"""Per-pixel prediction heads: embedding, seediness and semantic class scores."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedseg.models.layers import conv_norm_relu


class Head(nn.Module):
    """3x3 conv block, then a 1x1 projection to `out_ch` channels."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int):
        super().__init__()
        self.body = conv_norm_relu(in_ch, hidden, 3)
        self.out = nn.Conv2d(hidden, out_ch, 1)

    def forward(self, x):
        return self.out(self.body(x))


class OutputHeads(nn.ModuleDict):
    """One `Head` per output (name -> channels), run on the decoder's features at their stride.

    The maps are upsampled bilinearly to the input size; for the final 1x1 projections that equals
    upsampling the features first, at a fraction of the cost.
    """

    def __init__(self, channels: int, outputs: dict[str, int]):
        super().__init__({name: Head(channels, channels, out_ch) for name, out_ch in outputs.items()})

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {name: F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
                for name, head in self.items()}
