"""The Grouper protocol: network outputs of one image -> scored, classed Instances.

    outputs = {"embedding": [D, H, W], "seediness": [H, W] in [0, 1] (optional),
               "semantic": [C+1, H, W] class probabilities, channel 0 = background (optional)}
    grouper(outputs) -> Instances

Every grouper runs the same three stages (`Grouper.__call__`):

1. `propose(outputs)`: the grouper's own algorithm, embeddings -> boolean masks [K, H, W] and a
   score [K] each (the seed's seediness, a cluster's membership strength, ...);
2. the `postprocess` chain: registered steps (embedseg.grouping.postprocess) that each map
   (masks, scores, outputs) to new (masks, scores), in the order the config lists them;
3. `instances_from_masks`: each mask's class and class confidence from the mean semantic
   probabilities inside it; final score = proposal score x class confidence. `select` then keeps
   what the grouper wants of the scored instances (all of them by default).

Arrays may be numpy or torch; groupers work in torch on the CPU. A new grouper is one new file:
a `Grouper` subclass registered with `@GROUPERS.register("name")` (embedseg.grouping.registry)
whose __init__ takes its parameters plus `postprocess` and whose `propose` uses the pixel helpers
below (the foreground pixels and their embeddings, sampling, masks from a pixel -> cluster
assignment) and `embedseg.distances.squared_distances`.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from embedseg.grouping.registry import build_postprocess
from embedseg.structures import Instances

# Object sizes in pixels that `embedseg tune` tries for min_size parameters: from debris in a
# 256 px nucleus image to the smallest leaf of a 500 px plant image.
MIN_SIZES = [5, 10, 20, 40, 80, 160, 320]


class Grouper:
    """Base of every grouper: `propose`, then the post-processing chain, then classes and scores.

    `search_space` maps parameters to the values `embedseg tune` tries (embedseg.engine.tuning);
    each grouper declares its own.
    """

    search_space: ClassVar[dict[str, list]] = {}
    # a grouper that reads ground truth (eval.oracle) is left out of "every grouper" defaults
    oracle: ClassVar[bool] = False
    # the outputs it reads: a learned distance embedding (False), the spatial loss's positions and
    # margins (True; embedseg.losses.spatial), or the foreground alone (None: any run)
    spatial: ClassVar[bool | None] = False

    def __init__(self, postprocess: list[str | dict] | None = None):
        self.postprocess = build_postprocess(postprocess)  # None: no post-processing

    def propose(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean masks [K, H, W] and their scores [K] (float) found in the network outputs of one image."""
        raise NotImplementedError

    def select(self, instances: Instances) -> Instances:
        """The scored instances the grouper keeps: all of them unless a grouper says otherwise."""
        return instances

    def __call__(self, outputs: dict) -> Instances:
        masks, scores = self.propose(outputs)
        for step in self.postprocess:
            masks, scores = step(masks, scores, outputs)
        return self.select(instances_from_masks(masks, scores, outputs))


def no_masks(image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The proposal of an image where nothing was found: masks [0, H, W] and scores [0]."""
    return torch.zeros(0, *image_size, dtype=torch.bool), torch.zeros(0)


def as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu()
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)  # no copy for float32 numpy arrays


def foreground_mask(outputs: dict) -> torch.Tensor:
    """[H, W] bool: pixels whose most likely class is not background (without class scores: seediness > 0.5)."""
    if "semantic" in outputs:
        probs = as_tensor(outputs["semantic"])
        return probs[1:].amax(0) > probs[0]  # = argmax != 0 (ties go to background), without the argmax
    if "seediness" in outputs:
        return as_tensor(outputs["seediness"]) > 0.5
    raise KeyError("grouping needs 'semantic' or 'seediness' in outputs to find the foreground")


def foreground_embeddings(outputs: dict) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(pixel_index [N] into the flattened image, embeddings x [N, D], (H, W)) of the foreground."""
    embedding = as_tensor(outputs["embedding"])
    if embedding.ndim != 3:
        raise ValueError(f"outputs['embedding'] must be [D, H, W], got shape {tuple(embedding.shape)}")
    _, h, w = embedding.shape
    fg = foreground_mask(outputs).flatten()
    if fg.numel() != h * w:
        raise ValueError(f"foreground map has {fg.numel()} pixels but the embedding is {h}x{w}")
    pixel_index = torch.nonzero(fg).squeeze(1)
    return pixel_index, embedding.flatten(1).T[pixel_index].contiguous(), (h, w)


def pixel_values(outputs: dict, key: str, pixel_index: torch.Tensor) -> torch.Tensor | None:
    """Values [N] of a per-pixel map such as "seediness" at `pixel_index`, or None when absent."""
    return as_tensor(outputs[key]).flatten()[pixel_index] if key in outputs else None


def random_generator(random_state: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(random_state))


def subsample(n: int, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of `size` of range(n) drawn without replacement (all of them when n <= size)."""
    if size is None or n <= size:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size].sort().values


def masks_from_assignment(assignment: torch.Tensor, pixel_index: torch.Tensor, num_clusters: int,
                          image_size: tuple[int, int], min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks [K', H, W] of the clusters with at least `min_size` pixels, and their cluster ids [K'].

    `assignment` [N] gives the cluster (0..num_clusters-1, or -1 for none) of each foreground pixel.
    """
    h, w = image_size
    assigned = assignment >= 0
    sizes = torch.bincount(assignment[assigned], minlength=num_clusters)
    kept = torch.nonzero(sizes >= max(1, min_size)).squeeze(1)
    new_id = torch.full((num_clusters,), -1, dtype=torch.long)
    new_id[kept] = torch.arange(len(kept))
    target = new_id[assignment.clamp_min(0)]
    valid = assigned & (target >= 0)
    masks = torch.zeros(len(kept), h * w, dtype=torch.bool)
    masks[target[valid], pixel_index[valid]] = True
    return masks.view(len(kept), h, w), kept


def classify(masks: torch.Tensor, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Class (1..C) and class confidence of each mask [K, H, W] from the mean semantic probabilities."""
    k = len(masks)
    if "semantic" not in outputs or k == 0:
        return torch.ones(k, dtype=torch.long), torch.ones(k)
    probs = as_tensor(outputs["semantic"])[1:].flatten(1).T  # [H*W, C], background dropped
    owner, pixel = torch.nonzero(masks.flatten(1), as_tuple=True)  # work in the mask pixels, not K x H x W
    sums = probs.new_zeros(k, probs.shape[1], dtype=torch.float64).index_add_(0, owner, probs[pixel].double())
    mean_probs = sums / torch.bincount(owner, minlength=k).clamp_min(1).unsqueeze(1)
    confidence, cls = mean_probs.float().max(1)
    return cls + 1, confidence


def instances_from_masks(masks: torch.Tensor, seed_scores: torch.Tensor, outputs: dict) -> Instances:
    """Attach classes and scores (seed score x class confidence) to boolean masks [K, H, W]."""
    if len(masks) == 0:
        return Instances.empty(*masks.shape[1:])
    labels, confidence = classify(masks, outputs)
    scores = seed_scores * confidence
    return Instances(masks.numpy(), scores.numpy(), labels.numpy())
