"""Groupers on planted clusters: exact recovery (AP 1.0), classes, scores, empty input, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from embedseg.evaluation import evaluate_coco
from embedseg.grouping import GROUPERS, build_grouper
from embedseg.structures import Instances


def planted(touching: bool, num_classes: int = 2, dim: int = 8, seed: int = 0, noise: float = 0.05):
    """Six square instances on a 48x48 image with well-separated embedding centres.

    With touching=True the squares of a row share edges (one connected foreground per class).
    Instance k has class 1 + k % num_classes... per row when touching, and seediness 0.5 + k/20.
    """
    rng = np.random.default_rng(seed)
    h = w = 48
    label_map = np.zeros((h, w), np.int32)
    semantic_map = np.zeros((h, w), np.int64)
    gap = 0 if touching else 4
    k = 0
    for row in range(2):
        for col in range(3):
            k += 1
            y0, x0 = 4 + row * 20, 2 + col * (12 + gap)
            label_map[y0:y0 + 12, x0:x0 + 12] = k
            semantic_map[y0:y0 + 12, x0:x0 + 12] = 1 + row % num_classes
    centres = rng.normal(size=(k + 1, dim))
    centres *= 4.0 / np.linalg.norm(centres, axis=1, keepdims=True)  # on a sphere of radius 4: far apart
    embedding = (centres[label_map] + noise * rng.normal(size=(h, w, dim))).transpose(2, 0, 1)
    semantic = np.full((num_classes + 1, h, w), 0.05)
    semantic[semantic_map, np.arange(h)[:, None], np.arange(w)] = 0.9
    seediness = np.where(label_map > 0, 0.5 + label_map / 20.0, 0.0)
    outputs = {"embedding": embedding.astype(np.float32), "semantic": semantic.astype(np.float32),
               "seediness": seediness.astype(np.float32)}
    return outputs, Instances.from_label_map(label_map, labels=semantic_map)


@pytest.mark.parametrize("touching", [False, True])
def test_meanshift_recovers_planted_clusters(touching):
    outputs, gt = planted(touching)
    pred = build_grouper("meanshift", bandwidth=1.0, min_size=5)(outputs)
    assert len(pred) == 6
    assert evaluate_coco([gt], [pred])["AP"] == pytest.approx(1.0)
    # Classes from the semantic head; scores = seed seediness x class confidence, so ordered by id.
    order = np.argsort(-pred.scores)
    ids = [int(np.unique(gt.to_label_map()[m])[0]) for m in pred.masks[order]]
    assert ids == [6, 5, 4, 3, 2, 1]
    assert pred.scores.max() == pytest.approx((0.5 + 6 / 20) * 0.9, rel=1e-5)


def test_components_recovers_separated_but_merges_touching():
    outputs, gt = planted(touching=False)
    pred = build_grouper("components", min_size=5)(outputs)
    assert evaluate_coco([gt], [pred])["AP"] == pytest.approx(1.0)
    outputs, gt = planted(touching=True)
    pred = build_grouper("components", min_size=5)(outputs)
    assert len(pred) == 2  # one region per row/class: the baseline embeddings must beat
    assert sorted(pred.labels.tolist()) == [1, 2]


@pytest.mark.parametrize("name", GROUPERS.names())
def test_every_grouper_handles_empty_foreground(name):
    outputs, _ = planted(touching=False)
    outputs["semantic"][0] = 1.0  # background wins everywhere
    outputs["seediness"][:] = 0.0
    pred = build_grouper(name)(outputs)
    assert len(pred) == 0 and pred.image_size == (48, 48)


@pytest.mark.parametrize("name", GROUPERS.names())
def test_every_grouper_returns_scored_classed_instances(name):
    outputs, gt = planted(touching=False, seed=3)
    pred = build_grouper(name)(outputs)
    assert len(pred) > 0
    assert set(pred.labels.tolist()) <= {1, 2}
    assert np.all((pred.scores > 0) & (pred.scores <= 1))
    assert pred.image_size == gt.image_size


def test_meanshift_without_seediness_is_reproducible_for_a_random_state():
    outputs, gt = planted(touching=True, noise=0.1)
    del outputs["seediness"]
    a = build_grouper("meanshift", random_state=3)(outputs)
    b = build_grouper("meanshift", random_state=3)(outputs)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert evaluate_coco([gt], [a])["AP"] == pytest.approx(1.0)


def test_torch_inputs_are_accepted():
    import torch

    outputs, gt = planted(touching=True)
    pred = build_grouper("meanshift")({k: torch.from_numpy(v) for k, v in outputs.items()})
    assert evaluate_coco([gt], [pred])["AP"] == pytest.approx(1.0)


def test_bad_parameters_are_errors():
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        build_grouper("meanshift", bandwidth=0)
    with pytest.raises(KeyError, match="unknown grouper 'kmeans'; choose one of"):
        build_grouper("kmeans")
