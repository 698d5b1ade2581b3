"""DeepLab-style embedding network: dilated ResNet + ASPP + one-skip decoder + three heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedseg.models.aspp import ASPP, conv_norm_relu
from embedseg.models.backbones import BACKBONES
from embedseg.models.heads import Head
from embedseg.registry import Registry

MODELS = Registry("model")


class DeepLabEmbedding(nn.Module):
    """Maps images [B,3,H,W] to {"embedding": [B,D,H,W], "seediness": [B,1,H,W] in [0,1],
    "semantic": [B,C+1,H,W] logits (channel 0 = background)} at input resolution.

    The decoder fuses ASPP features with the stride-4 features of the first stage (DeepLab v3+);
    heads run at stride 4 and their outputs are upsampled bilinearly, which for the final 1x1
    projections is the same as upsampling the features first, at a sixteenth of the cost.
    """

    def __init__(self, backbone, num_classes: int, embedding_dim: int, aspp_channels: int,
                 decoder_channels: int, aspp_rates=(6, 12, 18)):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.aspp = ASPP(backbone.high_channels, aspp_channels, aspp_rates)
        skip_channels = max(8, decoder_channels // 4)
        self.skip = conv_norm_relu(backbone.low_channels, skip_channels, 1)
        self.fuse = nn.Sequential(
            conv_norm_relu(aspp_channels + skip_channels, decoder_channels, 3),
            conv_norm_relu(decoder_channels, decoder_channels, 3),
        )
        hidden = decoder_channels
        self.embedding_head = Head(hidden, hidden, embedding_dim)
        self.seediness_head = Head(hidden, hidden, 1)
        self.semantic_head = Head(hidden, hidden, num_classes + 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)
        low = self.skip(features["low"])
        high = F.interpolate(self.aspp(features["high"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([high, low], dim=1))

        def upsample(t):
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        return {
            "embedding": upsample(self.embedding_head(x)),
            "seediness": torch.sigmoid(upsample(self.seediness_head(x))),
            "semantic": upsample(self.semantic_head(x)),
        }


@MODELS.register("deeplab")
def deeplab(num_classes: int, backbone: str = "resnet50", width: float = 1.0, output_stride: int = 16,
            embedding_dim: int = 64, aspp_channels: int = 256, decoder_channels: int = 256,
            aspp_rates: list[int] = (6, 12, 18)) -> DeepLabEmbedding:
    """DeepLab v3+ style network. `aspp_channels`/`decoder_channels` are scaled by `width` too."""
    net = BACKBONES.build(backbone, width=width, output_stride=output_stride)
    scaled = lambda c: max(8, int(round(c * width)))  # noqa: E731
    # ASPP rates are given for output stride 16; at stride 8 the same field of view needs twice the rate.
    rates = tuple(int(r * 16 // output_stride) for r in aspp_rates)
    return DeepLabEmbedding(net, num_classes, embedding_dim, scaled(aspp_channels), scaled(decoder_channels), rates)
