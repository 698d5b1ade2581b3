import numpy as np
import pytest
from scipy import ndimage

from embedseg.config import ConfigError
from embedseg.data import DATASETS, SyntheticShapes, build_dataset


def small(**kw):
    params = {"num_images": 20, "size": 96, "max_radius": 14.0}
    params.update(kw)
    return SyntheticShapes(**params)


def test_registered_and_built_by_name():
    assert "synthetic" in DATASETS
    ds = build_dataset("synthetic", "val", num_images=3, size=64)
    assert isinstance(ds, SyntheticShapes) and ds.split == "val" and len(ds) == 3
    assert ds.num_classes == 2 and len(ds.class_names) == 2


def test_sample_contract():
    ds = small()
    for i in range(5):
        s = ds[i]
        assert s["image"].dtype == np.uint8 and s["image"].shape == (96, 96, 3)
        assert s["instances"].dtype == np.int32 and s["instances"].shape == (96, 96)
        assert s["semantic"].dtype == np.int64 and s["semantic"].shape == (96, 96)
        assert s["image_id"] == i and s["name"] == f"train_{i:05d}"
        ids = np.unique(s["instances"])
        n = int(s["instances"].max())
        assert list(ids) == list(range(n + 1))  # consecutive 1..N plus background
        assert n >= 1
        # semantic is background exactly off the instances, one class per instance
        assert np.array_equal(s["semantic"] > 0, s["instances"] > 0)
        for k in range(1, n + 1):
            classes = np.unique(s["semantic"][s["instances"] == k])
            assert len(classes) == 1 and classes[0] in (1, 2)
            assert (s["instances"] == k).sum() >= 30
    assert ds[-1]["image_id"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_deterministic_by_seed_split_index():
    a, b = small(), small()
    for i in (0, 7):
        for key in ("image", "instances", "semantic"):
            assert np.array_equal(a[i][key], a[i][key])
            assert np.array_equal(a[i][key], b[i][key])
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    assert not np.array_equal(a[0]["image"], small(seed=1)[0]["image"])
    assert not np.array_equal(a[0]["image"], small(split="val")[0]["image"])
    assert not np.array_equal(small(split="val")[0]["image"], small(split="test")[0]["image"])


def test_both_classes_occur():
    ds = small()
    seen = set()
    for i in range(5):
        seen |= set(np.unique(ds[i]["semantic"]).tolist())
    assert seen == {0, 1, 2}


def test_touching_same_class_objects_defeat_connected_components():
    ds = small()
    merged_images = 0
    for i in range(len(ds)):
        s = ds[i]
        for c in (1, 2):
            fg = s["semantic"] == c
            n_inst = len(np.unique(s["instances"][fg]))
            _, n_cc = ndimage.label(fg)  # default structure: 4-connected
            assert n_cc >= 1 or n_inst == 0
            if n_cc < n_inst:
                merged_images += 1
    assert merged_images >= 5


def test_no_touching_gives_mostly_separate_objects():
    ds = small(touching=0.0, min_objects=2, max_objects=4, size=128)
    merged = 0
    for i in range(10):
        s = ds[i]
        fg = s["instances"] > 0
        merged += ndimage.label(fg)[1] < s["instances"].max()
    assert merged <= 3


def test_boundary_between_touching_objects_is_darker():
    # noise-free: pixels of an instance next to another instance are darker than its centre
    ds = small(noise=0.0)
    dips = []
    for i in range(10):
        s = ds[i]
        inst = s["instances"]
        grey = s["image"].astype(float).mean(axis=2)
        for k in range(1, inst.max() + 1):
            m = inst == k
            other = (inst > 0) & ~m
            border = m & ndimage.binary_dilation(other)
            if border.sum() < 3:
                continue
            core = ndimage.binary_erosion(m, iterations=3)
            if core.sum() < 3:
                continue
            dips.append(grey[border].mean() < grey[core].mean())
    assert len(dips) >= 5 and np.mean(dips) > 0.9


def test_noise_parameter():
    clean, noisy = small(noise=0.0)[0], small(noise=0.2)[0]
    assert np.array_equal(clean["instances"], noisy["instances"])
    diff = clean["image"].astype(float) - noisy["image"].astype(float)
    assert 20 < diff.std() < 70


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"split": "training"}, "split"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 2.5}, "num_images"),
        ({"size": 8}, "size"),
        ({"min_objects": -1}, "min_objects"),
        ({"min_objects": 5, "max_objects": 3}, "max_objects"),
        ({"min_radius": 1.0}, "min_radius"),
        ({"min_radius": 10.0, "max_radius": 8.0}, "max_radius"),
        ({"size": 64, "max_radius": 20.0}, "max_radius"),
        ({"touching": 1.5}, "touching"),
        ({"noise": -0.1}, "noise"),
        ({"seed": -3}, "seed"),
        ({"seed": "a"}, "seed"),
    ],
)
def test_argument_validation(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SyntheticShapes(**kwargs)


def test_unknown_parameter_names_the_accepted_ones():
    with pytest.raises(ConfigError, match="unknown key 'touchin' for dataset 'synthetic'; accepted: .*touching"):
        build_dataset("synthetic", "train", touchin=0.5)
