import json

import numpy as np
import pytest
from PIL import Image

from embedseg.data import DATASETS, CocoDataset, build_dataset
from embedseg.data.coco import paint_instances
from embedseg.engine.evaluator import run_groupers, score_groupers
from embedseg.evaluation import build_evaluators
from embedseg.structures import Instances


def expected_label_map(samples):
    """The label map the tiny sample must give: json order 1..4, crowd -1 where no instance lies."""
    m = samples.COCO_MASKS
    polygon = samples.box(samples.COCO_SHAPE, 10, 17, 20, 28)  # pycocotools' raster of COCO_POLYGON
    label = np.zeros(samples.COCO_SHAPE, np.int32)
    label[m["dog_crowd"]] = -1
    for k, mask in enumerate((m["dog_rle"], m["cat_uncompressed"], polygon, m["bird_rle"]), start=1):
        label[mask] = k
    return label


def test_rle_uncompressed_polygon_and_crowd(coco_sample, samples):
    ds = build_dataset("coco", "val", root=str(coco_sample), **samples.COCO_PARAMS)
    assert "coco" in DATASETS and isinstance(ds, CocoDataset) and len(ds) == 2
    assert ds.class_names == ["bird", "cat", "dog"] and ds.num_classes == 3  # json ids 16, 17, 18 -> 1, 2, 3
    s = ds[0]
    assert s["name"] == "a" and s["image_id"] == 0 and ds.coco_ids == [7, 9]
    assert s["image"].shape == (20, 30, 3) and s["image"].dtype == np.uint8
    assert s["instances"].dtype == np.int32 and s["semantic"].dtype == np.int64
    expected = expected_label_map(samples)
    assert np.array_equal(s["instances"], expected)
    classes = np.array([0, 3, 2, 2, 1])  # instance k -> class (dog, cat, cat, bird)
    assert np.array_equal(s["semantic"], np.where(expected < 0, -1, classes[np.maximum(expected, 0)]))
    # crowd pixels lie only where no instance is: 10x10 crowd box minus its overlap with two instances
    assert (s["instances"] == -1).sum() == 100 - 3 * 5 - 5 * 2
    empty = ds[1]  # grey image, no annotations
    assert empty["image"].shape == (12, 16, 3) and not empty["instances"].any() and not empty["semantic"].any()


def test_category_filter_and_skip_empty(coco_sample, samples):
    ds = CocoDataset(str(coco_sample), "val", categories=["cat", "bird"], skip_empty=True, **samples.COCO_PARAMS)
    assert ds.class_names == ["cat", "bird"] and len(ds) == 1  # b.png has no instance: skipped
    s = ds[0]
    expected = expected_label_map(samples)
    # the dog and the dog crowd region are dropped; the others keep json order 1..3
    assert np.array_equal(s["instances"], np.select([expected == 2, expected == 3, expected == 4], [1, 2, 3], 0))
    assert np.array_equal(np.unique(s["semantic"]), [0, 1, 2])
    assert (s["semantic"][expected == 4] == 2).all()  # bird = class 2 in the given order


def test_smaller_instance_wins_overlaps():
    big = np.zeros((6, 6), bool)
    big[0:5, 0:5] = True
    small = np.zeros((6, 6), bool)
    small[1:3, 1:3] = True
    crowd = np.zeros((6, 6), bool)
    crowd[4:6, :] = True
    for masks, small_id in (([big, small], 2), ([small, big], 1)):
        label = paint_instances(np.stack(masks, axis=2), crowd)
        assert (label[1:3, 1:3] == small_id).all()
        assert (label == 3 - small_id).sum() == 25 - 4 - 0  # the big one keeps the rest of its box
        assert (label == -1).sum() == 12 - 5  # crowd only where no instance


