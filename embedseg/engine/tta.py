"""Test-time augmentation: the network's outputs averaged over the 8 flips and quarter turns of an image.

Each transform T is a horizontal flip (or none) followed by `torch.rot90` by k = 0..3 quarter turns in
dims (-2, -1); every output of T(x) is mapped back with T^-1 before the 8 are averaged. Scalar maps
(seediness, class probabilities, embedding channels) only move back. The positional embedding channels
of a model with `coord_scale` s > 0 (see embedseg.models.deeplab) are s * (y, x) of the frame the
network saw plus an offset vector; the offsets move back, are turned back into the image's frame
(`vectors_back`), and s * (y, x) of the image's frame is added again. Margins along y and x (channels
2, 3 of the spatial loss with n_sigma 2) trade places under a quarter turn, so after an odd number of
turns they are swapped back.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from embedseg.models.deeplab import pixel_positions

# (quarter turns k, horizontal flip) of the 8 transforms; (0, False) is the identity.
TRANSFORMS = tuple((k, flip) for k in range(4) for flip in (False, True))


def transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """T(x): maps [..., H, W] flipped left-right (when `flip`), then turned by k quarter turns."""
    return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))


def invert(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """T^-1(y): maps [..., H', W'] of the transformed frame moved back to the frame of x."""
    y = torch.rot90(y, -k, dims=(-2, -1))
    return y.flip(-1) if flip else y


def vectors_back(vectors: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """(dy, dx) vectors [..., 2, H, W] measured in the transformed frame, expressed in the frame of x.

    torch.rot90(k=1, dims=(-2, -1)) moves the pixel (y, x) of a map of width W to (W - 1 - x, y), so it
    turns a vector (dy, dx) into (-dx, dy); one quarter turn back turns (dy, dx) into (dx, -dy). A
    horizontal flip turns (dy, dx) into (dy, -dx) and is its own inverse. T flips first and turns
    second, so going back undoes the k turns first and the flip second. Only the components change:
    move the maps back with `invert` as well.
    """
    dy, dx = vectors[..., 0, :, :], vectors[..., 1, :, :]
    for _ in range(k):
        dy, dx = dx, -dy
    return torch.stack([dy, -dx if flip else dx], dim=-3)


def embedding_back(embedding: torch.Tensor, k: int, flip: bool, coord_scale: float,
                   axis_margins: bool = False) -> torch.Tensor:
    """The embedding [B, D, H', W'] of T(x) in the frame of x, with positions s * (y, x) of that frame
    (and, with `axis_margins`, channels 2 and 3 swapped after an odd number of quarter turns)."""
    back = invert(embedding, k, flip)
    if axis_margins and k % 2:
        back = back[:, [0, 1, 3, 2, *range(4, back.shape[1])]]
    if coord_scale == 0:
        return back
    offsets = invert(embedding[:, :2] - coord_scale * pixel_positions(embedding), k, flip)
    return torch.cat([vectors_back(offsets, k, flip) + coord_scale * pixel_positions(back), back[:, 2:]], 1)


def average_over_transforms(run: Callable[[torch.Tensor], dict[str, torch.Tensor]], x: torch.Tensor,
                            coord_scale: float, axis_margins: bool = False) -> dict[str, torch.Tensor]:
    """The mean over the 8 transforms T of run(T(x)) mapped back to x's frame.

    `run` maps images [B, 3, H, W] to {"embedding": [B, D, H, W], "seediness": [B, 1, H, W],
    "semantic": [B, C+1, H, W]} (probabilities, so that the mean is one too); `coord_scale` is the
    model's (0 when no embedding channel is positional); `axis_margins`: channels 2, 3 are margins
    along y and x (module docstring).
    """
    total: dict[str, torch.Tensor] = {}
    for k, flip in TRANSFORMS:
        out = run(transform(x, k, flip))
        back = {key: invert(value, k, flip) for key, value in out.items() if key != "embedding"}
        back["embedding"] = embedding_back(out["embedding"], k, flip, coord_scale, axis_margins)
        for key, value in back.items():
            total[key] = total[key] + value if key in total else value
    return {key: value / len(TRANSFORMS) for key, value in total.items()}
