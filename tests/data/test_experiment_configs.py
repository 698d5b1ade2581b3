"""The real-data experiment configs load, and with the data present build their datasets and crops."""
from pathlib import Path

import pytest

from embedseg.config import load_config
from embedseg.data.transforms import TrainTransform
from embedseg.engine.run import dataset_for_split

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CONFIGS = sorted(str(p.relative_to(EXPERIMENTS)) for folder in ("dsb2018", "cvppp")
                 for p in (EXPERIMENTS / folder).glob("*.yaml"))


@pytest.mark.parametrize("folder", ["dsb2018", "cvppp"])
def test_every_data_set_has_a_cpu_and_a_full_config(folder):
    cpu, full = (load_config(EXPERIMENTS / folder / f"{kind}.yaml") for kind in ("cpu", "full"))
    assert full.data.dataset == cpu.data.dataset  # the same data, a bigger run
    assert (cpu.model["backbone"], full.model["backbone"]) == ("resnet18", "resnet50")
    assert full.train.steps > cpu.train.steps and cpu.train.threads == 2


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_with_relative_root(name):
    config = load_config(EXPERIMENTS / name)
    assert config.data.dataset["name"] == "folder" and not Path(config.data.dataset["root"]).is_absolute()
    expected = {"dsb2018": ["coco", "matching_ap"], "cvppp": ["sbd", "dic", "coco"]}[name.split("/")[0]]
    assert config.eval.metrics == expected
    TrainTransform.from_config(config.data)  # the augmentation values are valid


@pytest.mark.parametrize("name", ["dsb2018/cpu.yaml", "cvppp/cpu.yaml"])
def test_datasets_resolve_under_embedseg_data(name, shared_data, monkeypatch, tmp_path):
    config = load_config(EXPERIMENTS / name)
    if not (shared_data / config.data.dataset["root"]).is_dir():
        pytest.skip(f"{shared_data / config.data.dataset['root']} not found")
    monkeypatch.setenv("EMBEDSEG_DATA", str(shared_data))
    monkeypatch.chdir(tmp_path)  # the root must come from EMBEDSEG_DATA, not from the current folder
    dataset = dataset_for_split(config, config.data.train_split)
    assert dataset.root == shared_data / config.data.dataset["root"]
    crop = TrainTransform.from_config(config.data)(dataset[0])
    assert crop["image"].shape == (3, config.data.crop_size, config.data.crop_size)
