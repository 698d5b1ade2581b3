"""Weighted sum of named loss terms."""
from __future__ import annotations

import torch
from torch import nn

from embedseg.losses.base import LOSSES


class Criterion(nn.Module):
    """Combines named terms: total = sum_name weight_name * term_name(outputs, batch)["loss"].

    Returns {"loss": total, name: weighted term, "name.key": each value a term reports}.
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError(f"every loss term needs a weight: terms {sorted(terms)}, weights {sorted(weights)}")
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)

    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        result, total = {}, 0.0
        for name, term in self.terms.items():
            values = term.compute(outputs, batch)
            weighted = self.weights[name] * values["loss"]
            total = total + weighted
            result[name] = weighted.detach()
            result.update({f"{name}.{k}": v.detach() for k, v in values.items() if k != "loss"})
        result["loss"] = total
        return result


def build_criterion(spec: dict[str, dict]) -> Criterion:
    """`spec` maps a term name to {name: <registered loss>, weight: float, <loss params>}."""
    terms, weights = {}, {}
    for term_name, block in spec.items():
        params = dict(block)
        weights[term_name] = float(params.pop("weight", 1.0))
        terms[term_name] = LOSSES.build(params.pop("name"), **params)
    return Criterion(terms, weights)
