"""Known-answer tests of the matching metrics: AP at IoU t, SBD, DiC, mAP^r (evaluation/matching.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from embedseg.evaluation import (
    MATCHING_METRICS,
    abs_dic,
    dic,
    evaluate_matching,
    map_r,
    matching_ap,
    pairwise_iou,
    sbd,
)
from embedseg.evaluation.matching import max_pairs
from embedseg.structures import Instances


def _box(h, w, rows, cols) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[rows, cols] = True
    return mask


def _instances(masks, scores=None, labels=None) -> Instances:
    masks = np.stack(masks)
    k = len(masks)
    return Instances(masks, np.ones(k) if scores is None else scores, np.ones(k) if labels is None else labels)


# ----------------------------------------------------------------------------- SBD and DiC


def _leaves():
    """Three label-map pairs (ground truth, prediction) with SBD and DiC worked out by hand."""
    gt1 = np.array([[1, 1, 1, 2, 2, 2],
                    [1, 1, 1, 2, 2, 2],
                    [0, 0, 0, 0, 0, 0],
                    [3, 3, 0, 0, 0, 0]])
    pred1 = np.array([[5, 5, 5, 5, 5, 5],  # leaves 1 and 2 merged (12 px)
                      [5, 5, 5, 5, 5, 5],
                      [0, 0, 0, 0, 0, 0],
                      [9, 9, 9, 0, 0, 0]])  # leaf 3 (2 px) grown to 3 px
    # Dice(1, 5) = Dice(2, 5) = 2*6 / (6 + 12) = 2/3; Dice(3, 9) = 2*2 / (2 + 3) = 4/5; others 0.
    # BD(gt, pred) = (2/3 + 2/3 + 4/5) / 3 = 32/45; BD(pred, gt) = (2/3 + 4/5) / 2 = 33/45.
    # SBD = min = 32/45; DiC = 2 - 3 = -1.
    gt2 = np.array([[1, 1, 0, 2],
                    [1, 1, 0, 2]])
    pred2 = np.array([[7, 7, 0, 3],  # same leaves, other ids: SBD 1, DiC 0
                      [7, 7, 0, 3]])
    gt3 = np.array([[1, 1, 1, 1]])
    pred3 = np.array([[1, 2, 3, 0]])  # one leaf (4 px) cut into three 1-px pieces, one pixel missed
    # Dice(1, k) = 2*1 / (4 + 1) = 2/5 for each piece: BD(gt, pred) = 2/5, BD(pred, gt) = 2/5.
    # SBD = 2/5; DiC = 3 - 1 = +2.
    return [gt1, gt2, gt3], [pred1, pred2, pred3]


def test_sbd_and_dic_on_hand_computed_label_maps():
    gt, pred = _leaves()
    assert sbd(gt[0], pred[0]) == pytest.approx(32 / 45)
    assert sbd(gt[1], pred[1]) == pytest.approx(1.0)
    assert sbd(gt[2], pred[2]) == pytest.approx(2 / 5)
    assert sbd(gt, pred) == pytest.approx((32 / 45 + 1 + 2 / 5) / 3)
    assert [dic(g, p) for g, p in zip(gt, pred)] == [-1, 0, 2]
    assert dic(gt, pred) == pytest.approx(1 / 3)  # (-1 + 0 + 2) / 3
    assert abs_dic(gt, pred) == pytest.approx(1.0)  # (1 + 0 + 2) / 3
    # Instances give the same numbers as label maps
    as_instances = [Instances.from_label_map(m) for m in pred]
    assert sbd(gt, as_instances) == pytest.approx(sbd(gt, pred))


def _best_dice_by_loops(a: np.ndarray, b: np.ndarray) -> float:
    """The CVPPP BestDice written out with loops over objects: mean over a's objects of the best Dice."""
    a_ids, b_ids = [i for i in np.unique(a) if i > 0], [j for j in np.unique(b) if j > 0]
    total = 0.0
    for i in a_ids:
        best = 0.0
        for j in b_ids:
            inter = np.sum((a == i) & (b == j))
            best = max(best, 2 * inter / (np.sum(a == i) + np.sum(b == j)))
        total += best
    return total / len(a_ids)


def test_sbd_equals_the_cvppp_definition_on_random_label_maps():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = rng.integers(0, 6, size=(12, 15))
        pred = rng.integers(0, 9, size=(12, 15)) * (rng.random((12, 15)) < 0.8)
        expected = min(_best_dice_by_loops(gt, pred), _best_dice_by_loops(pred, gt))
        assert sbd(gt, pred) == pytest.approx(expected)


