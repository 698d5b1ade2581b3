"""The shipped configs (every experiments/**.yaml): each resolves to what its header says, and the
real-data ones find their data under EMBEDSEG_DATA.

Header convention (experiments/README.md): the leading comment block of a config ends with
`# resolves:` and YAML, one `dotted.key: value` (or `dotted.key: {sub: value, ...}`) per line, that
the resolved config, builder defaults included, must match.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from embedseg.config import load_config, resolved_dict, show_config
from embedseg.data.transforms import TrainTransform
from embedseg.engine.run import dataset_for_split

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml") if p.name != "suite.yaml")  # suites: test_suites
REAL_DATA = [name for name in CONFIGS if name.split("/")[0] in ("dsb2018", "cvppp")]
MISSING = "<missing>"


def header_claims(path: Path) -> dict:
    """The YAML after `# resolves:` in the file's leading comment block."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:])
    starts = [i for i, line in enumerate(header) if line.strip() == "resolves:"]
    if not starts:
        return {}
    return yaml.safe_load(textwrap.dedent("\n".join(header[starts[0] + 1:]))) or {}


def unmet(claims: dict, resolved: dict, prefix: str = "") -> list[str]:
    """'key = claimed (resolves to actual)' for every claim that the resolved config does not meet."""
    problems = []
    for key, claimed in claims.items():
        node = resolved
        for part in str(key).split("."):
            node = node.get(part, MISSING) if isinstance(node, dict) else MISSING
        if isinstance(claimed, dict) and isinstance(node, dict):
            problems += unmet(claimed, node, f"{prefix}{key}.")
        elif node != claimed:
            problems.append(f"{prefix}{key} = {claimed!r} (resolves to {node!r})")
    return problems


@pytest.mark.parametrize("name", CONFIGS)
def test_config_resolves_to_what_its_header_says(name):
    path = EXPERIMENTS / name
    claims = header_claims(path)
    assert claims, f"{name}: the header ends with no '# resolves:' block (experiments/README.md)"
    resolved = resolved_dict(load_config(path))
    problems = unmet(claims, resolved)
    assert not problems, f"{name}: the header says {'; '.join(problems)}"
    assert yaml.safe_load(show_config(path)) == resolved  # `embedseg config show` prints the same values


def test_a_header_that_says_otherwise_is_caught(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# resolves:\n#   train: {steps: 5, lr: 0.1}\n#   model.backbone: resnet18\n"
                    "#   loss.embedding.gamma: 0.001\ntrain: {steps: 6}\n")
    claims = header_claims(path)
    assert claims == {"train": {"steps": 5, "lr": 0.1}, "model.backbone": "resnet18", "loss.embedding.gamma": 0.001}
    assert unmet(claims, resolved_dict(load_config(path))) == [
        "train.steps = 5 (resolves to 6)", "train.lr = 0.1 (resolves to 0.001)",
        "model.backbone = 'resnet18' (resolves to 'resnet50')"]  # gamma 0.001: the loss's default


@pytest.mark.parametrize("folder", ["dsb2018", "cvppp"])
def test_every_data_set_has_a_cpu_and_a_full_config(folder):
    cpu, full = (load_config(EXPERIMENTS / folder / f"{kind}.yaml") for kind in ("cpu", "full"))
    assert full.data.dataset == cpu.data.dataset  # the same data, a bigger run
    assert (cpu.model["backbone"], full.model["backbone"]) == ("resnet18", "resnet50")
    assert full.train.steps > cpu.train.steps and cpu.train.threads == 2


@pytest.mark.parametrize("name", REAL_DATA)
def test_real_data_configs_use_relative_roots(name):
    config = load_config(EXPERIMENTS / name)
    assert config.data.dataset["name"] == "folder" and not Path(config.data.dataset["root"]).is_absolute()
    TrainTransform.from_config(config.data)  # the augmentation values are valid


@pytest.mark.parametrize("name", ["dsb2018/cpu.yaml", "cvppp/cpu.yaml"])
def test_datasets_resolve_under_embedseg_data(name, shared_data, monkeypatch, tmp_path):
    config = load_config(EXPERIMENTS / name)
    if not (shared_data / config.data.dataset["root"]).is_dir():
        pytest.skip(f"{shared_data / config.data.dataset['root']} not found")
    monkeypatch.setenv("EMBEDSEG_DATA", str(shared_data))
    monkeypatch.chdir(tmp_path)  # the root must come from EMBEDSEG_DATA, not from the current folder
    assert dataset_for_split(config, "val").root == shared_data / config.data.dataset["root"]
    dataset = dataset_for_split(config, config.data.train_split)  # train without its tune tenth
    crop = TrainTransform.from_config(config.data)(dataset[0])
    assert crop["image"].shape == (3, config.data.crop_size, config.data.crop_size)
