import numpy as np
import pytest
from PIL import Image

from embedseg.data import DATASETS, CityscapesDataset, build_dataset
from embedseg.data.cityscapes import convert_instance_ids


def test_instance_ids_to_instances_and_classes(cityscapes_sample, samples):
    ds = build_dataset("cityscapes", "train", root=str(cityscapes_sample))
    assert "cityscapes" in DATASETS and isinstance(ds, CityscapesDataset) and len(ds) == 2
    assert ds.class_names == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    s = ds[0]
    assert s["name"] == "aachen_000000_000019" and s["image_id"] == 0
    assert s["image"].shape == samples.CITY_SHAPE + (3,) and s["image"].dtype == np.uint8
    assert s["instances"].dtype == np.int32 and s["semantic"].dtype == np.int64
    ids = samples.cityscapes_ids()
    # renumbered in raw id order: person 24000 -> 1, cars 26000/26001 -> 2/3, bicycle 33000 -> 4
    expected = np.select([ids == 24000, ids == 26000, ids == 26001, ids == 33000], [1, 2, 3, 4], 0)
    ignore = np.isin(ids, [24, 26, 29000, 1])  # thing groups without ids, caravan, ego vehicle
    expected[ignore] = -1
    assert np.array_equal(s["instances"], expected)
    expected_sem = np.select([ids == 24000, (ids == 26000) | (ids == 26001), ids == 33000], [1, 3, 8], 0)
    expected_sem[ignore] = -1
    assert np.array_equal(s["semantic"], expected_sem)
    road_only = ds[1]  # no things at all
    assert not road_only["instances"].any() and not road_only["semantic"].any()


def test_class_subset_and_ignore_ids():
    ids = np.array([[24000, 24001, 26000, 26], [24, 29000, 7, 1]])
    inst, sem = convert_instance_ids(ids, {26: 1}, ignore_label_ids=[1])  # only cars, only ego vehicle ignored
    assert inst.tolist() == [[0, 0, 1, -1], [0, 0, 0, -1]]  # persons and the caravan are background now
    assert sem.tolist() == [[0, 0, 1, -1], [0, 0, 0, -1]]


def test_class_order_follows_the_parameter(cityscapes_sample, samples):
    ds = CityscapesDataset(str(cityscapes_sample), "train", classes=["car", "person"])
    s = ds[0]
    ids = samples.cityscapes_ids()
    assert ds.class_names == ["car", "person"] and ds.num_classes == 2
    assert (s["semantic"][ids == 26000] == 1).all() and (s["semantic"][ids == 24000] == 2).all()
    assert (s["instances"][ids == 33000] == 0).all()  # bicycles are not kept: background
    assert (s["instances"][ids == 1] == -1).all() and (s["instances"][ids == 29000] == -1).all()  # ignore ids
    assert (s["instances"][ids == 26] == -1).all()  # a kept class without instance ids is still ignored


def test_coarse_annotations(tmp_path, samples):
    root = samples.write_cityscapes_sample(tmp_path / "cs", annotations="gtCoarse")
    with pytest.raises(FileNotFoundError, match=r"gtFine/train does not exist"):
        CityscapesDataset(str(root), "train")
    coarse = CityscapesDataset(str(root), "train", annotations="gtCoarse")
    fine = CityscapesDataset(str(samples.write_cityscapes_sample(tmp_path / "fine")), "train")  # the same ids
    assert len(coarse) == 2 and coarse.names == fine.names
    assert np.array_equal(coarse[0]["instances"], fine[0]["instances"])
    assert np.array_equal(coarse[0]["semantic"], fine[0]["semantic"])


def test_errors_name_the_file(cityscapes_sample, tmp_path):
    with pytest.raises(ValueError, match="'horse'.*choose from person, rider"):
        CityscapesDataset(str(cityscapes_sample), "train", classes=["horse"])
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val"):
        CityscapesDataset(str(cityscapes_sample), "val")
    label = next((cityscapes_sample / "gtFine" / "train" / "bonn").iterdir())
    label.unlink()
    with pytest.raises(FileNotFoundError, match=r"bonn_000001_000019_leftImg8bit\.png has no instance map "
                                                 r".*bonn_000001_000019_gtFine_instanceIds\.png"):
        CityscapesDataset(str(cityscapes_sample), "train")
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(label)
    with pytest.raises(ValueError, match=r"size mismatch: instance map .*bonn_000001_000019_gtFine_instanceIds\.png "
                                         r"is 5x5"):
        CityscapesDataset(str(cityscapes_sample), "train")[1]
    label.write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"cannot read .*bonn_000001_000019_gtFine_instanceIds\.png"):
        CityscapesDataset(str(cityscapes_sample), "train")[1]
    empty = tmp_path / "empty"
    (empty / "leftImg8bit" / "train").mkdir(parents=True)
    (empty / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"leftImg8bit/train: empty split"):
        CityscapesDataset(str(empty), "train")
