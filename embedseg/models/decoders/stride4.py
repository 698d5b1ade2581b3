"""Decoder "stride4": DeepLab v3+, one skip from the stride-4 features; all heads at stride 4."""
from __future__ import annotations

import torch
from torch import nn

from embedseg.models.decoders.parts import low_level_fusion
from embedseg.models.heads import OutputHeads
from embedseg.models.registry import DECODERS


@DECODERS.register("stride4")
class Stride4Decoder(nn.Module):
    """Context and stride-4 features fused as in DeepLab v3+; the heads run on the result and are
    upsampled to the input size. The cheapest decoder; boundaries are only as sharp as stride 4."""

    def __init__(self, fine_channels: int, low_channels: int, context_channels: int, channels: int,
                 outputs: dict[str, int]):
        super().__init__()
        self.low = low_level_fusion(low_channels, context_channels, channels)
        self.heads = OutputHeads(channels, outputs)

    def forward(self, images: torch.Tensor, features: dict[str, torch.Tensor],
                context: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.low(context, features["low"]), images.shape[-2:])
