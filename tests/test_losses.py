"""Loss terms against hand-computed values and reference loops; the criterion that combines them."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_references import discriminative_loss_loop

from embedseg.losses import LOSSES, Criterion, DiscriminativeLoss, build_criterion, build_loss
from embedseg.losses.base import compact_ids
from embedseg.losses.seediness import SeedDistanceLoss
from embedseg.losses.semantic import SemanticCrossEntropy, gap_pixels


def image(points, ids):
    """Embedding [1, D, 1, W] from a list of W points, instances [1, 1, W]."""
    emb = torch.tensor(points, dtype=torch.float64).T[None, :, None, :]
    return emb.clone().requires_grad_(True), torch.tensor(ids)[None, None, :]


def test_one_instance_by_hand():
    # mean (1, 0); distances 1, 1, 0; hinge at 0.5 -> 0.25, 0.25, 0 -> var 1/6; |mu| = 1.
    emb, ids = image([(0, 0), (2, 0), (1, 0)], [1, 1, 1])
    out = DiscriminativeLoss()(emb, ids)
    assert out["var"].item() == pytest.approx(1 / 6)
    assert out["dist"].item() == 0.0
    assert out["reg"].item() == pytest.approx(1.0)
    assert out["loss"].item() == pytest.approx(1 / 6 + 0.001)


def test_two_instances_background_and_ignored_pixels_by_hand():
    # means (0,0) and (1,0): 1 apart, hinge 2*1.5 - 1 = 2 -> 4 for both ordered pairs.
    # The background (id 0) and ignored (id -1) pixels are far away and must not count.
    emb, ids = image([(0, 0), (0, 0), (1, 0), (1, 0), (5, 5), (9, 9)], [1, 1, 2, 2, 0, -1])
    out = DiscriminativeLoss(delta_v=0.5, delta_d=1.5, alpha=1, beta=1, gamma=0.001)(emb, ids)
    assert out["var"].item() == 0.0
    assert out["dist"].item() == pytest.approx(4.0)
    assert out["reg"].item() == pytest.approx(0.5)
    assert out["loss"].item() == pytest.approx(4.0005)


def test_push_mean_active_averages_over_overlapping_pairs_only():
    # means (0,0), (1,0), (10,0): only 1<->2 is closer than 2*1.5 (hinge 2 -> 4, both orders).
    # "pairs": 2 * 4 / 6 ordered pairs; "active": 2 * 4 / 2 active pairs.
    emb, ids = image([(0, 0), (1, 0), (10, 0)], [1, 2, 3])
    assert DiscriminativeLoss()(emb, ids)["dist"].item() == pytest.approx(8 / 6)
    assert DiscriminativeLoss(push_mean="active")(emb, ids)["dist"].item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="push_mean"):
        DiscriminativeLoss(push_mean="some")


def test_compact_ids_by_hand():
    ids = torch.tensor([[7, 0, 2**40, -1], [7, 3, 0, 2**40]])
    assert compact_ids(ids).tolist() == [[2, 0, 3, -1], [2, 1, 0, 3]]
    assert compact_ids(torch.tensor([5, 9])).tolist() == [1, 2]  # no background at all


def test_weights_alpha_beta_gamma():
    emb, ids = image([(0, 0), (2, 0), (1, 0), (1, 0)], [1, 1, 1, 2])
    plain = DiscriminativeLoss()(emb, ids)
    weighted = DiscriminativeLoss(alpha=2, beta=3, gamma=0.5)(emb, ids)
    expected = 2 * plain["var"] + 3 * plain["dist"] + 0.5 * plain["reg"]
    assert weighted["loss"].item() == pytest.approx(expected.item())


def test_empty_image_gives_zero_and_backward_works():
    emb = torch.randn(1, 4, 5, 5, requires_grad=True)
    out = DiscriminativeLoss()(emb, torch.zeros(1, 5, 5, dtype=torch.long))
    assert all(out[k].item() == 0.0 for k in ("loss", "var", "dist", "reg"))
    out["loss"].backward()
    assert torch.count_nonzero(emb.grad) == 0


def test_batch_averages_over_images_with_instances():
    emb1, ids1 = image([(0, 0), (2, 0), (1, 0), (7, 7)], [1, 1, 1, 0])  # one instance: var 1/6, reg 1
    emb2, ids2 = image([(0, 0), (0, 0), (1, 0), (1, 0)], [1, 1, 2, 2])  # var 0, dist 4, reg 0.5
    emb3, ids3 = image([(3, 3)] * 4, [0, 0, -1, 0])  # no instance: left out of every average
    emb = torch.cat([emb1, emb2, emb3]).detach().requires_grad_(True)
    out = DiscriminativeLoss()(emb, torch.cat([ids1, ids2, ids3]))
    assert out["var"].item() == pytest.approx((1 / 6 + 0) / 2)
    assert out["dist"].item() == pytest.approx((0 + 4) / 2)  # one-instance image has dist 0
    assert out["reg"].item() == pytest.approx((1 + 0.5) / 2)
    out["loss"].backward()
    assert torch.isfinite(emb.grad).all()
    assert torch.count_nonzero(emb.grad[2]) == 0


def test_matches_reference_loop_on_random_data():
    """Against the per-instance Python loops over the DESIGN.md formula (tests/loss_references.py)."""
    torch.manual_seed(0)
    emb = torch.randn(3, 5, 12, 12, dtype=torch.float64)
    ids = torch.randint(-1, 6, (3, 12, 12))
    ids[1] = 0  # an empty image in the batch
    ours = DiscriminativeLoss(delta_v=0.3, delta_d=1.0, gamma=0.01)(emb, ids)
    ref = discriminative_loss_loop(emb, ids, delta_v=0.3, delta_d=1.0, gamma=0.01)
    for key in ("loss", "var", "dist", "reg"):
        assert ours[key].item() == pytest.approx(float(ref[key]), rel=1e-6)


@pytest.mark.parametrize("push_mean", ["pairs", "active"])
def test_gradients_match_finite_differences_and_the_loop(push_mean):
    """The loss's gradients against torch.autograd.gradcheck (finite differences) and against
    autograd through the reference loop."""
    torch.manual_seed(2)
    emb = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(-1, 4, (2, 6, 7))
    loss = DiscriminativeLoss(delta_v=0.2, delta_d=1.0, push_mean=push_mean)
    assert torch.autograd.gradcheck(lambda e: loss(e, ids)["loss"], (emb,))
    if push_mean == "pairs":
        (grad,) = torch.autograd.grad(loss(emb, ids)["loss"], emb)
        ref = discriminative_loss_loop(emb, ids, delta_v=0.2, delta_d=1.0)["loss"]
        (ref_grad,) = torch.autograd.grad(ref, emb)
        assert torch.allclose(grad, ref_grad, atol=1e-10)


def test_invariant_to_relabelling_ids():
    torch.manual_seed(1)
    emb = torch.randn(2, 4, 10, 10, dtype=torch.float64)
    ids = torch.randint(0, 5, (2, 10, 10))
    permuted = torch.tensor([0, 17, 3, 250, 9])[ids]  # any positive ids, any order
    huge = torch.tensor([0, 2**40, 5, 2**31 + 7, 1])[ids]  # ids too large for a lookup table
    a = DiscriminativeLoss()(emb, ids)
    for other in (permuted, huge):
        b = DiscriminativeLoss()(emb, other)
        for key in ("loss", "var", "dist", "reg"):
            assert a[key].item() == pytest.approx(b[key].item(), rel=1e-12)
    # No background pixel at all: the smallest huge id must still be an instance.
    full = DiscriminativeLoss()(emb, ids + 1)
    full_huge = DiscriminativeLoss()(emb, torch.tensor([2**33, 2**40, 5, 2**31 + 7, 1])[ids])
    assert full["loss"].item() == pytest.approx(full_huge["loss"].item(), rel=1e-12)


def test_gradients_are_finite_when_means_coincide():
    emb = torch.zeros(1, 3, 2, 2, requires_grad=True)  # every embedding (and mean) identical
    out = DiscriminativeLoss()(emb, torch.tensor([[[1, 1], [2, 2]]]))
    assert out["dist"].item() == pytest.approx(9.0, abs=1e-4)
    out["loss"].backward()
    assert torch.isfinite(emb.grad).all()


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="must agree"):
        DiscriminativeLoss()(torch.zeros(1, 4, 5, 5), torch.zeros(1, 6, 5, dtype=torch.long))


def test_seed_distance_targets_by_hand():
    # instance 1: points (0,0) and (1,0): mean (0.5,0), squared distances 0.25 -> exp(-0.25/(2*0.25)).
    emb, ids = image([(0, 0), (1, 0), (4, 4)], [1, 1, 0])
    target = SeedDistanceLoss(sigma=0.5).targets(emb, ids)
    expected = torch.tensor([[[torch.exp(torch.tensor(-0.5)), torch.exp(torch.tensor(-0.5)), 0.0]]], dtype=target.dtype)
    assert torch.allclose(target, expected)
    # A perfect seediness map gives zero loss.
    assert SeedDistanceLoss(0.5)(target[:, None], emb, ids)["loss"].item() == pytest.approx(0.0)


def test_criterion_weights_terms():
    emb, ids = image([(0, 0), (2, 0), (1, 0)], [1, 1, 1])
    criterion = build_criterion({"embedding": {"name": "discriminative", "weight": 2.0}})
    out = criterion({"embedding": emb}, {"instances": ids})
    assert out["loss"].item() == pytest.approx(2 * (1 / 6 + 0.001))
    assert out["embedding.var"].item() == pytest.approx(1 / 6)


# Embedding channels a loss needs where any number will not do (spatial: 2 positions + 1 margin).
EMBEDDING_CHANNELS = {"spatial": 3}


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_gives_a_finite_scalar_and_gradients(name):
    torch.manual_seed(0)
    outputs = {"embedding": torch.randn(2, EMBEDDING_CHANNELS.get(name, 8), 16, 16, requires_grad=True),
               "seediness": torch.rand(2, 1, 16, 16, requires_grad=True),
               "semantic": torch.randn(2, 3, 16, 16, requires_grad=True)}
    instances = torch.randint(0, 4, (2, 16, 16))
    batch = {"instances": instances, "semantic": (instances > 0).long() * torch.randint(1, 3, (2, 16, 16)),
             "image_id": [0, 1]}
    out = Criterion({name: build_loss(name)}, {name: 1.0})(outputs, batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [t.grad for t in outputs.values() if t.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


class Offset(torch.nn.Module):
    """A loss outside the registry: mean of (seediness - semantic target), reading one output and one batch entry."""

    inputs = ("outputs.seediness", "batch.semantic")

    def forward(self, seediness, target):
        return {"loss": (seediness.squeeze(1) - target).mean()}


def test_criterion_passes_each_term_the_entries_its_inputs_name():
    outputs = {"seediness": torch.ones(1, 1, 2, 2), "semantic": torch.zeros(1, 2, 2, 2)}
    batch = {"semantic": torch.tensor([[[0, 1], [1, 1]]]), "instances": torch.zeros(1, 2, 2, dtype=torch.long)}
    out = Criterion({"offset": Offset()}, {"offset": 2.0})(outputs, batch)
    assert out["loss"].item() == pytest.approx(2 * (1 - 0.75))  # target mean 3/4
    with pytest.raises(KeyError, match=r"reads batch\['semantic'\], which is missing; batch keys: 'instances'"):
        Criterion({"offset": Offset()}, {"offset": 1.0})(outputs, {"instances": batch["instances"]})


def test_a_loss_without_inputs_is_refused_when_the_criterion_is_built():
    class NoInputs(torch.nn.Module):
        def forward(self, embedding):
            return {"loss": embedding.sum()}

    with pytest.raises(TypeError, match=r"loss term 'x': NoInputs.inputs must be a tuple like"):
        Criterion({"x": NoInputs()}, {"x": 1.0})
    bad = Offset()
    bad.inputs = ("seediness", "batch.semantic")  # no source named
    with pytest.raises(TypeError, match="Offset.inputs"):
        Criterion({"x": bad}, {"x": 1.0})


# ----------------------------------------------------------------------------- weight schedule (ramps)


def test_weight_ramp_is_linear_between_its_steps():
    from embedseg.losses import WeightRamp

    ramp = WeightRamp.from_config({"start_factor": 0.2, "start_step": 10, "end_step": 20})
    assert [ramp.factor(s) for s in (0, 10, 15, 19, 20, 500)] == pytest.approx([0.2, 0.2, 0.6, 0.92, 1.0, 1.0])
    assert ramp.factor(None) == 1.0  # no training step (evaluation): the full weight
    assert WeightRamp.from_config({"end_step": 4}).factor(1) == pytest.approx(0.25)  # defaults: from 0 at step 0


@pytest.mark.parametrize("spec, message", [
    ({"start_factor": 0.0}, "loss.semantic.ramp.end_step is required"),
    ({"end_step": 10, "length": 3}, "unknown key loss.semantic.ramp.length"),
    ({"end_step": 5, "start_step": 5}, "end_step = 5 must be greater than loss.semantic.ramp.start_step"),
    ({"end_step": 2.5}, "loss.semantic.ramp.end_step = 2.5: expected an integer"),
    ({"end_step": 10, "start_factor": -1}, "loss.semantic.ramp.start_factor = -1"),
    ([0, 10], "loss.semantic.ramp must be a mapping"),
])
def test_bad_ramp_is_a_config_error_naming_file_and_key(tmp_path, spec, message):
    import yaml

    from embedseg.config import ConfigError, load_config

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"loss": {"semantic": {"name": "cross_entropy", "weight": 1.0, "ramp": spec}}}))
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        load_config(path)
    assert message in str(err.value)


def test_criterion_applies_ramps_and_reports_weights():
    emb, ids = image([(0, 0), (2, 0), (1, 0)], [1, 1, 1])  # discriminative loss 1/6 + 0.001
    criterion = build_criterion({
        "embedding": {"name": "discriminative", "weight": 2.0, "ramp": {"start_factor": 0.5, "end_step": 10}},
        "copy": {"name": "discriminative", "weight": 1.0},
    })
    value = 1 / 6 + 0.001
    for step, weight in ((0, 1.0), (5, 1.5), (10, 2.0), (None, 2.0)):
        out = criterion({"embedding": emb}, {"instances": ids}, step=step)
        assert out["weight.embedding"].item() == pytest.approx(weight)
        assert out["weight.copy"].item() == 1.0
        assert out["embedding"].item() == pytest.approx(weight * value)
        assert out["loss"].item() == pytest.approx((weight + 1.0) * value)


def test_trainer_logs_ramped_weights(tmp_path, tiny_config_file):
    import json

    from embedseg.config import load_config
    from embedseg.engine.trainer import train

    config = load_config(tiny_config_file, [
        "loss.embedding={name: metric, weight: 1.0, pixels_per_instance: 8, max_pixels: 64}",
        "loss.seediness={name: seed_iou, weight: 1.0, pixels_per_instance: 4, max_pixels: 32}",
        "loss.semantic.ramp={start_factor: 0.0, end_step: 2}",
    ])
    run_dir = train(config, tmp_path / "run")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    # The trainer passes the index of the update (0, then 1) to the criterion.
    assert [r["weight.semantic"] for r in records] == [0.0, 0.5]
    assert [r["weight.embedding"] for r in records] == [1.0, 1.0]
    assert {"embedding.same", "embedding.diff", "seediness.target"} <= set(records[0])


def test_cross_entropy_matches_torch_with_class_weights_and_ignored_pixels():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    target = torch.randint(-1, 3, (2, 4, 5))
    weights = [0.5, 1.0, 2.0]
    ours = SemanticCrossEntropy(class_weights=weights)(logits, target)["loss"]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights, dtype=torch.float64), ignore_index=-1)
    assert ours.item() == pytest.approx(expected.item())


def test_gap_pixels_mark_background_between_two_instances_only():
    # Two instances two columns apart, a third far away; width 1 -> only the column between 1 and 2.
    ids = torch.tensor([[[1, 1, 0, 2, 2, 0, 0, 0, 3]]])
    assert gap_pixels(ids, width=1).int().tolist() == [[[0, 0, 1, 0, 0, 0, 0, 0, 0]]]
    # Ids beyond float32's exact integers (2^24) must stay apart too.
    assert gap_pixels(ids + 2**30 * (ids > 0), width=1).equal(gap_pixels(ids, width=1))


def test_gap_weight_counts_gap_pixels_more_by_hand():
    # Zero logits: each pixel costs log 2, except the gap pixel (index 2), confidently "object".
    # With gap_weight 3 it counts 4 times: (4 log 2 + 4 cost) / (4 + 4).
    ids = torch.tensor([[[1, 1, 0, 2, 2]]])
    target = (ids > 0).long()
    logits = torch.zeros(1, 2, 1, 5, dtype=torch.float64)
    logits[0, 1, 0, 2] = 10.0  # the gap pixel says "object": its cost is log(1 + e^10)
    cost = torch.log1p(torch.exp(torch.tensor(10.0, dtype=torch.float64))).item()
    loss = SemanticCrossEntropy(gap_weight=3.0, gap_width=1)(logits, target, ids)["loss"].item()
    expected = (4 * math.log(2) + 4 * cost) / (4 + 4)
    assert loss == pytest.approx(expected)
    assert SemanticCrossEntropy()(logits, target, ids)["loss"].item() == pytest.approx((4 * math.log(2) + cost) / 5)
