"""Spatial embeddings (Neven et al. 2019): the loss against a per-instance reference, known values,
gradients, medoids, and the grouper on planted touching instances of different sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from loss_references import spatial_loss_loop

from embedseg.cli import main
from embedseg.config import ConfigError, load_config
from embedseg.evaluation import evaluate_coco
from embedseg.grouping import build_grouper
from embedseg.losses import build_loss
from embedseg.losses.base import ImageClusters
from embedseg.losses.spatial import l1_medoids
from embedseg.structures import Instances
from embedseg.viz import margin_radii

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def random_batch(n_sigma: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    instances = torch.randint(0, 5, (3, 12, 14), generator=generator)
    instances[0, :3] = -1  # ignored pixels
    instances[2] = 0
    instances[2, 3:7, 4:8] = 9  # one instance alone
    embedding = 0.5 * torch.randn(3, 2 + n_sigma, 12, 14, generator=generator, dtype=torch.float64)
    embedding[:, 2:] -= 1.0
    seediness = torch.rand(3, 1, 12, 14, generator=generator, dtype=torch.float64)
    return embedding, seediness, instances


@pytest.mark.parametrize("n_sigma", [1, 2])
@pytest.mark.parametrize("center", ["mean", "medoid"])
def test_loss_equals_the_per_instance_reference_over_whole_images(n_sigma, center):
    embedding, seediness, instances = random_batch(n_sigma)
    loss = build_loss("spatial", n_sigma=n_sigma, center=center, coord_scale=0.1, kernel_floor=0.0)
    out = loss(embedding, seediness, instances)
    reference = spatial_loss_loop(embedding, seediness, instances, center, 0.1)
    instance, smooth, seed = reference["instance"], reference["smooth"], reference["seed"]
    assert out["instance"].item() == pytest.approx(instance.item(), rel=1e-9)
    assert out["smooth"].item() == pytest.approx(smooth.item(), rel=1e-9)
    assert out["seed"].item() == pytest.approx(seed.item(), rel=1e-9)
    assert out["loss"].item() == pytest.approx((instance + 10 * smooth + seed).item(), rel=1e-9)


def test_kernel_floor_drops_only_background_pixels_of_negligible_error():
    embedding, seediness, instances = random_batch(1, seed=1)
    exact = build_loss("spatial", kernel_floor=0.0)(embedding, seediness, instances)["instance"]
    floored = build_loss("spatial", kernel_floor=1e-3)(embedding, seediness, instances)["instance"]
    assert floored.item() == pytest.approx(exact.item(), abs=2e-3)


def test_gradients_match_finite_differences():
    # The terms with no held-fixed part: the Lovasz hinge through offsets, centres and margins, and the
    # seed regression through the seed map (its target, the kernel, is held fixed by design).
    embedding, seediness, instances = random_batch(2, seed=2)
    embedding, seediness, instances = embedding[1:2, :, 3:, :7], seediness[1:2, :, 3:, :7], instances[1:2, 3:, :7]
    loss = build_loss("spatial", n_sigma=2, center="mean", kernel_floor=0.0)
    assert torch.autograd.gradcheck(lambda e: loss(e, seediness, instances)["instance"],
                                    (embedding.clone().requires_grad_(),), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda s: loss(embedding, s, instances)["seed"],
                                    (seediness.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def discs(size: int = 40) -> torch.Tensor:
    """Two touching discs of radius 9 and 5 and a 6x6 square apart: [1, size, size] ids."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ids = torch.zeros(size, size, dtype=torch.long)
    ids[(yy - 15) ** 2 + (xx - 12) ** 2 < 81] = 1
    ids[((yy - 15) ** 2 + (xx - 26) ** 2 < 25) & (ids == 0)] = 2
    ids[30:36, 30:36] = 3
    return ids[None]


def perfect_outputs(instances: torch.Tensor, coord_scale: float, margin: float):
    """Every instance pixel at its instance's medoid, margin `margin`, seed map 1 on objects, 0 elsewhere."""
    _, h, w = instances.shape
    clusters = ImageClusters.build(instances)
    centres = coord_scale * l1_medoids(clusters, (h, w)).double()
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    embedding = torch.cat([coord_scale * torch.stack([yy, xx]).double()[None],
                           torch.full((1, 1, h, w), margin, dtype=torch.float64)], 1)
    flat = embedding[0, :2].reshape(2, -1)
    flat[:, clusters.pixel] = clusters.at_pixels(centres).T
    return embedding, (instances > 0).double()[:, None]


