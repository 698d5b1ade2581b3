"""The grouping registries: GROUPERS (embeddings -> masks) and POSTPROCESS (masks -> masks).

    grouper = build_grouper("meanshift", bandwidth=1.25, min_size=25,
                            postprocess=["split_disconnected", {"name": "drop_small", "min_size": 25}])

A grouper is a `Grouper` subclass (embedseg.grouping.base) registered with
`@GROUPERS.register("name")`; a post-processing step is a class registered with
`@POSTPROCESS.register("name")` whose instances map (masks [K, H, W], scores [K], outputs) to new
(masks, scores) (embedseg.grouping.postprocess). The `postprocess` list of a grouper names its
steps in the order they run; each entry is a step name, or a mapping {name: step, <params>}.
"""
from __future__ import annotations

from embedseg.registry import Registry

GROUPERS = Registry("grouper")
POSTPROCESS = Registry("postprocess step")


def step_block(entry, index: int) -> tuple[str, dict]:
    """(name, params) of one entry of a `postprocess` list: a step name or {name: step, <params>}."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        return entry["name"], {k: v for k, v in entry.items() if k != "name"}
    raise TypeError(f"postprocess[{index}] = {entry!r}: expected a step name or a mapping with a 'name'; "
                     f"choices: {', '.join(POSTPROCESS.names())}")


def build_postprocess(steps: list[str | dict] | None = None) -> list:
    """The post-processing steps of `steps` (names or {name: step, <params>} mappings), in order."""
    if steps is None:
        return []
    if not isinstance(steps, (list, tuple)):
        raise TypeError(f"postprocess must be a list of steps, got {steps!r}")
    chain = []
    for i, entry in enumerate(steps):
        name, params = step_block(entry, i)
        chain.append(POSTPROCESS.build(name, **params))
    return chain


def build_grouper(name: str, postprocess: list[str | dict] | None = None, **params):
    """The grouper `name` with its parameters, followed by the `postprocess` steps."""
    return GROUPERS.build(name, postprocess=postprocess, **params)


def default_groupers(first: list[str] = (), spatial: bool = False) -> list[str]:
    """`first`, then every other registered grouper that needs no ground truth and reads the outputs of
    a run's embedding (`spatial`: trained with the spatial loss): what "every grouper" means."""
    def fits(cls) -> bool:
        return not cls.oracle and cls.spatial in (None, spatial)
    return [*first, *(n for n in GROUPERS.names() if n not in first and fits(GROUPERS.get(n)))]
