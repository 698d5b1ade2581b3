import math

import numpy as np
import pytest
import torch

from embedseg.config import config_from_dict
from embedseg.data import FolderDataset
from embedseg.data.transforms import MEAN, STD, TrainTransform, TransformedDataset, affine_crop


class Midpoint:
    """An rng stand-in that puts every random window in the middle of its range."""

    def uniform(self, lo, hi):
        return (lo + hi) / 2


def sample(image, inst, sem=None):
    sem = (inst > 0).astype(np.int64) if sem is None else sem
    return {"image": image, "instances": inst.astype(np.int32), "semantic": sem, "image_id": 3}


def square_sample(size=50, lo=10, hi=30):
    inst = np.zeros((size, size), np.int32)
    inst[lo:hi, lo:hi] = 7
    image = np.zeros((size, size, 3), np.uint8)
    image[inst == 7] = 200
    return image, inst, (inst > 0).astype(np.int64)


def test_zoom_in_by_two_quadruples_the_area():
    image, inst, sem = square_sample()
    out_image, out_inst, out_sem = affine_crop(image, inst, sem, (100, 100), 2.0, 0.0, Midpoint())
    # the 50 px window at scale 2 covers the whole image: the 20 px square becomes 40 px, exactly
    assert (out_inst == 7).sum() == 1600 and (out_inst == -1).sum() == 0
    assert (out_inst[20:60, 20:60] == 7).all() and torch.equal(out_sem, (out_inst > 0).long())
    assert out_image.shape == (3, 100, 100) and out_image.dtype == torch.float32
    assert torch.allclose(out_image[:, 21:59, 21:59], torch.tensor(200 / 255))  # bilinear inside


def test_zoom_out_pads_with_ignore():
    image, inst, sem = square_sample(lo=11, hi=31)  # every other source pixel edge is sampled: no ties
    out_image, out_inst, out_sem = affine_crop(image, inst, sem, (50, 50), 0.5, 0.0, Midpoint())
    # the whole 50x50 image shrinks to 25x25 output pixels in the middle; the rest is ignore
    assert (out_inst == -1).sum() == 2500 - 625 and (out_sem == -1).sum() == 2500 - 625
    assert (out_inst[12:37, 12:37] >= 0).all() and (out_inst == 7).sum() == 100  # 20 px -> 10 px
    assert out_image[:, out_inst == -1].abs().max() == 0  # black outside the image


