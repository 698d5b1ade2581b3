"""Test-time augmentation (eval.tta): 8 flips and quarter turns, outputs mapped back and averaged."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG
from PIL import Image
from torch import nn

from embedseg.cli import main
from embedseg.engine import run as run_module
from embedseg.engine.predictor import Predictor
from embedseg.engine.tta import TRANSFORMS, invert, transform, vectors_back
from embedseg.models import build_model
from embedseg.models.deeplab import DeepLabEmbedding


class PixelModel(DeepLabEmbedding):
    """A stand-in network with DeepLabEmbedding's positions (`add_positions`, `tile_to_image`).

    Channels 0, 1 of the embedding are s * (y, x) + s * (c - (y, x)) = s * c: every pixel points at
    the centre c, the brightest pixel of the input (in the frame of the input it is given), or with
    `planted=False` at itself (offset 0). Every other output is a function of the pixel's own values,
    so it turns and flips with the image. Counts its calls.
    """

    def __init__(self, coord_scale: float, planted: bool = True):
        super().__init__(nn.Identity(), nn.Identity(), nn.Identity(), coord_scale)
        self.planted, self.calls = planted, 0

    def forward(self, images):
        self.calls += 1
        b, _, h, w = images.shape
        brightest = images.sum(1).flatten(1).argmax(1)
        centre = torch.stack([brightest // w, brightest % w], 1).float()[:, :, None, None]
        ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        offsets = self.coord_scale * (centre - torch.stack([ys, xs])) if self.planted else torch.zeros(b, 2, h, w)
        embedding = self.add_positions(torch.cat([offsets, images, images ** 2], 1))
        return {"embedding": embedding, "seediness": torch.sigmoid(images.mean(1, keepdim=True)),
                "semantic": torch.cat([images, -images[:, :1]], 1)}


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 201, (h, w, 3), dtype=np.uint8)


def test_vectors_back_turns_each_transform_back():
    """Two marked pixels p, q of a non-square map: for each of the 8 transforms, the vector between
    where T puts them, turned back, is q - p. By hand: one quarter turn puts (y, x) of a map of width 5
    at (4 - x, y), so the vector (0, 3) from (0, 1) to (0, 4) becomes the one from (3, 0) to (0, 0),
    (-3, 0), and turned back it is (0, 3) again."""
    marks = torch.zeros(1, 3, 5)
    p, q = (0, 1), (2, 4)
    marks[0][p], marks[0][q] = 1.0, 2.0
    quarter = vectors_back(torch.tensor([-3.0, 0.0])[:, None, None], 1, False)
    assert quarter.flatten().tolist() == [0.0, 3.0]
    for k, flip in TRANSFORMS:
        moved = transform(marks, k, flip)[0]
        p_t, q_t = (torch.nonzero(moved == v)[0].float() for v in (1.0, 2.0))
        back = vectors_back((q_t - p_t)[:, None, None], k, flip).flatten()
        assert back.tolist() == [q[0] - p[0], q[1] - p[1]], (k, flip)
        assert torch.equal(invert(transform(marks, k, flip), k, flip), marks)


@pytest.mark.parametrize("coord_scale", [0.5, 0.1])
def test_tta_keeps_a_planted_centre_on_a_non_square_image(coord_scale):
    """Every pixel points at the brightest pixel c = (7, 12) of the image: with TTA channels 0, 1 are
    s * c at every pixel, though each of the 8 passes saw c elsewhere (turned, flipped, H and W swapped)."""
    img = image(50, 83)
    img[7, 12] = 255
    model = PixelModel(coord_scale)
    out = Predictor(model, tta=True)(img)
    assert model.calls == 8
    assert out["embedding"].shape == (8, 50, 83)
    np.testing.assert_allclose(out["embedding"][0], coord_scale * 7, atol=1e-5)
    np.testing.assert_allclose(out["embedding"][1], coord_scale * 12, atol=1e-5)
    np.testing.assert_allclose(out["embedding"][2:], Predictor(model)(img)["embedding"][2:], atol=1e-6)


@pytest.mark.parametrize("tiles", [{"tile_size": None}, {"tile_size": 64, "tile_overlap": 32}])
def test_tta_leaves_outputs_that_turn_with_the_image_unchanged(tiles):
    """Outputs that are functions of each pixel's own values and positions s * (y, x) with offset 0
    are the same after TTA (through tiles too, whose positions are moved to the image's frame)."""
    model = PixelModel(0.25, planted=False)
    img = image(150, 97)
    plain = Predictor(model, tile_size=None)(img)
    model.calls = 0
    augmented = Predictor(model, tta=True, **tiles)(img)
    assert model.calls == (8 if tiles["tile_size"] is None else 8 * 4 * 3)  # 4 x 3 tiles of 64 on 160 x 128
    for key in plain:
        assert augmented[key].shape == plain[key].shape
        np.testing.assert_allclose(augmented[key], plain[key], atol=1e-5, err_msg=key)


class AxisMarginModel(PixelModel):
    """Channels 2, 3 of the embedding are margins along y and x: the absolute central differences of
    the input's first channel down and across (zero beyond the border), which a quarter turn swaps
    exactly; channels 0, 1 are positions with offset 0."""

    def forward(self, images):
        out = super().forward(images)
        f = F.pad(images[:, :1], (1, 1, 1, 1))
        along_y, along_x = (f[:, :, 2:, 1:-1] - f[:, :, :-2, 1:-1]).abs(), (f[:, :, 1:-1, 2:] - f[:, :, 1:-1, :-2]).abs()
        out["embedding"] = torch.cat([out["embedding"][:, :2], along_y, along_x], 1)
        return out


def test_tta_swaps_margins_along_y_and_x_back_after_a_quarter_turn():
    """Margins that turn with the image come out of TTA unchanged only when the four passes with an odd
    number of quarter turns have them swapped back; without, each becomes the mean of the two."""
    model = AxisMarginModel(0.25, planted=False)
    img = image(40, 57)
    plain = Predictor(model)(img)["embedding"]
    np.testing.assert_allclose(Predictor(model, tta=True, axis_margins=True)(img)["embedding"], plain, atol=1e-5)
    unswapped = Predictor(model, tta=True)(img)["embedding"]
    np.testing.assert_allclose(unswapped[2], unswapped[3], atol=1e-5)
    assert not np.allclose(unswapped[2:], plain[2:], atol=0.1)


@pytest.mark.parametrize("coord_scale", [0.0, 0.1])
def test_tta_on_a_small_deeplab(coord_scale):
    model = build_model("deeplab", num_classes=2, backbone="resnet18", width=0.125, output_stride=16,
                        embedding_dim=4, coord_scale=coord_scale)
    out = Predictor(model, tta=True)(image(45, 70))
    assert out["embedding"].shape == (4, 45, 70) and out["seediness"].shape == (45, 70)
    assert out["semantic"].shape == (3, 45, 70)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())
    np.testing.assert_allclose(out["semantic"].sum(0), 1.0, atol=1e-5)
    assert 0 <= out["seediness"].min() and out["seediness"].max() <= 1