# ----------------------------------------------------------------------------- AP at IoU t

NOTHING_MISSED = {"missed_merged": 0, "missed_low_iou": 0, "missed_not_found": 0}


def _tp_fp_fn_image():
    """3 GT, 3 predictions: one exact match, one at IoU 0.6, one missed GT, one false positive."""
    h = w = 20
    g1, g2, g3 = _box(h, w, slice(0, 5), slice(0, 5)), _box(h, w, slice(0, 5), slice(10, 15)), \
        _box(h, w, slice(10, 15), slice(0, 5))
    p1 = g1.copy()
    p2 = _box(h, w, slice(0, 5), slice(10, 13))  # 15 of g2's 25 pixels: IoU 15/25 = 0.6
    p3 = _box(h, w, slice(10, 15), slice(10, 15))  # on no GT
    return _instances([g1, g2, g3]), _instances([p1, p2, p3])


def test_matching_ap_with_known_true_and_false_positives():
    gt, pred = _tp_fp_fn_image()
    np.testing.assert_allclose(pairwise_iou(gt, pred), [[1, 0, 0], [0, 0.6, 0], [0, 0, 0]])
    # t = 0.5: TP 2 (p1, p2), FP 1 (p3), FN 1 (g3) -> 2/4
    assert matching_ap(gt, pred, 0.5) == pytest.approx(0.5)
    # t = 0.6: IoU >= t counts (as in StarDist/EmbedSeg), still 2/4
    # t = 0.7: TP 1, FP 2, FN 2 -> 1/5
    assert matching_ap(gt, pred, [0.5, 0.6, 0.7]) == {0.5: pytest.approx(0.5), 0.6: pytest.approx(0.5),
                                                       0.7: pytest.approx(0.2)}
    # averaged over images: this image and a perfect one -> (0.2 + 1) / 2 at t = 0.7
    assert matching_ap([gt, gt], [pred, gt], 0.7) == pytest.approx(0.6)
    flat = evaluate_matching([gt], [pred], ["matching_ap"], iou_thresholds=[0.5, 0.7])
    assert flat == {"match_AP50": pytest.approx(0.5), "match_AP70": pytest.approx(0.2),
                    "match_AP": pytest.approx(0.35), "num_images": 1,
                    "missed_merged": 0, "missed_low_iou": 0, "missed_not_found": 1}  # g3, at t = 0.5


def test_missed_objects_are_told_apart_by_why():
    h = w = 20
    g = [_box(h, w, slice(0, 5), slice(0, 5)), _box(h, w, slice(0, 5), slice(5, 10)),  # two touching squares
         _box(h, w, slice(10, 15), slice(0, 5)), _box(h, w, slice(10, 15), slice(10, 15))]
    merged = g[0] | g[1]  # one mask over the touching pair: IoU 0.5 with each, only one can match at t = 0.5
    low = _box(h, w, slice(10, 15), slice(0, 2))  # 10 of g[2]'s 25 pixels: IoU 0.4
    flat = evaluate_matching([_instances(g)], [_instances([merged, low])], ["matching_ap"], iou_thresholds=[0.5])
    assert (flat["missed_merged"], flat["missed_low_iou"], flat["missed_not_found"]) == (1, 1, 1)
    flat = evaluate_matching([_instances(g)], [_instances([merged, low])], ["matching_ap"], iou_thresholds=[0.6])
    assert (flat["missed_merged"], flat["missed_low_iou"], flat["missed_not_found"]) == (2, 1, 1)


def test_image_scores_give_each_image_its_own_counts_ap_and_misses():
    from embedseg.evaluation.matching import MatchingEvaluator

    h = w = 20
    g = [_box(h, w, slice(0, 5), slice(0, 5)), _box(h, w, slice(0, 5), slice(5, 10)), _box(h, w, slice(10, 15), slice(0, 5))]
    evaluator = MatchingEvaluator(["matching_ap", "sbd"], iou_thresholds=[0.5])
    evaluator.process(_instances(g), _instances(g))  # perfect
    evaluator.process(_instances(g), _instances([g[0] | g[1]]))  # one mask over the touching pair, g[2] not found
    perfect, merged = evaluator.image_scores()
    assert perfect == {"num_gt": 3, "num_pred": 3, "match_AP50": 1.0, "missed_merged": 0, "missed_low_iou": 0,
                       "missed_not_found": 0, "SBD": 1.0}
    # TP 1 (one of the pair reaches IoU 0.5), FP 0, FN 2: AP 1/3
    assert merged["num_pred"] == 1 and merged["match_AP50"] == pytest.approx(1 / 3)
    assert (merged["missed_merged"], merged["missed_low_iou"], merged["missed_not_found"]) == (1, 0, 1)
    assert np.mean([perfect["match_AP50"], merged["match_AP50"]]) == pytest.approx(evaluator.evaluate()["match_AP50"])


