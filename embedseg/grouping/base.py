"""The Grouper contract: network outputs of one image -> scored, classed Instances.

    outputs = {"embedding": [D, H, W], "seediness": [H, W] in [0, 1] (optional),
               "semantic": [C+1, H, W] class probabilities, channel 0 = background (optional)}
    grouper(outputs) -> Instances

Arrays may be numpy or torch; groupers work in torch on the CPU. A new grouper is one new file
with `@GROUPERS.register("name")` on a class whose __call__ follows the contract above.

The helpers below are shared by the groupers: the foreground pixels and their embeddings,
squared distances by matrix products, masks from a pixel -> cluster assignment, class and score
of each mask, and mask IoU / non-maximum suppression.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.sparse import csgraph

from embedseg.registry import Registry
from embedseg.structures import Instances

GROUPERS = Registry("grouper")


def as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu()
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)  # no copy for float32 numpy arrays


def foreground_mask(outputs: dict, seediness_threshold: float = 0.5) -> torch.Tensor:
    """[H, W] bool: pixels whose most likely class is not background (or seediness above threshold)."""
    if "semantic" in outputs:
        probs = as_tensor(outputs["semantic"])
        return probs[1:].amax(0) > probs[0]  # = argmax != 0 (ties go to background), 100x faster
    if "seediness" in outputs:
        return as_tensor(outputs["seediness"]) > seediness_threshold
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


def squared_distances(x: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||x_i - c_k||^2 as [N, K] from one matrix product (clamped at 0 against rounding)."""
    x_sq = x.pow(2).sum(1) if x_sq is None else x_sq
    return (x_sq[:, None] - 2.0 * (x @ centres.T) + centres.pow(2).sum(1)[None]).clamp_min_(0)


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


