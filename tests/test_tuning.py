"""The tune split (carved from train, disjoint from train and val) and `embedseg tune`: the search
finds the known best setting of a planted case within its trial budget; tuned.yaml is what
evaluate uses (and --untuned is not)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from embedseg.cli import main
from embedseg.config import ConfigError, load_config
from embedseg.data.tune import tune_indices
from embedseg.engine.run import dataset_for_split
from embedseg.engine.tuning import coordinate_search, search_axes, tune_grouper, tuning_key
from embedseg.evaluation import build_evaluators
from embedseg.grouping import GROUPERS

TUNE = "data.tune={fraction: 0.25, seed: 3}"


def image_names(dataset) -> list[str]:
    return [dataset[i]["name"] for i in range(len(dataset))]


def test_tune_indices_are_a_fixed_sorted_fraction():
    first = tune_indices(100, 0.1, seed=0)
    assert len(first) == 10 and list(first) == sorted(set(first)) and first.max() < 100
    assert np.array_equal(first, tune_indices(100, 0.1, seed=0))
    assert not np.array_equal(first, tune_indices(100, 0.1, seed=1))
    assert len(tune_indices(5, 0.01)) == 1  # at least one image
    with pytest.raises(ValueError, match="leaves no training image"):
        tune_indices(3, 0.9)


def test_tune_split_never_overlaps_train_or_val(tiny_config_file):
    config = load_config(tiny_config_file, [TUNE])
    train, tune, val = (image_names(dataset_for_split(config, s)) for s in ("train", "tune", "val"))
    everything = image_names(dataset_for_split(load_config(tiny_config_file), "train"))
    assert len(tune) == 2 and len(train) == 6
    assert not set(tune) & set(train) and not set(tune) & set(val)
    assert sorted(train + tune) == sorted(everything)


@pytest.mark.parametrize("value", ["{fraction: 1.0}", "{fraction: 0}", "0.1", "{fraction: 0.1, sed: 1}"])
def test_bad_tune_block_is_refused(tiny_config_file, value):
    with pytest.raises(ConfigError, match="data.tune"):
        load_config(tiny_config_file, [f"data.tune={value}"])


def test_coordinate_search_finds_the_best_grid_point_within_the_budget():
    def score(block):
        return -(block["x"] - 3) ** 2 - (block["y"] - 1) ** 2

    axes = {"x": [0, 1, 2, 3, 4], "y": [0, 1, 2]}
    best, tried = coordinate_search(score, {"x": 0, "y": 2}, axes, trials=20)
    assert best.block == {"x": 3, "y": 1} and best.score == 0
    assert tried[0].block == {"x": 0, "y": 2}  # the start is scored first
    best, tried = coordinate_search(score, {"x": 0, "y": 2}, axes, trials=3)
    assert len(tried) == 3 and best.block == {"x": 2, "y": 2}  # the best of the three it could afford


def touching_squares(gap: float, seed: int):
    """One image: two touching 12x12 squares of class 1 whose embeddings sit `gap` apart (no noise);
    (the sample of the dataset contract, the network outputs)."""
    labels = np.zeros((32, 32), np.int32)
    labels[8:20, 4:16], labels[8:20, 16:28] = 1, 2
    centres = np.random.default_rng(seed).normal(size=(3, 4))
    centres[2] = centres[1] + gap * np.eye(4)[0]
    embedding = centres[labels].transpose(2, 0, 1)  # background (0) sits elsewhere
    semantic = np.stack([labels == 0, labels > 0]).astype(np.float32)
    sample = {"image": np.zeros((32, 32, 3), np.uint8), "instances": labels, "semantic": (labels > 0).astype(np.int64),
              "image_id": seed, "name": f"squares_{seed}"}
    return sample, {"embedding": embedding.astype(np.float32), "semantic": semantic}


def test_tune_grouper_finds_a_bandwidth_that_splits_touching_objects():
    dataset, cache = zip(*(touching_squares(gap=1.2, seed=s) for s in range(3)))
    start = {"bandwidth": 2.0, "min_size": 20}  # wider than the gap: each pair is one mask
    best, tried = tune_grouper("meanshift", start, dataset, cache, lambda: build_evaluators(["coco"], ["thing"]),
                               "AP", trials=8)
    assert tried[0].block == start and tried[0].score < 0.5
    assert best.score == pytest.approx(1.0) and best.block["bandwidth"] < 1.2 and best.block["min_size"] == 20
    assert len(tried) <= 8


def test_search_axes_cover_the_chain():
    block = {"bandwidth": 1.0, "postprocess": ["split_disconnected", {"name": "merge_continuous", "threshold": 0.3}]}
    axes = search_axes("meanshift", block)
    assert set(axes) == {"bandwidth", "min_size", "postprocess[1].threshold"}


def test_tuning_key_changes_with_the_values_searched_and_the_cache_precision(tiny_config_file, monkeypatch):
    # a tuning copied from another run (embedseg reproduce) must have searched the values searched now,
    # on outputs cached as precisely as now
    config = load_config(tiny_config_file)
    key = tuning_key(config, "meanshift", "AP", 24)
    assert tuning_key(config, "meanshift", "AP", 24) == key != tuning_key(config, "meanshift", "AP50", 24)
    monkeypatch.setattr("embedseg.engine.tuning.CACHE_FORMAT", 2)  # the embedding cached as float16
    assert tuning_key(config, "meanshift", "AP", 24) != key
    monkeypatch.undo()
    monkeypatch.setitem(GROUPERS.get("meanshift").search_space, "min_size", [5, 10])
    assert tuning_key(config, "meanshift", "AP", 24) != key


def test_tune_command_writes_tuned_yaml_that_evaluate_uses(tiny_config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_config_file), "--out", str(run), "--set", TUNE, "--no-eval"]) == 0
    assert main(["tune", str(run), "--groupers", "meanshift", "--trials", "3",
                 "--metric", "AP"]) == 0
    tuned = yaml.safe_load((run / "tuned.yaml").read_text())
    assert tuned["tuned"]["meanshift"]["split"] == "tune" and tuned["tuned"]["meanshift"]["images"] == 2
    assert len(json.loads((run / "tune.json").read_text())["meanshift"]["trials"]) <= 3
    chosen = tuned["grouping"]["meanshift"]

    tuned["grouping"]["meanshift"]["min_size"] = 7  # what evaluate reads is tuned.yaml
    (run / "tuned.yaml").write_text(yaml.safe_dump(tuned))
    assert main(["evaluate", str(run), "--grouping", "meanshift"]) == 0
    used = json.loads((run / "metrics.json").read_text())["val"]["meanshift"]["scored_on"]["grouper"]
    assert used["min_size"] == 7 and used["bandwidth"] == chosen["bandwidth"]
    assert main(["evaluate", str(run), "--grouping", "meanshift", "--untuned"]) == 0
    used = json.loads((run / "metrics.json").read_text())["val"]["meanshift"]["scored_on"]["grouper"]
    assert used["min_size"] == 5  # the config's

    before = (run / "tuned.yaml").read_bytes()
    capsys.readouterr()
    assert main(["tune", str(run), "--trials", "2"]) == 2  # never replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err and (run / "tuned.yaml").read_bytes() == before
    assert main(["tune", str(run), "--groupers", "components", "--trials", "2"]) == 0  # others join it
    assert list(yaml.safe_load((run / "tuned.yaml").read_text())["grouping"]) == ["meanshift", "components"]


def test_tune_needs_a_tune_split(tiny_config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_config_file), "--out", str(run), "--no-eval"]) == 0
    capsys.readouterr()
    assert main(["tune", str(run), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "data.tune" in err and len(err.strip().splitlines()) == 1
    assert not (run / "tuned.yaml").exists()
