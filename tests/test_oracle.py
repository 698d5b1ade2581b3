"""Oracle inputs (eval.oracle) put the ground truth in place of network outputs, and the
oracle_centres grouper clusters around the true instances' mean embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from embedseg.config import ConfigError, load_config
from embedseg.engine.oracle import apply_oracle
from embedseg.grouping import GROUPERS, build_grouper, default_groupers


def sample_and_outputs():
    instances = np.array([[0, 1, 1], [2, 2, -1]], np.int32)
    semantic = np.array([[0, 1, 1], [2, 2, -1]], np.int64)
    probabilities = np.full((3, 2, 3), 1 / 3, np.float32)  # the network is undecided everywhere
    embedding = np.array([[[0.0, 0.0, 0.1], [5.0, 5.1, 9.0]]], np.float32)  # D = 1
    return {"instances": instances, "semantic": semantic}, {"semantic": probabilities, "embedding": embedding}


def test_foreground_oracle_gives_the_true_classes_one_hot():
    sample, outputs = sample_and_outputs()
    semantic = apply_oracle(["foreground"], outputs, sample)["semantic"]
    np.testing.assert_array_equal(semantic.argmax(0), [[0, 1, 1], [2, 2, 0]])  # ignored counts as background
    assert set(np.unique(semantic)) == {0.0, 1.0} and np.all(semantic.sum(0) == 1)
    assert outputs["semantic"][0, 0, 0] == pytest.approx(1 / 3)  # the network's outputs are left as they were
    assert "instances" not in apply_oracle(["foreground"], outputs, sample)


def test_centres_oracle_groups_the_true_foreground_around_the_true_centres():
    sample, outputs = sample_and_outputs()
    outputs = apply_oracle(["foreground", "instances"], outputs, sample)
    pred = build_grouper("oracle_centres", threshold=1.0)(outputs)
    np.testing.assert_array_equal(pred.to_label_map() > 0, sample["instances"] > 0)
    assert sorted(int(m.sum()) for m in pred.masks) == [2, 2] and list(pred.scores) == [1.0, 1.0]
    # instance 1 spread out (embeddings 0 and 3, centre 1.5): both pixels lie beyond the threshold, none joins
    outputs["embedding"][0, 0, 2] = 3.0
    pred = build_grouper("oracle_centres", threshold=1.0)(outputs)
    assert len(pred) == 1 and pred.masks[0].sum() == 2 and pred.masks[0][1, :2].all()


def test_centres_oracle_needs_the_instances():
    _, outputs = sample_and_outputs()
    with pytest.raises(KeyError, match="eval.oracle"):
        build_grouper("oracle_centres")(outputs)


def test_oracle_groupers_are_not_among_every_grouper_and_bad_names_are_refused(tiny_config_file):
    assert GROUPERS.get("oracle_centres").oracle and "oracle_centres" not in default_groupers()
    with pytest.raises(ConfigError, match=r"eval.oracle\[0\]"):
        load_config(tiny_config_file, ["eval.oracle=[truth]"])
