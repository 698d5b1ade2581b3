"""Turn a config or a run directory into the objects that do the work."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from embedseg.config import Config, ConfigError, config_from_dict, load_config, read_yaml, spatial_margins
from embedseg.data import build_dataset
from embedseg.data.tune import TUNE_SPLIT, split_train
from embedseg.engine.checkpoint import changed_keys, load_checkpoint
from embedseg.engine.predictor import Predictor
from embedseg.grouping import build_grouper
from embedseg.models import build_model

TUNED_FILE = "tuned.yaml"  # the grouping blocks `embedseg tune` chose for a run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but torch sees no CUDA device (is a CUDA build of torch installed?); "
                          "use train.device: auto or cpu")
    return torch.device(name)


def dataset_for_split(config: Config, split: str):
    """The dataset block of the config, with that split's overrides, built for `split`.

    With `data.tune` set, "tune" is the part of the training split carved out for choosing grouping
    parameters, and the training split is the rest (embedseg.data.tune).
    """
    tune = config.data.tune
    if split == TUNE_SPLIT and not tune:
        raise ConfigError("there is no tune split: the config has no data.tune (e.g. data.tune: {fraction: 0.1, "
                          "seed: 0}), so its network was trained on every training image")
    source = config.data.train_split if split == TUNE_SPLIT else split
    params = {k: v for k, v in config.data.dataset.items() if k != "name"}
    params.update(config.data.split_params.get(source, {}))
    dataset = build_dataset(config.data.dataset["name"], source, **params)
    if tune and source == config.data.train_split:
        return split_train(dataset, tune["fraction"], tune.get("seed", 0), split)
    return dataset


def build_network(config: Config, num_classes: int) -> torch.nn.Module:
    params = {k: v for k, v in config.model.items() if k != "name"}
    return build_model(config.model["name"], num_classes=num_classes, **params)


def build_predictor(config: Config, model: torch.nn.Module) -> Predictor:
    """The whole-image predictor on the config's device and memory format, with eval.tta."""
    return Predictor(model, select_device(config.train.device), channels_last=config.train.channels_last,
                     tta=config.eval.tta, axis_margins=spatial_margins(config) == 2)


def build_groupers(config: Config, names: list[str] | None = None) -> dict:
    """Groupers by name, with the config's parameters where it has a block for them."""
    names = list(config.grouping) if names is None else names
    return {name: build_grouper(name, **(config.grouping.get(name) or {})) for name in names}


def find_checkpoint(run_dir: Path) -> Path:
    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.exists():
            return path
    raise FileNotFoundError(f"{run_dir} holds no checkpoints/best.pt or checkpoints/last.pt: is it a run directory?")


def tuned_overrides(run_dir: Path) -> list[str]:
    """The grouping blocks `embedseg tune` chose for a run (its tuned.yaml) as `--set` overrides."""
    path = run_dir / TUNED_FILE
    if not path.is_file():
        return []
    grouping = read_yaml(path).get("grouping") or {}
    return [f"grouping.{name}={json.dumps(block)}" for name, block in grouping.items()]


def load_run(run_dir: str | Path, overrides: list[str] = (), tuned: bool = True):
    """(config, model in eval mode, checkpoint dict) of a trained run.

    The config is the run's saved config.yaml, with the grouping blocks of its tuned.yaml (unless
    `tuned` is False) and then `overrides` applied (grouping or eval keys, say); the weights come
    from best.pt, or last.pt when no evaluation picked a best one.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    ckpt = load_checkpoint(find_checkpoint(run_dir))
    where = f"{run_dir / 'config.yaml'}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    overrides = [*(tuned_overrides(run_dir) if tuned else []), *overrides]
    config = load_config(run_dir / "config.yaml", overrides) if (run_dir / "config.yaml").exists() \
        else config_from_dict(ckpt["config"], where=str(run_dir))
    model = build_network(config, ckpt["num_classes"])
    load_weights(model, ckpt, config, find_checkpoint(run_dir), where)
    model.eval()
    return config, model, ckpt


def load_weights(model: torch.nn.Module, ckpt: dict, config: Config, source: Path, config_source: str) -> None:
    """The checkpoint's weights into `model`; a network the config builds otherwise than the one that
    was trained is a ConfigError naming the first parameters that do not fit and the model keys that differ."""
    own, saved = model.state_dict(), ckpt["model"]
    try:
        model.load_state_dict(saved)  # the model's own load hooks (renamed keys of old checkpoints) run here
        return
    except RuntimeError:  # torch's many-line list of every missing, unexpected and misshapen parameter
        pass
    unfit = [f"{k} is {tuple(saved[k].shape)} in the checkpoint, {tuple(v.shape)} in the network" for k, v in own.items()
             if k in saved and saved[k].shape != v.shape]
    unfit += [f"{k} is missing from the checkpoint" for k in own if k not in saved]
    unfit += [f"{k} of the checkpoint is not in the network" for k in saved if k not in own]
    trained = ckpt.get("config", {}).get("model", {})
    changed = changed_keys(trained, config.to_dict()["model"], "model.")
    keys = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items()) or "none"
    more = f" (and {len(unfit) - 2} more)" if len(unfit) > 2 else ""
    raise ConfigError(f"the weights in {source} do not fit the network of {config_source}: {'; '.join(unfit[:2])}{more}; "
                      f"model keys changed since training: {keys}; use the model settings the run was trained with")
