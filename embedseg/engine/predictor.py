"""Network inference on whole images of any size (padding, and overlapping tiles for large ones)."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F

from embedseg.data.transforms import image_to_tensor
from embedseg.engine.tta import average_over_transforms


def tile_starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length), consecutive tiles overlapping by
    at least `overlap`; every start is a multiple of `align` (length and tile must be too)."""
    if length <= tile:
        return [0]
    step = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def keep_bounds(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The part [lo, hi) of the axis that each tile writes: the overlap of two neighbours is split
    in its middle, so every pixel comes from the tile in which it lies farthest from the edge."""
    cuts = [0] + [(b + a + tile) // 2 for a, b in pairwise(starts)] + [length]
    return list(pairwise(cuts))


class Predictor:
    """Runs the network on one uint8 RGB image [H, W, 3] and returns the grouper inputs:

        {"embedding": float32 [D, H, W], "seediness": float32 [H, W],
         "semantic": float32 [C+1, H, W] softmax probabilities}

    The image is padded (reflect) to a multiple of `pad_to` so every stride divides it, and the
    outputs are cropped back. An image with a side longer than `tile_size` is run in square
    tiles of `tile_size` that overlap by at least `tile_overlap` pixels, with tile offsets on the
    `pad_to` grid so that every tile sees the same pixel phase as the whole image; the model's
    `tile_to_image(outputs, (y, x))` moves each tile's outputs to the image's coordinates. Each output
    pixel is taken from the tile whose centre it is nearest to (centre-crop stitching), so a
    fully-convolutional network whose receptive field radius is below tile_overlap / 2 gives the
    same output as untiled. DeepLab's receptive field is larger and its ASPP image pooling sees
    one tile only, so tiled values differ from untiled ones; hence tile only images too large to
    run whole, with large tiles and a large overlap. tile_size=None never tiles. The default tiles only
    images beyond 2048 pixels: below that a whole image fits in memory, and tiles would repeat the
    overlap's work for nothing. `channels_last` runs the network in
    that memory format (the config's train.channels_last; outputs are the same up to rounding).

    `tta` (the config's eval.tta) runs the network on the 8 flips and quarter turns of each image or
    tile and averages the outputs mapped back (embedseg.engine.tta): seediness, class probabilities
    and the embedding, whose first two channels are turned as position vectors when the model's
    `coord_scale` is above 0 (a model without that attribute has no positional channels), and whose
    channels 2, 3 are swapped back after a quarter turn with `axis_margins` (margins along y and x:
    the spatial loss with n_sigma 2).
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", pad_to: int = 32,
                 tile_size: int | None = 2048, tile_overlap: int = 512, channels_last: bool = False,
                 tta: bool = False, axis_margins: bool = False):
        if tile_size is not None and (tile_size < pad_to or tile_size % pad_to):
            raise ValueError(f"Predictor: tile_size = {tile_size} must be a positive multiple of pad_to = {pad_to}")
        if tile_size is not None and not 0 <= tile_overlap < tile_size:
            raise ValueError(f"Predictor: tile_overlap = {tile_overlap} must be in [0, tile_size = {tile_size})")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device, memory_format=self.memory_format)
        self.device = torch.device(device)
        self.pad_to, self.tile_size, self.tile_overlap = pad_to, tile_size, tile_overlap
        self.tta, self.axis_margins = tta, axis_margins

    def _network(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass of the network on x [1, 3, H, W], in float32, with class probabilities."""
        out = self.model(x.contiguous(memory_format=self.memory_format))
        return {"embedding": out["embedding"].float(), "seediness": out["seediness"].float(),
                "semantic": out["semantic"].float().softmax(1)}

    def _run(self, x: torch.Tensor, offset: tuple[int, int] = (0, 0)) -> dict[str, torch.Tensor]:
        """The outputs for `x`, a tile whose top-left pixel is pixel `offset` (y, x) of the image."""
        if self.tta:
            out = average_over_transforms(self._network, x, getattr(self.model, "coord_scale", 0.0), self.axis_margins)
        else:
            out = self._network(x)
        out = self.model.tile_to_image(out, offset)
        return {"embedding": out["embedding"][0].contiguous(), "seediness": out["seediness"][0, 0],
                "semantic": out["semantic"][0].contiguous()}

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        x = image_to_tensor(image)[None].to(self.device)
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.pad_to, (-w) % self.pad_to
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if self.tile_size is None or max(h, w) <= self.tile_size:
            return {k: v[..., :h, :w].cpu().numpy() for k, v in self._run(x).items()}

        padded_h, padded_w = x.shape[-2:]
        tile_h, tile_w = min(self.tile_size, padded_h), min(self.tile_size, padded_w)
        rows = tile_starts(padded_h, tile_h, self.tile_overlap, self.pad_to)
        cols = tile_starts(padded_w, tile_w, self.tile_overlap, self.pad_to)
        result: dict[str, np.ndarray] = {}
        for y, (y_lo, y_hi) in zip(rows, keep_bounds(rows, tile_h, padded_h)):
            y_hi = min(y_hi, h)
            for x0, (x_lo, x_hi) in zip(cols, keep_bounds(cols, tile_w, padded_w)):
                x_hi = min(x_hi, w)
                if y_lo >= y_hi or x_lo >= x_hi:  # this tile only holds padding
                    continue
                out = self._run(x[..., y:y + tile_h, x0:x0 + tile_w], offset=(y, x0))
                for key, value in out.items():
                    if key not in result:  # outputs are written in place, tile by tile
                        result[key] = np.empty(value.shape[:-2] + (h, w), np.float32)
                    result[key][..., y_lo:y_hi, x_lo:x_hi] = \
                        value[..., y_lo - y:y_hi - y, x_lo - x0:x_hi - x0].cpu().numpy()
        return result
