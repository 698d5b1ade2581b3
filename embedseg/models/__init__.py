from embedseg.models.backbones import BACKBONES, DilatedResNet
from embedseg.models.deeplab import MODELS, DeepLabEmbedding


def build_model(name: str, num_classes: int, **params):
    return MODELS.build(name, num_classes=num_classes, **params)


__all__ = ["BACKBONES", "MODELS", "DilatedResNet", "DeepLabEmbedding", "build_model"]
