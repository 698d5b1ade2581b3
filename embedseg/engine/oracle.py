"""Ground truth in place of a network output, for ablations that ask how much of the error is the
foreground and how much the grouping (De Brabandere et al. 2017, Table 2).

`eval.oracle` names what is replaced before the groupers run:

- "foreground": the class probabilities become the one-hot ground-truth classes (ignored pixels
  count as background), so every grouper sees the true foreground and the true class of each pixel;
- "instances": the ground-truth label map is added to the outputs as "instances", for the
  `oracle_centres` grouper, which clusters around the true instances' mean embeddings.
"""
from __future__ import annotations

import numpy as np

ORACLES = ("foreground", "instances")


def apply_oracle(oracle, outputs: dict, sample: dict) -> dict:
    """`outputs` of one image with the ground truth of `sample` put in for every name in `oracle`."""
    if not oracle:
        return outputs
    outputs = dict(outputs)
    if "foreground" in oracle:
        probabilities = np.asarray(outputs["semantic"])
        classes = np.clip(np.asarray(sample["semantic"]), 0, None)
        one_hot = np.zeros(probabilities.shape, np.float32)
        np.put_along_axis(one_hot, classes[None], 1.0, axis=0)
        outputs["semantic"] = one_hot
    if "instances" in oracle:
        outputs["instances"] = np.asarray(sample["instances"])
    return outputs
