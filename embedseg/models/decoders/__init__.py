"""Decoders: backbone features and ASPP context -> the network's raw output maps at input resolution.

Every decoder is built as `Decoder(fine_channels, low_channels, context_channels, channels, outputs)`
(the backbone's stride-2 and stride-4 feature channels, the ASPP context channels, the decoder width
and `outputs`: output name -> channels) and called as `decoder(images, features, context)`, where
`features` holds the backbone's "fine" (stride 2) and "low" (stride 4) maps; it returns
{name: [B, outputs[name], H, W]} at the images' size. Importing this package registers them all.
"""
from embedseg.models.decoders.stride2 import Stride2Decoder
from embedseg.models.decoders.stride2_fullres_class import Stride2FullresClassDecoder
from embedseg.models.decoders.stride4 import Stride4Decoder

__all__ = ["Stride2Decoder", "Stride2FullresClassDecoder", "Stride4Decoder"]