def _conflict_image():
    """Overlapping predictions where the best pairing is not the greedy one (IoU < 0.5).

    One row of 10 pixels: GT a = cols 0-3, GT b = cols 4-9; p1 = cols 1-6 (score 0.9), p2 = cols 0-2.
    IoU(a, p1) = 3/7, IoU(b, p1) = 3/9, IoU(a, p2) = 3/4, IoU(b, p2) = 0.
    """
    a, b = _box(1, 10, 0, slice(0, 4)), _box(1, 10, 0, slice(4, 10))
    p1, p2 = _box(1, 10, 0, slice(1, 7)), _box(1, 10, 0, slice(0, 3))
    return _instances([a, b]), _instances([p1, p2], scores=[0.9, 0.8])


def test_matching_below_one_half_uses_the_optimal_one_to_one_pairing():
    gt, pred = _conflict_image()
    np.testing.assert_allclose(pairwise_iou(gt, pred), [[3 / 7, 3 / 4], [3 / 9, 0]])
    # t = 0.3: a-p2 and b-p1 is a full pairing: TP 2, FP 0, FN 0 (a greedy a-p1 would leave b unmatched)
    assert matching_ap(gt, pred, 0.3) == pytest.approx(1.0)
    # t = 0.4: only a-p1 and a-p2 qualify and they share a: TP 1, FP 1, FN 1
    assert matching_ap(gt, pred, 0.4) == pytest.approx(1 / 3)
    assert list(max_pairs(np.array([[0.6, 0.6], [0.6, 0.0]]), [0.5])) == [2]
    # mAP^r ranks by score instead: p1 (0.9) takes a, its best unmatched GT; p2 then only has b (IoU 0)
    # -> TP, FP: precision 1, 1/2 at recall 1/2, 1/2 -> AP 1/2
    assert map_r(gt, pred, thresholds=[0.3]) == {0.3: pytest.approx(0.5)}


# ----------------------------------------------------------------------------- mAP^r


def _two_images_two_classes():
    h = w = 20
    A, B = _box(h, w, slice(0, 5), slice(0, 5)), _box(h, w, slice(10, 15), slice(10, 15))
    C = _box(h, w, slice(0, 5), slice(0, 5))
    C_part = _box(h, w, slice(0, 5), slice(0, 3))  # IoU 15/25 = 0.6 with C
    gt = [_instances([A, B], labels=[1, 2]), _instances([C], labels=[1])]
    pred = [_instances([A, B, B], scores=[0.9, 0.92, 0.3], labels=[1, 1, 2]),  # B once with the wrong class
            _instances([C_part, C], scores=[0.95, 0.5], labels=[1, 1])]
    return gt, pred


def test_map_r_on_a_hand_built_two_image_case():
    gt, pred = _two_images_two_classes()
    # class 1, 2 GT (A, C); ranking: C_part .95, B-as-1 .92, A .9, C .5
    #   t <= 0.6: TP FP TP FP -> precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1
    #             interpolated: 1 up to recall 1/2, 2/3 up to 1 -> AP = 1/2 + 1/2 * 2/3 = 5/6
    #   t >= 0.7: FP FP TP TP (C_part misses, so C is still free for the later exact C)
    #             precision 0, 0, 1/3, 1/2 at recall 0, 0, 1/2, 1 -> envelope 1/2 -> AP = 1/2
    # class 2, 1 GT (B): the exact B is a TP at every t -> AP 1
    expected = {0.5: (5 / 6 + 1) / 2, 0.6: (5 / 6 + 1) / 2, 0.7: 0.75, 0.8: 0.75, 0.9: 0.75}
    result = map_r(gt, pred)
    assert result == {t: pytest.approx(v) for t, v in expected.items()}
    flat = evaluate_matching(gt, pred, ["map_r"])
    assert flat["mAPr50"] == pytest.approx(11 / 12) and flat["mAPr90"] == pytest.approx(0.75)
    assert flat["mAPr"] == pytest.approx(49 / 60)  # (2 * 11/12 + 3 * 3/4) / 5


