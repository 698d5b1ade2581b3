"""Decoder "stride2_fullres_class": heads at stride 2, class logits refined at full resolution."""
from __future__ import annotations

import torch
from torch import nn

from embedseg.models.decoders.parts import low_level_fusion, stem_fusion
from embedseg.models.heads import OutputHeads
from embedseg.models.layers import conv_norm_relu
from embedseg.models.registry import DECODERS


@DECODERS.register("stride2_fullres_class")
class Stride2FullresClassDecoder(nn.Module):
    """The "stride2" decoder, then the upsampled class logits ("semantic") corrected at full
    resolution by two small convs that also see the image: a learned snap of the foreground edge to
    the image edge, which decides whether touching objects stay apart. The other outputs (embedding,
    seediness) are smooth maps and stay at stride 2, where they cost a quarter of the pixels."""

    def __init__(self, fine_channels: int, low_channels: int, context_channels: int, channels: int,
                 outputs: dict[str, int]):
        super().__init__()
        if "semantic" not in outputs:
            raise ValueError(f"decoder stride2_fullres_class refines a 'semantic' output; outputs: {sorted(outputs)}")
        hidden, classes = max(8, channels // 2), outputs["semantic"]
        self.low = low_level_fusion(low_channels, context_channels, channels)
        self.fine = stem_fusion(fine_channels, channels, hidden)
        # Built before the heads: the order in which parts are created decides their initial weights for a seed.
        self.semantic_refine = nn.Sequential(  # 5x5 field of view on the image and the logits
            conv_norm_relu(3 + classes, 16, 3), conv_norm_relu(16, 16, 3), nn.Conv2d(16, classes, 1))
        self.heads = OutputHeads(hidden, outputs)

    def forward(self, images: torch.Tensor, features: dict[str, torch.Tensor],
                context: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.fine(self.low(context, features["low"]), features["fine"])
        out = self.heads(x, images.shape[-2:])
        out["semantic"] = out["semantic"] + self.semantic_refine(torch.cat([images, out["semantic"]], dim=1))
        return out
