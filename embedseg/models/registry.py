"""The model package's registries: whole networks, backbones and decoders.

A model maps images [B,3,H,W] to {"embedding": [B,D,H,W], "seediness": [B,1,H,W] in [0,1],
"semantic": [B,C+1,H,W] logits} and has `tile_to_image(outputs, (y, x))`, which the predictor calls
on the outputs of a tile whose top-left pixel is (y, x) of the image (identity for a model whose
outputs do not depend on the position). Backbones are built as `builder(width, output_stride)` and
return {"fine", "low", "high"} feature maps at strides 2, 4 and `output_stride`, with attributes
`fine_channels`, `low_channels`, `high_channels`; decoders are described in `embedseg.models.decoders`.

Adding a component is one new module with `@MODELS.register("name")`, `@BACKBONES.register("name")`
or `@DECODERS.register("name")` on its builder, imported in `embedseg/models/__init__.py` (decoders:
in `embedseg/models/decoders/__init__.py`); the tests run every registered entry.
"""
from __future__ import annotations

from embedseg.registry import Registry

MODELS = Registry("model")
BACKBONES = Registry("backbone")
DECODERS = Registry("decoder")
