"""The Grouper contract: network outputs of one image -> scored, classed Instances.

    outputs = {"embedding": [D, H, W], "seediness": [H, W] in [0, 1] (optional),
               "semantic": [C+1, H, W] class probabilities, channel 0 = background (optional)}
    grouper(outputs) -> Instances

Arrays may be numpy or torch; groupers work in torch on the CPU. A new grouper is one new file
with `@GROUPERS.register("name")` on a class whose __call__ follows the contract above.
"""
from __future__ import annotations

import numpy as np
import torch

from embedseg.registry import Registry
from embedseg.structures import Instances

GROUPERS = Registry("grouper")


def as_tensor(x) -> torch.Tensor:
    return x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def foreground_mask(outputs: dict, seediness_threshold: float = 0.5) -> torch.Tensor:
    """[H, W] bool: pixels whose most likely class is not background (or seediness above threshold)."""
    if "semantic" in outputs:
        return as_tensor(outputs["semantic"]).argmax(0) != 0
    if "seediness" in outputs:
        return as_tensor(outputs["seediness"]) > seediness_threshold
    raise KeyError("grouping needs 'semantic' or 'seediness' in outputs to find the foreground")


def classify(masks: torch.Tensor, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Class (1..C) and class confidence of each mask [K, H, W] from the mean semantic probabilities."""
    k = len(masks)
    if "semantic" not in outputs or k == 0:
        return torch.ones(k, dtype=torch.long), torch.ones(k)
    probs = as_tensor(outputs["semantic"])[1:].flatten(1)  # [C, H*W], background dropped
    m = masks.flatten(1).float()  # [K, H*W]
    mean_probs = (m @ probs.T) / m.sum(1, keepdim=True).clamp_min(1)  # [K, C]
    confidence, cls = mean_probs.max(1)
    return cls + 1, confidence


def instances_from_masks(masks: torch.Tensor, seed_scores: torch.Tensor, outputs: dict) -> Instances:
    """Attach classes and scores (seed score x class confidence) to boolean masks [K, H, W]."""
    labels, confidence = classify(masks, outputs)
    scores = seed_scores * confidence
    return Instances(masks.numpy(), scores.numpy(), labels.numpy())
