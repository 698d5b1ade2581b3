"""Shared fixtures: the real data root (skipped with a reason when absent) and tiny configs."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("EMBEDSEG_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data sets not found at {root} (set EMBEDSEG_DATA to their folder)")
    return root


TINY_CONFIG = """
name: tiny
seed: 0
data:
  dataset: {name: synthetic, size: 64, num_images: 8, max_objects: 4, min_radius: 5, max_radius: 10}
  split_params: {val: {num_images: 2}}
model: {name: deeplab, backbone: resnet18, width: 0.125, output_stride: 16, embedding_dim: 8}
loss:
  embedding: {name: discriminative, weight: 1.0}
  semantic: {name: cross_entropy, weight: 1.0}
  seediness: {name: seed_distance, weight: 1.0}
train: {steps: 2, batch_size: 2, log_every: 1, warmup_steps: 1, checkpoint_every: 1, threads: 2}
grouping:
  meanshift: {bandwidth: 1.0, min_size: 5}
  components: {min_size: 5}
eval: {num_overlays: 2}
"""


@pytest.fixture
def tiny_config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture(scope="session")
def loss_references():
    """benchmarks/losses.py: its per-instance Python-loop versions of the losses are known answers."""
    spec = importlib.util.spec_from_file_location("benchmark_losses", REPO / "benchmarks" / "losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
