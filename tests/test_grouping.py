"""Groupers on planted clusters: exact recovery (AP 1.0), classes, scores, empty input, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedseg.config import ConfigError, config_from_dict
from embedseg.distances import squared_distances
from embedseg.evaluation import evaluate_coco
from embedseg.grouping import GROUPERS, POSTPROCESS, Grouper, build_grouper, build_postprocess, default_groupers
from embedseg.grouping.base import masks_from_assignment
from embedseg.grouping.seeds import mask_iou, mask_nms
from embedseg.losses.metric import pair_similarity
from embedseg.structures import Instances

SIDE = 12  # square instances of 12 x 12 pixels


def class_probability(k: int) -> float:
    """Mean probability of its class inside instance k (1..6): 0.45 ... 0.95."""
    return 0.35 + 0.1 * k


def seediness_of(k: int) -> float:
    return 0.5 + k / 20.0


SPATIAL_SCALE = 0.25  # units per pixel of the planted spatial embeddings


def planted(touching: bool = False, num_classes: int = 2, dim: int = 8, seed: int = 0, noise: float = 0.05,
            size: int = 48, spatial: bool = False):
    """Six square instances with well-separated embedding centres; returns (outputs, ground truth).

    With touching=True the squares of a row share edges (one connected foreground per class).
    Instance k (1..6, row by row) has class 1 + row % num_classes, seediness 0.5 + k/20 and class
    probability 0.35 + 0.1 k, so every grouper's scores rise with k. All instances carry the same
    noise pattern around their centre, so their clusters have the same shape (and HDBSCAN gives
    them the same membership strengths). With spatial=True the embedding is what the spatial loss
    trains instead (embedseg.losses.spatial): channels 0, 1 the position of the instance's centre
    (SPATIAL_SCALE units per pixel) plus the noise, channel 2 a margin of 0 (kernel exp(-d^2)).
    """
    rng = np.random.default_rng(seed)
    h = w = size
    label_map = np.zeros((h, w), np.int32)
    semantic_map = np.zeros((h, w), np.int64)
    class_prob = np.zeros((h, w))
    gap = 0 if touching else 4
    centres = rng.normal(size=(7, dim))
    centres *= 4.0 / np.linalg.norm(centres, axis=1, keepdims=True)  # on a sphere of radius 4: far apart
    embedding = rng.normal(size=(h, w, dim))  # background: anything
    pattern = noise * rng.normal(size=(SIDE, SIDE, dim))
    k = 0
    for row in range(2):
        for col in range(3):
            k += 1
            y0, x0 = 4 + row * 20, 2 + col * (SIDE + gap)
            box = np.s_[y0:y0 + SIDE, x0:x0 + SIDE]
            label_map[box] = k
            semantic_map[box] = 1 + row % num_classes
            class_prob[box] = class_probability(k)
            embedding[box] = centres[k] + pattern
            if spatial:
                embedding[box][..., :2] = spatial_point(y0 + SIDE / 2, x0 + SIDE / 2) + pattern[..., :2]
    if spatial:
        embedding[..., 2] = 0.0
        embedding = embedding[..., :3]
    rest = np.where(label_map > 0, (1 - class_prob) / num_classes, 0.05 / num_classes)  # spread over the others
    semantic = rest[None].repeat(num_classes + 1, 0)
    semantic[0][label_map == 0] = 0.95
    yy, xx = np.nonzero(label_map)
    semantic[semantic_map[yy, xx], yy, xx] = class_prob[yy, xx]
    seediness = np.where(label_map > 0, 0.5 + label_map / 20.0, 0.0)
    outputs = {"embedding": embedding.transpose(2, 0, 1).astype(np.float32), "semantic": semantic.astype(np.float32),
               "seediness": seediness.astype(np.float32),
               "instances": label_map}  # what eval.oracle: [instances] adds, for oracle_centres; the others ignore it
    return outputs, Instances.from_label_map(label_map, labels=semantic_map)


def spatial_point(y: float, x: float) -> np.ndarray:
    """Channels 0, 1 of a spatial embedding pointing at pixel (y, x)."""
    return SPATIAL_SCALE * np.array([y, x])


def planted_for(name: str, **kwargs):
    """`planted` with the outputs grouper `name` reads: a spatial embedding for the spatial grouper."""
    return planted(**kwargs, spatial=GROUPERS.get(name).spatial is True)


def instance_ids(pred: Instances, gt: Instances) -> list[int]:
    """Ground-truth id under each predicted mask (which must lie inside exactly one instance)."""
    label_map = gt.to_label_map()
    ids = []
    for mask in pred.masks:
        under = np.unique(label_map[mask])
        assert len(under) == 1, f"a predicted mask covers ground-truth ids {under}"
        ids.append(int(under[0]))
    return ids


def assert_exact_recovery(pred: Instances, gt: Instances):
    assert evaluate_coco([gt], [pred])["AP"] == pytest.approx(1.0)
    assert sorted(m.tobytes() for m in pred.masks) == sorted(m.tobytes() for m in gt.masks), \
        "masks differ from the planted ones"


# ----------------------------------------------------------------------------- every registered grouper


@pytest.mark.parametrize("name", GROUPERS.names())
def test_every_grouper_recovers_planted_clusters_with_classes_and_ordered_scores(name):
    outputs, gt = planted_for(name, touching=False)
    pred = build_grouper(name)(outputs)
    assert len(pred) == 6 and pred.image_size == gt.image_size
    assert_exact_recovery(pred, gt)
    ids = instance_ids(pred, gt)
    gt_class = dict(zip(range(1, 7), gt.labels))
    assert pred.labels.tolist() == [gt_class[i] for i in ids]
    # Scores rise with the seediness and the class confidence of the planted instance.
    order = np.argsort(-pred.scores, kind="stable")
    assert [ids[i] for i in order] == [6, 5, 4, 3, 2, 1]
    assert np.all((pred.scores > 0) & (pred.scores <= 1))


# Valid parameters of each step, for the tests over every step; a new step needs an entry here.
STEP_EXAMPLES = {"split_disconnected": {}, "drop_small": {"min_size": 5}, "merge_continuous": {"threshold": 0.35},
                 "drop_relatively_small": {"fraction": 0.1}}


def step_example(step: str) -> dict:
    if step not in STEP_EXAMPLES:
        pytest.fail(f"postprocess step {step!r} has no example parameters in tests/test_grouping.py: add one")
    return {"name": step, **STEP_EXAMPLES[step]}


@pytest.mark.parametrize("name", GROUPERS.names())
def test_every_grouper_handles_empty_foreground(name):
    outputs, _ = planted_for(name, touching=False)
    outputs["semantic"][0] = 1.0  # background wins everywhere
    outputs["seediness"][:] = 0.0
    pred = build_grouper(name, postprocess=[step_example(s) for s in POSTPROCESS.names()])(outputs)
    assert len(pred) == 0 and pred.image_size == (48, 48)


@pytest.mark.parametrize("step", POSTPROCESS.names())
@pytest.mark.parametrize("name", GROUPERS.names())
def test_every_postprocess_step_after_every_grouper_keeps_planted_clusters(name, step):
    outputs, gt = planted_for(name, touching=False)  # connected, apart, of one size: no step has anything to change
    pred = build_grouper(name, postprocess=[step_example(step)])(outputs)
    assert pred.masks.dtype == bool and pred.masks.shape == (6, 48, 48)
    assert np.all((pred.scores > 0) & (pred.scores <= 1)) and set(pred.labels.tolist()) == {1, 2}
    assert_exact_recovery(pred, gt)


# Parameters that make each sampling grouper subsample this small image, so random_state matters.
SMALL_SAMPLES = {"meanshift": {"sample_size": 100}, "seeds": {"num_candidates": 60}, "hdbscan": {"sample_size": 300}}


@pytest.mark.parametrize("name", GROUPERS.names())
def test_every_grouper_is_reproducible_for_a_random_state(name):
    outputs, gt = planted_for(name, touching=False, noise=0.1)
    if not GROUPERS.get(name).spatial:  # without seediness the samplers fall back on random priorities
        del outputs["seediness"]  # (the spatial grouper's seeds are the seed map: it needs one)
    params = dict(SMALL_SAMPLES.get(name, {}))
    if "random_state" in GROUPERS.parameters(name):
        params["random_state"] = 3
    a, b = build_grouper(name, **params)(outputs), build_grouper(name, **params)(outputs)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert evaluate_coco([gt], [a])["AP"] == pytest.approx(1.0)
    if "random_state" in params:  # another draw still finds the planted clusters
        params["random_state"] = 4
        assert evaluate_coco([gt], [build_grouper(name, **params)(outputs)])["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", GROUPERS.names())
def test_every_grouper_accepts_torch_inputs(name):
    outputs, gt = planted_for(name, touching=False)
    pred = build_grouper(name)({k: torch.from_numpy(v) for k, v in outputs.items()})
    assert_exact_recovery(pred, gt)


@pytest.mark.parametrize("name", sorted(set(GROUPERS.names()) - {"components"}))
def test_embedding_groupers_split_touching_objects(name):
    outputs, gt = planted_for(name, touching=True)
    assert_exact_recovery(build_grouper(name)(outputs), gt)


# ----------------------------------------------------------------------------- post-processing steps


@pytest.mark.parametrize("name", sorted(set(GROUPERS.names()) - {"components"}))
def test_split_disconnected_separates_far_apart_look_alikes(name):
    outputs, gt = planted_for(name, touching=False)
    label_map = gt.to_label_map()
    # Instance 3 (top right) gets the embedding of instance 1 (top left, same class): one cluster, two places.
    outputs["embedding"][:, label_map == 3] = outputs["embedding"][:, label_map == 1]
    merged = build_grouper(name)(outputs)
    assert len(merged) == 5
    split = build_grouper(name, postprocess=["split_disconnected"])(outputs)
    assert len(split) == 6
    np.testing.assert_array_equal(split.to_label_map() > 0, label_map > 0)
    assert evaluate_coco([gt], [split])["AP"] == pytest.approx(1.0)


def disconnected_masks():
    """Mask 0: two squares of 4 pixels touching at a corner only; mask 1: a line of 6 pixels (through the
    second square: masks may overlap) and a lone pixel."""
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 0:2, 0:2] = masks[0, 2:4, 2:4] = True
    masks[1, 2, :] = masks[1, 4, 0] = True
    return masks, torch.tensor([0.9, 0.5])


def run_chain(steps, masks, scores, outputs=None):
    for step in build_postprocess(steps):
        masks, scores = step(masks, scores, outputs or {})
    return masks, scores


def test_split_disconnected_by_hand():
    masks, scores = disconnected_masks()
    parts, part_scores = run_chain(["split_disconnected"], masks, scores)
    assert [int(p.sum()) for p in parts] == [4, 4, 6, 1]  # 4-connectivity: diagonal neighbours are apart
    assert part_scores.tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5])
    assert torch.equal(parts[0] | parts[1], masks[0]) and torch.equal(parts[2] | parts[3], masks[1])


def test_drop_small_by_hand_and_the_chain_runs_in_order():
    masks, scores = disconnected_masks()  # areas 8 and 7; after the split 4, 4, 6 and 1
    kept, kept_scores = run_chain([{"name": "drop_small", "min_size": 8}], masks, scores)
    assert torch.equal(kept, masks[:1]) and kept_scores.tolist() == pytest.approx([0.9])
    split_first = run_chain(["split_disconnected", {"name": "drop_small", "min_size": 2}], masks, scores)[0]
    assert [int(p.sum()) for p in split_first] == [4, 4, 6]
    drop_first = run_chain([{"name": "drop_small", "min_size": 2}, "split_disconnected"], masks, scores)[0]
    assert [int(p.sum()) for p in drop_first] == [4, 4, 6, 1]


def test_drop_relatively_small_by_hand():
    masks = torch.zeros(5, 1, 100, dtype=torch.bool)
    for i, area in enumerate([100, 3, 80, 4, 90]):  # median 80: at fraction 0.05 the threshold is 4 px
        masks[i, 0, :area] = True
    scores = torch.arange(5.0)
    kept, kept_scores = run_chain([{"name": "drop_relatively_small", "fraction": 0.05}], masks, scores)
    assert kept_scores.tolist() == [0.0, 2.0, 3.0, 4.0]
    assert torch.equal(kept, masks[[0, 2, 3, 4]])
    # An even count takes the lower middle area: median of (100, 3, 80, 4) is 4, threshold 2 keeps all.
    assert len(run_chain([{"name": "drop_relatively_small", "fraction": 0.5}], masks[:4], scores[:4])[0]) == 4


def test_merge_continuous_by_hand():
    # 4x8 image: A | B on rows 0-1 are one object cut in two (channel 0 rises by 0.1 per column), C | D on
    # rows 2-3 are two touching objects (channel 0 jumps from 0 to 3); channel 1 sets the rows apart.
    embedding = torch.zeros(2, 4, 8)
    embedding[0, :2] = 0.1 * torch.arange(8.0)
    embedding[0, 2:, 4:] = 3.0
    embedding[1, 2:] = 5.0
    masks = torch.zeros(4, 4, 8, dtype=torch.bool)
    masks[0, :2, :4] = masks[1, :2, 4:] = masks[2, 2:, :4] = masks[3, 2:, 4:] = True
    scores = torch.tensor([0.2, 0.7, 0.5, 0.4])
    outputs = {"embedding": embedding}
    def merge(threshold, m=masks):
        return run_chain([{"name": "merge_continuous", "threshold": threshold}], m, scores, outputs)

    # A -> B: 4 pixel pairs 2 px apart across the border (2 per row), each 0.2 apart in embedding: mean jump 0.2.
    merged, merged_scores = merge(0.35)
    assert torch.equal(merged, torch.stack([masks[0] | masks[1], masks[2], masks[3]]))
    assert merged_scores.tolist() == pytest.approx([0.7, 0.5, 0.4])  # the best of the parts
    assert torch.equal(merge(0.15)[0], masks)  # the jump is not below the threshold: nothing merges
    # On row 0 alone A and B meet over 2 pairs, fewer than the 3 a merge needs.
    one_row = masks.clone()
    one_row[:2, 1] = False
    assert torch.equal(merge(0.35, one_row)[0], one_row)


def test_meanshift_merge_joins_a_long_object_the_bandwidth_cuts():
    # One 6x40 object whose embedding rises by 0.1 per column (4 units end to end) above two touching 6x20
    # objects 5 apart: bandwidth 1 cuts the long one into pieces; the merge joins them and only them.
    embedding = torch.zeros(2, 12, 40)
    embedding[0, :6] = 0.1 * torch.arange(40.0)
    embedding[1, 6:] = 5.0
    embedding[0, 6:, 20:] = 5.0
    semantic = torch.stack([torch.zeros(12, 40), torch.ones(12, 40)])
    outputs = {"embedding": embedding, "semantic": semantic}
    params = {"bandwidth": 1.0, "min_size": 5, "sample_size": None}
    cut = build_grouper("meanshift", **params)(outputs)
    assert len(cut) > 3
    joined = build_grouper("meanshift", **params, postprocess=[{"name": "merge_continuous", "threshold": 0.35}])(outputs)
    expected = torch.zeros(12, 40, dtype=torch.long)
    expected[6:, :20], expected[6:, 20:] = 1, 2
    assert sorted(int(m.sum()) for m in joined.masks) == [120, 120, 240]
    assert {tuple(np.unique(expected.numpy()[m])) for m in joined.masks} == {(0,), (1,), (2,)}


GROUPER_MIN_SIZE_5 = {"meanshift": {"min_size": 5, "sample_size": None}, "seeds": {"min_size": 5},
                      "hdbscan": {"min_size": 5, "min_cluster_size": 5, "sample_size": None},
                      "components": {"min_size": 5}, "spatial": {"min_size": 5}}


@pytest.mark.parametrize("name", GROUPERS.names())
def test_drop_relatively_small_drops_a_fragment_far_smaller_than_the_image_s_objects(name):
    # The six planted 12x12 squares plus a 3x3 fragment with an embedding of its own: min_size 5 keeps
    # the fragment; a fraction 0.1 of the median area 144 (14.4 px) drops it and only it.
    outputs, gt = planted_for(name)
    outputs["embedding"][:, 40:43, 40:43] = -8.0
    if GROUPERS.get(name).spatial:  # a fragment pointing at its own centre, with the planted margin
        outputs["embedding"][:2, 40:43, 40:43] = spatial_point(41, 41)[:, None, None]
        outputs["embedding"][2, 40:43, 40:43] = 0.0
    outputs["semantic"][:, 40:43, 40:43] = np.array([0.05, 0.9, 0.05], np.float32)[:, None, None]
    outputs["seediness"][40:43, 40:43] = 0.6
    outputs["instances"][40:43, 40:43] = 7  # a centre of its own for oracle_centres
    params = GROUPER_MIN_SIZE_5.get(name, {})
    assert len(build_grouper(name, **params)(outputs)) == 7
    relative = [{"name": "drop_relatively_small", "fraction": 0.1}]
    assert_exact_recovery(build_grouper(name, **params, postprocess=relative)(outputs), gt)


@pytest.mark.parametrize("steps, error, match", [
    (["dilate"], KeyError, r"unknown postprocess step 'dilate'; choose one of: drop_relatively_small, drop_small"),
    ([{"name": "drop_small", "min_sise": 5}], ConfigError, r"unknown key 'min_sise'.*accepted: min_size"),
    ([{"min_size": 5}], TypeError, r"postprocess\[0\] = .*expected a step name or a mapping with a 'name'"),
    ("split_disconnected", ConfigError, "postprocess = 'split_disconnected' has the wrong type"),
    ([{"name": "drop_small", "min_size": 0}], ValueError, "min_size must be >= 1"),
    ([{"name": "drop_relatively_small", "fraction": 1.0}], ValueError, r"fraction must be in \(0, 1\)"),
    ([{"name": "merge_continuous", "threshold": 0.0}], ValueError, "threshold must be a positive"),
    (["merge_continuous"], TypeError, "threshold"),
])
def test_bad_postprocess_steps_are_errors(steps, error, match):
    with pytest.raises(error, match=match):
        build_grouper("components", postprocess=steps)


def grouping_config(grouping: dict):
    return config_from_dict({"grouping": grouping}, where="x.yaml")


def test_config_postprocess_lists_are_checked_at_load_time():
    chain = ["split_disconnected", {"name": "merge_continuous", "threshold": 0.35}]
    config = grouping_config({"meanshift": {"bandwidth": 1.25, "postprocess": chain}})
    assert config.grouping["meanshift"]["postprocess"] == chain  # a bare name or {name, params}
    for step, match in [
        ("dilate", (r"x.yaml: grouping.meanshift.postprocess\[1\]: unknown postprocess step 'dilate'; choose one of: "
                    r"drop_relatively_small, drop_small, merge_continuous, split_disconnected")),
        ({"name": "merge_continuous", "treshold": 0.3},
         (r"unknown key 'grouping.meanshift.postprocess\[1\].treshold' for postprocess step 'merge_continuous'; "
          r"accepted: threshold")),
        ({"name": "merge_continuous", "threshold": "high"},
         r"grouping.meanshift.postprocess\[1\].threshold = 'high' has the wrong type; expected float"),
        ({"name": "merge_continuous"}, r"grouping.meanshift.postprocess\[1\].threshold is missing"),
        ({"name": "merge_continuous", "threshold": -1}, r"grouping.meanshift.postprocess\[1\]: .*threshold must be"),
        (3, r"grouping.meanshift.postprocess = \['split_disconnected', 3\] has the wrong type"),
    ]:
        with pytest.raises(ConfigError, match=match):
            grouping_config({"meanshift": {"postprocess": ["split_disconnected", step]}})
    with pytest.raises(ConfigError, match=r"grouping.seeds.postprocess = 'split_disconnected' has the wrong type"):
        grouping_config({"seeds": {"postprocess": "split_disconnected"}})


# ----------------------------------------------------------------------------- the Grouper protocol and helpers


class GivenMasks(Grouper):
    """A grouper whose proposals are given (not registered: it only tests the base class)."""

    def __init__(self, masks, scores, postprocess=()):
        super().__init__(postprocess)
        self.masks, self.scores = masks, scores

    def propose(self, outputs):
        return self.masks, self.scores


def test_grouper_base_runs_the_chain_then_scores_by_class_confidence():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 0:2, 0:2] = masks[0, 2:4, 2:4] = True  # two squares of 4 pixels touching at a corner
    masks[1, 4, 2:] = masks[1, 0, 5] = True  # a line of 4 pixels and a lone pixel
    semantic = torch.zeros(3, 5, 6)
    semantic[0] = 1.0
    semantic[:, masks[0]] = torch.tensor([0.0, 0.8, 0.2])[:, None]  # class 1 at 0.8 in mask 0
    semantic[:, masks[1]] = torch.tensor([0.1, 0.3, 0.6])[:, None]  # class 2 at 0.6 in mask 1
    grouper = GivenMasks(masks, torch.tensor([0.9, 0.5]),
                         postprocess=["split_disconnected", {"name": "drop_small", "min_size": 2}])
    pred = grouper({"embedding": torch.zeros(1, 5, 6), "semantic": semantic})
    assert [int(m.sum()) for m in pred.masks] == [4, 4, 4] and pred.masks[2, 4, 2:].all()
    assert pred.labels.tolist() == [1, 1, 2]
    assert pred.scores.tolist() == pytest.approx([0.9 * 0.8, 0.9 * 0.8, 0.5 * 0.6])


def test_mask_iou_and_nms_by_hand():
    masks = torch.tensor([[1, 1, 1, 1, 0, 0, 0],   # area 4
                          [1, 1, 1, 0, 0, 0, 0],   # IoU with 0: 3/4
                          [0, 0, 0, 1, 1, 1, 0],   # IoU with 0: 1/6, with 1: 0
                          [0, 0, 0, 0, 1, 1, 0]], dtype=torch.bool)  # the last pixel is in no mask
    iou = mask_iou(masks, masks)
    assert iou[0, 1] == pytest.approx(0.75) and iou[0, 2] == pytest.approx(1 / 6) and iou[1, 2] == 0
    assert iou[2, 3] == pytest.approx(2 / 3) and torch.allclose(iou.diag(), torch.ones(4))
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7])
    assert mask_nms(masks, scores, 0.5).tolist() == [1, 2]  # 0 overlaps 1, 3 overlaps 2
    assert mask_nms(masks, scores, 0.7).tolist() == [1, 2, 3]  # 2/3 < 0.7 keeps 3; 0 still overlaps 1
    assert mask_nms(masks, scores, 0.8).tolist() == [1, 2, 3, 0]
    assert mask_nms(masks[:0], scores[:0], 0.5).tolist() == []


def test_squared_distances_and_masks_from_assignment():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    centres = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert squared_distances(x, centres).tolist() == [[0.0, 1.0], [25.0, 18.0]]
    assignment = torch.tensor([0, 0, -1, 2, 0])  # cluster 1 is empty, cluster 2 has one pixel
    masks, kept = masks_from_assignment(assignment, torch.tensor([0, 1, 2, 3, 5]), 3, (2, 3), min_size=2)
    assert kept.tolist() == [0]
    assert masks.tolist() == [[[True, True, False], [False, False, True]]]


# ----------------------------------------------------------------------------- seeds


def seed_scores(**params) -> list[float]:
    """Scores of the seeds grouper on four pixels with 1-d embeddings 0, 0.1, 3, 6 and seediness 0.9, 1.0,
    0.5, 0.2 (class confidence 1): at tau 0.9 (distance < 0.45) each seed's mask holds the pixels within
    0.45 of it and nothing suppresses (iou_threshold 1), so the scores are the chosen seeds' seediness."""
    outputs = {"embedding": np.array([[[0.0, 0.1, 3.0, 6.0]]], np.float32),
               "seediness": np.array([[0.9, 1.0, 0.5, 0.2]], np.float32),
               "semantic": np.array([[[0.0] * 4], [[1.0] * 4]], np.float32)}
    pred = build_grouper("seeds", **{"tau": 0.9, "min_size": 1, "iou_threshold": 1.0, **params})(outputs)
    return sorted(pred.scores.tolist(), reverse=True)


