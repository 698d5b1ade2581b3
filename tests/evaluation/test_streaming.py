"""Streaming evaluators: images processed one by one, in shards merged back in order, give exactly the
metrics of evaluate_coco / evaluate_matching; they keep no dense masks."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from embedseg.evaluation import (
    MATCHING_METRICS,
    COCOEvaluator,
    MatchingEvaluator,
    build_evaluators,
    evaluate_coco,
    evaluate_matching,
)
from embedseg.structures import Instances


def _same(a: dict, b: dict) -> bool:
    """Equal to the last bit, NaN equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _perturbed(gt: Instances, seed: int) -> Instances:
    """Every other instance shifted by a pixel, one dropped, scores drawn from `seed`."""
    rng = np.random.default_rng(seed)
    masks = [np.roll(m, k % 2, axis=1) for k, m in enumerate(gt.masks)][1:]
    if not masks:
        return Instances.empty(*gt.image_size)
    return Instances(np.stack(masks), rng.random(len(masks)), gt.labels[1:])


def _sharded(make, gt, pred, crowd, shards=2) -> dict:
    """Images i, i + shards, ... processed by evaluator i; their states merged in image order into a fresh one."""
    parts = [make() for _ in range(shards)]
    for i, (g, p, c) in enumerate(zip(gt, pred, crowd)):
        parts[i % shards].process(g, p, c)
    states = [part.state() for part in parts]
    ordered = [states[i % shards][i // shards] for i in range(len(gt))]
    merged = make()
    merged.merge([pickle.loads(pickle.dumps(ordered))])  # as sent between processes
    return merged.evaluate()


def test_sharded_evaluators_equal_the_list_functions(three_images):
    maps, gt = three_images
    pred = [_perturbed(g, i) for i, g in enumerate(gt)]
    crowd = [None, maps[1] == 7, None]  # the second image's big instance is an ignore region too
    expected = evaluate_coco(gt, pred, ["a", "b"], crowd=crowd)
    assert _same(_sharded(lambda: COCOEvaluator(["a", "b"]), gt, pred, crowd), expected)
    expected = evaluate_matching(gt, pred, MATCHING_METRICS, (0.5, 0.8), crowd=crowd)
    assert _same(_sharded(lambda: MatchingEvaluator(MATCHING_METRICS, (0.5, 0.8)), gt, pred, crowd), expected)
    assert expected["num_images"] == 3 and 0 < expected["match_AP"] < 1


def test_sharded_evaluators_on_the_real_coco_sample(coco_sample_truth):
    _, _, gt, crowd = coco_sample_truth
    pred = [_perturbed(g, i) for i, g in enumerate(gt)]
    expected = {**evaluate_coco(gt, pred, crowd=crowd), **evaluate_matching(gt, pred, crowd=crowd)}
    streamed = {**_sharded(COCOEvaluator, gt, pred, crowd), **_sharded(MatchingEvaluator, gt, pred, crowd)}
    assert _same(streamed, expected) and 0 < expected["AP"] < 1
    perfect = build_evaluators(["coco", "matching_ap", "sbd"])
    for g, c in zip(gt, crowd):
        for evaluator in perfect:
            evaluator.process(g, g, c)
    scores = {**perfect[0].evaluate(), **perfect[1].evaluate()}
    assert scores["AP"] == pytest.approx(1.0) and scores["match_AP50"] == 1.0 and scores["SBD"] == 1.0


def test_evaluators_keep_no_dense_masks():
    label_map = np.zeros((512, 512), np.int32)
    for k in range(20):  # 20 boxes of 60x60 pixels
        label_map[(k // 5) * 120:(k // 5) * 120 + 60, (k % 5) * 100:(k % 5) * 100 + 60] = k + 1
    gt = Instances.from_label_map(label_map)
    for evaluator in build_evaluators(["coco", *MATCHING_METRICS]):
        for _ in range(3):
            evaluator.process(gt, gt)
        kept = len(pickle.dumps(evaluator.state()))
        assert kept < 3 * gt.masks.nbytes / 100, (type(evaluator).__name__, kept)  # < 1% of the dense masks
        evaluator.reset()
        assert evaluator.state() == []


def test_evaluator_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['sdb'\]; choices: coco, matching_ap"):
        build_evaluators(["coco", "sdb"])
    with pytest.raises(ValueError, match="matching metrics need at least one image"):
        MatchingEvaluator().evaluate()
    evaluator = COCOEvaluator(["a"])
    evaluator.process(Instances.empty(4, 4), Instances.empty(4, 4))
    with pytest.raises(ValueError, match=r"image 1: prediction has class labels \[2\], expected 1..1"):
        evaluator.process(Instances.empty(4, 4), Instances(np.ones((1, 4, 4)), [1.0], [2]))
