"""Config loading: base merge, --set overrides, errors that name the key and the file, and
`config show`: the resolved values with the origin of each."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedseg.cli import main
from embedseg.config import Config, ConfigError, config_from_dict, dump_config, load_config, load_raw, show_config
from embedseg.grouping import build_grouper

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
REPO_CONFIGS = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml") if p.name != "suite.yaml")


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


def test_a_files_own_groupers_come_first(tmp_path, tiny_config_file):
    child = write(tmp_path, "child.yaml", "base: tiny.yaml\ngrouping: {components: {min_size: 9}}\n")
    assert list(load_config(child).grouping) == ["components", "meanshift"]  # the first is the default


def test_round_trip_through_dump(tmp_path, tiny_config_file):
    config = load_config(tiny_config_file)
    dump_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("train: {stpes: 3}", r"unknown key 'train.stpes'; accepted: steps, batch_size"),
        ("trian: {steps: 3}", r"unknown key 'trian'"),
        ("train: {steps: many}", r"train.steps = 'many' has the wrong type; expected int"),
        ("train: {lr: true}", r"train.lr = True has the wrong type"),
        ("model: {name: unet}", r"model: unknown model 'unet'; choose one of: deeplab"),
        ("model: {width: 0.5}", r"model must be a mapping with a 'name'; choose one of: deeplab"),
        ("model: {name: deeplab, widht: 0.5}", r"unknown key 'model.widht' for model 'deeplab'; accepted: .*width"),
        ("model: {name: deeplab, width: wide}", r"model.width = 'wide' has the wrong type; expected float"),
        ("loss: {semantic: {name: cross_entropy, class_weights: [1, x]}}",
         r"loss.semantic.class_weights = \[1, 'x'\] has the wrong type"),
        ("model: {name: deeplab, num_classes: 3}", r"model.num_classes is set by the framework"),
        ("loss: {embedding: {name: discrimnative}}", r"unknown loss 'discrimnative'; choose one of: .*discriminative"),
        ("loss: {embedding: {name: discriminative, weight: heavy}}", r"loss.embedding.weight = 'heavy'"),
        ("grouping: {mean_shift: {}}", r"unknown grouper 'mean_shift'; choose one of: .*meanshift"),
        ("grouping: {meanshift: {bandwith: 1}}", r"unknown key 'grouping.meanshift.bandwith' for grouper"),
        ("grouping: {meanshift: 3}", r"grouping.meanshift must be a mapping"),
        ("data: {dataset: {name: synthetic, sise: 64}}", r"unknown key 'data.dataset.sise' .*accepted: .*size"),
        ("data: {dataset: {name: synthetic, split: val}}", r"data.dataset.split is set by the framework"),
        ("data: {split_params: {val: {sise: 3}}}", r"unknown key 'data.split_params.val.sise' for dataset"),
        ("data: {dataset: {name: imagenet}}", r"unknown dataset 'imagenet'; choose one of: .*synthetic"),
        ("train: {schedule: linear}", r"train.schedule = 'linear' is not one of: poly, cosine, constant"),
        ("train: {device: tpu}", r"train.device = 'tpu' is not one of: auto, cpu, cuda"),
        ("train: {steps: 0}", r"train.steps must be at least 1"),
        ("- just\n- a list", r"must be a YAML mapping"),
    ],
)
def test_errors_name_key_file_and_choices(tmp_path, text, pattern):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")


def test_building_a_component_checks_its_parameters_like_a_config():
    """One validator: a builder call gets the same messages as a config block."""
    with pytest.raises(ConfigError, match=r"unknown key 'bandwith' for grouper 'meanshift'; accepted: .*bandwidth"):
        build_grouper("meanshift", bandwith=1.0)
    with pytest.raises(ConfigError, match=r"min_size = 'big' has the wrong type; expected int"):
        build_grouper("meanshift", min_size="big")
    assert build_grouper("meanshift", bandwidth=2, min_size=5).bandwidth == 2.0  # ints are valid floats


def test_bad_override_and_missing_files(tmp_path, tiny_config_file):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(tiny_config_file, ["train.steps"])
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        load_config(tiny_config_file, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="base file 'missing.yaml' not found"):
        load_config(write(tmp_path, "c.yaml", "base: missing.yaml\n"))
    write(tmp_path, "grand.yaml", "base: tiny.yaml\n")
    with pytest.raises(ConfigError, match="one level only"):
        load_config(write(tmp_path, "c2.yaml", "base: grand.yaml\n"))


def test_defaults_are_valid():
    assert config_from_dict({}) == Config()


@pytest.mark.parametrize("path", REPO_CONFIGS)
def test_shipped_configs_load_and_read_back_from_a_run_directory(path, tmp_path):
    config = load_config(EXPERIMENTS / path)
    dump_config(config, tmp_path / "config.yaml")  # as train writes it; evaluate and resume read it back
    assert load_config(tmp_path / "config.yaml") == config


@pytest.fixture
def base_and_child(tmp_path):
    """A child config over a base, in a subfolder of the base's folder (as experiments/dsb2018/ over _base/)."""
    write(tmp_path, "base.yaml", "seed: 3\ntrain: {steps: 7, lr: 0.5}\n"
                                 "model: {name: deeplab, backbone: resnet18, width: 0.25}\n")
    (tmp_path / "runs").mkdir()
    return write(tmp_path / "runs", "child.yaml", "base: ../base.yaml\nname: child\ntrain: {lr: 0.25}\n"
                                                  "grouping: {components: {min_size: 4}}\n")


