"""Typed experiment configs: dataclasses + YAML, one `base:` level, `--set a.b=value` overrides.

A config file is plain YAML over `Config`. Component blocks are `{name: ..., <params>}` whose
params are checked against the registered builder's signature at load time
(`Registry.check_params`), so a typo fails before any training starts, with the key, the file and
the accepted names in the message.

`load_config` gives the validated `Config`. `load_raw` gives the merged YAML and the origin of
every value in it (the config file, its base file or `--set`); `format_config` prints the resolved
config with those origins, `default` for everything the dataclasses or the builders' signatures
fill in (`embedseg config show`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embedseg.engine.oracle import ORACLES
from embedseg.evaluation.matching import MAP_R_THRESHOLDS, MATCHING_METRICS
from embedseg.outputs import write_text


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the file."""


@dataclass
class DataConfig:
    dataset: dict = field(default_factory=lambda: {"name": "synthetic"})  # builder(split=..., **params)
    split_params: dict = field(default_factory=dict)  # per split overrides, e.g. {val: {num_images: 100}}
    train_split: str = "train"
    val_split: str = "val"  # scored during training (train.eval_every) to pick best.pt
    # {fraction, seed}: that fraction of train_split's images, drawn with seed, becomes the split "tune"
    # (grouping parameters are chosen on it: `embedseg tune`) and training never sees them
    tune: dict | None = None
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
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay
    warmup_steps: int = 50
    schedule: str = "poly"  # poly | cosine | constant
    grad_clip: float = 10.0  # the gradients' total norm is clipped to this
    log_every: int = 20
    eval_every: int = 0  # 0: evaluate only after training
    checkpoint_every: int = 500
    num_workers: int = 0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    # the network in channels_last memory format, for training and inference (the same outputs up to
    # rounding); faster on some CPUs and slower on others, so measure before use
    channels_last: bool = False
    # the network's forward in bfloat16 autocast, losses in float32, for faster steps where the device has
    # native bfloat16 (the trainer warns where it has not); inference stays float32
    bf16: bool = False
    device: str = "auto"  # auto | cpu | cuda
    # torch.use_deterministic_algorithms and the CUDA settings it needs, for runs that must repeat bit
    # for bit (a resumed run then continues exactly as an uninterrupted one); slower on a GPU
    deterministic: bool = False
    # a step whose loss or gradients hold a NaN or an infinity, found before the weights change:
    # stop (end the run, keeping the last checkpoint) | skip (leave the weights, count it in log.jsonl)
    on_nonfinite: str = "stop"
    # BatchNorm layers of the network as SyncBatchNorm: statistics over the batch of all processes
    # (torchrun) rather than each process's share; CUDA only. The built-in networks use GroupNorm
    # and need none: this is for a registered network with batch norm
    sync_bn: bool = False


@dataclass
class EvalConfig:
    split: str = "val"
    # detections per image kept by COCOeval; COCO's 100 gives the same AP unless an image has more
    max_dets: int = 1000
    # metrics written to metrics.json: coco, matching_ap, sbd, dic, map_r (embedseg.evaluation)
    metrics: list[str] = field(default_factory=lambda: ["coco"])
    iou_thresholds: list[float] = field(default_factory=lambda: [0.5])  # of matching_ap
    map_r_thresholds: list[float] = field(default_factory=lambda: list(MAP_R_THRESHOLDS))  # of map_r
    max_images: int | None = None  # evaluate only the first N images of the split
    num_overlays: int = 4  # images drawn into the figures: overlays_, spatial_ and grouping_<split>_overlays.png
    # ground truth in place of network outputs, for ablations: foreground, instances (embedseg.engine.oracle)
    oracle: list[str] = field(default_factory=list)
    # average the network's outputs over the 8 flips and quarter turns of each image (embedseg.engine.tta)
    tta: bool = False


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
ON_NONFINITE = ("stop", "skip")
METRICS = ("coco", *MATCHING_METRICS)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read `path` (merging its `base:` file), apply `a.b=value` overrides, validate."""
    raw, _ = load_raw(path, overrides)
    return config_from_dict(raw, where=str(path))


def load_raw(path: str | Path, overrides: list[str] = ()) -> tuple[dict, dict[str, str]]:
    """(merged YAML of `path`, its base and `overrides`; origin of every value in it).

    The origins map the dotted key of every leaf value to the file it came from or "--set".
    Nothing is validated here: `config_from_dict` does that.
    """
    path = Path(path)
    own = read_yaml(path)
    base = own.pop("base", None)
    sources = [(own, str(path))]  # later sources win
    if base is None:
        raw = copy.deepcopy(own)
    else:
        base_path = Path(os.path.normpath(path.parent / base))
        if not base_path.exists():
            raise ConfigError(f"{path}: base file {base!r} not found (looked for {base_path})")
        base_raw = read_yaml(base_path)
        if "base" in base_raw:
            raise ConfigError(f"{base_path}: a base config cannot have a base of its own (one level only)")
        sources.insert(0, (base_raw, str(base_path)))
        raw = merge(base_raw, own)
        if isinstance(own.get("grouping"), dict) and isinstance(raw.get("grouping"), dict):
            # The first grouper is the default: the groupers a file lists come before its base's.
            raw["grouping"] = {**{k: raw["grouping"][k] for k in own["grouping"]}, **raw["grouping"]}
    for item in overrides:
        parts, value = apply_override(raw, item)
        for part in reversed(parts):
            value = {part: value}
        sources.append((value, "--set"))
    origins = {}
    for parts in _leaf_paths(raw):
        origins[_dotted(parts)] = next(label for source, label in reversed(sources) if _holds(source, parts))
    return raw, origins


def read_yaml(path: Path) -> dict:
    """The mapping a YAML file holds ({} when empty); every problem is a one-line ConfigError naming the file."""
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder; expected a YAML file such as experiments/quickstart.yaml")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the "
                          "config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML, {yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong and where (line and column, counted from 1)."""
    mark, context, context_mark = (getattr(error, k, None) for k in ("problem_mark", "context", "context_mark"))
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    started = f" ({context} at line {context_mark.line + 1})" if context and context_mark is not None else ""
    return f"{getattr(error, 'problem', None) or 'syntax error'}{where}{started}"


