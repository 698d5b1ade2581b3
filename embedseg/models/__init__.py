"""Networks, backbones and decoders; importing this registers them all (see `embedseg.models.registry`)."""
from embedseg.models import decoders  # noqa: F401  (registers the decoders)
from embedseg.models.backbones import DilatedResNet
from embedseg.models.deeplab import DeepLabEmbedding
from embedseg.models.registry import BACKBONES, DECODERS, MODELS


def build_model(name: str, num_classes: int, **params):
    return MODELS.build(name, num_classes=num_classes, **params)


__all__ = ["BACKBONES", "DECODERS", "MODELS", "DeepLabEmbedding", "DilatedResNet", "build_model"]
