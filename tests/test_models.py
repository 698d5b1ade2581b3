"""Backbones, decoders and the DeepLab embedding network: shapes, strides, every registered entry."""
from __future__ import annotations

import pytest
import torch

from embedseg.models import BACKBONES, DECODERS, MODELS, build_model


def small_model(**params):
    return build_model("deeplab", **{"num_classes": 1, "backbone": "resnet18", "width": 0.125, **params})


def parameter_count(module):
    return sum(p.numel() for p in module.parameters())


def zero_embedding_head(model):
    """The embedding head then predicts 0 everywhere: only the positions are left."""
    out = model.decoder.heads["embedding"].out
    torch.nn.init.zeros_(out.weight)
    torch.nn.init.zeros_(out.bias)
    return model


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_every_backbone_has_the_promised_strides(name, output_stride):
    net = BACKBONES.build(name, width=0.125, output_stride=output_stride)
    feats = net(torch.zeros(1, 3, 64, 64))
    assert feats["fine"].shape[-2:] == (32, 32) and feats["fine"].shape[1] == net.fine_channels
    assert feats["low"].shape[-2:] == (16, 16)
    assert feats["high"].shape[-2:] == (64 // output_stride, 64 // output_stride)
    assert feats["low"].shape[1] == net.low_channels and feats["high"].shape[1] == net.high_channels


def test_depths_differ_and_width_scales_channels():
    r18, r34, r50 = (BACKBONES.build(n, width=0.25) for n in ("resnet18", "resnet34", "resnet50"))
    assert parameter_count(r18) < parameter_count(r34) < parameter_count(r50)
    assert BACKBONES.build("resnet50", width=0.25).high_channels == 512  # 512 * 0.25 * expansion 4
    with pytest.raises(ValueError, match="output_stride"):
        BACKBONES.build("resnet18", output_stride=4)


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("size", [(64, 64), (50, 77)])
def test_every_model_predicts_at_input_resolution(name, size):
    model = build_model(name, num_classes=3, backbone="resnet18", width=0.125, embedding_dim=16)
    out = model(torch.randn(2, 3, *size))
    assert out["embedding"].shape == (2, 16, *size)
    assert out["seediness"].shape == (2, 1, *size)
    assert out["semantic"].shape == (2, 4, *size)
    assert out["seediness"].min() >= 0 and out["seediness"].max() <= 1
    sum(v.mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", DECODERS.names())
@pytest.mark.parametrize("size", [(64, 64), (50, 77)])
def test_every_decoder_gives_each_output_at_the_image_size(name, size):
    decoder = DECODERS.build(name, fine_channels=5, low_channels=6, context_channels=7, channels=16,
                             outputs={"embedding": 4, "seediness": 1, "semantic": 3})
    h, w = size
    images = torch.randn(2, 3, h, w)
    features = {"fine": torch.randn(2, 5, -(-h // 2), -(-w // 2)), "low": torch.randn(2, 6, -(-h // 4), -(-w // 4))}
    out = decoder(images, features, torch.randn(2, 7, -(-h // 8), -(-w // 8)))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "embedding": (2, 4, h, w), "seediness": (2, 1, h, w), "semantic": (2, 3, h, w)}
    sum(v.mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in decoder.parameters())


@pytest.mark.parametrize("name", DECODERS.names())
def test_every_decoder_builds_into_the_model(name):
    model = small_model(num_classes=2, embedding_dim=4, decoder=name, coord_scale=0.1)
    out = model(torch.randn(1, 3, 40, 56))
    assert out["embedding"].shape == (1, 4, 40, 56) and out["semantic"].shape == (1, 3, 40, 56)


def test_fullres_class_decoder_refines_the_class_logits_only():
    # Same weights as "stride2" for the shared parts: embedding and seediness agree exactly (they stay
    # at stride 2); the class logits differ by the full-resolution refinement, 0 once its last conv is 0.
    refined = small_model(num_classes=2, decoder="stride2_fullres_class").eval()
    plain = small_model(num_classes=2, decoder="stride2").eval()
    state = {k: v for k, v in refined.state_dict().items() if "semantic_refine" not in k}
    plain.load_state_dict(state)
    images = torch.randn(1, 3, 48, 64)
    a, b = refined(images), plain(images)
    assert torch.equal(a["embedding"], b["embedding"]) and torch.equal(a["seediness"], b["seediness"])
    assert not torch.allclose(a["semantic"], b["semantic"])
    last = refined.decoder.semantic_refine[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    assert torch.equal(refined(images)["semantic"], b["semantic"])


def test_decoders_differ_in_cost_as_named():
    stride4, stride2, fullres = (small_model(decoder=d) for d in ("stride4", "stride2", "stride2_fullres_class"))
    assert parameter_count(stride2) < parameter_count(stride4)  # half the channels in the stride-2 heads
    # the refinement: 3x3 convs (3 + 2 -> 16, 16 -> 16) with GroupNorm, then 1x1 (16 -> 2)
    assert parameter_count(fullres) - parameter_count(stride2) == (5 * 9 * 16 + 32) + (16 * 9 * 16 + 32) + (16 * 2 + 2)


def test_unknown_decoder_names_the_choices():
    with pytest.raises(KeyError, match="unknown decoder 'stride1'; choose one of: stride2, stride2_fullres_class"):
        small_model(decoder="stride1")


def test_default_embedding_dimension_is_64():
    assert small_model()(torch.zeros(1, 3, 32, 32))["embedding"].shape[1] == 64


def test_semi_convolutional_channels_add_the_pixel_position():
    model = zero_embedding_head(small_model(embedding_dim=4, coord_scale=0.5))
    emb = model.eval()(torch.randn(1, 3, 32, 48))["embedding"][0]
    assert torch.equal(emb[0], 0.5 * torch.arange(32.0)[:, None].expand(32, 48))
    assert torch.equal(emb[1], 0.5 * torch.arange(48.0)[None, :].expand(32, 48))
    assert torch.count_nonzero(emb[2:]) == 0
    with pytest.raises(ValueError, match="coord_scale"):
        small_model(coord_scale=-1.0)
    with pytest.raises(ValueError, match="embedding_dim >= 2"):
        small_model(coord_scale=0.1, embedding_dim=1)


def test_positions_stay_float32_under_bf16_autocast():
    # train.bf16: bfloat16 would round a position of 29.9 to a multiple of 1/8
    model = zero_embedding_head(small_model(embedding_dim=4, coord_scale=0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model.eval()(torch.randn(1, 3, 16, 300))["embedding"][0]
    assert emb.dtype == torch.float32
    assert torch.equal(emb[1], 0.1 * torch.arange(300.0)[None, :].expand(16, 300))


def test_tile_to_image_shifts_the_positional_channels_by_the_offset():
    model = small_model(embedding_dim=3, coord_scale=0.5)
    outputs = {"embedding": torch.zeros(1, 3, 2, 4), "seediness": torch.rand(1, 1, 2, 4),
               "semantic": torch.randn(1, 2, 2, 4)}
    moved = model.tile_to_image(outputs, (6, 10))
    assert torch.equal(moved["embedding"][0, 0], torch.full((2, 4), 3.0))  # 0.5 * 6
    assert torch.equal(moved["embedding"][0, 1], torch.full((2, 4), 5.0))  # 0.5 * 10
    assert torch.count_nonzero(moved["embedding"][0, 2]) == 0
    assert moved["seediness"] is outputs["seediness"] and moved["semantic"] is outputs["semantic"]
    assert small_model(embedding_dim=3).tile_to_image(outputs, (6, 10)) is outputs  # no positions: unchanged


def test_tiled_prediction_keeps_positions_global():
    from embedseg.engine.predictor import Predictor

    model = zero_embedding_head(small_model(embedding_dim=4, coord_scale=0.1))
    image = torch.randint(0, 255, (70, 100, 3), dtype=torch.uint8).numpy()
    tiled = Predictor(model, tile_size=64, tile_overlap=32)(image)["embedding"]  # 2 x 3 tiles
    whole = Predictor(model, tile_size=None)(image)["embedding"]
    position = 0.1 * torch.stack(torch.meshgrid(torch.arange(70.0), torch.arange(100.0), indexing="ij")).numpy()
    assert tiled.shape == (4, 70, 100)
    assert abs(tiled[:2] - position).max() < 1e-4
    assert abs(tiled[:2] - whole[:2]).max() < 1e-4


def test_checkpoints_with_the_flat_key_names_still_load():
    # Before decoders were parts of their own, the decoder's modules sat on the model itself.
    old_prefixes = {"decoder.low.skip.": "skip.", "decoder.low.fuse.": "fuse.", "decoder.fine.skip.": "fine_skip.",
                    "decoder.fine.fuse.": "refine.", "decoder.semantic_refine.": "semantic_refine.",
                    "decoder.heads.embedding.": "embedding_head.", "decoder.heads.seediness.": "seediness_head.",
                    "decoder.heads.semantic.": "semantic_head."}

    def old_name(key):
        new = next((p for p in old_prefixes if key.startswith(p)), None)
        return key if new is None else old_prefixes[new] + key[len(new):]

    source = small_model(decoder="stride2_fullres_class", coord_scale=0.1).eval()
    old_state = {old_name(k): v for k, v in source.state_dict().items()}
    assert "refine.0.weight" in old_state and "embedding_head.out.bias" in old_state
    torch.manual_seed(1)
    target = small_model(decoder="stride2_fullres_class", coord_scale=0.1).eval()
    target.load_state_dict(old_state)  # strict: every key found a place
    images = torch.randn(1, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(source(images).values(), target(images).values()))
