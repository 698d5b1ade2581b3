"""Typed experiment configs: dataclasses + YAML, one `base:` level, `--set a.b=value` overrides.

A config file is plain YAML over `Config`. Component blocks are `{name: ..., <params>}` whose
params are checked against the registered builder's signature at load time, so a typo fails
before any training starts, with the key, the file and the accepted choices in the message.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the file."""


@dataclass
class DataConfig:
    dataset: dict = field(default_factory=lambda: {"name": "synthetic"})  # builder(split=..., **params)
    split_params: dict = field(default_factory=dict)  # per split overrides, e.g. {val: {num_images: 100}}
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int | None = None  # random crops of this side for training (None: whole images)
    flip: bool = True  # random horizontal and vertical flips
    rot90: bool = True  # random multiples of 90 degrees
    scale_range: list[float] | None = None  # [lo, hi] random zoom (log-uniform); bilinear image, nearest labels
    rotate_degrees: float = 0.0  # random rotation in [-r, r] degrees; uncovered pixels are ignored
    brightness: float = 0.0  # additive intensity jitter, fraction of the range (image only)
    contrast: float = 0.0  # multiplicative contrast jitter about the image mean (image only)
    gamma: float = 0.0  # intensity ** g, log g uniform in [-gamma, gamma] (image only)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: str = "poly"  # poly | cosine | constant
    grad_clip: float = 10.0
    log_every: int = 20
    eval_every: int = 0  # 0: evaluate only after training
    checkpoint_every: int = 500
    num_workers: int = 0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    # the network in channels_last memory for training and inference: on CPU (oneDNN) ~20% faster a float32
    # step for the DSB2018 config's narrow full-resolution heads, ~10% slower for the quickstart's and
    # slower with bf16; measure before use
    channels_last: bool = False
    # the network's forward in bfloat16 autocast, losses in float32: 1.75x faster steps for the DSB2018
    # config on a CPU with AMX/AVX512-BF16 (the trainer warns on one without); inference stays float32
    bf16: bool = False
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class EvalConfig:
    split: str = "val"
    # detections per image kept by COCOeval; COCO's 100 gives the same AP unless an image has more
    max_dets: int = 1000
    # metrics written to metrics.json: coco, matching_ap, sbd, dic, map_r (embedseg.evaluation)
    metrics: list[str] = field(default_factory=lambda: ["coco"])
    iou_thresholds: list[float] = field(default_factory=lambda: [0.5])  # of matching_ap
    map_r_thresholds: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])  # of map_r
    max_images: int | None = None  # evaluate only the first N images of the split
    num_overlays: int = 4  # images drawn into overlays.png


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=lambda: {"name": "deeplab"})
    loss: dict = field(
        default_factory=lambda: {
            "embedding": {"name": "discriminative", "weight": 1.0},
            "semantic": {"name": "cross_entropy", "weight": 1.0},
        }
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    # grouper name -> params; the first one is the default for `evaluate` and `predict`.
    grouping: dict = field(default_factory=lambda: {"meanshift": {}, "components": {}})
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SCHEDULES = ("poly", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
METRICS = ("coco", "matching_ap", "sbd", "dic", "map_r")  # "coco" + evaluation.MATCHING_METRICS


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read `path` (merging its `base:` file), apply `a.b=value` overrides, validate."""
    path = Path(path)
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is not None:
        base_path = (path.parent / base).resolve()
        if not base_path.exists():
            raise ConfigError(f"{path}: base file {base!r} not found (looked for {base_path})")
        base_raw = _read_yaml(base_path)
        if "base" in base_raw:
            raise ConfigError(f"{base_path}: a base config cannot have a base of its own (one level only)")
        merged = merge(base_raw, raw)
        if isinstance(raw.get("grouping"), dict) and isinstance(merged.get("grouping"), dict):
            # The first grouper is the default: the groupers a file lists come before its base's.
            merged["grouping"] = {**{k: merged["grouping"][k] for k in raw["grouping"]}, **merged["grouping"]}
        raw = merged
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw, where=str(path))


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def merge(base: dict, override: dict) -> dict:
    """Deep merge; a component block whose `name` changes is replaced, not merged."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and old.get("name", value.get("name")) == value.get("name", old.get("name")):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(raw: dict, item: str) -> None:
    """Apply one `a.b.c=value` (value parsed as YAML) to the raw config dict."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
    key, text = item.split("=", 1)
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
    node[parts[-1]] = value


def config_from_dict(raw: dict, where: str = "<dict>") -> Config:
    config = _build_dataclass(Config, raw, where, prefix="")
    validate_components(config, where)
    return config


def _build_dataclass(cls, raw: Any, where: str, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {prefix + unknown[0]!r}; accepted keys here: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        value, hint = raw[name], hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build_dataclass(hint, value, where, prefix + name + ".")
        else:
            kwargs[name] = _check_type(value, hint, where, prefix + name)
    return cls(**kwargs)


def _check_type(value: Any, hint, where: str, key: str):
    """Return value (ints widened to float where a float is wanted) or raise naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, where, key)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {key} = {value!r} has the wrong type; expected {_type_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (str, bool) and isinstance(value, hint):
        return value
    elif (origin or hint) is dict and isinstance(value, dict):
        return value
    elif (origin or hint) is list and isinstance(value, list):
        (item,) = typing.get_args(hint) or (Any,)
        return [v if item is Any else _check_type(v, item, where, f"{key}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{where}: {key} = {value!r} has the wrong type; expected {_type_name(hint)}")


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _check_choice(value: str, choices, where: str, key: str):
    if value not in choices:
        raise ConfigError(f"{where}: {key} = {value!r} is not one of: {', '.join(choices)}")


def _check_component(registry, block: dict, where: str, key: str, reserved=()):
    """A `{name: ..., params}` block: known name, params accepted by the builder."""
    if not isinstance(block, dict) or "name" not in block:
        raise ConfigError(f"{where}: {key} must be a mapping with a 'name'; choices: {', '.join(registry.names())}")
    params = {k: v for k, v in block.items() if k != "name"}
    _check_params(registry, block["name"], params, where, key, reserved)


def _check_params(registry, name: str, params: dict, where: str, key: str, reserved=()):
    if name not in registry:
        raise ConfigError(f"{where}: {key}: unknown {registry.kind} {name!r}; choices: {', '.join(registry.names())}")
    accepted = registry.parameters(name)
    for p, value in params.items():
        if p in reserved:
            raise ConfigError(f"{where}: {key}.{p} is set by the framework, remove it from the config")
        if p not in accepted:
            raise ConfigError(
                f"{where}: unknown key {key}.{p} for {registry.kind} {name!r}; "
                f"accepted: {', '.join(sorted(set(accepted) - set(reserved)))}"
            )
        hint = accepted[p].annotation
        if isinstance(hint, str):  # postponed annotations: resolve against the builder's module
            hint = _resolve_hint(registry.get(name), hint)
        if hint is not None and hint is not inspect_empty():
            _check_type(value, _widen_tuples(hint), where, f"{key}.{p}")


def inspect_empty():
    import inspect

    return inspect.Parameter.empty


def _resolve_hint(builder, text: str):
    import sys

    target = builder.__init__ if isinstance(builder, type) else builder
    module = sys.modules[getattr(builder, "__module__", "builtins")]
    try:
        return typing.get_type_hints(target, vars(module)).get(text, None) or eval(text, vars(module))
    except Exception:  # an annotation we cannot resolve is not checked
        return None


def _widen_tuples(hint):
    """YAML has no tuples: a `tuple[...]`/`list[...]` annotated parameter accepts a list."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        return list
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_widen_tuples(a) for a in typing.get_args(hint))]
    return hint


def validate_components(config: Config, where: str) -> None:
    # Imported here: the registries pull in torch and the builders; config parsing alone does not.
    from embedseg.data import DATASETS
    from embedseg.grouping import GROUPERS
    from embedseg.losses import LOSSES
    from embedseg.models import MODELS

    _check_component(DATASETS, config.data.dataset, where, "data.dataset", reserved=("split",))
    for split, params in config.data.split_params.items():
        if not isinstance(params, dict):
            raise ConfigError(f"{where}: data.split_params.{split} must be a mapping of dataset parameters")
        _check_params(DATASETS, config.data.dataset["name"], params, where, f"data.split_params.{split}", ("split",))
    _check_component(MODELS, config.model, where, "model", reserved=("num_classes",))
    if not config.loss:
        raise ConfigError(f"{where}: loss needs at least one term; loss choices: {', '.join(LOSSES.names())}")
    for term, block in config.loss.items():
        if isinstance(block, dict) and "weight" in block:
            _check_type(block["weight"], float, where, f"loss.{term}.weight")
        if isinstance(block, dict) and "ramp" in block:
            from embedseg.losses import WeightRamp

            try:
                WeightRamp.from_config(block["ramp"], f"loss.{term}.ramp")
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
        if isinstance(block, dict):  # weight and ramp are the criterion's, not the loss's
            block = {k: v for k, v in block.items() if k not in ("weight", "ramp")}
        _check_component(LOSSES, block, where, f"loss.{term}")
    if not config.grouping:
        raise ConfigError(f"{where}: grouping needs at least one grouper; choices: {', '.join(GROUPERS.names())}")
    for name, params in config.grouping.items():
        if not isinstance(params, dict):
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise ConfigError(f"{where}: grouping.{name} must be a mapping of parameters")
            config.grouping[name] = params
        _check_params(GROUPERS, name, {k: v for k, v in params.items() if k != "postprocess"}, where,
                      f"grouping.{name}")
        _check_postprocess(params.get("postprocess"), where, f"grouping.{name}.postprocess")
    _check_choice(config.train.schedule, SCHEDULES, where, "train.schedule")
    _check_choice(config.train.device, DEVICES, where, "train.device")
    if not config.eval.metrics:
        raise ConfigError(f"{where}: eval.metrics needs at least one metric; choices: {', '.join(METRICS)}")
    for i, metric in enumerate(config.eval.metrics):
        _check_choice(metric, METRICS, where, f"eval.metrics[{i}]")
    for key in ("iou_thresholds", "map_r_thresholds"):
        values = getattr(config.eval, key)
        if not values or any(not 0 < t <= 1 for t in values):
            raise ConfigError(f"{where}: eval.{key} = {values!r}: expected a non-empty list of "
                              f"IoU thresholds in (0, 1]")
    for key, value in (("train.steps", config.train.steps), ("train.batch_size", config.train.batch_size),
                       ("eval.max_dets", config.eval.max_dets)):
        if value < 1:
            raise ConfigError(f"{where}: {key} must be at least 1, got {value}")


def _check_postprocess(steps: Any, where: str, key: str) -> None:
    """A grouper's `postprocess` list (or None): each entry a step name or {name: step, <params>}, with
    the step's required params given and values the step accepts (it is built once to check them)."""
    from embedseg.grouping import POSTPROCESS

    if steps is not None and not isinstance(steps, list):
        raise ConfigError(f"{where}: {key} = {steps!r} must be a list of steps, each a name or "
                          f"{{name: step, <params>}}; choices: {', '.join(POSTPROCESS.names())}")
    for i, entry in enumerate(steps or []):
        block = {"name": entry} if isinstance(entry, str) else entry
        _check_component(POSTPROCESS, block, where, f"{key}[{i}]")
        name, params = block["name"], {k: v for k, v in block.items() if k != "name"}
        for p, spec in POSTPROCESS.parameters(name).items():
            if spec.default is spec.empty and p not in params:
                raise ConfigError(f"{where}: {key}[{i}].{p} is missing; postprocess step {name!r} needs it")
        try:
            POSTPROCESS.build(name, **params)
        except ValueError as e:
            raise ConfigError(f"{where}: {key}[{i}]: {e}") from None


def dump_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
