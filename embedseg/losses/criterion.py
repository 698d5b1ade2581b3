"""Weighted sum of named loss terms, each weight optionally ramped over the training steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embedseg.losses.registry import LOSSES

# Keys of a loss block that belong to the criterion, not to the loss builder.
CRITERION_KEYS = ("weight", "ramp")


@dataclass(frozen=True)
class WeightRamp:
    """Linear ramp of a term's weight: `ramp: {start_factor: 0.0, start_step: 0, end_step: 500}`.

    factor(step) = start_factor                 for step <= start_step
                 = 1                            for step >= end_step
                 = linear in between;           the term's weight is weight * factor(step).
    `start_factor` (default 0) and `start_step` (default 0) may be left out; `end_step` is required.
    Steps count optimizer updates from 0 (the trainer passes the index of the current update).
    """

    end_step: int
    start_factor: float = 0.0
    start_step: int = 0

    def factor(self, step: int | None) -> float:
        """The weight factor at `step`; None (no training step, e.g. evaluation) gives the full weight."""
        if step is None or step >= self.end_step:
            return 1.0
        if step <= self.start_step:
            return self.start_factor
        t = (step - self.start_step) / (self.end_step - self.start_step)
        return self.start_factor + t * (1.0 - self.start_factor)

    @classmethod
    def from_config(cls, spec, key: str = "ramp") -> WeightRamp:
        """Parse and check a ramp mapping; errors name `key` and what was expected."""
        if not isinstance(spec, dict):
            message = f"{key} must be a mapping like {{start_factor: 0.0, start_step: 0, end_step: 500}}, got {spec!r}"
            raise ValueError(message)  # noqa: TRY004 (a config value: load_config turns ValueErrors into ConfigErrors)
        unknown = sorted(set(spec) - {"start_factor", "start_step", "end_step"})
        if unknown:
            raise ValueError(f"unknown key {key}.{unknown[0]}; accepted: end_step, start_factor, start_step")
        if "end_step" not in spec:
            raise ValueError(f"{key}.end_step is required (the step at which the full weight is reached)")

        def integer(name, default):
            value = spec.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}.{name} = {value!r}: expected an integer >= 0")
            return value

        start_step, end_step = integer("start_step", 0), integer("end_step", None)
        if end_step <= start_step:
            raise ValueError(f"{key}.end_step = {end_step} must be greater than {key}.start_step = {start_step}")
        start_factor = spec.get("start_factor", 0.0)
        if isinstance(start_factor, bool) or not isinstance(start_factor, (int, float)) or start_factor < 0:
            raise ValueError(f"{key}.start_factor = {start_factor!r}: expected a number >= 0")
        return cls(end_step=end_step, start_factor=float(start_factor), start_step=start_step)


SOURCES = ("outputs", "batch")


def is_entry(entry) -> bool:
    """Whether `entry` reads like "outputs.<key>" or "batch.<key>"."""
    return isinstance(entry, str) and entry.count(".") == 1 and entry.split(".")[0] in SOURCES


def check_inputs(name: str, term: nn.Module) -> None:
    """A term's `inputs` must be a tuple of entries (see embedseg.losses.registry)."""
    inputs = getattr(term, "inputs", None)
    if not isinstance(inputs, tuple) or not all(is_entry(entry) for entry in inputs):
        raise TypeError(f"loss term {name!r}: {type(term).__name__}.inputs must be a tuple like "
                        f"('outputs.embedding', 'batch.instances'), got {inputs!r}")


def term_arguments(name: str, term: nn.Module, outputs: dict, batch: dict) -> list:
    """The values `term.inputs` names, in its order."""
    sources = {"outputs": outputs, "batch": batch}
    arguments = []
    for entry in term.inputs:
        source, key = entry.split(".")
        if key not in sources[source]:
            raise KeyError(f"loss term {name!r} reads {source}[{key!r}], which is missing; {source} keys: "
                           f"{', '.join(map(repr, sources[source])) or 'none'}")
        arguments.append(sources[source][key])
    return arguments


class Criterion(nn.Module):
    """Combines named terms: total = sum_name weight_name(step) * term_name(*inputs)["loss"], each
    term called with the network outputs and batch entries its `inputs` names.

    weight_name(step) = weight_name * ramp_name.factor(step) for ramped terms, weight_name otherwise.
    Returns {"loss": total, name: weighted term, "name.key": each value a term reports,
    "weight.name": the weight used at this step} (all but "loss" detached, ready for logging).
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float],
                 ramps: dict[str, WeightRamp] | None = None):
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError(f"every loss term needs a weight: terms {sorted(terms)}, weights {sorted(weights)}")
        ramps = dict(ramps or {})
        if not set(ramps) <= set(terms):
            raise ValueError(f"ramps for unknown terms: {sorted(set(ramps) - set(terms))}; terms: {sorted(terms)}")
        for name, term in terms.items():
            check_inputs(name, term)
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.ramps = ramps

    def weight(self, name: str, step: int | None = None) -> float:
        ramp = self.ramps.get(name)
        return self.weights[name] * (ramp.factor(step) if ramp else 1.0)

    def forward(self, outputs: dict, batch: dict, step: int | None = None) -> dict[str, torch.Tensor]:
        result, total = {}, 0.0
        for name, term in self.terms.items():
            weight = self.weight(name, step)
            values = term(*term_arguments(name, term, outputs, batch))
            weighted = weight * values["loss"]
            total = total + weighted
            result[name] = weighted.detach()
            result.update({f"{name}.{k}": v.detach() for k, v in values.items() if k != "loss"})
            result[f"weight.{name}"] = torch.tensor(weight)
        result["loss"] = total
        return result


def build_criterion(spec: dict[str, dict]) -> Criterion:
    """`spec` maps a term name to {name: <registered loss>, weight: float, ramp: {...}, <loss params>}."""
    terms, weights, ramps = {}, {}, {}
    for term_name, block in spec.items():
        params = dict(block)
        weights[term_name] = float(params.pop("weight", 1.0))
        if "ramp" in params:
            ramps[term_name] = WeightRamp.from_config(params.pop("ramp"), f"loss.{term_name}.ramp")
        terms[term_name] = LOSSES.build(params.pop("name"), **params)
    return Criterion(terms, weights, ramps)