def test_origins_name_the_file_base_or_set(base_and_child, tmp_path):
    raw, origins = load_raw(base_and_child, ["train.steps=9", "grouping.components={min_size: 2}"])
    child, base = str(base_and_child), str(tmp_path / "base.yaml")
    assert origins == {"seed": base, "train.steps": "--set", "train.lr": child, "model.name": base,
                       "model.backbone": base, "model.width": base, "name": child,
                       "grouping.components.min_size": "--set"}
    assert raw["train"] == {"steps": 9, "lr": 0.25}


def shown_origins(text: str) -> dict[str, tuple[str, str]]:
    """dotted key -> (value text, origin) of every value line of `config show`'s output."""
    out, stack = {}, []
    for line in text.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        key, rest = line.strip().split(":", 1)
        stack[depth:] = [key]
        if "#" in rest:
            value, origin = rest.rsplit("#", 1)
            out[".".join(stack)] = (value.strip(), origin.strip())
    return out


def test_config_show_gives_each_value_and_its_origin(base_and_child, tmp_path):
    text = show_config(base_and_child, ["train.steps=9"])
    shown = shown_origins(text)
    child, base = str(base_and_child), str(tmp_path / "base.yaml")
    assert shown["train.steps"] == ("9", "--set")
    assert shown["train.lr"] == ("0.25", child)
    assert shown["seed"] == ("3", base)
    assert shown["model.backbone"] == ("resnet18", base)
    assert shown["train.batch_size"] == ("8", "default")  # TrainConfig's default
    assert shown["model.embedding_dim"] == ("64", "default")  # the builder's default
    assert shown["data.dataset.seed"] == ("0", "default")  # the synthetic data set's, not the config's seed
    assert shown["grouping.components.min_size"] == ("4", child)
    values = yaml.safe_load(text)  # the output is YAML: what it shows is what the config resolves to
    assert values["model"]["decoder"] == "stride4"
    assert values["grouping"] == {"components": {"min_size": 4, "postprocess": None}}  # a file's grouping replaces the default's
    assert values["train"] == load_config(base_and_child, ["train.steps=9"]).to_dict()["train"]


def test_cli_config_show(base_and_child, tmp_path, capsys):
    assert main(["config", "show", str(base_and_child), "--set", "train.steps=9"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["train"]["steps"] == 9 and "# --set" in out
    assert main(["config", "show", str(base_and_child), "--set", "train.stepz=9"]) == 2
    assert "unknown key 'train.stepz'" in capsys.readouterr().err
