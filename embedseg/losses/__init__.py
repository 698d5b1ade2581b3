"""Loss terms; importing this registers them all (see `embedseg.losses.registry` for what a loss declares)."""
from embedseg.losses.base import PixelSample, sample_pixels
from embedseg.losses.criterion import Criterion, WeightRamp, build_criterion
from embedseg.losses.discriminative import DiscriminativeLoss
from embedseg.losses.metric import MetricLoss, pair_similarity
from embedseg.losses.registry import LOSSES
from embedseg.losses.seediness import SeedDistanceLoss, SeedIoULoss
from embedseg.losses.semantic import SemanticCrossEntropy
from embedseg.losses.spatial import SpatialEmbeddingLoss


def build_loss(name: str, **params):
    return LOSSES.build(name, **params)


__all__ = ["LOSSES", "Criterion", "DiscriminativeLoss", "MetricLoss", "PixelSample", "SeedDistanceLoss",
           "SeedIoULoss", "SemanticCrossEntropy", "SpatialEmbeddingLoss", "WeightRamp", "build_criterion", "build_loss",
           "pair_similarity", "sample_pixels"]
