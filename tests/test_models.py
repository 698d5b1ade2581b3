"""Backbones and the DeepLab embedding network: shapes, strides, every registered entry."""
from __future__ import annotations

import pytest
import torch

from embedseg.models import BACKBONES, MODELS, build_model


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("output_stride", [8, 16])
def test_every_backbone_has_the_promised_strides(name, output_stride):
    net = BACKBONES.build(name, width=0.125, output_stride=output_stride)
    feats = net(torch.zeros(1, 3, 64, 64))
    assert feats["fine"].shape[-2:] == (32, 32) and feats["fine"].shape[1] == net.fine_channels
    assert feats["low"].shape[-2:] == (16, 16)
    assert feats["high"].shape[-2:] == (64 // output_stride, 64 // output_stride)
    assert feats["low"].shape[1] == net.low_channels and feats["high"].shape[1] == net.high_channels


def test_depths_differ_and_width_scales_channels():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    r18, r34, r50 = (BACKBONES.build(n, width=0.25) for n in ("resnet18", "resnet34", "resnet50"))
    assert count(r18) < count(r34) < count(r50)
    assert BACKBONES.build("resnet50", width=0.25).high_channels == 512  # 512 * 0.25 * expansion 4
    with pytest.raises(ValueError, match="output_stride"):
        BACKBONES.build("resnet18", output_stride=4)


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("size", [(64, 64), (50, 77)])
@pytest.mark.parametrize("head_stride", [4, 2, 1])
def test_every_model_predicts_at_input_resolution(name, size, head_stride):
    model = build_model(name, num_classes=3, backbone="resnet18", width=0.125, embedding_dim=16, head_stride=head_stride)
    out = model(torch.randn(2, 3, *size))
    assert out["embedding"].shape == (2, 16, *size)
    assert out["seediness"].shape == (2, 1, *size)
    assert out["semantic"].shape == (2, 4, *size)
    assert out["seediness"].min() >= 0 and out["seediness"].max() <= 1
    sum(v.mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_default_embedding_dimension_is_64():
    model = build_model("deeplab", num_classes=1, backbone="resnet18", width=0.125)
    assert model(torch.zeros(1, 3, 32, 32))["embedding"].shape[1] == 64


def test_semi_convolutional_channels_add_the_pixel_position():
    model = build_model("deeplab", num_classes=1, backbone="resnet18", width=0.125, embedding_dim=4, coord_scale=0.5)
    torch.nn.init.zeros_(model.embedding_head.out.weight)
    torch.nn.init.zeros_(model.embedding_head.out.bias)
    emb = model.eval()(torch.randn(1, 3, 32, 48))["embedding"][0]
    assert torch.equal(emb[0], 0.5 * torch.arange(32.0)[:, None].expand(32, 48))
    assert torch.equal(emb[1], 0.5 * torch.arange(48.0)[None, :].expand(32, 48))
    assert torch.count_nonzero(emb[2:]) == 0
    with pytest.raises(ValueError, match="coord_scale"):
        build_model("deeplab", num_classes=1, width=0.125, coord_scale=-1.0)


def test_positions_stay_float32_under_bf16_autocast():
    # train.bf16: bfloat16 would round a position of 29.9 to a multiple of 1/8
    model = build_model("deeplab", num_classes=1, backbone="resnet18", width=0.125, embedding_dim=4, coord_scale=0.1)
    torch.nn.init.zeros_(model.embedding_head.out.weight)
    torch.nn.init.zeros_(model.embedding_head.out.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model.eval()(torch.randn(1, 3, 16, 300))["embedding"][0]
    assert emb.dtype == torch.float32
    assert torch.equal(emb[1], 0.1 * torch.arange(300.0)[None, :].expand(16, 300))


def test_tiled_prediction_keeps_positions_global():
    from embedseg.engine.predictor import Predictor

    model = build_model("deeplab", num_classes=1, backbone="resnet18", width=0.125, embedding_dim=4, coord_scale=0.1)
    torch.nn.init.zeros_(model.embedding_head.out.weight)  # the head adds nothing: only positions are left
    torch.nn.init.zeros_(model.embedding_head.out.bias)
    image = torch.randint(0, 255, (70, 100, 3), dtype=torch.uint8).numpy()
    tiled = Predictor(model, tile_size=64, tile_overlap=32)(image)["embedding"]  # 2 x 3 tiles
    position = 0.1 * torch.stack(torch.meshgrid(torch.arange(70.0), torch.arange(100.0), indexing="ij")).numpy()
    assert tiled.shape == (4, 70, 100)
    assert abs(tiled[:2] - position).max() < 1e-4