def test_loss_is_near_zero_for_perfect_offsets_and_margins_and_large_for_collapsed_ones():
    instances = discs()
    loss = build_loss("spatial", center="medoid", coord_scale=0.1)
    embedding, seediness = perfect_outputs(instances, 0.1, margin=6.0)  # kernel exp(-403 d^2): narrow
    perfect = loss(embedding, seediness, instances)
    assert perfect["loss"].item() < 1e-6
    collapsed = embedding.clone()
    collapsed[:, :2] = 1.0  # every pixel at one point: each kernel gathers the whole image
    assert loss(collapsed, seediness, instances)["instance"].item() > 0.9


def test_medoid_lies_on_the_object_where_the_mean_does_not():
    ids = torch.zeros(1, 20, 20, dtype=torch.long)
    ids[0, 2:18, 2:5] = ids[0, 2:5, 2:18] = ids[0, 15:18, 2:18] = 1  # a C: its mean lies in the gap
    y, x = l1_medoids(ImageClusters.build(ids), (20, 20))[0, 0].tolist()
    assert ids[0, y, x] == 1
    yy, xx = torch.nonzero(ids[0], as_tuple=True)
    assert ids[0, round(yy.float().mean().item()), round(xx.float().mean().item())] == 0


def grouper_outputs(instances: torch.Tensor, coord_scale: float, noise: float, seed: int = 0) -> dict:
    """Outputs the spatial loss would train towards, with offsets off by up to `noise` units: the
    margin of each instance covers its own pixels and none of its neighbours' (exp(margin) = 4)."""
    embedding, seediness = perfect_outputs(instances, coord_scale, margin=float(np.log(4.0)))
    generator = torch.Generator().manual_seed(seed)
    embedding[:, :2] += noise * (2 * torch.rand(embedding[:, :2].shape, generator=generator, dtype=torch.float64) - 1)
    seediness = seediness[0, 0] * (0.8 + 0.1 * torch.rand(instances.shape[1:], generator=generator, dtype=torch.float64))
    foreground = (instances[0] > 0).double()
    return {"embedding": embedding[0].float().numpy(), "seediness": seediness.float().numpy(),
            "semantic": torch.stack([1 - foreground, foreground]).float().numpy()}


def test_spatial_grouper_recovers_touching_instances_of_different_sizes_exactly():
    instances = discs()
    gt = Instances.from_label_map(instances[0].numpy())
    # centres 14 px apart at 0.1 units per pixel: 1.4 units, kernel exp(-4 * 1.96) far below 0.5;
    # offsets off by 0.1 units keep every pixel's kernel value above exp(-4 * 0.02) > 0.5
    outputs = grouper_outputs(instances, coord_scale=0.1, noise=0.1)
    pred = build_grouper("spatial", min_size=5)(outputs)
    assert evaluate_coco([gt], [pred])["AP"] == pytest.approx(1.0)
    assert sorted(m.tobytes() for m in pred.masks) == sorted(m.tobytes() for m in gt.masks)
    # A seed threshold above every seed finds nothing; a min_size above the square's 36 pixels drops it.
    assert len(build_grouper("spatial", seed_threshold=0.95)(outputs)) == 0
    assert sorted(int(m.sum()) for m in build_grouper("spatial", min_size=40)(outputs).masks) == [sorted(
        int(m.sum()) for m in gt.masks)[i] for i in (1, 2)]


def outputs_with_a_short_tip(instances: torch.Tensor) -> tuple[dict, np.ndarray]:
    """`grouper_outputs` of `discs()` (no noise) where the big disc's left tip (x < 6, 20 pixels) points
    5 px short of its centre (15, 12), at (15, 7): kernel value exp(-4 * 0.5^2) = 0.37 under the disc's
    kernel, so its own seed makes a fragment. Returns the outputs and the tip's mask."""
    outputs = grouper_outputs(instances, coord_scale=0.1, noise=0.0)
    tip = (instances[0] == 1).numpy() & (np.arange(40) < 6)[None]
    outputs["embedding"][:2, tip] = [[1.5], [0.7]]
    return outputs, tip


def test_spatial_grouper_joins_a_piece_whose_offsets_fall_short_of_its_centre():
    instances = discs()
    gt = Instances.from_label_map(instances[0].numpy())
    outputs, tip = outputs_with_a_short_tip(instances)
    outputs["seediness"][tip] = 0.6  # below the discs' seeds: the disc's mask comes first
    apart = build_grouper("spatial", min_size=5)(outputs)
    assert sorted(int(m.sum()) for m in apart.masks) == sorted([20, int(gt.masks[0].sum()) - 20,
                                                                *(int(m.sum()) for m in gt.masks[1:])])
    # 0.37 >= 0.3: the tip joins the disc, and nothing else joins (the small disc's kernel value under
    # the big one's is exp(-4 * 1.4^2) = 4e-4), so the masks are exact again; even with min_size above 20
    for min_size in (5, 30):
        joined = build_grouper("spatial", min_size=min_size, join_threshold=0.3)(outputs)
        assert sorted(m.tobytes() for m in joined.masks) == sorted(m.tobytes() for m in gt.masks)
    assert len(build_grouper("spatial", min_size=5, join_threshold=0.4)(outputs)) == 4