def test_crowd_is_ignored_in_evaluation(coco_sample, samples):
    """Ground truth predicted exactly scores AP 1.0; an extra detection inside the crowd region costs nothing."""
    ds = CocoDataset(str(coco_sample), "val", **samples.COCO_PARAMS)

    class Perfect:
        def __call__(self, image):
            return {"image": image}

    class Oracle:
        def __init__(self):
            self.i = 0

        def __call__(self, outputs):
            s = ds[self.i]
            self.i += 1
            inst = Instances.from_label_map(s["instances"], labels=s["semantic"])
            crowd_only = s["instances"] == -1
            if crowd_only.any():  # a confident false detection inside the crowd region
                inst = Instances(np.concatenate([inst.masks, crowd_only[None]]), np.r_[inst.scores, 1.0],
                                 np.r_[inst.labels, 3])
            return inst

    assert (ds[0]["instances"] < 0).any() and not (ds[1]["instances"] < 0).any()
    run = run_groupers(Perfect(), ds, {"oracle": Oracle()}, lambda: build_evaluators(["coco"], ds.class_names),
                       progress=False)
    assert score_groupers(run)["oracle"]["AP"] == pytest.approx(1.0)


def test_errors_name_the_file(coco_sample, samples, tmp_path):
    params = samples.COCO_PARAMS
    with pytest.raises(FileNotFoundError, match=r"instances_train\.json"):
        CocoDataset(str(coco_sample), "train", **params)
    with pytest.raises(ValueError, match=r"categories \[.horse.\] are not in .*known: bird, cat, dog"):
        CocoDataset(str(coco_sample), "val", categories=["horse"], **params)
    ann_file = coco_sample / "annotations" / "instances_val.json"
    data = json.loads(ann_file.read_text())

    (coco_sample / "val" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"val/b\.png"):
        CocoDataset(str(coco_sample), "val", **params)[1]
    Image.fromarray(np.zeros((13, 16, 3), np.uint8)).save(coco_sample / "val" / "b.png")
    with pytest.raises(ValueError, match=r"size mismatch: image .*val/b\.png is 16x13"):
        CocoDataset(str(coco_sample), "val", **params)[1]
    (coco_sample / "val" / "b.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read .*val/b\.png"):
        CocoDataset(str(coco_sample), "val", **params)[1]

    data["annotations"][0]["segmentation"]["size"] = [21, 30]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances_val\.json: annotation id 1 .*RLE size"):
        CocoDataset(str(coco_sample), "val", **params)[0]
    ann_file.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"instances_val\.json: not a COCO instances file.*annotations"):
        CocoDataset(str(coco_sample), "val", **params)
    ann_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*instances_val\.json"):
        CocoDataset(str(coco_sample), "val", **params)
    samples.write_coco_sample(tmp_path / "fresh")
    with pytest.raises(FileNotFoundError, match=r"image folder .*nowhere"):
        CocoDataset(str(tmp_path / "fresh"), "val", annotations=params["annotations"], images="nowhere")


def test_shared_sample_matches_its_id_masks(shared_data):
    """The README's check: each RLE decodes to mask == mask_id, crowd to the ignore mask."""
    root = shared_data / "coco_panoptic_sample"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = CocoDataset(str(root), "val", annotations="instances_{split}_things.json", images="{split}/images")
    assert len(ds) == 2 and ds.num_classes == 80 and ds.class_names[0] == "person"
    total = 0
    for i in range(len(ds)):
        s = ds[i]
        masks = np.array(Image.open(root / "val" / "masks" / f"{s['name']}.png"))
        ignore = np.array(Image.open(root / "val" / "ignore" / f"{s['name']}.png")) > 0
        assert np.array_equal(np.maximum(s["instances"], 0), masks)
        assert np.array_equal(s["instances"] == -1, ignore) and ignore.any()
        assert np.array_equal(s["semantic"] == -1, ignore)
        total += int(masks.max())
    assert total == 40


@pytest.mark.parametrize("file_name", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_file_name_outside_the_image_folder_is_refused(coco_sample, samples, file_name):
    outside = coco_sample / "outside.png"  # an image the entry would read if it were followed
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(outside)
    file_name = str(outside) if file_name == "ABSOLUTE" else file_name
    annotations = coco_sample / "annotations" / "instances_val.json"
    data = json.loads(annotations.read_text())
    data["images"][1]["file_name"] = file_name  # image id 9
    annotations.write_text(json.dumps(data))
    with pytest.raises(ValueError) as error:
        CocoDataset(str(coco_sample), "val", **samples.COCO_PARAMS)
    message = str(error.value)
    assert str(annotations) in message and "image id 9" in message and repr(file_name) in message
    assert "outside the image folder" in message and "\n" not in message
