"""Fathi et al. 2017 metric loss, pixel sampling and seediness targets against hand-computed values."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from embedseg.losses import MetricLoss, SeedIoULoss, pair_similarity, sample_pixels
from embedseg.losses.metric import MIN_SQ_DISTANCE, neg_log_dissimilarity, neg_log_similarity

ALL = {"pixels_per_instance": 10_000, "max_pixels": 10_000}  # draw every pixel: no randomness left


def image(points, ids):
    """Embedding [1, D, 1, W] from a list of W points, instances [1, 1, W]."""
    emb = torch.tensor(points, dtype=torch.float64).reshape(len(points), -1).T[None, :, None, :]
    return emb.clone().requires_grad_(True), torch.tensor(ids)[None, None, :]


def sigma(d2):
    return 2 / (1 + math.exp(d2))


# ----------------------------------------------------------------------------- sigma and the pair terms


def test_similarity_and_pair_terms_by_hand():
    d2 = torch.tensor([0.0, math.log(3.0), 1.0, 4.0], dtype=torch.float64)
    assert pair_similarity(d2).tolist() == pytest.approx([1.0, 0.5, sigma(1.0), sigma(4.0)])
    assert neg_log_similarity(d2).tolist() == pytest.approx([-math.log(sigma(float(v))) for v in d2])
    assert neg_log_dissimilarity(d2[1:]).tolist() == pytest.approx([-math.log(1 - sigma(float(v))) for v in d2[1:]])


def test_pair_terms_finite_with_finite_gradients_at_zero_and_far():
    d2 = torch.tensor([0.0, 1e-9, 50.0, 1e4], dtype=torch.float64, requires_grad=True)
    same, diff = neg_log_similarity(d2), neg_log_dissimilarity(d2)
    assert torch.isfinite(same).all() and torch.isfinite(diff).all()
    assert diff[0].item() == pytest.approx(-math.log(1 - sigma(MIN_SQ_DISTANCE)), rel=1e-4)  # floored, ~9.9
    assert same[-1].item() == pytest.approx(1e4 - math.log(2))  # ~d^2 far away, no overflow
    assert 0 <= diff[-1].item() < 1e-12  # 2 exp(-d^2), evaluated at d^2 = 30 from there on
    (same.sum() + diff.sum()).backward()
    assert torch.isfinite(d2.grad).all()


def test_gradients_finite_for_coincident_and_distant_embeddings():
    emb, ids = image([(0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (300.0, 0.0)], [1, 1, 2, 3])
    out = MetricLoss(**ALL)(emb, ids)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(emb.grad).all()


# ----------------------------------------------------------------------------- the loss on hand-built embeddings


def test_identical_pixels_of_one_instance_give_zero_loss():
    emb, ids = image([(1.0, 2.0)] * 4, [1, 1, 1, 1])
    out = MetricLoss(**ALL)(emb, ids)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["same"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["diff"].item() == 0.0  # no different-group pairs


def test_far_apart_instances_give_zero_loss():
    emb, ids = image([(0, 0), (0, 0), (10, 0), (10, 0), (0, 10)], [1, 1, 2, 2, 0])
    out = MetricLoss(**ALL)(emb, ids)  # background (id 0) is a third group, far from both
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["diff"].item() == pytest.approx(0.0, abs=1e-12)


def test_mixed_case_by_hand():
    # Group A = {0, 1} (1-D embeddings), group B = {2}. Ordered pairs p != q:
    #   A-A: 2 pairs, d^2 = 1, weight 1/(2*2);   A-B and B-A: d^2 = 4, 1, 4, 1, weight 1/(2*1).
    emb, ids = image([0.0, 1.0, 2.0], [1, 1, 2])
    out = MetricLoss(**ALL, include_background=False)(emb, ids)
    same = -math.log(sigma(1.0))
    diff = (-math.log(1 - sigma(4.0)) - math.log(1 - sigma(1.0))) / 2
    total = (2 * 0.25 * same + 4 * 0.5 * diff) / (2 * 0.25 + 4 * 0.5)
    assert out["same"].item() == pytest.approx(same)
    assert out["diff"].item() == pytest.approx(diff)
    assert out["loss"].item() == pytest.approx(total)


def test_inverse_size_weights_make_a_small_instance_count():
    # Big instance: 4 identical pixels at 0; small instance: 1 pixel at distance 1. Only the
    # 8 ordered big-small pairs have a loss l; their weight is 1/(4*1), the 12 big-big pairs
    # weigh 1/16 each: loss = 8/4 * l / (8/4 + 12/16). (Unweighted it would be 8 l / 20.)
    emb, ids = image([0.0, 0.0, 0.0, 0.0, 1.0], [1, 1, 1, 1, 2])
    l = -math.log(1 - sigma(1.0))
    out = MetricLoss(**ALL, include_background=False)(emb, ids)
    assert out["loss"].item() == pytest.approx(2 * l / 2.75)
    # With 2 pixels drawn per instance the weights use the drawn counts: 1/(2*2) for the 2 big-big
    # pairs and 1/(2*1) for the 4 big-small pairs, whichever big pixels were drawn.
    torch.manual_seed(0)
    out = MetricLoss(pixels_per_instance=2, include_background=False)(emb, ids)
    assert out["loss"].item() == pytest.approx(2 * l / 2.5)


def test_background_switch_and_ignored_pixels():
    # Background close to instance 1: it is a group of its own only with include_background.
    emb, ids = image([0.0, 0.0, 0.5, 0.0, 50.0], [1, 1, 0, -1, 2])
    with_bg = MetricLoss(**ALL, include_background=True)(emb, ids)
    without = MetricLoss(**ALL, include_background=False)(emb, ids)
    assert without["loss"].item() == pytest.approx(0.0, abs=1e-12)  # the ignored pixel (id -1) never counts
    assert with_bg["diff"].item() > 0.1


def test_equal_results_for_any_relabelling_of_ids():
    torch.manual_seed(3)
    emb = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    ids = torch.randint(-1, 6, (2, 12, 12))
    relabelled = torch.tensor([-1, 0, 40, 7, 3, 1000, 2])[ids + 1]  # -1 and 0 kept, positive ids permuted
    for loss in (MetricLoss(pixels_per_instance=5, max_pixels=20), SeedIoULoss(pixels_per_instance=3, max_pixels=10)):
        args = (torch.rand(2, 1, 12, 12, dtype=torch.float64), emb) if isinstance(loss, SeedIoULoss) else (emb,)
        torch.manual_seed(7)
        a = loss(*args, ids)
        torch.manual_seed(7)
        b = loss(*args, relabelled)
        for key in a:
            assert a[key].item() == pytest.approx(b[key].item(), rel=1e-12)


def test_empty_image_gives_zero_and_backward_works():
    emb = torch.randn(1, 4, 5, 5, requires_grad=True)
    out = MetricLoss(include_background=False)(emb, torch.zeros(1, 5, 5, dtype=torch.long))
    assert all(out[k].item() == 0.0 for k in ("loss", "same", "diff"))
    out["loss"].backward()
    assert torch.count_nonzero(emb.grad) == 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="must agree"):
        MetricLoss()(torch.zeros(1, 4, 5, 5), torch.zeros(1, 6, 5, dtype=torch.long))


# ----------------------------------------------------------------------------- against the loop references


def test_metric_loss_matches_loop_reference_when_every_pixel_is_drawn(loss_references):
    torch.manual_seed(0)
    emb = 0.5 * torch.randn(3, 5, 10, 10, dtype=torch.float64)
    ids = torch.randint(-1, 5, (3, 10, 10))
    ids[1] = 0  # an image with background only
    ours = MetricLoss(**ALL)(emb, ids)
    ref = loss_references.metric_loss_loop(emb, ids, **ALL)
    for key in ("loss", "same", "diff"):
        assert ours[key].item() == pytest.approx(float(ref[key]), rel=1e-9)


def test_metric_loss_matches_loop_reference_on_a_budgeted_sample(loss_references):
    torch.manual_seed(1)
    emb = 0.5 * torch.randn(2, 6, 16, 16, dtype=torch.float64)
    ids = torch.randint(-1, 8, (2, 16, 16))
    torch.manual_seed(5)
    sample = sample_pixels(ids, 6, 30)
    torch.manual_seed(5)  # the loss draws the same pixels again
    ours = MetricLoss(pixels_per_instance=6, max_pixels=30)(emb, ids)
    ref = loss_references.metric_loss_loop(emb, ids, samples=loss_references.groups_from_sample(sample))
    for key in ("loss", "same", "diff"):
        assert ours[key].item() == pytest.approx(float(ref[key]), rel=1e-9)


# ----------------------------------------------------------------------------- sampling


def test_sampling_caps_per_group_and_shares_the_budget_round_robin():
    ids = torch.zeros(1, 20, 20, dtype=torch.long)
    ids[0, :5] = 1  # 100 pixels
    ids[0, 5, :3] = 2  # 3 pixels
    ids[0, 10:13] = 3  # 60 pixels
    ids[0, 19, :4] = -1  # ignored
    torch.manual_seed(0)
    s = sample_pixels(ids, per_group=10, max_per_image=100)
    flat = ids.flatten()
    counts = {i: int((s.ids[s.valid] == i).sum()) for i in (0, 1, 2, 3)}
    assert counts == {0: 10, 1: 10, 2: 3, 3: 10}
    assert torch.equal(flat[s.index[s.valid]], s.ids[s.valid])  # each slot's id is its pixel's id
    assert len(s.index[s.valid].unique()) == int(s.valid.sum())  # without replacement
    s = sample_pixels(ids, per_group=10, max_per_image=12)  # 4 groups share 12 slots: 3 each
    assert sorted(int((s.ids[s.valid] == i).sum()) for i in (0, 1, 2, 3)) == [3, 3, 3, 3]
    assert s.group_count.tolist() == [3, 3, 3, 3]
    s = sample_pixels(ids, per_group=10, max_per_image=100, include_background=False)
    assert set(s.ids[s.valid].tolist()) == {1, 2, 3}


def test_sampling_pads_images_with_fewer_pixels():
    ids = torch.full((2, 4, 4), -1)
    ids[0, 0, :3] = 1
    ids[1] = 2
    torch.manual_seed(0)
    s = sample_pixels(ids, per_group=8, max_per_image=8)
    assert s.index.shape == (2, 8)
    assert s.valid.sum(1).tolist() == [3, 8]
    assert (s.group[~s.valid] == -1).all()


# ----------------------------------------------------------------------------- seediness targets


def test_seed_iou_targets_by_hand():
    # 1-D embeddings. Instance 1: three pixels at 0; instance 2: pixels at 0.8 and 5; background
    # at 10; an ignored pixel (id -1) at 0 that must not join any mask.
    # tau 0.5 -> d^2 < log 3 = 1.0986; tau 0.9 -> d^2 < log(2/0.9 - 1) = 0.2007.
    #   seed at 0:   tau .5 mask {0,0,0,0.8}: IoU 3/4;  tau .9 mask {0,0,0}: IoU 1    -> 0.875
    #   seed at 0.8: tau .5 mask {0,0,0,0.8}: IoU 1/5;  tau .9 mask {0.8}:   IoU 1/2  -> 0.35
    #   seed at 5:   tau .5 and .9 mask {5}:  IoU 1/2                                 -> 0.5
    emb, ids = image([0.0, 0.0, 0.0, 0.8, 5.0, 10.0, 0.0], [1, 1, 1, 2, 2, 0, -1])
    loss = SeedIoULoss(taus=[0.5, 0.9], pixels_per_instance=100, max_pixels=100)
    sample = loss.sample(ids)
    target = loss.targets(emb, ids, sample)
    by_pixel = dict(zip(sample.index[0][sample.valid[0]].tolist(), target[0][sample.valid[0]].tolist()))
    assert by_pixel == pytest.approx({0: 0.875, 1: 0.875, 2: 0.875, 3: 0.35, 4: 0.5, 5: 0.0})
    # Chunking the [seeds, pixels] comparison changes nothing.
    chunked = SeedIoULoss(taus=[0.5, 0.9], pixels_per_instance=100, max_pixels=100, chunk_elements=1)
    assert torch.equal(chunked.targets(emb, ids, sample), target)
    # A seediness map equal to the targets gives zero loss; a zero map gives the mean squared target.
    perfect = torch.zeros(1, 1, 1, 7, dtype=torch.float64)
    perfect[0, 0, 0, :6] = torch.tensor([0.875, 0.875, 0.875, 0.35, 0.5, 0.0])
    assert loss(perfect, emb, ids)["loss"].item() == pytest.approx(0.0, abs=1e-12)
    zero = loss(torch.zeros_like(perfect), emb, ids)
    assert zero["loss"].item() == pytest.approx((3 * 0.875**2 + 0.35**2 + 0.5**2) / 6)
    assert zero["target"].item() == pytest.approx((3 * 0.875 + 0.35 + 0.5) / 5)


def test_seed_iou_trains_the_seediness_head_only():
    torch.manual_seed(0)
    emb = torch.randn(2, 4, 8, 8, requires_grad=True)
    seediness = torch.rand(2, 1, 8, 8, requires_grad=True)
    SeedIoULoss()(seediness, emb, torch.randint(0, 3, (2, 8, 8)))["loss"].backward()
    assert emb.grad is None and seediness.grad is not None and torch.isfinite(seediness.grad).all()


@pytest.mark.parametrize("bad", [[], [0.0, 0.5], [1.0], [1.5]])
def test_seed_iou_rejects_taus_outside_0_1(bad):
    with pytest.raises(ValueError, match="taus"):
        SeedIoULoss(taus=bad)


def test_pair_loss_gradient_matches_finite_differences():
    from embedseg.losses.metric import pair_loss

    d2 = torch.tensor([1e-3, 0.3, 1.0, 4.0, 20.0, 0.5, 3.0, 25.0], dtype=torch.float64, requires_grad=True)
    same = torch.tensor([False, False, False, False, False, True, True, True])
    assert torch.autograd.gradcheck(pair_loss, (d2, same))


def test_seed_iou_pixel_stride_counts_on_the_subsampled_grid():
    # 4x4 image: columns 0-1 instance 1, columns 2-3 instance 2; 1-D embeddings 0 everywhere but
    # column 3 (at 10). tau 0.5. Stride 2 keeps columns 0 and 2 of rows 0 and 2.
    #   seed in instance 1:          full grid: mask cols 0-2, IoU 8/12;   stride 2: 2/4
    #   seed in col 2 (instance 2):  full grid: IoU 4/16;                  stride 2: 2/4
    #   seed in col 3 (instance 2):  full grid: mask = col 3, IoU 4/8;     stride 2: empty mask, 0
    ids = torch.tensor([[1, 1, 2, 2]] * 4)[None]
    emb = torch.tensor([[0.0, 0.0, 0.0, 10.0]] * 4, dtype=torch.float64)[None, None]
    expected = {1: {0: 8 / 12, 1: 8 / 12, 2: 4 / 16, 3: 0.5}, 2: {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.0}}
    for stride in (1, 2):
        loss = SeedIoULoss(taus=[0.5], pixels_per_instance=100, max_pixels=100, include_background=False,
                           pixel_stride=stride)
        sample = loss.sample(ids)
        target = loss.targets(emb, ids, sample)[0]
        columns = (sample.index[0] % 4).tolist()
        for column, value in zip(columns, target.tolist()):
            assert value == pytest.approx(expected[stride][column])


def test_seed_iou_target_is_zero_for_an_instance_missed_by_the_stride():
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, 1, 1] = 7  # off the stride-2 grid (rows and columns 0, 2 only)
    ids[0, 2, 2] = 3  # on the grid
    emb = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    emb[0, 0, 1, 1], emb[0, 0, 2, 2] = -5.0, -5.0  # 7's mask on the grid is exactly instance 3
    loss = SeedIoULoss(taus=[0.5], pixels_per_instance=100, max_pixels=100, pixel_stride=2)
    sample = loss.sample(ids)
    target = dict(zip(sample.ids[0].tolist(), loss.targets(emb, ids, sample)[0].tolist()))
    assert target[7] == 0.0 and target[3] == pytest.approx(1.0) and target[0] == 0.0


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["synthetic_cpu", "paper"])
def test_fathi_configs_train_the_three_heads_and_group_with_seeds_first(name):
    from embedseg.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "experiments" / "fathi2017" / f"{name}.yaml")
    assert {block["name"] for block in config.loss.values()} == {"metric", "seed_iou", "cross_entropy"}
    assert "ramp" in config.loss["semantic"]
    # The file lists its groupers after those of its base: its own order wins (first = default).
    assert list(config.grouping)[:2] == ["seeds", "meanshift"]
    if name == "paper":
        assert config.model["embedding_dim"] == 64 and config.model["output_stride"] == 8
        assert config.loss["seediness"]["taus"] == [0.25, 0.5, 0.75, 0.9]