def test_spatial_grouper_scores_a_mask_by_its_mean_seediness():
    instances = discs()
    outputs, tip = outputs_with_a_short_tip(instances)
    ids = instances[0].numpy()
    right_half = (ids == 1) & (np.arange(40) >= 12)[None]
    # seed map: the big disc 0.9 with its right half at 0.5, the tip 0.6, the small disc 0.8, the square 0.7
    outputs["seediness"] = np.select([tip, right_half, ids == 1, ids == 2, ids == 3],
                                     [0.6, 0.5, 0.9, 0.8, 0.7], 0.0).astype(np.float32)
    big, right = int((ids == 1).sum()) - 20, int(right_half.sum())
    blade = (0.5 * right + 0.9 * (big - right)) / big
    apart = build_grouper("spatial", min_size=5)(outputs)
    assert sorted(apart.scores.tolist()) == pytest.approx(sorted([blade, 0.8, 0.7, 0.6]))
    joined = build_grouper("spatial", min_size=5, join_threshold=0.3)(outputs)  # the tip's 0.6 joins the mean
    assert sorted(joined.scores.tolist()) == pytest.approx(sorted([(blade * big + 0.6 * 20) / (big + 20), 0.8, 0.7]))


def test_spatial_grouper_refuses_an_embedding_that_is_not_spatial():
    outputs = grouper_outputs(discs(), coord_scale=0.1, noise=0.0)
    outputs["embedding"] = np.zeros((16, 40, 40), np.float32)
    with pytest.raises(ValueError, match="needs a spatial embedding"):
        build_grouper("spatial")(outputs)


@pytest.mark.parametrize("overrides, match", [
    (["model.coord_scale=0.0"], "loss.embedding is spatial: model.coord_scale must be > 0"),
    (["model.embedding_dim=16"], "model.embedding_dim must be 3, got 16"),
    (["loss.embedding.coord_scale=0.5"], r"loss.embedding.coord_scale = 0.5 must equal model.coord_scale"),
])
def test_spatial_configs_that_do_not_fit_the_model_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(EXPERIMENTS / "neven2019" / "synthetic_cpu.yaml", overrides)


def test_margin_radii_are_where_the_kernel_falls_to_one_half():
    embedding = np.zeros((4, 1, 1))
    embedding[2], embedding[3] = np.log(np.log(2)), np.log(4 * np.log(2))  # exp(sigma): log 2 and 4 log 2
    radii = margin_radii(embedding, coord_scale=0.5)
    np.testing.assert_allclose(radii[:, 0, 0], [2.0, 1.0])  # 1 and 0.5 units, 2 pixels per unit
    kernel = np.exp(-np.exp(embedding[2:, 0, 0]) * (radii[:, 0, 0] * 0.5) ** 2)  # the loss's kernel, per axis
    np.testing.assert_allclose(kernel, [0.5, 0.5])


def test_a_loss_term_set_to_null_is_dropped():
    config = load_config(EXPERIMENTS / "neven2019" / "synthetic_cpu.yaml")
    assert set(config.loss) == {"embedding", "semantic"}


@pytest.mark.parametrize("n_sigma", [1, 2])
def test_a_spatial_run_trains_evaluates_with_every_spatial_grouper_and_draws_its_seed_map(tiny_config_file, tmp_path,
                                                                                          capsys, n_sigma):
    spatial = [f"model.embedding_dim={2 + n_sigma}", "model.coord_scale=0.1", "loss.seediness=null",
               f"loss.embedding={{name: spatial, n_sigma: {n_sigma}, center: medoid, coord_scale: 0.1}}",
               "grouping={spatial: {}}"]
    run_dir = tmp_path / "run"
    args = [item for override in spatial for item in ("--set", override)]
    assert main(["train", str(tiny_config_file), "--out", str(run_dir), *args]) == 0
    assert "| spatial |" in capsys.readouterr().out
    assert (run_dir / "spatial_val.png").is_file() and (run_dir / "overlays_val.png").is_file()
    assert main(["compare-grouping", str(run_dir)]) == 0  # every grouper that reads a spatial embedding
    table = capsys.readouterr().out
    assert "| spatial |" in table and "| components |" in table and "| meanshift |" not in table
