"""Decoder "stride2": DeepLab v3+ plus a second skip from the stride-2 stem; all heads at stride 2."""
from __future__ import annotations

import torch
from torch import nn

from embedseg.models.decoders.parts import low_level_fusion, stem_fusion
from embedseg.models.heads import OutputHeads
from embedseg.models.registry import DECODERS


@DECODERS.register("stride2")
class Stride2Decoder(nn.Module):
    """The stride-4 fusion, then the stride-2 stem features fused in; the heads run at stride 2 with
    half the channels (four times the pixels: about the same cost per layer). Small objects (nuclei
    of 8 px) need the sharper boundaries."""

    def __init__(self, fine_channels: int, low_channels: int, context_channels: int, channels: int,
                 outputs: dict[str, int]):
        super().__init__()
        hidden = max(8, channels // 2)
        self.low = low_level_fusion(low_channels, context_channels, channels)
        self.fine = stem_fusion(fine_channels, channels, hidden)
        self.heads = OutputHeads(hidden, outputs)

    def forward(self, images: torch.Tensor, features: dict[str, torch.Tensor],
                context: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.fine(self.low(context, features["low"]), features["fine"])
        return self.heads(x, images.shape[-2:])
