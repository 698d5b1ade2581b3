"""Decoder "stride2_fullres": "stride2_fullres_class", with the embedding and seediness refined at full resolution too."""
from __future__ import annotations

import torch
from torch import nn

from embedseg.models.decoders.stride2_fullres_class import Stride2FullresClassDecoder
from embedseg.models.layers import conv_norm_relu
from embedseg.models.registry import DECODERS


@DECODERS.register("stride2_fullres")
class Stride2FullresDecoder(Stride2FullresClassDecoder):
    """Offsets to an instance's centre jump at the line where two touching objects meet; upsampled
    from stride 2 they blend across it, and the boundary pixels of a small object then point between
    the two centres. Two small convs that see the image and the upsampled maps correct the embedding
    and seediness at full resolution. Their last conv starts at zero, so the network starts as
    "stride2_fullres_class" with the same weights."""

    def __init__(self, fine_channels: int, low_channels: int, context_channels: int, channels: int,
                 outputs: dict[str, int]):
        super().__init__(fine_channels, low_channels, context_channels, channels, outputs)
        refined = outputs["embedding"] + outputs["seediness"]
        self.embedding_refine = nn.Sequential(  # 5x5 field of view on the image, the embedding and the seediness
            conv_norm_relu(3 + refined, 16, 3), conv_norm_relu(16, 16, 3), nn.Conv2d(16, refined, 1))
        nn.init.zeros_(self.embedding_refine[-1].weight)
        nn.init.zeros_(self.embedding_refine[-1].bias)

    def forward(self, images: torch.Tensor, features: dict[str, torch.Tensor],
                context: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(images, features, context)
        maps = torch.cat([out["embedding"], out["seediness"]], dim=1)
        embedding, seediness = (maps + self.embedding_refine(torch.cat([images, maps], dim=1))).split(
            [out["embedding"].shape[1], out["seediness"].shape[1]], dim=1)
        return {**out, "embedding": embedding, "seediness": seediness}
