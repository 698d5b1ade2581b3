"""Config loading: base merge, --set overrides, and errors that name the key and the file."""
from __future__ import annotations

from pathlib import Path

import pytest

from embedseg.config import Config, ConfigError, dump_config, load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
REPO_CONFIGS = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml"))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_merge_and_overrides(tmp_path, tiny_config_file):
    child = write(tmp_path, "child.yaml", "base: tiny.yaml\nname: child\ntrain: {steps: 5}\n")
    config = load_config(child, ["train.lr=0.5", "grouping.meanshift.bandwidth=0.7", "model.width=0.25"])
    assert config.name == "child"
    assert config.train.steps == 5 and config.train.batch_size == 2  # merged, not replaced
    assert config.train.lr == 0.5 and isinstance(config.train.lr, float)
    assert config.grouping["meanshift"] == {"bandwidth": 0.7, "min_size": 5}
    assert config.model["width"] == 0.25 and config.model["backbone"] == "resnet18"


def test_changing_a_component_name_replaces_its_block(tmp_path, tiny_config_file):
    child = write(tmp_path, "child.yaml", "base: tiny.yaml\nloss:\n  embedding: {name: discriminative}\n")
    assert load_config(child).loss["embedding"] == {"name": "discriminative", "weight": 1.0}


def test_round_trip_through_dump(tmp_path, tiny_config_file):
    config = load_config(tiny_config_file)
    dump_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("train: {stpes: 3}", r"unknown key 'train.stpes'.*accepted keys here: steps"),
        ("trian: {steps: 3}", r"unknown key 'trian'"),
        ("train: {steps: many}", r"train.steps = 'many' has the wrong type; expected int"),
        ("train: {lr: true}", r"train.lr = True has the wrong type"),
        ("model: {name: unet}", r"unknown model 'unet'; choices: deeplab"),
        ("model: {name: deeplab, widht: 0.5}", r"unknown key model.widht for model 'deeplab'; accepted: .*width"),
        ("model: {name: deeplab, width: wide}", r"model.width = 'wide' has the wrong type"),
        ("model: {name: deeplab, num_classes: 3}", r"model.num_classes is set by the framework"),
        ("loss: {embedding: {name: discrimnative}}", r"unknown loss 'discrimnative'; choices: .*discriminative"),
        ("grouping: {mean_shift: {}}", r"unknown grouper 'mean_shift'; choices: .*meanshift"),
        ("grouping: {meanshift: {bandwith: 1}}", r"unknown key grouping.meanshift.bandwith"),
        ("data: {dataset: {name: synthetic, sise: 64}}", r"unknown key data.dataset.sise .*accepted: .*size"),
        ("data: {dataset: {name: imagenet}}", r"unknown dataset 'imagenet'; choices: .*synthetic"),
        ("train: {schedule: linear}", r"train.schedule = 'linear' is not one of: poly, cosine, constant"),
        ("train: {steps: 0}", r"train.steps must be at least 1"),
        ("- just\n- a list", r"must be a YAML mapping"),
    ],
)
def test_errors_name_key_file_and_choices(tmp_path, text, pattern):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_bad_override_and_missing_files(tmp_path, tiny_config_file):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(tiny_config_file, ["train.steps"])
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        load_config(tiny_config_file, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="base file 'missing.yaml' not found"):
        load_config(write(tmp_path, "c.yaml", "base: missing.yaml\n"))
    grand = write(tmp_path, "grand.yaml", "base: tiny.yaml\n")
    with pytest.raises(ConfigError, match="one level only"):
        load_config(write(tmp_path, "c2.yaml", "base: grand.yaml\n"))
    assert grand.exists()


def test_defaults_are_valid():
    from embedseg.config import config_from_dict

    assert config_from_dict({}) == Config()


@pytest.mark.parametrize("path", REPO_CONFIGS)
def test_shipped_configs_load_and_read_back_from_a_run_directory(path, tmp_path):
    config = load_config(EXPERIMENTS / path)
    dump_config(config, tmp_path / "config.yaml")  # as train writes it; evaluate and resume read it back
    assert load_config(tmp_path / "config.yaml") == config
