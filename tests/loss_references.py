"""Known answers for the vectorised losses: the same formulas written as Python loops over images,
instances and instance pairs, slow but easy to check against DESIGN.md and MetricLoss's docstring."""
from __future__ import annotations

import torch

from embedseg.losses import PixelSample
from embedseg.losses.metric import MIN_SQ_DISTANCE


def discriminative_loss_loop(embedding, instances, delta_v=0.5, delta_d=1.5, alpha=1.0, beta=1.0, gamma=0.001):
    """DESIGN.md's discriminative loss with Python loops over images, instances and instance pairs."""
    totals, n = {"var": 0.0, "dist": 0.0, "reg": 0.0}, 0
    for b in range(embedding.shape[0]):
        x = embedding[b].flatten(1).T
        lab = instances[b].flatten()
        ids = [i for i in lab.unique().tolist() if i > 0]
        if not ids:
            continue
        n += 1
        xs = [x[lab == i] for i in ids]
        mus = [xi.mean(0) for xi in xs]
        totals["var"] = totals["var"] + sum(
            ((mu - xi).norm(dim=1) - delta_v).clamp_min(0).pow(2).mean() for mu, xi in zip(mus, xs)) / len(ids)
        pairs = [(a, c) for a in range(len(ids)) for c in range(len(ids)) if a != c]
        if pairs:
            totals["dist"] = totals["dist"] + sum(
                (2 * delta_d - (mus[a] - mus[c]).norm()).clamp_min(0).pow(2) for a, c in pairs) / len(pairs)
        totals["reg"] = totals["reg"] + sum(mu.norm() for mu in mus) / len(ids)
    out = {k: v / max(n, 1) for k, v in totals.items()}
    out["loss"] = alpha * out["var"] + beta * out["dist"] + gamma * out["reg"]
    return out


def every_pixel_by_group(instances, include_background=True) -> list[dict]:
    """Per image {id: flat indices of all its pixels}: the sample when the budget covers every pixel."""
    samples = []
    for b in range(instances.shape[0]):
        lab = instances[b].flatten()
        ids = [i for i in lab.unique().tolist() if i > 0 or (include_background and i == 0)]
        samples.append({i: torch.nonzero(lab == i).squeeze(1) for i in ids})
    return samples


def groups_from_sample(sample: PixelSample) -> list[dict]:
    """The pixels drawn by embedseg's sample_pixels, per image as {id: flat pixel indices}."""
    out = []
    for b in range(sample.index.shape[0]):
        index, ids = sample.index[b][sample.valid[b]], sample.ids[b][sample.valid[b]]
        out.append({i: index[ids == i] for i in ids.unique().tolist()})
    return out


def metric_loss_loop(embedding, samples: list[dict]):
    """Fathi et al.'s weighted pair loss (MetricLoss's docstring) over the drawn pixels `samples`
    (per image {id: flat pixel indices}), with loops over images and group pairs.

    sigma = 2 / (1 + exp(d^2)) written out directly; d^2 of different-group pairs floored at
    MIN_SQ_DISTANCE as in the library (which also caps them at FAR_SQ_DISTANCE = 30: a difference
    below 2e-13 per pair).
    """
    sums = {"loss": [], "same": [], "diff": []}
    for b, groups in enumerate(samples):
        x = embedding[b].flatten(1).T
        xs = {i: x[pixels] for i, pixels in groups.items()}  # each group's embeddings, gathered once
        num = {"same": 0.0, "diff": 0.0}
        den = {"same": 0.0, "diff": 0.0}
        for a, xa in xs.items():
            for c, xc in xs.items():
                d2 = (xa[:, None, :] - xc[None, :, :]).pow(2).sum(-1)
                w = 1.0 / (len(xa) * len(xc))
                if a == c:
                    off_diagonal = ~torch.eye(len(xa), dtype=torch.bool)
                    loss = -torch.log(2 / (1 + torch.exp(d2)))[off_diagonal]
                    kind = "same"
                else:
                    sigma = 2 / (1 + torch.exp(d2.clamp_min(MIN_SQ_DISTANCE)))
                    loss = -torch.log(1 - sigma)
                    kind = "diff"
                num[kind] = num[kind] + w * loss.sum()
                den[kind] = den[kind] + w * loss.numel()
        for kind in ("same", "diff"):
            if den[kind] > 0:
                sums[kind].append(num[kind] / den[kind])
        if den["same"] + den["diff"] > 0:
            sums["loss"].append((num["same"] + num["diff"]) / (den["same"] + den["diff"]))
    zero = embedding.sum() * 0.0
    return {k: sum(v) / len(v) if v else zero for k, v in sums.items()}


def lovasz_hinge_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Berman et al.'s Lovasz hinge of one mask, written out for one image and one object."""
    errors = 1 - logits * (2 * labels - 1)
    errors, order = torch.sort(errors, descending=True)
    sorted_labels = labels[order]
    objects = sorted_labels.sum()
    jaccard = 1 - (objects - sorted_labels.cumsum(0)) / (objects + (1 - sorted_labels).cumsum(0))
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return torch.dot(torch.relu(errors), jaccard)


def spatial_loss_loop(embedding, seediness, instances, center="mean", coord_scale=None, foreground_weight=10.0):
    """SpatialEmbeddingLoss's terms (its defaults) by loops over images and instances, the Lovasz hinge over
    every pixel of the image."""
    b, w = embedding.shape[0], embedding.shape[3]
    instance_terms, smooth_terms, seed_terms = [], [], []
    for image in range(b):
        e, margin = embedding[image, :2].reshape(2, -1), embedding[image, 2:].reshape(embedding.shape[1] - 2, -1)
        ids, seed = instances[image].reshape(-1), seediness[image, 0].reshape(-1)
        labelled = ids >= 0
        target = torch.zeros_like(seed)
        hinges, smooths = [], []
        for k in sorted(set(ids[ids > 0].tolist())):
            mask = ids == k
            if center == "mean":
                centre = e[:, mask].mean(1)
            else:  # the pixel with the least sum of L1 distances to the others (first in raster order on ties)
                index = torch.nonzero(mask).squeeze(1)
                y, x = index // w, index % w
                cost = (y[:, None] - y[None]).abs().sum(1) + (x[:, None] - x[None]).abs().sum(1)
                best = index[torch.argmin(cost)]
                centre = coord_scale * torch.tensor([float(best // w), float(best % w)], dtype=e.dtype)
            sigma = margin[:, mask].mean(1)
            smooths.append((margin[:, mask] - sigma[:, None].detach()).pow(2).mean())
            kernel = torch.exp(-(sigma.exp()[:, None] * (e - centre[:, None]).pow(2)).sum(0))
            hinges.append(lovasz_hinge_reference((2 * kernel - 1)[labelled], mask[labelled].to(e.dtype)))
            target[mask] = kernel[mask].detach()
        if hinges:
            instance_terms.append(torch.stack(hinges).mean())
            smooth_terms.append(torch.stack(smooths).mean())
        weight = torch.where(ids > 0, foreground_weight, 1.0) * labelled
        seed_terms.append((weight * (seed - target).pow(2)).sum() / labelled.sum())
    instance, smooth = torch.stack(instance_terms).mean(), torch.stack(smooth_terms).mean()
    seed = torch.stack(seed_terms).mean()
    return {"loss": instance + 10.0 * smooth + seed, "instance": instance, "smooth": smooth, "seed": seed}
