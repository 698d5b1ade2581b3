"""The loss registry.

A loss is an `nn.Module` registered with `@LOSSES.register("name")`. Its forward returns a dict
with the scalar "loss" (plus named diagnostic values), and its class attribute `inputs` names what
the training criterion passes to forward, in forward's order: "outputs.<key>" for a network output
(embedding, seediness, semantic), "batch.<key>" for an entry of the batch (instances, semantic).
"""
from __future__ import annotations

from embedseg.registry import Registry

LOSSES = Registry("loss")
