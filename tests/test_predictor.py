"""Whole-image inference: padding, tiling with overlap and centre-crop stitching."""
from itertools import pairwise

import numpy as np
import pytest
import torch
from torch import nn

from embedseg.engine.predictor import Predictor, keep_bounds, tile_starts
from embedseg.models import build_model


class ToyFCN(nn.Module):
    """Fully convolutional, stride 2 inside, receptive field radius 7 px; counts its calls."""

    def __init__(self, dim=4, classes=2):
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.emb, self.seed, self.sem = nn.Conv2d(8, dim, 1), nn.Conv2d(8, 1, 1), nn.Conv2d(8, classes + 1, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        f = nn.functional.interpolate(self.down(x), scale_factor=2, mode="nearest")
        return {"embedding": self.emb(f), "seediness": torch.sigmoid(self.seed(f)), "semantic": self.sem(f)}

    def tile_to_image(self, outputs, offset):
        return outputs  # no output depends on where the tile lies


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("length,tile,overlap", [(64, 64, 16), (96, 64, 32), (224, 64, 32), (1408, 1024, 256),
                                                 (320, 128, 0)])
def test_tiles_cover_every_pixel_once_on_the_grid(length, tile, overlap):
    starts = tile_starts(length, tile, overlap, align=32)
    assert starts[0] == 0 and starts[-1] + tile == length and all(s % 32 == 0 for s in starts)
    assert all(a + tile - b >= overlap for a, b in pairwise(starts))  # neighbours overlap enough
    bounds = keep_bounds(starts, tile, length)
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(hi == lo for (_, hi), (lo, _) in pairwise(bounds))  # contiguous, no pixel twice
    assert all(s <= lo < hi <= s + tile for s, (lo, hi) in zip(starts, bounds))  # inside its own tile


def test_keep_bounds_split_overlaps_in_the_middle():
    assert tile_starts(224, 64, 32, align=32) == [0, 32, 64, 96, 128, 160]
    assert keep_bounds([0, 32, 64], 64, 128) == [(0, 48), (48, 80), (80, 128)]


@pytest.mark.parametrize("h,w", [(150, 97), (97, 201), (64, 130)])
def test_tiled_equals_untiled_for_a_small_receptive_field(h, w):
    model = ToyFCN()
    img = image(h, w)
    whole = Predictor(model, tile_size=None)(img)
    model.calls = 0
    tiled = Predictor(model, tile_size=64, tile_overlap=32)(img)
    assert model.calls > 1  # it really tiled
    for key in ("embedding", "seediness", "semantic"):
        assert tiled[key].shape == whole[key].shape and tiled[key].dtype == np.float32
        np.testing.assert_allclose(tiled[key], whole[key], atol=1e-5, err_msg=key)


def test_output_shapes_for_odd_sizes():
    model = ToyFCN(dim=5, classes=3)
    for h, w in ((37, 53), (1, 40), (33, 31)):
        out = Predictor(model)(image(h, w))
        assert out["embedding"].shape == (5, h, w) and out["seediness"].shape == (h, w)
        assert out["semantic"].shape == (4, h, w)
        np.testing.assert_allclose(out["semantic"].sum(0), 1.0, atol=1e-5)


def test_deeplab_runs_tiled_on_odd_sizes():
    """The real network through tiles (its ASPP image pooling sees one tile, so values differ from
    the untiled run: only shapes and the stitching are checked here)."""
    model = build_model("deeplab", num_classes=2, backbone="resnet18", width=0.125, output_stride=16,
                        embedding_dim=4)
    out = Predictor(model, tile_size=96, tile_overlap=64)(image(101, 161))
    assert out["embedding"].shape == (4, 101, 161) and out["semantic"].shape == (3, 101, 161)
    assert all(np.isfinite(v).all() for v in out.values())


def test_channels_last_gives_the_same_outputs():
    model = build_model("deeplab", num_classes=2, backbone="resnet18", width=0.125, output_stride=8,
                        embedding_dim=4, coord_scale=0.1, decoder="stride2_fullres_class")
    plain = Predictor(model)(image(70, 90))
    fast = Predictor(model, channels_last=True)(image(70, 90))
    for key in plain:
        np.testing.assert_allclose(fast[key], plain[key], atol=1e-4, err_msg=key)


def test_bad_tile_parameters():
    with pytest.raises(ValueError, match="tile_size = 100 must be a positive multiple of pad_to = 32"):
        Predictor(ToyFCN(), tile_size=100)
    with pytest.raises(ValueError, match=r"tile_overlap = 64 must be in \[0, tile_size = 64\)"):
        Predictor(ToyFCN(), tile_size=64, tile_overlap=64)