def test_rotation_by_90_degrees_matches_rot90():
    rng = np.random.default_rng(0)
    inst = rng.integers(0, 50, (40, 40)).astype(np.int32)
    image = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    out_image, out_inst, _ = affine_crop(image, inst, inst.astype(np.int64), (40, 40), 1.0, math.pi / 2, Midpoint())
    assert np.array_equal(out_inst.numpy(), np.rot90(inst, 1))
    expected = torch.from_numpy(np.rot90(image, 1).copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(out_image, expected, atol=1e-4)


def test_image_and_labels_stay_aligned_under_scale_and_rotation():
    """Every object has its own grey level; wherever the labels are one object in a 3x3
    neighbourhood, the resampled image shows exactly that object's grey level."""
    inst = np.zeros((120, 160), np.int32)
    for k, (y, x) in enumerate(((10, 10), (10, 80), (60, 30), (70, 100)), start=1):
        inst[y:y + 40, x:x + 50] = k
    image = np.repeat((inst * 50).astype(np.uint8)[..., None], 3, axis=2)
    torch.manual_seed(0)
    t = TrainTransform(crop_size=96, scale_range=[0.6, 1.6], rotate_degrees=30)
    checked = 0
    for _ in range(10):
        out = t(sample(image, inst))
        lab = out["instances"]
        grey = out["image"][0] * STD + MEAN  # undo the normalisation
        pad = torch.nn.functional.pad(lab[None, None].float(), (1, 1, 1, 1), value=-2)
        patches = pad.unfold(2, 3, 1).unfold(3, 3, 1)[0, 0]  # [H, W, 3, 3]
        uniform = (patches == lab[..., None, None]).flatten(2).all(-1) & (lab >= 0)
        assert torch.allclose(grey[uniform], lab[uniform].float() * 50 / 255, atol=1e-5)
        checked += int(uniform.sum())
    assert checked > 10 * 96 * 96 // 2


def test_intensity_jitter_changes_the_image_only_and_keeps_grey_grey():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    image = np.repeat(grey[..., None], 3, axis=2)
    inst = rng.integers(0, 5, (64, 64)).astype(np.int32)
    plain = TrainTransform(crop_size=48, scale_range=[0.8, 1.2], rotate_degrees=10)
    jitter = TrainTransform(crop_size=48, scale_range=[0.8, 1.2], rotate_degrees=10, brightness=0.2,
                            contrast=0.3, gamma=0.5)
    torch.manual_seed(5)
    a = plain(sample(image, inst))
    torch.manual_seed(5)
    b = jitter(sample(image, inst))
    assert torch.equal(a["instances"], b["instances"]) and torch.equal(a["semantic"], b["semantic"])
    assert not torch.allclose(a["image"], b["image"])
    assert torch.equal(b["image"][0], b["image"][1]) and torch.equal(b["image"][0], b["image"][2])
    assert (b["image"] * STD + MEAN).min() >= 0 and (b["image"] * STD + MEAN).max() <= 1 + 1e-6


@pytest.mark.parametrize("kwargs", [{}, {"scale_range": [0.9, 1.1]}, {"rotate_degrees": 5.0}])
def test_small_images_are_padded_with_ignore(kwargs):
    image, inst, sem = square_sample(size=30, lo=5, hi=15)
    torch.manual_seed(0)
    out = TrainTransform(crop_size=64, **kwargs)(sample(image[:20], inst[:20], sem[:20]))
    assert out["image"].shape == (3, 64, 64) and out["instances"].shape == (64, 64)
    assert out["instances"].dtype == torch.int64 and out["semantic"].dtype == torch.int64
    assert out["image_id"] == 3
    ignored = (out["instances"] == -1).sum()
    assert 64 * 64 - 30 * 20 * 1.3 < ignored < 64 * 64 - 30 * 20 * 0.7
    assert torch.equal(out["semantic"] == -1, out["instances"] == -1)


def test_plain_crop_keeps_exact_pixels():
    """Without scale/rotation the crop is a slice: image pixels and labels pass unchanged."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    inst = rng.integers(0, 9, (40, 50)).astype(np.int32)
    torch.manual_seed(1)
    out = TrainTransform(crop_size=40, flip=False, rot90=False)(sample(image, inst))
    x = int(np.flatnonzero([(inst[:, x:x + 40] == out["instances"].numpy()).all() for x in range(11)])[0])
    expected = torch.from_numpy(image[:, x:x + 40].copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(out["image"] * STD + MEAN, expected, atol=1e-6)


@pytest.mark.parametrize("key,value,word", [
    ("scale_range", [2.0, 1.0], "lo <= hi"), ("scale_range", [0.0, 1.0], "0 < lo"),
    ("rotate_degrees", 200.0, "[0, 180]"), ("brightness", 1.5, "[0, 1)"), ("gamma", -1.0, "[0, 2]"),
])
def test_bad_parameters_name_the_config_key(key, value, word):
    with pytest.raises(ValueError, match=rf"data\.{key} = .*{__import__('re').escape(word)}"):
        TrainTransform(**{key: value})


def test_built_from_the_data_config():
    config = config_from_dict({"data": {"crop_size": 32, "scale_range": [0.5, 2], "rotate_degrees": 10,
                                        "brightness": 0.1, "contrast": 0.2, "gamma": 0.3, "flip": False}})
    t = TrainTransform.from_config(config.data)
    assert (t.crop_size, t.flip, t.rot90, t.scale_range) == (32, False, True, (0.5, 2.0))
    assert (t.rotate_degrees, t.brightness, t.contrast, t.gamma) == (10.0, 0.1, 0.2, 0.3)
    assert TrainTransform(scale_range=[1, 1]).scale_range is None  # no-op range: the exact slicing path


def test_dataloader_with_two_workers(folder_sample, samples):
    """Real files through the transform in two worker processes: batches of fixed-size crops."""
    samples.write_folder_sample(folder_sample, stems=("c", "d"), size=(40, 30))  # mixed sizes
    data = TransformedDataset(FolderDataset(str(folder_sample), "train"),
                              TrainTransform(crop_size=24, scale_range=[0.8, 1.25], rotate_degrees=10, gamma=0.2))
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["image"].shape == (2, 3, 24, 24) and batch["instances"].shape == (2, 24, 24)
        assert set(batch["instances"].unique().tolist()) <= {-1, 0, 1, 2}


def test_training_on_folder_data_with_augmentation_and_workers(tmp_path, samples):
    """The trainer builds the transform from data.* keys and trains through two loader workers."""
    import json

    from embedseg.engine.trainer import train

    root = samples.write_folder_sample(tmp_path / "data", stems=("a", "b", "c", "d"), size=(40, 36))
    config = config_from_dict({
        "data": {"dataset": {"name": "folder", "root": str(root)}, "crop_size": 32, "scale_range": [0.8, 1.25],
                 "rotate_degrees": 10.0, "brightness": 0.1, "contrast": 0.1, "gamma": 0.2},
        "model": {"name": "deeplab", "backbone": "resnet18", "width": 0.125, "output_stride": 16,
                  "embedding_dim": 4},
        "train": {"steps": 2, "batch_size": 2, "log_every": 1, "warmup_steps": 1, "num_workers": 2, "threads": 1},
    })
    run_dir = train(config, tmp_path / "run")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