def test_eval_tta_reaches_every_command(tmp_path, monkeypatch, capsys):
    """--set eval.tta=true gives evaluate, compare-grouping and predict a TTA predictor; metrics.json
    and the output cache record it."""
    made = []

    class Recording(Predictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.tta)

    config, run, tta = tmp_path / "tiny.yaml", tmp_path / "run", ["--set", "eval.tta=true"]
    config.write_text(TINY_CONFIG)
    assert main(["train", str(config), "--out", str(run), "--no-eval", "--set", "train.steps=1"]) == 0
    monkeypatch.setattr(run_module, "Predictor", Recording)
    Image.fromarray(image(40, 56)).save(tmp_path / "a.png")

    assert main(["evaluate", str(run), "--grouping", "components", *tta]) == 0
    assert json.loads((run / "metrics.json").read_text())["val"]["components"]["scored_on"]["tta"] is True
    assert main(["evaluate", str(run), "--grouping", "components"]) == 0
    assert "replaced; the earlier entry was scored with another tta" in capsys.readouterr().out
    assert "tta" not in json.loads((run / "metrics.json").read_text())["val"]["components"]["scored_on"]
    assert main(["predict", str(run), str(tmp_path / "a.png"), "--out", str(tmp_path / "pred"), *tta]) == 0
    cache = ["--groupers", "components", "--cache", str(tmp_path / "cache")]
    assert main(["compare-grouping", str(run), *cache, *tta]) == 0
    assert made == [True, False, True, True]
    assert json.loads((tmp_path / "cache" / "cache.json").read_text())["key"]["tta"] is True
    assert main(["compare-grouping", str(run), *cache, "--overwrite"]) == 0  # the TTA pass is not reused without TTA
    assert "tta" not in json.loads((tmp_path / "cache" / "cache.json").read_text())["key"]
