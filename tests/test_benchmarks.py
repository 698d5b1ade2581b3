"""The benchmark scripts run end to end with tiny sizes (their timings are never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_loss_benchmark_runs_and_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--instances", "2", "3", "--batch", "1", "--size", "16", "--dim", "4", "--repeats", "1",
            "--threads", "1", "--no-memory", "--json", str(out)]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "losses.py"), *args], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["loss"], r["instances"]) for r in rows] == [
        ("discriminative", 2), ("metric", 2), ("spatial", 2), ("discriminative", 3), ("metric", 3), ("spatial", 3)]
    for r in rows:
        assert r["speedup"] == r["loop_s"] / r["vectorised_s"]
    assert "| discriminative | 3 |" in result.stdout


def test_evaluation_benchmark_runs_one_subprocess_per_image_count(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--images", "1", "3", "--size", "64", "--instances", "4", "--json", str(out)]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "evaluation.py"), *args], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["images"] for r in rows] == [1, 3]
    assert all(r["peak_rss_mb"] > 0 and 0 <= r["AP"] <= 1 for r in rows)
    assert "| 3 |" in result.stdout


TINY_TRAINING = """
data:
  dataset: {name: synthetic, size: 32, num_images: 8, min_objects: 1, max_objects: 2, min_radius: 3, max_radius: 6}
model: {name: deeplab, backbone: resnet18, width: 0.125, output_stride: 16, embedding_dim: 4}
train: {batch_size: 2}
"""


def test_data_benchmark_rates_the_loader_per_worker_count_beside_the_model(tmp_path):
    config, no_data, out = tmp_path / "tiny.yaml", tmp_path / "no_data.yaml", tmp_path / "bench.json"
    config.write_text(TINY_TRAINING)
    no_data.write_text("data:\n  dataset: {name: folder, root: nowhere}\n")
    args = ["--configs", str(config), str(no_data), "--workers", "0", "1", "--batches", "2",
            "--steps", "1", "--threads", "1", "--json", str(out)]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "data.py"), *args], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["workers"], r["batches"]) for r in rows] == [(str(config), 0, 2), (str(config), 1, 2)]
    assert rows[0]["model_images_per_s"] == rows[1]["model_images_per_s"] > 0  # one model rate per config
    assert all(r["data_images_per_s"] > 0 for r in rows)
    assert f"{no_data}: skipped (FolderDataset: data root folder" in result.stdout


def test_grouping_benchmark_times_every_registered_grouper_on_its_planted_case(tmp_path):
    from embedseg.grouping import GROUPERS

    out = tmp_path / "bench.json"
    args = ["--cases", "64x4", "--repeats", "1", "--threads", "1", "--sklearn-cases", "64x4", "--sklearn-seeds",
            "peaks", "--hdbscan-cases", "64x4", "--json", str(out)]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "grouping.py"), *args], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    extra = ["spatial, join_threshold 0.2", "sklearn MeanShift (all pixels, seediness peaks)", "hdbscan (all pixels)"]
    assert sorted(rows) == sorted([*GROUPERS.names(), *extra])
    # well-separated planted instances: joining finds nothing to join
    for name in ("meanshift", "seeds", "spatial", "spatial, join_threshold 0.2", "oracle_centres"):
        assert rows[name]["AP"] == 1.0, name
    assert "| 64x64 | 4 |" in result.stdout
