"""Instances: label map <-> masks <-> COCO RLE round trips."""
from __future__ import annotations

import numpy as np
import pytest

from embedseg.structures import Instances


def label_map():
    lm = np.zeros((6, 7), np.int32)
    lm[0:2, 0:3] = 4
    lm[3:6, 1:4] = 2
    lm[2:5, 5:7] = 9
    return lm


def test_from_label_map_masks_and_back():
    lm = label_map()
    inst = Instances.from_label_map(lm)
    assert len(inst) == 3
    assert inst.masks.dtype == bool and inst.masks.shape == (3, 6, 7)
    assert inst.areas().tolist() == [9, 6, 6]  # ids in sorted order 2, 4, 9
    back = inst.to_label_map()
    # Ids are renumbered, but the partition into instances is the same.
    assert set(zip(lm.ravel(), back.ravel())) == {(0, 0), (2, 1), (4, 2), (9, 3)}


def test_classes_from_dict_array_or_semantic_map():
    lm = label_map()
    semantic = np.where(lm == 9, 2, np.where(lm > 0, 1, 0))
    assert Instances.from_label_map(lm, labels=semantic).labels.tolist() == [1, 1, 2]
    assert Instances.from_label_map(lm, labels={2: 3, 4: 1, 9: 2}).labels.tolist() == [3, 1, 2]
    assert Instances.from_label_map(lm, labels=[5, 6, 7]).labels.tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="one class per id"):
        Instances.from_label_map(lm, labels=[1, 2])


def test_ignored_negative_ids_are_not_instances():
    lm = label_map()
    lm[5, 6] = -1
    assert len(Instances.from_label_map(lm)) == 3


def test_rle_round_trip():
    inst = Instances.from_label_map(label_map(), labels=[1, 2, 1])
    inst.scores = np.array([0.3, 0.9, 0.5])
    rles = inst.to_rle()
    assert all(isinstance(r["counts"], str) for r in rles)
    back = Instances.from_rle(rles, inst.scores, inst.labels)
    np.testing.assert_array_equal(back.masks, inst.masks)
    results = inst.to_coco_results(image_id=7)
    assert [r["category_id"] for r in results] == [1, 2, 1]
    assert results[1]["score"] == pytest.approx(0.9) and results[0]["image_id"] == 7


def test_higher_score_wins_overlaps():
    masks = np.zeros((2, 3, 3), bool)
    masks[0, :, :2] = True
    masks[1, :, 1:] = True
    low_first = Instances(masks, [0.2, 0.8], [1, 2]).to_label_map()
    assert low_first[:, 1].tolist() == [1, 1, 1]  # the 0.8 mask is ranked first -> id 1
    assert low_first[:, 0].tolist() == [2, 2, 2]
    assert Instances(masks, [0.2, 0.8], [1, 2]).to_semantic_map()[:, 1].tolist() == [2, 2, 2]
    tied = Instances(masks, [0.5, 0.5], [1, 2])  # equal scores: the lower index wins in both maps
    assert tied.to_label_map()[:, 1].tolist() == [1, 1, 1] and tied.to_semantic_map()[:, 1].tolist() == [1, 1, 1]


def test_empty_and_validation():
    empty = Instances.empty(4, 5)
    assert len(empty) == 0 and empty.to_label_map().shape == (4, 5) and empty.to_rle() == []
    assert len(Instances.from_label_map(np.zeros((4, 5), np.int64))) == 0
    with pytest.raises(ValueError, match="one score and one label per mask"):
        Instances(np.zeros((2, 3, 3), bool), [1.0], [1, 1])
    with pytest.raises(ValueError, match="integer ids"):
        Instances.from_label_map(np.zeros((3, 3), np.float32))