def split_disconnected(masks: torch.Tensor, scores: torch.Tensor,
                       min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Every 4-connected part of every mask [K, H, W] as a mask of its own, with its mask's score.

    Embeddings are not unique across a whole image: two far-apart objects that look alike may land
    in one cluster. A real object is connected, so its parts are split apart (parts smaller than
    `min_size` pixels are dropped). Vectorised: the pixels of all masks are the nodes of one sparse
    graph whose edges join 4-neighbours inside the same mask; memory O(sum of mask areas).
    """
    k, h, w = masks.shape
    flat = torch.nonzero(masks.flatten()).squeeze(1).numpy()  # sorted (mask, y, x) codes
    if len(flat) == 0:
        return masks[:0], scores[:0]
    edges = []
    for step, valid in ((1, flat % w < w - 1), (w, (flat // w) % h < h - 1)):  # right and down neighbours
        source = flat[valid]
        pos = np.searchsorted(flat, source + step)
        found = pos < len(flat)
        found[found] = flat[pos[found]] == source[found] + step
        edges.append((np.flatnonzero(valid)[found], pos[found]))
    rows = np.concatenate([e[0] for e in edges])
    cols = np.concatenate([e[1] for e in edges])
    graph = sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(flat), len(flat)))
    _, part = csgraph.connected_components(graph, directed=False)
    sizes = np.bincount(part)
    keep = sizes >= max(1, min_size)
    new_id = np.cumsum(keep) - 1
    pixels = keep[part]
    parent = np.zeros(len(sizes), np.int64)
    parent[part] = flat // (h * w)
    out = torch.zeros(int(keep.sum()), h * w, dtype=torch.bool)
    out[torch.from_numpy(new_id[part[pixels]]), torch.from_numpy(flat[pixels] % (h * w))] = True
    return out.view(-1, h, w), scores[torch.from_numpy(parent[keep])]


def check_min_relative_size(fraction: float) -> float:
    """`fraction` when it is a valid `min_relative_size` (a fraction in [0, 1) of the median area), else ValueError."""
    if not 0 <= fraction < 1:
        raise ValueError(f"min_relative_size must be a fraction in [0, 1) of the median instance area, got {fraction}")
    return fraction


def drop_relatively_small(masks: torch.Tensor, scores: torch.Tensor,
                          fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the masks [K, H, W] smaller than `fraction` x the median mask area of the image (the lower
    of the two middle areas for an even K, as torch.median).

    Objects of one image are of a size (nuclei of one modality, leaves of one plant), so a mask far
    smaller than the image's typical one is a fragment: the rim of a large object, or debris. A
    fixed `min_size` cannot tell: 30 px is a whole nucleus in one image and a fragment in the next.
    """
    if fraction <= 0 or len(masks) == 0:
        return masks, scores
    areas = masks.flatten(1).sum(1)
    keep = areas >= fraction * areas.float().median()
    return masks[keep], scores[keep]


def merge_continuous(masks: torch.Tensor, scores: torch.Tensor, embedding, threshold: float, step: int = 2,
                     min_contact: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge touching masks [K, H, W] whose embedding [D, H, W] runs on smoothly across their border.

    Position-aware embeddings spread over a long object when its offsets are imperfect, and
    mean-shift with one bandwidth then cuts the object into pieces. The border between two such
    pieces lies inside one object, where the embedding changes little from pixel to pixel; between
    two touching objects it jumps by about the distance of their means. So for every pair of masks
    with at least `min_contact` pixel pairs (p in one, p + `step` px down or right in the other),
    the mean embedding distance over those pairs is the jump; pairs with a jump below `threshold`
    are merged, transitively. `step` 2 spans the edge of an embedding upsampled from stride 2.
    Masks must not overlap. A merged mask scores the best of its parts.
    """
    k, h, w = masks.shape
    if k < 2:
        return masks, scores
    embedding = as_tensor(embedding)
    which, ys, xs = torch.nonzero(masks, as_tuple=True)
    label = torch.zeros(h, w, dtype=torch.long)  # 0 = no mask
    label[ys, xs] = which + 1
    sources, targets, jumps = [], [], []
    down = (label[:-step], label[step:], embedding[:, :-step], embedding[:, step:])
    right = (label[:, :-step], label[:, step:], embedding[:, :, :-step], embedding[:, :, step:])
    for near, far, e_near, e_far in (down, right):
        border = (near > 0) & (far > 0) & (near != far)
        sources.append(near[border] - 1)
        targets.append(far[border] - 1)
        jumps.append((e_near[:, border] - e_far[:, border]).norm(dim=0))
    a, b, jump = torch.cat(sources), torch.cat(targets), torch.cat(jumps)
    pair = torch.minimum(a, b) * k + torch.maximum(a, b)
    pairs, index, contact = torch.unique(pair, return_inverse=True, return_counts=True)
    mean_jump = torch.zeros(len(pairs)).index_add_(0, index, jump) / contact
    joined = pairs[(mean_jump < threshold) & (contact >= min_contact)].numpy()
    if len(joined) == 0:
        return masks, scores
    graph = sparse.coo_matrix((np.ones(len(joined), np.int8), (joined // k, joined % k)), shape=(k, k))
    num_groups, group = csgraph.connected_components(graph, directed=False)
    group = torch.from_numpy(group)
    merged = torch.zeros(num_groups, h * w, dtype=torch.bool)
    flat_label = label.flatten()
    pixels = torch.nonzero(flat_label).squeeze(1)
    merged[group[flat_label[pixels] - 1], pixels] = True
    best = torch.full((num_groups,), float("-inf")).scatter_reduce(0, group, scores.float(), "amax")
    return merged.view(num_groups, h, w), best


def classify(masks: torch.Tensor, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Class (1..C) and class confidence of each mask [K, H, W] from the mean semantic probabilities."""
    k = len(masks)
    if "semantic" not in outputs or k == 0:
        return torch.ones(k, dtype=torch.long), torch.ones(k)
    probs = as_tensor(outputs["semantic"])[1:].flatten(1).T  # [H*W, C], background dropped
    mean_probs = []
    for chunk in masks.flatten(1).split(64):  # 64 float masks at a time bound the memory on big images
        m = chunk.float()
        mean_probs.append((m @ probs) / m.sum(1, keepdim=True).clamp_min(1))  # [k, C]
    confidence, cls = torch.cat(mean_probs).max(1)
    return cls + 1, confidence


def instances_from_masks(masks: torch.Tensor, seed_scores: torch.Tensor, outputs: dict) -> Instances:
    """Attach classes and scores (seed score x class confidence) to boolean masks [K, H, W]."""
    if len(masks) == 0:
        return Instances.empty(*masks.shape[1:])
    labels, confidence = classify(masks, outputs)
    scores = seed_scores * confidence
    return Instances(masks.numpy(), scores.numpy(), labels.numpy())


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [K, M] of boolean masks a [K, P] and b [M, P] (any pixel layout), by one matrix product."""
    same = b is a
    a = a.float()
    b = a if same else b.float()
    intersection = a @ b.T
    area_a = a.sum(1)
    area_b = area_a if same else b.sum(1)
    union = area_a[:, None] + area_b[None] - intersection
    return intersection / union.clamp_min(1)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (best score first) of the masks [K, P] kept by greedy non-maximum suppression.

    A mask is dropped when its IoU with a better-scored kept mask exceeds `iou_threshold`; ties in
    score keep the earlier mask.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    ordered = masks[order]
    overlaps = (mask_iou(ordered, ordered) > iou_threshold).numpy()
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):  # sequential by nature, but only K steps over precomputed rows
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[torch.as_tensor(keep, dtype=torch.long)]
