"""Known-answer tests of evaluate_coco (COCO mask AP via pycocotools) and format_table."""
from __future__ import annotations

import math

import numpy as np
import pytest

from embedseg.evaluation import evaluate_coco, format_table
from embedseg.structures import Instances

# COCOeval's 101 recall thresholds, used to compute expected interpolated AP by hand.
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def _one(mask: np.ndarray, score: float = 1.0, label: int = 1) -> Instances:
    return Instances(mask[None], [score], [label])


def _square(h=20, w=20, rows=slice(2, 12), cols=slice(2, 12)) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[rows, cols] = True
    return mask


def test_perfect_predictions_give_ap_one(three_images):
    _, gt = three_images
    result = evaluate_coco(gt, gt, class_names=["cat", "dog"])
    for key in ("AP", "AP50", "AP75", "APs", "AR", "agnostic_AP", "agnostic_AP50", "agnostic_AP75"):
        assert result[key] == pytest.approx(1.0), key
    assert result["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    # every instance here is small (< 32^2 pixels): no GT to score medium/large -> NaN
    assert math.isnan(result["APm"]) and math.isnan(result["APl"])
    assert (result["num_images"], result["num_gt"], result["num_pred"], result["max_dets"]) == (3, 5, 5, 1000)


def test_one_missed_instance_gives_known_ap(three_images):
    _, gt = three_images  # class 1: two instances; class 2: three (two of them in image 1)
    missed = [gt[0], gt[1].select(np.array([True, False])), gt[2]]  # image 1's second instance (class 2) missed
    result = evaluate_coco(gt, missed, class_names=["cat", "dog"])
    # precision 1 up to the recall reached, 0 beyond: AP = recall thresholds reached / 101 at every IoU
    dog = np.sum(RECALL_THRESHOLDS <= 2 / 3) / 101
    assert dog == pytest.approx(67 / 101)
    assert result["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(dog)}
    for key in ("AP", "AP50", "AP75"):
        assert result[key] == pytest.approx((1.0 + dog) / 2), key
        assert result[f"agnostic_{key}"] == pytest.approx(81 / 101), key  # recall 4/5 over both classes
    assert result["AR"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert (result["num_gt"], result["num_pred"]) == (5, 4)


def test_false_positive_above_true_positive_gives_interpolated_ap():
    # 2 GT of class 1; a false positive (score 0.9) ranked above one perfect match (score 0.8).
    gt_mask = np.zeros((2, 30, 30), bool)
    gt_mask[0, 0:10, 0:10] = True
    gt_mask[1, 15:25, 0:10] = True
    fp = _square(30, 30, slice(0, 10), slice(15, 25))
    gt = Instances(gt_mask, [1, 1], [1, 1])
    pred = Instances(np.stack([fp, gt_mask[0]]), [0.9, 0.8], [1, 1])
    # ranked list: FP, TP -> recall [0, .5], precision [0, .5]; envelope 0.5 up to recall 0.5
    expected = 0.5 * np.sum(RECALL_THRESHOLDS <= 0.5) / 101
    assert expected == pytest.approx(25.5 / 101)
    result = evaluate_coco([gt], [pred])
    for key in ("AP", "AP50", "AP75", "agnostic_AP"):
        assert result[key] == pytest.approx(expected), key
    assert result["AR"] == pytest.approx(0.5)


def test_partial_overlap_counts_iou_thresholds():
    gt = _one(_square(rows=slice(0, 10), cols=slice(0, 10)))  # 100 pixels
    pred = _one(_square(rows=slice(0, 8), cols=slice(0, 9)))  # 72 pixels inside: IoU 0.72
    result = evaluate_coco([gt], [pred])
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert result["AP"] == pytest.approx(0.5)  # thresholds .50 .55 .60 .65 .70 of ten
    assert result["AR"] == pytest.approx(0.5)


def test_wrong_class_is_zero_class_aware_but_one_agnostic():
    mask = _square()
    result = evaluate_coco([_one(mask, label=1)], [_one(mask, label=2)], class_names=["a", "b"])
    assert result["AP"] == pytest.approx(0.0)
    assert result["agnostic_AP"] == pytest.approx(1.0)
    assert result["per_class"] == {"a": pytest.approx(0.0)}  # "b" has no GT: left out


def test_no_predictions_gives_zero(three_images):
    _, gt = three_images
    preds = [Instances.empty(*g.image_size) for g in gt]
    result = evaluate_coco(gt, preds)
    for key in ("AP", "AP50", "AP75", "APs", "AR", "agnostic_AP"):
        assert result[key] == 0.0, key
    assert result["num_pred"] == 0 and result["per_class"] == {"1": 0.0, "2": 0.0}


def test_no_ground_truth_at_all_is_nan():
    pred = _one(_square())
    result = evaluate_coco([Instances.empty(20, 20)], [pred])
    assert math.isnan(result["AP"]) and result["per_class"] == {}


def test_max_dets_limits_detections_per_image():
    # 150 4x4 blocks: more objects than COCO's standard 100 detections (DSB2018 has up to 375)
    label_map = np.arange(150).reshape(10, 15).repeat(4, 0).repeat(4, 1) + 1
    gt = Instances.from_label_map(label_map)
    result = evaluate_coco([gt], [gt], class_agnostic=False)  # default max_dets: 1000
    assert result["max_dets"] == 1000
    for key in ("AP", "AP50", "AP75", "APs", "AR"):
        assert result[key] == pytest.approx(1.0), key
    # COCO's 100: only the 100 best-scored detections count, so 50 GT can never be found.
    # Recall stops at 100/150; precision is 1 up to there and 0 beyond -> AP = 67/101 at every IoU.
    limited = evaluate_coco([gt], [gt], max_dets=100, class_agnostic=False)
    assert limited["AR"] == pytest.approx(100 / 150)
    assert limited["AP"] == pytest.approx(np.sum(RECALL_THRESHOLDS <= 100 / 150) / 101) == pytest.approx(67 / 101)
    # with at most 100 detections per image, 100 and 1000 give the same numbers
    rng = np.random.default_rng(0)
    pred = gt.select(np.r_[0:60, 120:150])  # 60 true positives, 30 false positives
    pred = Instances(pred.masks, rng.random(len(pred)), pred.labels)
    few = gt.select(np.arange(len(gt)) < 90)
    standard, dense = (evaluate_coco([few], [pred], max_dets=m, class_agnostic=False) for m in (100, 1000))
    assert 0.2 < dense["AP"] < 0.9
    for key in ("AP", "AP50", "AP75", "AR"):
        assert standard[key] == dense[key], key


def test_crowd_region_ignores_predictions_inside_it():
    gt = _one(_square(40, 40, slice(0, 10), slice(0, 10)))
    region = _square(40, 40, slice(20, 40), slice(20, 40))
    inside = _square(40, 40, slice(22, 30), slice(22, 30))
    pred = Instances(np.stack([inside, gt.masks[0]]), [0.9, 0.5], [2, 1])  # FP of another class
    assert evaluate_coco([gt], [pred])["agnostic_AP"] < 1.0
    result = evaluate_coco([gt], [pred], crowd=[region])
    assert result["AP"] == pytest.approx(1.0) and result["agnostic_AP"] == pytest.approx(1.0)
    assert result["num_gt"] == 1


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="one prediction per image"):
        evaluate_coco([Instances.empty(4, 4)], [])
    with pytest.raises(ValueError, match="expected 1..1"):
        evaluate_coco([_one(_square())], [_one(_square(), label=3)], class_names=["a"])
    with pytest.raises(ValueError, match=r"ground truth is \(20, 20\) but prediction is \(20, 21\)"):
        evaluate_coco([_one(_square())], [Instances.empty(20, 21)])
    with pytest.raises(ValueError, match="max_dets must be >= 1, got 0"):
        evaluate_coco([_one(_square())], [_one(_square())], max_dets=0)
    with pytest.raises(ValueError, match="crowd needs one mask"):
        evaluate_coco([_one(_square())], [_one(_square())], crowd=[])
    with pytest.raises(ValueError, match=r"crowd mask has shape \(10, 10\), expected \(20, 20\)"):
        evaluate_coco([_one(_square())], [_one(_square())], crowd=[np.ones((10, 10), bool)])


def test_real_coco_sample_ground_truth_gives_ap_one(coco_sample_truth):
    _, _, gt, crowd = coco_sample_truth
    assert sum(len(g) for g in gt) == 40
    for kwargs in ({}, {"crowd": crowd}):
        result = evaluate_coco(gt, gt, **kwargs)
        for key in ("AP", "AP50", "AP75", "AR", "agnostic_AP"):
            assert result[key] == pytest.approx(1.0), (key, kwargs)
        assert set(result["per_class"]) == {"1", "19", "8", "37"}  # person, horse, truck, ball


def test_real_coco_sample_matches_pycocotools_summarize(coco_sample_truth):
    """Imperfect predictions: our numbers equal COCOeval.summarize() on the original json."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder, coco, gt, crowd = coco_sample_truth
    rng = np.random.default_rng(0)
    preds, results = [], []
    for image, g in zip(sorted(coco["images"], key=lambda im: im["id"]), gt):
        keep = rng.random(len(g)) < 0.7
        masks = g.masks[keep].copy()
        masks[::2, :, : masks.shape[2] // 2] = False  # cut every other kept mask: lower IoU
        labels = g.labels[keep].copy()
        labels[::3] = 1  # some wrong classes
        pred = Instances(masks, rng.random(len(masks)), labels)
        preds.append(pred)
        results += pred.to_coco_results(image["id"])
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO(str(folder / "instances_val_things.json"))
        E = COCOeval(reference, reference.loadRes(results), iouType="segm")
        E.evaluate(), E.accumulate(), E.summarize()
    ours = evaluate_coco(gt, preds, crowd=crowd)
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    expected = dict(zip(keys, E.stats[:6]), AR=E.stats[8])
    for key, value in expected.items():
        if value == -1:
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value), key
    assert 0.0 < ours["AP"] < 1.0 and 0.0 < ours["agnostic_AP"] < 1.0


def test_format_table():
    table = format_table({"meanshift": {"AP": 0.1234, "AP50": float("nan")}, "seeds": {"AP": 1.0}},
                         keys=("AP", "AP50"), first="grouper")
    assert table.splitlines() == [
        "| grouper | AP | AP50 |",
        "|---|---:|---:|",
        "| meanshift | 12.3 | - |",
        "| seeds | 100.0 | - |",
    ]
