"""DeepLab-style embedding network: dilated ResNet + ASPP + a registered decoder that runs the heads."""
from __future__ import annotations

import torch
from torch import nn

from embedseg.models.aspp import ASPP
from embedseg.models.registry import BACKBONES, DECODERS, MODELS

# State-dict keys of checkpoints written before the decoders were parts of their own -> today's keys.
LEGACY_KEYS = {"skip.": "decoder.low.skip.", "fuse.": "decoder.low.fuse.", "fine_skip.": "decoder.fine.skip.",
               "refine.": "decoder.fine.fuse.", "semantic_refine.": "decoder.semantic_refine.",
               "embedding_head.": "decoder.heads.embedding.", "seediness_head.": "decoder.heads.seediness.",
               "semantic_head.": "decoder.heads.semantic."}


def rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: LEGACY_KEYS renamed in place, so old checkpoints load strictly."""
    for key in list(state_dict):
        for old, new in LEGACY_KEYS.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
                break


def pixel_positions(like: torch.Tensor) -> torch.Tensor:
    """(y, x) of every pixel of `like` [..., H, W], as [2, H, W] in its dtype and on its device."""
    h, w = like.shape[-2:]
    ys = torch.arange(h, dtype=like.dtype, device=like.device)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=like.dtype, device=like.device)[None, :].expand(h, w)
    return torch.stack([ys, xs])


class DeepLabEmbedding(nn.Module):
    """Maps images [B,3,H,W] to {"embedding": [B,D,H,W], "seediness": [B,1,H,W] in [0,1],
    "semantic": [B,C+1,H,W] logits (channel 0 = background)} at input resolution.

    The backbone's deepest features go through ASPP; the decoder (see `embedseg.models.decoders`)
    fuses that context with the backbone's finer features and runs the heads.

    With `coord_scale` s > 0 the first two embedding channels are semi-convolutional (Novotny et
    al., ECCV 2018): the pixel's own (y, x) * s is added to what the head predicts, so the head
    learns offsets towards the instance's centre. Far-apart look-alikes then differ by their
    position, and the head only has to tell neighbours apart. Coordinates count from the input's
    top-left pixel; `tile_to_image` moves the outputs of a tile to the coordinates of the whole image.
    """

    def __init__(self, backbone: nn.Module, aspp: nn.Module, decoder: nn.Module, coord_scale: float = 0.0):
        super().__init__()
        if coord_scale < 0:
            raise ValueError(f"coord_scale must be >= 0, got {coord_scale}")
        self.backbone, self.aspp, self.decoder = backbone, aspp, decoder
        self.coord_scale = coord_scale
        self.register_load_state_dict_pre_hook(rename_legacy_keys)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        out = self.decoder(images, features, self.aspp(features["high"]))
        return {"embedding": self.add_positions(out["embedding"]), "seediness": torch.sigmoid(out["seediness"]),
                "semantic": out["semantic"]}

    def add_positions(self, embedding: torch.Tensor) -> torch.Tensor:
        """Channels 0 and 1 plus coord_scale * (y, x) of each pixel (unchanged with coord_scale 0)."""
        if self.coord_scale == 0:
            return embedding
        embedding = embedding.float()  # under bf16 autocast, positions of ~25 would be rounded to 1/8
        return torch.cat([embedding[:, :2] + self.coord_scale * pixel_positions(embedding), embedding[:, 2:]], 1)

    def tile_to_image(self, outputs: dict[str, torch.Tensor], offset: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The outputs of a tile whose top-left pixel is pixel `offset` = (y, x) of the image, in the
        image's coordinates: the positional channels gain coord_scale * offset; the rest is unchanged."""
        if self.coord_scale == 0 or tuple(offset) == (0, 0):
            return outputs
        embedding = outputs["embedding"]
        shift = self.coord_scale * torch.tensor(offset, dtype=embedding.dtype, device=embedding.device)
        embedding = torch.cat([embedding[:, :2] + shift[:, None, None], embedding[:, 2:]], 1)
        return {**outputs, "embedding": embedding}


@MODELS.register("deeplab")
def deeplab(num_classes: int, backbone: str = "resnet50", width: float = 1.0, output_stride: int = 16,
            embedding_dim: int = 64, decoder: str = "stride4", coord_scale: float = 0.0) -> DeepLabEmbedding:
    """DeepLab v3+ style network: a registered backbone and decoder, ASPP and decoder 256 channels
    scaled by `width` like the backbone; `coord_scale` > 0 makes two embedding channels
    semi-convolutional (see DeepLabEmbedding)."""
    if coord_scale > 0 and embedding_dim < 2:
        raise ValueError(f"coord_scale > 0 needs embedding_dim >= 2, got embedding_dim = {embedding_dim}")
    net = BACKBONES.build(backbone, width=width, output_stride=output_stride)
    channels = max(8, round(256 * width))
    # ASPP rates (6, 12, 18) are DeepLab's at output stride 16; at stride 8 the same field of view needs twice the rate.
    aspp = ASPP(net.high_channels, channels, tuple(r * 16 // output_stride for r in (6, 12, 18)))
    outputs = {"embedding": embedding_dim, "seediness": 1, "semantic": num_classes + 1}
    decoder_net = DECODERS.build(decoder, fine_channels=net.fine_channels, low_channels=net.low_channels,
                                 context_channels=channels, channels=channels, outputs=outputs)
    return DeepLabEmbedding(net, aspp, decoder_net, coord_scale)
