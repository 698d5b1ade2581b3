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
    projections is the same as upsampling the features first, at a sixteenth of the cost. With
    `head_stride` 2 a second skip from the stride-2 stem refines the decoder features first: object
    boundaries then sit within a pixel or two, which small objects (nuclei of 8 px) need. With
    `head_stride` 1 the class logits, upsampled from stride 2, are corrected at full resolution by
    two small convs that also see the image (a learned snap of the foreground edge to the image
    edge, which decides whether touching nuclei stay apart); embedding and seediness are smooth
    maps and stay at stride 2. Running all heads at full resolution costs twice the training time.

    With `coord_scale` s > 0 the first two embedding channels are semi-convolutional (Novotny et
    al., ECCV 2018): the pixel's own (y, x) * s is added to what the head predicts, so the head
    learns offsets towards the instance's centre. Far-apart look-alikes then differ by their
    position, and the head only has to tell neighbours apart. Coordinates count from the input's
    top-left pixel; a tiled predictor adds each tile's offset (see `embedseg.engine.predictor`).
    """

    def __init__(self, backbone, num_classes: int, embedding_dim: int, aspp_channels: int,
                 decoder_channels: int, aspp_rates=(6, 12, 18), coord_scale: float = 0.0, head_stride: int = 4):
        super().__init__()
        if head_stride not in (1, 2, 4):
            raise ValueError(f"head_stride must be 1, 2 or 4, got {head_stride}")
        if coord_scale < 0 or (coord_scale > 0 and embedding_dim < 2):
            raise ValueError(f"coord_scale must be >= 0 (and needs embedding_dim >= 2), got {coord_scale}")
        self.coord_scale = coord_scale
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
        self.refine = self.semantic_refine = None
        if head_stride <= 2:  # half the channels at four times the pixels: about the same cost per layer
            hidden = max(8, decoder_channels // 2)
            fine_channels = max(8, decoder_channels // 8)
            self.fine_skip = conv_norm_relu(backbone.fine_channels, fine_channels, 1)
            self.refine = conv_norm_relu(decoder_channels + fine_channels, hidden, 3)
        if head_stride == 1:
            self.semantic_refine = nn.Sequential(  # 5x5 field of view on the image and the logits
                conv_norm_relu(3 + num_classes + 1, 16, 3), conv_norm_relu(16, 16, 3), nn.Conv2d(16, num_classes + 1, 1))
        self.embedding_head = Head(hidden, hidden, embedding_dim)
        self.seediness_head = Head(hidden, hidden, 1)
        self.semantic_head = Head(hidden, hidden, num_classes + 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)
        low = self.skip(features["low"])
        high = F.interpolate(self.aspp(features["high"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([high, low], dim=1))
        if self.refine is not None:
            fine = self.fine_skip(features["fine"])
            x = F.interpolate(x, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            x = self.refine(torch.cat([x, fine], dim=1))

        def upsample(t):
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

        embedding = upsample(self.embedding_head(x))
        semantic = upsample(self.semantic_head(x))
        if self.semantic_refine is not None:
            semantic = semantic + self.semantic_refine(torch.cat([images, semantic], dim=1))
        if self.coord_scale > 0:
            embedding = embedding.float()  # under bf16 autocast, positions of ~25 would be rounded to 1/8
            h, w = size
            ys = torch.arange(h, dtype=embedding.dtype, device=embedding.device)[:, None].expand(h, w)
            xs = torch.arange(w, dtype=embedding.dtype, device=embedding.device)[None, :].expand(h, w)
            embedding = torch.cat([embedding[:, :2] + self.coord_scale * torch.stack([ys, xs]), embedding[:, 2:]], 1)
        return {
            "embedding": embedding,
            "seediness": torch.sigmoid(upsample(self.seediness_head(x))),
            "semantic": semantic,
        }


@MODELS.register("deeplab")
def deeplab(num_classes: int, backbone: str = "resnet50", width: float = 1.0, output_stride: int = 16,
            embedding_dim: int = 64, aspp_channels: int = 256, decoder_channels: int = 256,
            aspp_rates: list[int] = (6, 12, 18), coord_scale: float = 0.0, head_stride: int = 4) -> DeepLabEmbedding:
    """DeepLab v3+ style network. `aspp_channels`/`decoder_channels` are scaled by `width` too;
    `coord_scale` > 0 makes two embedding channels semi-convolutional, `head_stride` 2 adds a
    stride-2 refinement before the heads, 1 a full-resolution one after it (see DeepLabEmbedding)."""
    net = BACKBONES.build(backbone, width=width, output_stride=output_stride)
    scaled = lambda c: max(8, int(round(c * width)))  # noqa: E731
    # ASPP rates are given for output stride 16; at stride 8 the same field of view needs twice the rate.
    rates = tuple(int(r * 16 // output_stride) for r in aspp_rates)
    return DeepLabEmbedding(net, num_classes, embedding_dim, scaled(aspp_channels), scaled(decoder_channels), rates,
                            coord_scale, head_stride)
