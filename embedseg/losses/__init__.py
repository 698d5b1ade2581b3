from embedseg.losses.base import LOSSES
from embedseg.losses.criterion import Criterion, build_criterion
from embedseg.losses.discriminative import DiscriminativeLoss
from embedseg.losses.seediness import SeedDistanceLoss
from embedseg.losses.semantic import SemanticCrossEntropy


def build_loss(name: str, **params):
    return LOSSES.build(name, **params)


__all__ = ["LOSSES", "Criterion", "DiscriminativeLoss", "SeedDistanceLoss", "SemanticCrossEntropy",
           "build_criterion", "build_loss"]
