"""Per-pixel class loss for the semantic head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedseg.losses.base import LOSSES


@LOSSES.register("cross_entropy")
class SemanticCrossEntropy(nn.Module):
    """Cross-entropy of the C+1 class logits (0 = background); pixels with class < 0 are ignored.

    `class_weights` (C+1 values) rebalances rare classes against the background.
    """

    def __init__(self, class_weights: list[float] | None = None):
        super().__init__()
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if (target >= 0).any():
            loss = F.cross_entropy(logits, target.clamp_min(-1), weight=self.weight, ignore_index=-1)
        else:
            loss = logits.sum() * 0.0
        return {"loss": loss}

    def compute(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        return self(outputs["semantic"], batch["semantic"])