def test_seed_choice_maximises_seediness_times_distance_power():
    # First the most seedy pixel (1); pixel 0 is inside its mask. Then 2 (0.5 * 2.9 > 0.2 * 5.9), then 3.
    assert seed_scores() == pytest.approx([1.0, 0.5, 0.2])
    assert seed_scores(max_seeds=2) == pytest.approx([1.0, 0.5])
    assert seed_scores(max_seeds=2, power=2.0) == pytest.approx([1.0, 0.2])  # 0.2 * 5.9^2 = 6.96 > 0.5 * 2.9^2
    assert seed_scores(exclude_covered=False) == pytest.approx([1.0, 0.9, 0.5, 0.2])  # 0 last: 0.9 * 0.1
    assert seed_scores(exclude_covered=False, max_seeds=3) == pytest.approx([1.0, 0.5, 0.2])
    assert seed_scores(min_seediness=0.3) == pytest.approx([1.0, 0.5])


def test_seed_masks_use_pair_similarity_at_each_tau_and_suppress_duplicates():
    # One row of five foreground pixels with 1-d embeddings.
    values = np.array([0.0, 0.3, 1.0, 5.0, 5.2], np.float32)
    # Seeds: pixel 0 first, then 3 (pixel 1 lies inside 0's mask, 4 inside 3's; 2 is not seedy enough).
    outputs = {"embedding": values[None, None], "seediness": np.array([[0.9, 0.8, 0.05, 0.6, 0.55]], np.float32),
               "semantic": np.array([[[0.0] * 5], [[1.0] * 5]], np.float32)}
    # sigma(d^2) > tau  <=>  d^2 < ln((2 - tau) / tau): 0.2007 at tau 0.9, 1.735 at tau 0.3.
    assert float(pair_similarity(torch.tensor(np.log(1.1 / 0.9)))) == pytest.approx(0.9)
    grouper = build_grouper("seeds", tau=[0.9, 0.3], min_size=1, iou_threshold=0.7)
    pred = grouper(outputs)
    masks = {tuple(np.nonzero(m[0])[0]) for m in pred.masks}
    assert masks == {(0, 1, 2), (0, 1), (3, 4)}  # tau 0.3 and 0.9 around pixel 0; pixels 3-4 at both taus
    # IoU of (0, 1) with (0, 1, 2) is 2/3: above 0.5 the smaller (tau 0.9) mask of the same seed goes.
    pred = build_grouper("seeds", tau=[0.9, 0.3], min_size=1, iou_threshold=0.5)(outputs)
    assert {tuple(np.nonzero(m[0])[0]) for m in pred.masks} == {(0, 1, 2), (3, 4)}
    assert sorted(pred.scores.tolist()) == pytest.approx([0.6, 0.9])


