"""Every registered dataset, built on a tiny sample, follows the sample contract of embedseg.data.base."""
import numpy as np
import pytest

from embedseg.data import DATASETS, build_dataset


def tiny_dataset(name, tmp_path, samples):
    """A few-image instance of dataset `name`; a new dataset needs an entry here (the test says so)."""
    if name == "synthetic":
        return build_dataset("synthetic", "train", num_images=2, size=48, min_radius=4.0, max_radius=10.0)
    if name == "folder":
        return build_dataset("folder", "train", root=str(samples.write_folder_sample(tmp_path / "f")))
    if name == "coco":
        return build_dataset("coco", "val", root=str(samples.write_coco_sample(tmp_path / "c")),
                             **samples.COCO_PARAMS)
    if name == "cityscapes":
        return build_dataset("cityscapes", "train", root=str(samples.write_cityscapes_sample(tmp_path / "cs")))
    pytest.fail(f"dataset {name!r} has no tiny sample in tests/data/test_registry.py: add one")


@pytest.mark.parametrize("name", DATASETS.names())
def test_sample_contract(name, tmp_path, samples):
    ds = tiny_dataset(name, tmp_path, samples)
    assert len(ds) >= 1 and ds.num_classes == len(ds.class_names) >= 1
    for i in range(len(ds)):
        s = ds[i]
        h, w = s["instances"].shape
        assert s["image"].shape == (h, w, 3) and s["image"].dtype == np.uint8
        assert s["instances"].dtype == np.int32 and s["semantic"].dtype == np.int64
        assert s["semantic"].shape == (h, w) and s["image_id"] == i and isinstance(s["name"], str)
        inst, sem = s["instances"], s["semantic"]
        assert inst.min() >= -1 and sem.min() >= -1 and sem.max() <= ds.num_classes
        assert (sem[inst > 0] >= 1).all() and (sem[inst == 0] == 0).all() and (inst[sem == -1] == -1).all()
    with pytest.raises(IndexError):
        ds[len(ds)]