def test_map_r_duplicate_is_a_false_positive():
    mask = _box(10, 10, slice(0, 5), slice(0, 5))
    gt = _instances([mask])
    pred = _instances([mask, mask], scores=[0.9, 0.8])  # TP then a duplicate FP: AP 1 (recall 1 at precision 1)
    assert map_r(gt, pred, [0.5])[0.5] == pytest.approx(1.0)
    pred = _instances([mask, mask], scores=[0.8, 0.9])  # same masks, order does not matter here
    assert map_r(gt, pred, [0.5])[0.5] == pytest.approx(1.0)
    # the duplicate ranked first, the true match second in another image's ranking:
    gt2 = [gt, gt]
    pred2 = [_instances([mask, mask], scores=[0.9, 0.8]), _instances([mask], scores=[0.85])]
    # ranking: TP (.9), TP (.85, image 2), FP (.8) -> recall reaches 1 at precision 1 -> AP 1
    assert map_r(gt2, pred2, [0.5])[0.5] == pytest.approx(1.0)
    pred2 = [_instances([mask, mask], scores=[0.9, 0.8]), _instances([mask], scores=[0.7])]
    # ranking: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP 1/2 + 1/2 * 2/3
    assert map_r(gt2, pred2, [0.5])[0.5] == pytest.approx(5 / 6)


# ----------------------------------------------------------------------------- perfect and empty


def test_perfect_predictions_give_one_everywhere(three_images):
    maps, gt = three_images
    thresholds = np.round(np.arange(0.5, 0.96, 0.05), 2)
    result = evaluate_matching(gt, gt, MATCHING_METRICS, iou_thresholds=thresholds)
    counts = ("DiC", "abs_DiC", "num_images", "missed_merged", "missed_low_iou", "missed_not_found")
    fractions = {k: v for k, v in result.items() if k not in counts}
    assert len(fractions) == 10 + 1 + 1 + 5 + 1  # match_AP50..95 + match_AP, SBD, mAPr50..90 + mAPr
    assert all(v == pytest.approx(1.0) for v in fractions.values()), fractions
    assert result["DiC"] == 0.0 and result["abs_DiC"] == 0.0 and result["num_images"] == 3
    assert result["missed_merged"] == result["missed_low_iou"] == result["missed_not_found"] == 0
    assert set(result) >= {"match_AP55", "match_AP95", "mAPr60"}
    # label maps in, label maps out: same answer
    assert evaluate_matching(maps, maps, ["matching_ap", "sbd"]) == {"match_AP50": 1.0, "SBD": 1.0, "num_images": 3,
                                                                      **NOTHING_MISSED}


def test_empty_images():
    empty, one = np.zeros((8, 8), np.int64), np.zeros((8, 8), np.int64)
    one[2:5, 2:5] = 1
    # nothing to find and nothing found: AP 1, SBD 1, DiC 0 (StarDist/EmbedSeg would give AP 0)
    assert evaluate_matching([empty], [empty], ["matching_ap", "sbd", "dic"]) == {
        "match_AP50": 1.0, "SBD": 1.0, "DiC": 0.0, "abs_DiC": 0.0, "num_images": 1, **NOTHING_MISSED}
    # a prediction on an empty image: TP 0, FP 1 -> AP 0; SBD 0; DiC +1
    assert evaluate_matching([empty], [one], ["matching_ap", "sbd", "dic"]) == {
        "match_AP50": 0.0, "SBD": 0.0, "DiC": 1.0, "abs_DiC": 1.0, "num_images": 1, **NOTHING_MISSED}
    # an object missed: AP 0, SBD 0, DiC -1; mAP^r 0; not found
    result = evaluate_matching([one], [empty])
    assert (result["match_AP50"], result["SBD"], result["DiC"], result["mAPr"]) == (0.0, 0.0, -1.0, 0.0)
    assert result["missed_not_found"] == 1
    # no ground truth anywhere: mAP^r has no class to score
    assert math.isnan(map_r([empty], [one])[0.5])


def test_crowd_region_drops_predictions_mostly_inside_it():
    gt = _instances([_box(20, 20, slice(0, 5), slice(0, 5))])
    inside = _box(20, 20, slice(12, 18), slice(12, 18))
    straddling = _box(20, 20, slice(8, 12), slice(0, 10))  # 40 px, 10 of them in the region below
    pred = _instances([gt.masks[0], inside, straddling])
    region = _box(20, 20, slice(10, 20), slice(5, 20))
    assert matching_ap(gt, pred) == pytest.approx(1 / 3)  # TP 1, FP 2
    assert matching_ap(gt, pred, crowd=region) == pytest.approx(1 / 2)  # `inside` ignored, `straddling` stays FP
    assert dic([gt], [pred], crowd=[region]) == 1.0