def test_seeds_parameters_are_checked():
    for bad in ({"tau": 1.5}, {"tau": []}, {"max_seeds": 0}, {"power": -1.0}, {"iou_threshold": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_grouper("seeds", **bad)


# ----------------------------------------------------------------------------- meanshift


@pytest.mark.parametrize("touching", [False, True])
def test_meanshift_scores_are_seed_seediness_times_class_confidence(touching):
    outputs, gt = planted(touching)
    pred = build_grouper("meanshift", bandwidth=1.0, min_size=5)(outputs)
    assert_exact_recovery(pred, gt)
    expected = {k: seediness_of(k) * class_probability(k) for k in range(1, 7)}
    np.testing.assert_allclose(pred.scores, [expected[i] for i in instance_ids(pred, gt)], rtol=1e-5)


def test_meanshift_finds_a_small_object_its_first_sample_missed():
    outputs, gt = planted(touching=False, size=96)
    # Move the six squares' embeddings apart from a new 2x2 object in a corner, far from all.
    label_map = gt.to_label_map()
    label_map[90:92, 90:92] = 7
    outputs["embedding"][:, 90:92, 90:92] = -4.0
    outputs["semantic"][:, 90:92, 90:92] = np.array([0.0, 1.0, 0.0])[:, None, None]
    outputs["seediness"][90:92, 90:92] = 0.1
    gt = Instances.from_label_map(label_map, labels=np.where(label_map == 7, 1, gt.to_semantic_map()))
    pred = build_grouper("meanshift", min_size=4, sample_size=50)(outputs)  # 50 of 868 pixels
    assert_exact_recovery(pred, gt)


def test_meanshift_without_subsampling_equals_the_sampled_result():
    outputs, gt = planted(touching=True, noise=0.1)
    full = build_grouper("meanshift", sample_size=None)(outputs)
    sampled = build_grouper("meanshift", sample_size=64, seeds_per_round=1)(outputs)
    assert_exact_recovery(full, gt)
    assert_exact_recovery(sampled, gt)


# ----------------------------------------------------------------------------- hdbscan


@pytest.mark.parametrize("params", [{"projection": "pca", "n_components": 4}, {"min_samples": 10},
                                    {"projection": "random", "n_components": 6}, {"projection": None},
                                    {"sample_size": None}, {"sample_size": 200, "cluster_selection_method": "leaf"}])
def test_hdbscan_options_recover_planted_clusters(params):
    outputs, gt = planted(touching=True)
    assert_exact_recovery(build_grouper("hdbscan", **params)(outputs), gt)


def test_hdbscan_scores_are_membership_times_class_confidence():
    outputs, gt = planted(touching=False)
    pred = build_grouper("hdbscan")(outputs)
    membership = pred.scores / np.array([class_probability(k) for k in instance_ids(pred, gt)])
    # Identically shaped clusters: the same membership strength for each, at most 1.
    assert np.all(membership <= 1 + 1e-6) and np.ptp(membership) < 1e-5


def test_hdbscan_max_distance_leaves_far_pixels_out():
    outputs, gt = planted(touching=False)
    outputs["embedding"][:, 4, 2] += 2.0  # one pixel of instance 1 moved far from its centre
    pred = build_grouper("hdbscan", max_distance=1.0)(outputs)
    assert pred.masks.sum() == gt.masks.sum() - 1 and not pred.masks[:, 4, 2].any()


@pytest.mark.parametrize("name, params, match", [
    ("meanshift", {"bandwidth": 0}, "bandwidth must be positive"),
    ("meanshift", {"sample_size": 0}, "sample_size must be >= 1 or None"),
    ("meanshift", {"seeds_per_round": 0}, "seeds_per_round must be >= 1"),
    ("hdbscan", {"min_cluster_size": 1}, "min_cluster_size must be >= 2"),
    ("hdbscan", {"min_samples": 0}, "min_samples must be >= 1 or None"),
    ("hdbscan", {"cluster_selection_method": "best"}, "cluster_selection_method must be one of"),
    ("hdbscan", {"projection": "umap"}, "projection must be one of"),
    ("hdbscan", {"n_components": 0}, "n_components must be >= 1"),
    ("hdbscan", {"sample_size": 1}, "sample_size must be >= 2 or None"),
    ("hdbscan", {"max_distance": 0.0}, "max_distance must be positive or None"),
])
def test_bad_parameters_are_errors(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_grouper(name, **params)


def test_unknown_groupers_and_parameters_are_errors():
    with pytest.raises(KeyError, match="unknown grouper 'kmeans'; choose one of"):
        build_grouper("kmeans")
    with pytest.raises(ConfigError, match="unknown key 'merge_threshold' for grouper 'meanshift'"):
        build_grouper("meanshift", merge_threshold=0.35)


# ----------------------------------------------------------------------------- components


def test_components_merges_touching_objects_of_one_class():
    outputs, _ = planted(touching=True)
    pred = build_grouper("components", min_size=5)(outputs)
    assert len(pred) == 2  # one region per row/class: the baseline embeddings must beat
    assert sorted(pred.labels.tolist()) == [1, 2]


# ----------------------------------------------------------------------------- compare-grouping


def test_compare_grouping_cli_writes_table_and_figures(tmp_path, tiny_config_file, capsys):
    import json

    from embedseg.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config_file), "--out", str(run_dir), "--no-eval"]) == 0
    capsys.readouterr()
    assert main(["compare-grouping", str(run_dir), "--max-images", "2", "--set", "grouping.seeds.tau=[0.5,0.7]"]) == 0
    printed = capsys.readouterr().out
    for name in default_groupers():  # every grouper that fits the run by default
        assert f"| {name} |" in printed
    assert "ms median" in printed and "2 images" in printed
    saved = json.loads((run_dir / "grouping_val.json").read_text())
    assert saved["num_images"] == 2 and list(saved["groupers"])[:2] == ["meanshift", "components"]  # config's first
    for metrics in saved["groupers"].values():
        assert 0.0 <= metrics["AP"] <= 1.0 and metrics["group_ms_median"] <= metrics["group_ms_p90"]
    assert (run_dir / "grouping_val.md").read_text().count("\n| ") == 1 + len(default_groupers())
    assert (run_dir / "grouping_val_overlays.png").stat().st_size > 0
    assert (run_dir / "grouping_val_ap_vs_time.png").stat().st_size > 0

    # Earlier results are not overwritten silently; unknown groupers are named.
    assert main(["compare-grouping", str(run_dir), "--groupers", "seeds"]) == 2
    assert "grouping_val.md" in capsys.readouterr().err
    assert main(["compare-grouping", str(run_dir), "--groupers", "seeds,kmeans", "--overwrite"]) == 2
    assert "unknown grouper 'kmeans'" in capsys.readouterr().err
    assert main(["compare-grouping", str(run_dir), "--groupers", "seeds", "--max-images", "1", "--overwrite"]) == 0
    assert list(json.loads((run_dir / "grouping_val.json").read_text())["groupers"]) == ["seeds"]


