"""The dataset registry. A dataset is a class or function registered with
`@DATASETS.register("name")`, called as `builder(split=..., **params)` with the params of a
config's `data.dataset` block, that returns samples of the contract in `embedseg.data.base`."""
from __future__ import annotations

from embedseg.registry import Registry

DATASETS = Registry("dataset")


def build_dataset(name: str, split: str, **params):
    """Dataset `name` for `split`; an unknown name or parameter fails with the accepted ones."""
    return DATASETS.build(name, split=split, **params)