def merge(base: dict, override: dict) -> dict:
    """Deep merge; a component block whose `name` changes is replaced, not merged."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        renamed = isinstance(old, dict) and isinstance(value, dict) and old.get("name", value.get("name")) != \
            value.get("name", old.get("name"))
        if isinstance(old, dict) and isinstance(value, dict) and not renamed:
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(raw: dict, item: str) -> tuple[list[str], Any]:
    """Apply one `a.b.c=value` (value parsed as YAML) to the raw config dict; return (key parts, value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML, {yaml_problem(e)}; quote a value meant "
                          "as text, e.g. --set 'name=\"a: b\"'") from None
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
    node[parts[-1]] = value
    return parts, value


def _leaf_paths(node: dict, prefix: tuple = ()):
    """Key paths of the values of a nested dict that are not non-empty dicts themselves."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


def _holds(node, parts) -> bool:
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _dotted(parts) -> str:
    return ".".join(map(str, parts))


# ----------------------------------------------------------------------------- validation


def config_from_dict(raw: dict, where: str = "<dict>") -> Config:
    """The validated `Config` of a raw dict; errors are ConfigErrors that start with `where`."""
    try:
        config = _build_dataclass(Config, raw, prefix="")
        _validate(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return config


def _build_dataclass(cls, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(f"unknown key {prefix + str(unknown[0])!r}; accepted: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        value, hint = raw[name], hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build_dataclass(hint, value, prefix + name + ".")
        else:
            kwargs[name] = check_type(value, hint, prefix + name)
    return cls(**kwargs)


def check_type(value: Any, hint, key: str):
    """`value` if it fits the type annotation `hint` (ints widened to float where a float is wanted,
    lists where a tuple is: YAML has no tuples), else a ConfigError naming `key` and the expected type."""
    origin = typing.get_origin(hint) or hint
    as_is = {str: str, bool: bool, dict: dict, tuple: (list, tuple)}.get(origin)  # types taken unchanged
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return check_type(value, option, key)
            except ConfigError:
                pass
    elif hint is Any or (hint is type(None) and value is None):
        return value
    elif hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    elif hint is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    elif as_is is not None and isinstance(value, as_is):
        return value
    elif origin is list and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(hint) or (Any,)
        return [check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    name = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    raise ConfigError(f"{key} = {value!r} has the wrong type; expected {name}")


def _check_choice(value: str, choices, key: str):
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is not one of: {', '.join(choices)}")


def _check_tune(tune) -> None:
    if tune is None:
        return
    fraction = tune.get("fraction") if isinstance(tune, dict) else None
    if set(tune if isinstance(tune, dict) else ()) - {"fraction", "seed"} or not isinstance(fraction, float) \
            or not 0 < fraction < 1 or not isinstance(tune.get("seed", 0), int):
        raise ConfigError(f"data.tune = {tune!r}: expected {{fraction: F, seed: S}} with 0 < F < 1 and an integer S "
                          "(seed defaults to 0), e.g. {fraction: 0.1, seed: 0}")


def _named_block(block, registry, key: str) -> tuple[str, dict]:
    """(name, params) of a `{name: ..., params}` block."""
    if not isinstance(block, dict) or "name" not in block:
        raise ConfigError(f"{key} must be a mapping with a 'name'; choose one of: {', '.join(registry.names())}")
    return block["name"], {k: v for k, v in block.items() if k != "name"}


def component_blocks(config: Config) -> list[tuple[str, Any, str, dict, tuple[str, ...]]]:
    """(key, registry, name, params, reserved) of every component block of `config`: data.dataset,
    model, each loss term (without the criterion's weight and ramp) and each grouper. `reserved`
    parameters are set by the framework, never by a config."""
    # Imported here: the registries pull in torch and the builders; config parsing alone does not.
    from embedseg.data import DATASETS
    from embedseg.grouping import GROUPERS
    from embedseg.losses import LOSSES
    from embedseg.losses.criterion import CRITERION_KEYS
    from embedseg.models import MODELS

    blocks = [("data.dataset", DATASETS, *_named_block(config.data.dataset, DATASETS, "data.dataset"), ("split",)),
              ("model", MODELS, *_named_block(config.model, MODELS, "model"), ("num_classes",))]
    for term, block in config.loss.items():
        own = {k: v for k, v in block.items() if k not in CRITERION_KEYS} if isinstance(block, dict) else block
        blocks.append((f"loss.{term}", LOSSES, *_named_block(own, LOSSES, f"loss.{term}"), ()))
    for name, params in config.grouping.items():
        blocks.append((f"grouping.{name}", GROUPERS, name, params, ()))
    return blocks


def spatial_embedding(config: Config) -> bool:
    """Whether the run's embedding is trained by the spatial loss (positions and margins, not distances)."""
    return spatial_margins(config) > 0


def spatial_margins(config: Config) -> int:
    """The spatial loss's n_sigma (1: isotropic margin, 2: one along y and one along x); 0 without it."""
    return next((block.get("n_sigma", 1) for block in config.loss.values()
                 if isinstance(block, dict) and block.get("name") == "spatial"), 0)


def _check_spatial(config: Config) -> None:
    """The spatial loss reads embedding channels 0, 1 as positions (the model's coord_scale adds them)
    and the rest as its margins (embedseg.losses.spatial)."""
    for term, block in config.loss.items():
        if not (isinstance(block, dict) and block.get("name") == "spatial"):
            continue
        n_sigma, scale = block.get("n_sigma", 1), config.model.get("coord_scale", 0.0)
        dim = config.model.get("embedding_dim", 64)
        if not scale > 0:
            raise ConfigError(f"loss.{term} is spatial: model.coord_scale must be > 0 (positions in embedding "
                              f"channels 0, 1), got {scale}")
        if dim != 2 + n_sigma:
            raise ConfigError(f"loss.{term} is spatial with n_sigma {n_sigma}: model.embedding_dim must be "
                              f"{2 + n_sigma}, got {dim}")
        if block.get("center") == "medoid" and block.get("coord_scale") != scale:
            raise ConfigError(f"loss.{term}.coord_scale = {block.get('coord_scale')} must equal model.coord_scale = "
                              f"{scale} (the medoid's pixel position in embedding units)")


def _validate(config: Config) -> None:
    from embedseg.data import DATASETS
    from embedseg.grouping import GROUPERS
    from embedseg.losses import LOSSES, WeightRamp

    # a term set to null is left out: how a config drops a term its base declares
    config.loss = {term: block for term, block in config.loss.items() if block is not None}
    if not config.loss:
        raise ConfigError(f"loss needs at least one term; choose from: {', '.join(LOSSES.names())}")
    if not config.grouping:
        raise ConfigError(f"grouping needs at least one grouper; choose from: {', '.join(GROUPERS.names())}")
    for name, params in config.grouping.items():
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ConfigError(f"grouping.{name} must be a mapping of parameters")
        config.grouping[name] = params
    for term, block in config.loss.items():
        if isinstance(block, dict) and "weight" in block:
            check_type(block["weight"], float, f"loss.{term}.weight")
        if isinstance(block, dict) and "ramp" in block:
            try:
                WeightRamp.from_config(block["ramp"], f"loss.{term}.ramp")
            except ValueError as e:
                raise ConfigError(str(e)) from None
    for key, registry, name, params, reserved in component_blocks(config):
        registry.check_params(name, params, key, reserved)
    for name, params in config.grouping.items():
        _check_postprocess(params.get("postprocess"), f"grouping.{name}.postprocess")
    for split, params in config.data.split_params.items():
        if not isinstance(params, dict):
            raise ConfigError(f"data.split_params.{split} must be a mapping of dataset parameters")
        DATASETS.check_params(config.data.dataset["name"], params, f"data.split_params.{split}", ("split",))
    _check_tune(config.data.tune)
    _check_spatial(config)
    _check_choice(config.train.schedule, SCHEDULES, "train.schedule")
    _check_choice(config.train.device, DEVICES, "train.device")
    _check_choice(config.train.on_nonfinite, ON_NONFINITE, "train.on_nonfinite")
    if not config.eval.metrics:
        raise ConfigError(f"eval.metrics needs at least one metric; choose from: {', '.join(METRICS)}")
    for i, metric in enumerate(config.eval.metrics):
        _check_choice(metric, METRICS, f"eval.metrics[{i}]")
    for i, name in enumerate(config.eval.oracle):
        _check_choice(name, ORACLES, f"eval.oracle[{i}]")
    for key in ("iou_thresholds", "map_r_thresholds"):
        values = getattr(config.eval, key)
        if not values or any(not 0 < t <= 1 for t in values):
            raise ConfigError(f"eval.{key} = {values!r}: expected a non-empty list of IoU thresholds in (0, 1]")
    for key, value in (("train.steps", config.train.steps), ("train.batch_size", config.train.batch_size),
                       ("eval.max_dets", config.eval.max_dets)):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")


# ----------------------------------------------------------------------------- showing and saving


def resolved_dict(config: Config) -> dict:
    """`config.to_dict()` with every component block's unset builder parameters at their defaults."""
    out = config.to_dict()
    for key, registry, name, params, reserved in component_blocks(config):
        block = out
        for part in key.split(".", 1):  # "model", "data.dataset", "loss.<term>", "grouping.<grouper>"
            block = block[part]
        for param, spec in registry.parameters(name).items():
            if param not in block and param not in reserved and spec.default is not spec.empty:
                block[param] = _plain(spec.default)
    return out


def digest(data: dict) -> str:
    """16 hex digits of the SHA-256 of `data` as sorted JSON: a key for what a config decides."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _plain(value):
    """Tuples as lists, so that a builder's default prints as YAML."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


SHOW_ORIGIN_COLUMN = 60


def format_config(config: Config, origins: dict[str, str]) -> str:
    """The resolved config as YAML, every value followed by `# <origin>` (`default` where no file or
    --set gave it)."""
    lines: list[tuple[str, str | None]] = []

    def walk(node: dict, prefix: tuple, indent: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                lines.append((f"{indent}{key}:", None))
                walk(value, prefix + (key,), indent + "  ")
            else:
                text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False)
                text = text.removesuffix("\n...\n").strip()
                lines.append((f"{indent}{key}: {text}", origins.get(_dotted(prefix + (key,)), "default")))

    walk(resolved_dict(config), (), "")
    # origins in one column, except after the few lines longer than SHOW_ORIGIN_COLUMN
    width = min(SHOW_ORIGIN_COLUMN, max(len(text) for text, origin in lines if origin is not None))
    return "\n".join(text if origin is None else f"{text.ljust(width)}  # {origin}" for text, origin in lines)


def show_config(path: str | Path, overrides: list[str] = ()) -> str:
    """`format_config` of the config at `path` with `overrides` (`embedseg config show`)."""
    raw, origins = load_raw(path, overrides)
    return format_config(config_from_dict(raw, where=str(path)), origins)


def _check_postprocess(steps: list | None, key: str) -> None:
    """A grouper's `postprocess` list (its type is checked with the grouper's parameters): each entry
    a known step with its required params, and values the step accepts (it is built once to check them)."""
    from embedseg.grouping.registry import POSTPROCESS, step_block

    for i, entry in enumerate(steps or []):
        where = f"{key}[{i}]"
        try:
            name, params = step_block(entry, i)
        except TypeError as e:
            raise ConfigError(f"{key}: {e}") from None
        POSTPROCESS.check_params(name, params, where)
        for p, spec in POSTPROCESS.parameters(name).items():
            if spec.default is spec.empty and p not in params:
                raise ConfigError(f"{where}.{p} is missing; postprocess step {name!r} needs it")
        try:
            POSTPROCESS.get(name)(**params)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None


def dump_config(config: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