def test_plot_ap_vs_time_places_each_grouper_by_time_and_ap(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    from embedseg.viz import plot_ap_vs_time

    results = {"a": {"AP": 0.8, "group_ms_median": 12.0, "group_ms_p90": 20.0},
               "b": {"AP": float("nan"), "group_ms_median": 900.0, "group_ms_p90": 950.0},  # drawn at AP 0
               "c": {"AP": 0.3, "group_ms_median": 100.0, "group_ms_p90": 100.0}}
    image = np.array(Image.open(plot_ap_vs_time(results, tmp_path / "ap.png", title="t")).convert("RGB")).astype(int)
    centre = {}
    for i, name in enumerate(results):  # each grouper's point (and time bar) in its own tab10 colour
        color = np.round(255 * np.array(plt.get_cmap("tab10")(i)[:3]))
        ys, xs = np.nonzero(np.abs(image - color).sum(-1) <= 3)
        assert len(ys) > 10, name
        centre[name] = (np.median(xs), ys.mean())
    (xa, ya), (xb, yb), (xc, yc) = centre["a"], centre["b"], centre["c"]
    assert xa < xc < xb  # time grows to the right
    assert ya < yc < yb  # AP grows upwards (image rows downwards)
    assert (yc - ya) / (yb - ya) == pytest.approx((80 - 30) / 80, abs=0.05)  # a linear AP axis


def test_random_seed_order_ignores_the_seediness():
    outputs, gt = planted(touching=False)
    outputs["seediness"][:] = 0.0  # no pixel is a confident seed
    assert len(build_grouper("seeds")(outputs)) == 0  # ranked by seediness: nothing is eligible
    pred = build_grouper("seeds", seed_order="random")(outputs)  # random ranks: every object still gets a seed
    assert_exact_recovery(pred, gt)
    with pytest.raises(ValueError, match="seed_order"):
        build_grouper("seeds", seed_order="best")
