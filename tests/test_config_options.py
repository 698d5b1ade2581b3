"""Options of the config sections that no other test exercises, each shown to change what a run does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedseg.config import ConfigError, load_config
from embedseg.engine import trainer
from embedseg.engine.checkpoint import load_checkpoint
from embedseg.engine.evaluator import compare_groupers
from embedseg.engine.run import build_network
from embedseg.engine.trainer import train


def test_train_split_is_the_split_trained_on(tmp_path, tiny_config_file):
    config = load_config(tiny_config_file, ["data.train_split=val", "data.split_params.val.num_images=1"])
    with pytest.raises(ValueError, match="the val split has 1 images, fewer than train.batch_size = 2"):
        train(config, tmp_path / "run")


def test_val_split_is_the_split_scored_during_training(tmp_path, tiny_config_file):
    config = load_config(tiny_config_file, ["data.val_split=holdout", "train.eval_every=1"])
    with pytest.raises(ValueError, match="split must be one of train, val, test, got 'holdout'"):
        train(config, tmp_path / "run")


def test_log_every_checkpoint_every_and_threads(tmp_path, tiny_config_file, monkeypatch):
    saved = []

    def save_checkpoint(path, **state):
        saved.append(state["step"])
        save(path, **state)

    save = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", save_checkpoint)
    config = load_config(tiny_config_file, ["train.steps=3", "train.log_every=2", "train.checkpoint_every=2",
                                            "train.threads=1"])
    try:
        run_dir = train(config, tmp_path / "run")
    finally:
        torch.set_num_threads(2)  # as tests/conftest.py set it
    assert [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()] == [2, 3]
    assert saved == [2, 3]  # last.pt at every 2nd step and at the end
    assert "threads 1" in (run_dir / "env.txt").read_text().splitlines()


def trained_parameters(config, run_dir) -> dict[str, np.ndarray]:
    state = load_checkpoint(train(config, run_dir) / "checkpoints" / "last.pt")["model"]
    return {name: state[name].numpy() for name, _ in build_network(config, 2).named_parameters()}


def test_weight_decay_and_grad_clip(tmp_path, tiny_config_file):
    """With the gradients clipped to a total norm of 1e-12, one AdamW step at lr 0.1 and weight
    decay 0.5 moves every weight w to w * (1 - 0.1 * 0.5) (the gradient step is at most 1e-5)."""
    one_step = ["train.steps=1", "train.warmup_steps=1", "train.weight_decay=0.5"]
    start = trained_parameters(load_config(tiny_config_file, one_step + ["train.lr=0.0"]), tmp_path / "a")
    clipped = trained_parameters(load_config(tiny_config_file, one_step + ["train.lr=0.1", "train.grad_clip=1.0e-12"]),
                                 tmp_path / "b")
    for name, weights in start.items():
        np.testing.assert_allclose(clipped[name], 0.95 * weights, atol=2e-5, err_msg=name)
    free = trained_parameters(load_config(tiny_config_file, one_step + ["train.lr=0.1"]), tmp_path / "c")
    assert max(np.abs(free[n] - 0.95 * w).max() for n, w in start.items()) > 0.01  # unclipped: a real step


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_device_cuda_without_a_gpu_is_an_error(tmp_path, tiny_config_file):
    with pytest.raises(ConfigError, match="train.device = 'cuda' but torch sees no CUDA device"):
        train(load_config(tiny_config_file, ["train.device=cuda"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # checked before the run directory is written


def test_num_overlays_keeps_that_many_images(tiny_config_file):
    config = load_config(tiny_config_file, ["eval.num_overlays=1"])
    model = build_network(config, 2).eval()
    _, run = compare_groupers(config, model, ["disc", "box"], ["components"], "val", progress=False)
    assert len(run.names) == 2 and len(run.images) == len(run.ground_truth) == len(run.predictions["components"]) == 1
