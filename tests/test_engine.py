"""Training, checkpoints, resume, evaluation and the CLI on a tiny config."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from embedseg.cli import main
from embedseg.config import load_config
from embedseg.data import SyntheticShapes
from embedseg.engine import trainer
from embedseg.engine.checkpoint import load_checkpoint
from embedseg.engine.trainer import lr_factor, train
from embedseg.structures import Instances


def test_two_iteration_training_run(tmp_path, tiny_config_file):
    run_dir = train(load_config(tiny_config_file), tmp_path / "run")
    assert (run_dir / "config.yaml").exists() and (run_dir / "env.txt").exists()
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert {"embedding.var", "embedding.dist", "semantic", "seediness", "images_per_s"} <= set(records[0])
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ckpt["step"] == 2 and ckpt["num_classes"] == 2 and ckpt["config"]["name"] == "tiny"


def test_refuses_to_overwrite_and_resumes(tmp_path, tiny_config_file):
    config = load_config(tiny_config_file)
    run_dir = train(config, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, run_dir)
    train(config, run_dir, resume=True)  # a finished run: nothing left to train
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2


def test_training_is_deterministic_for_a_seed(tmp_path, tiny_config_file):
    config = load_config(tiny_config_file)
    a = load_checkpoint(train(config, tmp_path / "a") / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(train(config, tmp_path / "b") / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_channels_last_training_follows_the_plain_one(tmp_path, tiny_config_file):
    config = load_config(tiny_config_file)
    plain = [json.loads(line) for line in (train(config, tmp_path / "a") / "log.jsonl").read_text().splitlines()]
    config.train.channels_last = True
    fast = [json.loads(line) for line in (train(config, tmp_path / "b") / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in fast] == pytest.approx([r["loss"] for r in plain], rel=1e-3)


def test_bf16_training_follows_the_float32_one(tmp_path, tiny_config_file, monkeypatch, caplog):
    config = load_config(tiny_config_file)
    plain = [json.loads(line) for line in (train(config, tmp_path / "a") / "log.jsonl").read_text().splitlines()]
    config.train.bf16 = True
    monkeypatch.setattr(trainer, "fast_bf16", lambda device: False)  # as on a CPU without AVX512-BF16 / AMX
    mixed = [json.loads(line) for line in (train(config, tmp_path / "b") / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in mixed] == pytest.approx([r["loss"] for r in plain], rel=0.05)
    assert [r["loss"] for r in mixed] != [r["loss"] for r in plain]  # the forward did run in bfloat16
    assert "no native bfloat16" in caplog.text


def test_fast_bf16_reads_the_cpu_flags(monkeypatch):
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: False, raising=False)
    assert not trainer.fast_bf16(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert trainer.fast_bf16(torch.device("cpu"))


def test_eval_every_scores_val_and_keeps_the_best_checkpoint(tmp_path, tiny_config_file):
    config = load_config(tiny_config_file)
    config.train.eval_every = 1  # at step 1 of 2 (the last step is scored by evaluate, not here)
    run_dir = train(config, tmp_path / "run")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    scored = [r for r in records if "val_AP" in r]
    assert [r["step"] for r in scored] == [1] and 0.0 <= scored[0]["val_AP"] <= 1.0
    assert (run_dir / "checkpoints" / "best.pt").exists()


def test_lr_schedule():
    assert lr_factor(0, 100, 10, "poly") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "poly") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "constant") == 1.0


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_train_evaluate_predict(tmp_path, tiny_config_file, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config_file), "--out", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "| meanshift |" in printed and "| components |" in printed
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["val"]) == {"meanshift", "components"}
    assert 0.0 <= metrics["val"]["meanshift"]["AP"] <= 1.0
    assert (run_dir / "overlays_val.png").exists()
    per_image = read_csv(run_dir / "images_val.csv")
    for grouper in ("meanshift", "components"):
        rows = [r for r in per_image if r["grouper"] == grouper]
        assert len(rows) == len(per_image) // 2 and all(0 <= float(r["intensity"]) <= 1 for r in rows)
        assert np.mean([int(r["instances"]) for r in rows]) == pytest.approx(metrics["val"][grouper]["instances_per_image"])

    assert main(["evaluate", str(run_dir), "--grouping", "components", "--split", "test",
                 "--set", "data.split_params.test.num_images=2", "--set", "eval.metrics=[coco,matching_ap]"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"} and set(metrics["test"]) == {"components"}
    per_image = read_csv(run_dir / "images_test.csv")  # the split's matching AP is the mean over its images
    assert len(per_image) == 2 and {"num_gt", "num_pred", "missed_merged", "missed_not_found"} <= set(per_image[0])
    assert np.mean([float(r["match_AP50"]) for r in per_image]) == pytest.approx(metrics["test"]["components"]["match_AP50"])
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--grouping", "components", "--split", "test", "--max-images", "1",
                 "--set", "data.split_params.test.num_images=2", "--set", "eval.metrics=[map_r]",
                 "--set", "eval.map_r_thresholds=[0.5,0.7]"]) == 0
    assert "map_r on test (1 images)" in capsys.readouterr().out  # eval.max_images
    assert len(read_csv(run_dir / "images_test_first1.csv")) == 1 and len(read_csv(run_dir / "images_test.csv")) == 2
    partial = json.loads((run_dir / "metrics.json").read_text())
    assert partial["test"] == metrics["test"]  # the first image alone is stored apart from the whole split
    scores = partial["test[:1]"]["components"]
    assert {"mAPr50", "mAPr70", "mAPr"} <= set(scores) and "mAPr60" not in scores  # eval.map_r_thresholds

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):  # odd sizes, and images like the training ones (where even 2 steps find something)
        rgb = np.random.default_rng(i).integers(0, 255, (40 + i, 53, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(images / f"im{i}.png")
        Image.fromarray(SyntheticShapes(split="val", num_images=2, size=64)[i]["image"]).save(images / f"shapes{i}.png")
    out = tmp_path / "pred"
    assert main(["predict", str(run_dir), str(images), "--out", str(out)]) == 0
    assert_predictions_describe_the_images(out, images, class_names=SyntheticShapes.class_names)
    # A second predict into the same folder is refused: nothing a user made is overwritten.
    assert main(["predict", str(run_dir), str(images), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err

    # predict reads images as training and evaluation do: a 16-bit image is seen as its 8-bit version
    microscopy = tmp_path / "microscopy"
    microscopy.mkdir()
    grey16 = np.random.default_rng(2).integers(1000, 5000, (40, 53)).astype(np.uint16)
    Image.fromarray(grey16).save(microscopy / "grey16.tif")
    grey8 = np.round((grey16 - grey16.min()) / (grey16.max() - grey16.min()) * 255).astype(np.uint8)
    Image.fromarray(grey8).save(microscopy / "grey8.png")
    out = tmp_path / "pred16"
    assert main(["predict", str(run_dir), str(microscopy), "--out", str(out)]) == 0
    for suffix in ("_overlay.png", ".png"):
        grey16_out, grey8_out = (np.array(Image.open(out / f"{stem}{suffix}")) for stem in ("grey16", "grey8"))
        assert np.array_equal(grey16_out, grey8_out), suffix


def assert_predictions_describe_the_images(out, images, class_names):
    """`embedseg predict`'s outputs: per image a label map and an overlay of its size, and COCO results
    that give back exactly that label map."""
    index = json.loads((out / "images.json").read_text())
    assert [c["name"] for c in index["categories"]] == class_names
    results = json.loads((out / "predictions.json").read_text())
    assert len(index["images"]) == len(list(images.iterdir())) and results  # some instance to check
    for entry in index["images"]:
        image = np.array(Image.open(images / entry["file_name"]))
        assert (entry["height"], entry["width"]) == image.shape[:2]
        stem = entry["file_name"].removesuffix(".png")
        label_map = np.array(Image.open(out / f"{stem}.png"))
        assert label_map.shape == image.shape[:2]
        ours = [r for r in results if r["image_id"] == entry["id"]]
        assert all(r["file_name"] == entry["file_name"] and 0.0 <= r["score"] <= 1.0 for r in ours)
        restored = Instances.from_rle([r["segmentation"] for r in ours], [r["score"] for r in ours],
                                      [r["category_id"] for r in ours], image_size=image.shape[:2])
        np.testing.assert_array_equal(label_map, restored.to_label_map())
        overlay = np.array(Image.open(out / f"{stem}_overlay.png").convert("RGB")).astype(int)
        assert overlay.shape == image.shape
        assert np.abs(overlay - image)[label_map == 0].max() <= 1  # background is left as it was


def test_cli_errors_name_the_problem(tmp_path, tiny_config_file, capsys):
    assert main(["train", str(tiny_config_file), "--set", "train.stepz=1", "--out", str(tmp_path / "r")]) == 2
    assert "unknown key 'train.stepz'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_data_synth_writes_folder_layout(tmp_path):
    from embedseg.data import FolderDataset

    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--num-images", "5", "--size", "64"]) == 0
    disk = FolderDataset(str(tmp_path / "synth"), split="train")
    assert len(disk) == 5 and disk.class_names == SyntheticShapes.class_names
    np.testing.assert_array_equal(disk[3]["instances"], SyntheticShapes(num_images=5, size=64)[3]["instances"])
    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--num-images", "5", "--size", "64"]) == 2


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "embedseg", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "train" in result.stdout