def test_bad_input_is_a_clear_error():
    gt, pred = _tp_fp_fn_image()
    with pytest.raises(ValueError, match="one prediction per image"):
        matching_ap([gt, gt], [pred])
    with pytest.raises(ValueError, match=r"image 0: ground truth is \(20, 20\) but prediction is \(4, 4\)"):
        sbd([gt], [Instances.empty(4, 4)])
    with pytest.raises(ValueError, match=r"IoU thresholds in \(0, 1\]"):
        matching_ap(gt, pred, 1.5)
    with pytest.raises(ValueError, match="image 0 prediction: expected Instances or an integer label map"):
        sbd([np.zeros((4, 4), int)], [np.zeros((4, 4), float)])
    with pytest.raises(ValueError, match="unknown matching metric.*choices: matching_ap, sbd, dic, map_r"):
        evaluate_matching([gt], [pred], ["coco"])
    with pytest.raises(ValueError, match="at least one image"):
        sbd([], [])


# ----------------------------------------------------------------------------- real data


def test_real_coco_sample_ground_truth_fed_back_scores_one(coco_sample_truth):
    _, _, gt, crowd = coco_sample_truth
    assert sum(len(g) for g in gt) == 40 and len({c for g in gt for c in g.labels}) == 4
    for kwargs in ({}, {"crowd": crowd}):
        result = evaluate_matching(gt, gt, iou_thresholds=[0.5, 0.75, 0.9], **kwargs)
        for key in ("match_AP50", "match_AP75", "match_AP90", "SBD", "mAPr50", "mAPr90", "mAPr"):
            assert result[key] == pytest.approx(1.0), (key, kwargs)
        assert result["abs_DiC"] == 0.0
    # drop every other instance of the first image: recall falls, precision stays 1
    first = gt[0].select(np.arange(len(gt[0])) % 2 == 0)
    half = evaluate_matching([gt[0]], [first], ["matching_ap", "dic"])
    assert half["match_AP50"] == pytest.approx(len(first) / len(gt[0]))
    assert half["DiC"] == len(first) - len(gt[0])


def test_real_cvppp_leaves_merged_pair_against_the_loop_definition(shared_data):
    from PIL import Image

    folder = shared_data / "cvppp_a1" / "val" / "masks"
    if not folder.is_dir():
        pytest.skip(f"CVPPP A1 masks not found at {folder}")
    path = min(folder.glob("*.png"))
    gt = np.array(Image.open(path)).astype(np.int64)
    ids = [i for i in np.unique(gt) if i > 0]
    assert evaluate_matching([gt], [gt], ["sbd", "dic", "matching_ap"]) == {
        "SBD": 1.0, "DiC": 0.0, "abs_DiC": 0.0, "match_AP50": 1.0, "num_images": 1, **NOTHING_MISSED}
    pred = gt.copy()
    pred[pred == ids[1]] = ids[0]  # merge two leaves: one fewer object
    expected = min(_best_dice_by_loops(gt, pred), _best_dice_by_loops(pred, gt))
    assert sbd(gt, pred) == pytest.approx(expected) and expected < 1.0
    assert dic(gt, pred) == -1.0


# ----------------------------------------------------------------------------- config, engine, table


def test_config_validates_eval_metrics(tmp_path, tiny_config_file):
    from embedseg.config import ConfigError, load_config

    config = load_config(tiny_config_file, ["eval.metrics=[coco, matching_ap, sbd]", "eval.iou_thresholds=[0.5, 0.75]"])
    assert config.eval.metrics == ["coco", "matching_ap", "sbd"] and config.eval.iou_thresholds == [0.5, 0.75]
    assert load_config(tiny_config_file).eval.max_dets == 1000
    with pytest.raises(ConfigError, match=r"tiny.yaml: eval.metrics\[1\] = 'sdb' is not one of: coco, matching_ap, "
                                          r"sbd, dic, map_r"):
        load_config(tiny_config_file, ["eval.metrics=[coco, sdb]"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: eval.iou_thresholds = \[0.5, 50.0\]: expected"):
        load_config(tiny_config_file, ["eval.iou_thresholds=[0.5, 50]"])
    with pytest.raises(ConfigError, match="eval.metrics needs at least one metric"):
        load_config(tiny_config_file, ["eval.metrics=[]"])
