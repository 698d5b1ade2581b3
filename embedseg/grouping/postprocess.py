"""Post-processing steps: (masks [K, H, W] bool, scores [K], outputs) -> (masks, scores).

Every grouper's proposals go through the steps its `postprocess` list names, in that order, before
classes and final scores are attached (embedseg.grouping.base). So a step written for one data set
serves every grouper. A step is a class registered with `@POSTPROCESS.register("name")`: its
__init__ takes and checks the step's parameters (the config names them), its __call__ maps the
masks and their scores to new ones and may read the network `outputs` (the embedding, say).
Scores here are the proposal's (seediness, membership); class confidence is applied after the chain.

    postprocess: [split_disconnected, {name: drop_small, min_size: 25},
                  {name: merge_continuous, threshold: 0.35}, {name: drop_relatively_small, fraction: 0.05}]
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from scipy import sparse
from scipy.sparse import csgraph

from embedseg.grouping.base import MIN_SIZES, as_tensor
from embedseg.grouping.registry import POSTPROCESS

# merge_continuous compares pixels this far apart across a border: an embedding predicted at
# stride 2 and upsampled bilinearly (the stride2 decoders) changes over steps
# of 2 px, so two adjacent pixels may show half the jump between two objects; 2 px spans it all.
CONTACT_STEP = 2
# merge_continuous joins two masks only over at least this many contact pairs: a corner of one
# or two pixels is no evidence of a shared border.
MIN_CONTACT = 3


@POSTPROCESS.register("split_disconnected")
class SplitDisconnected:
    """Every 4-connected part of every mask becomes a mask of its own, with its mask's score.

    Embeddings are not unique across a whole image: two far-apart objects that look alike may land
    in one cluster. A real object is connected, so its parts are split apart (follow with
    `drop_small` to drop the specks this leaves). Vectorised: the pixels of all masks are the nodes
    of one sparse graph whose edges join 4-neighbours inside the same mask; memory O(sum of areas).
    """

    def __call__(self, masks: torch.Tensor, scores: torch.Tensor, outputs: dict):
        _, h, w = masks.shape
        flat = torch.nonzero(masks.flatten()).squeeze(1).numpy()  # sorted (mask, y, x) codes
        if len(flat) == 0:
            return masks[:0], scores[:0]
        rows, cols = [], []
        for step, valid in ((1, flat % w < w - 1), (w, (flat // w) % h < h - 1)):  # right and down neighbours
            source = flat[valid]
            pos = np.searchsorted(flat, source + step)
            found = pos < len(flat)
            found[found] = flat[pos[found]] == source[found] + step
            rows.append(np.flatnonzero(valid)[found])
            cols.append(pos[found])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        graph = sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(flat), len(flat)))
        num_parts, part = csgraph.connected_components(graph, directed=False)
        parent = np.zeros(num_parts, np.int64)
        parent[part] = flat // (h * w)
        out = torch.zeros(num_parts, h * w, dtype=torch.bool)
        out[torch.from_numpy(part), torch.from_numpy(flat % (h * w))] = True
        return out.view(num_parts, h, w), scores[torch.from_numpy(parent)]


@POSTPROCESS.register("drop_small")
class DropSmall:
    """Drop the masks of fewer than `min_size` pixels."""

    search_space: ClassVar[dict[str, list]] = {"min_size": MIN_SIZES}

    def __init__(self, min_size: int):
        if min_size < 1:
            raise ValueError(f"drop_small: min_size must be >= 1 pixel, got {min_size}")
        self.min_size = min_size

    def __call__(self, masks: torch.Tensor, scores: torch.Tensor, outputs: dict):
        keep = masks.flatten(1).sum(1) >= self.min_size
        return masks[keep], scores[keep]


@POSTPROCESS.register("drop_relatively_small")
class DropRelativelySmall:
    """Drop the masks smaller than `fraction` x the median mask area of the image (the lower of the
    two middle areas for an even count, as torch.median).

    Objects of one image are of a size (nuclei of one modality, leaves of one plant), so a mask far
    smaller than the image's typical one is a fragment: the rim of a large object, or debris. A
    fixed `min_size` cannot tell: 30 px is a whole nucleus in one image and a fragment in the next.
    """

    search_space: ClassVar[dict[str, list]] = {"fraction": [0.02, 0.05, 0.1, 0.2]}

    def __init__(self, fraction: float):
        if not 0 < fraction < 1:
            raise ValueError(f"drop_relatively_small: fraction must be in (0, 1) of the median mask area, "
                             f"got {fraction}")
        self.fraction = fraction

    def __call__(self, masks: torch.Tensor, scores: torch.Tensor, outputs: dict):
        if len(masks) == 0:
            return masks, scores
        areas = masks.flatten(1).sum(1)
        keep = areas >= self.fraction * areas.float().median()
        return masks[keep], scores[keep]


@POSTPROCESS.register("merge_continuous")
class MergeContinuous:
    """Merge touching masks whose embedding runs on smoothly across their border.

    Position-aware embeddings spread over a long object when its offsets are imperfect, and
    mean-shift with one bandwidth then cuts the object into pieces. The border between two such
    pieces lies inside one object, where the embedding changes little from pixel to pixel; between
    two touching objects it jumps by about the distance of their means. So for every pair of masks
    with at least MIN_CONTACT pixel pairs (p in one, p + CONTACT_STEP px down or right in the
    other), the mean embedding distance over those pairs is the jump; pairs with a jump below
    `threshold` are merged, transitively. A merged mask is the union of its parts and scores the
    best of them. Meant for disjoint masks: where masks overlap, a pixel's border counts for the
    last mask that holds it.
    """

    search_space: ClassVar[dict[str, list]] = {"threshold": [0.2, 0.35, 0.5, 0.75, 1.0]}

    def __init__(self, threshold: float):
        if threshold <= 0:
            raise ValueError(f"merge_continuous: threshold must be a positive embedding distance, got {threshold}")
        self.threshold = threshold

    def __call__(self, masks: torch.Tensor, scores: torch.Tensor, outputs: dict):
        k, h, w = masks.shape
        if k < 2:
            return masks, scores
        which, pixels = torch.nonzero(masks.flatten(1), as_tuple=True)
        label = torch.zeros(h * w, dtype=torch.long)  # 0 = no mask
        label[pixels] = which + 1
        group = self._groups(label.view(h, w), as_tensor(outputs["embedding"]), k)
        if group is None:
            return masks, scores
        num_groups = int(group.max()) + 1
        merged = torch.zeros(num_groups, h * w, dtype=torch.bool)
        merged[group[which], pixels] = True
        best = torch.full((num_groups,), float("-inf")).scatter_reduce(0, group, scores.float(), "amax")
        return merged.view(num_groups, h, w), best

    def _groups(self, label: torch.Tensor, embedding: torch.Tensor, k: int) -> torch.Tensor | None:
        """The merged group [K] of each mask, or None when nothing merges."""
        s = CONTACT_STEP
        sources, targets, jumps = [], [], []
        down = (label[:-s], label[s:], embedding[:, :-s], embedding[:, s:])
        right = (label[:, :-s], label[:, s:], embedding[:, :, :-s], embedding[:, :, s:])
        for near, far, e_near, e_far in (down, right):
            border = (near > 0) & (far > 0) & (near != far)
            sources.append(near[border] - 1)
            targets.append(far[border] - 1)
            jumps.append((e_near[:, border] - e_far[:, border]).norm(dim=0))
        a, b, jump = torch.cat(sources), torch.cat(targets), torch.cat(jumps)
        pair = torch.minimum(a, b) * k + torch.maximum(a, b)
        pairs, index, contact = torch.unique(pair, return_inverse=True, return_counts=True)
        mean_jump = torch.zeros(len(pairs)).index_add_(0, index, jump) / contact
        joined = pairs[(mean_jump < self.threshold) & (contact >= MIN_CONTACT)].numpy()
        if len(joined) == 0:
            return None
        graph = sparse.coo_matrix((np.ones(len(joined), np.int8), (joined // k, joined % k)), shape=(k, k))
        return torch.from_numpy(csgraph.connected_components(graph, directed=False)[1])
