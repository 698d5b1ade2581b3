"""The quickstart recipe learns both of its classes: a short deterministic run of
experiments/quickstart.yaml (300 of its 1200 steps, 30 val images) scores a class-aware COCO AP close
to its class-agnostic AP. A class head at chance between the two shapes (what the recipe's class
weight of 1 gave this run: 19.7 class-aware against 50.3 agnostic) scores about half of it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from embedseg.config import load_config
from embedseg.engine.evaluator import compare_groupers
from embedseg.engine.run import load_run
from embedseg.engine.trainer import train

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_recipe_separates_its_two_classes(tmp_path):
    config = load_config(QUICKSTART, ["train.steps=300", "data.split_params.val.num_images=30",
                                      "train.log_every=100", "train.checkpoint_every=1000"])
    train(config, tmp_path / "run")
    config, model, checkpoint = load_run(tmp_path / "run")
    results, _ = compare_groupers(config, model, checkpoint["class_names"], ["meanshift"], progress=False)
    meanshift = results["meanshift"]
    assert meanshift["agnostic_AP"] > 0.4, meanshift  # the embeddings work
    assert meanshift["AP"] > 0.9 * meanshift["agnostic_AP"], meanshift  # and so does the class head
