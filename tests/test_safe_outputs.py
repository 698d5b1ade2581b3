"""Nothing a user made is lost: atomic writes, `train --overwrite` replaces only a previous run and only
after the checks, a failed start leaves nothing behind, `predict` never overwrites one image's outputs
with another's, and metrics.json records what each score was scored on.

Every refused command is checked for its one-line error, exit status 2, and that every file that
existed before it is byte-identical afterwards (and that nothing was added)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embedseg.cli import main
from embedseg.data import SyntheticShapes
from embedseg.engine import prediction
from embedseg.engine.checkpoint import load_checkpoint
from embedseg.outputs import atomic_path, write_json, written_name
from embedseg.structures import Instances


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` by relative path ("folder" for folders)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"embedseg {command}: error: "), err
    return err


def train_run(config_file: Path, out: Path, *args: str) -> Path:
    assert main(["train", str(config_file), "--out", str(out), *args]) == 0
    return out


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]  # no temporary file left
    write_json(target, {"AP": 0.5})
    assert json.loads(target.read_text()) == {"AP": 0.5} and list(tmp_path.iterdir()) == [target]


def test_written_name_maps_a_leftover_temporary_file_back():
    assert written_name(f".last.pt.{os.getpid()}.tmp.pt") == "last.pt"
    assert written_name(".env.txt.12.tmp.txt") == "env.txt" and written_name("metrics.json.tmp") == "metrics.json"
    assert written_name("notes.txt") == "notes.txt" and written_name(".hidden") == ".hidden"


# ----------------------------------------------------------------------------- train --out / --overwrite


def test_overwrite_never_replaces_a_folder_of_a_users_files(tmp_path, tiny_config_file, capsys):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "data" / "points.csv").write_text("1,2\n")
    before = snapshot(tmp_path)
    for flags in ([], ["--overwrite"]):
        assert main(["train", str(tiny_config_file), "--out", str(out), "--no-eval", *flags]) == 2
        err = error_line(capsys, "train")
        assert "data/" in err and "notes.txt" in err and "never replaces it" in err
        assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_previous_run_only_after_the_checks(tmp_path, tiny_config_file, capsys):
    run = train_run(tiny_config_file, tmp_path / "run")  # with its evaluation: metrics.json, overlays_val.png
    (run / "checkpoints" / ".last.pt.999.tmp.pt").write_bytes(b"half a checkpoint")  # a killed save's leftover
    before = snapshot(tmp_path)
    # the train split cannot fill a batch: refused before anything of the previous run is touched
    assert main(["train", str(tiny_config_file), "--out", str(run), "--overwrite",
                 "--set", "data.dataset.num_images=1"]) == 2
    assert "fewer than train.batch_size" in error_line(capsys, "train")
    assert snapshot(tmp_path) == before
    assert main(["train", str(tiny_config_file), "--out", str(run), "--no-eval"]) == 2  # a run is there
    assert "--overwrite to replace it" in error_line(capsys, "train")

    train_run(tiny_config_file, run, "--overwrite", "--no-eval", "--set", "train.steps=1")
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1
    removed = ("metrics.json", "images_val.csv", "overlays_val.png", "checkpoints/.last.pt.999.tmp.pt")
    assert not any((run / name).exists() for name in removed)  # the previous run's files, not this one's


def test_overwrite_refuses_a_run_folder_that_holds_a_users_files(tmp_path, tiny_config_file, capsys):
    run = train_run(tiny_config_file, tmp_path / "run", "--no-eval")
    (run / "notes.txt").write_text("what I tried")
    (run / "checkpoints" / "keep_step2.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    before = snapshot(tmp_path)
    assert main(["train", str(tiny_config_file), "--out", str(run), "--overwrite"]) == 2
    err = error_line(capsys, "train")
    assert "checkpoints/keep_step2.pt" in err and "notes.txt" in err
    assert snapshot(tmp_path) == before


def test_a_run_that_stopped_before_its_first_checkpoint_needs_overwrite(tmp_path, tiny_config_file, capsys):
    run = train_run(tiny_config_file, tmp_path / "run", "--no-eval")
    (run / "checkpoints" / "last.pt").unlink()  # as a run that failed at its first steps leaves it
    before = snapshot(tmp_path)
    assert main(["train", str(tiny_config_file), "--out", str(run), "--no-eval"]) == 2
    assert "stopped before its first checkpoint; use --overwrite" in error_line(capsys, "train")
    assert main(["train", str(tiny_config_file), "--out", str(run), "--no-eval", "--resume"]) == 2
    assert "holds no checkpoints/last.pt" in error_line(capsys, "train")
    assert snapshot(tmp_path) == before
    train_run(tiny_config_file, run, "--no-eval", "--overwrite")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2


@pytest.mark.parametrize("override, message", [
    ("data.dataset.num_images=1", "fewer than train.batch_size"),
    pytest.param("train.device=cuda", "sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
])
def test_a_failed_start_leaves_nothing_that_blocks_a_rerun(tmp_path, tiny_config_file, capsys, override, message):
    out = tmp_path / "run"
    before = snapshot(tmp_path)
    assert main(["train", str(tiny_config_file), "--out", str(out), "--set", override]) == 2
    assert message in error_line(capsys, "train")
    assert snapshot(tmp_path) == before
    train_run(tiny_config_file, out, "--no-eval")  # a plain rerun: no --overwrite, no --resume
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2


def test_out_that_is_a_file_is_refused(tmp_path, tiny_config_file, capsys):
    out = tmp_path / "results.txt"
    out.write_text("mine")
    before = snapshot(tmp_path)
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert main(["train", str(tiny_config_file), "--out", str(out), *flags]) == 2
        assert "is a file, not a folder" in error_line(capsys, "train")
    assert main(["train", str(tiny_config_file), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no run to continue" in error_line(capsys, "train")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- predict


def write_images(tmp_path: Path) -> tuple[Path, Path]:
    """a/cell.png (64x64), a/cell.tif (48x40 grey) and b/cell.png (40x56): three images, one name."""
    a, b = tmp_path / "images" / "a", tmp_path / "images" / "b"
    a.mkdir(parents=True)
    b.mkdir()
    Image.fromarray(SyntheticShapes(split="val", num_images=1, size=64)[0]["image"]).save(a / "cell.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40), dtype=np.uint8)).save(a / "cell.tif")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(b / "cell.png")
    return a, b


def test_predict_gives_images_of_one_name_their_own_outputs(tmp_path, tiny_config_file, capsys):
    run = train_run(tiny_config_file, tmp_path / "run", "--no-eval")
    a, b = write_images(tmp_path)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(a), str(b), str(a / "cell.png"), "--out", str(out)]) == 0
    index = json.loads((out / "images.json").read_text())
    results = json.loads((out / "predictions.json").read_text())
    entries = {e["file_name"]: e for e in index["images"]}
    assert len(index["images"]) == 3 and set(entries) == {"a/cell.png", "a/cell.tif", "b/cell.png"}
    sizes = {"a/cell.png": (64, 64), "a/cell.tif": (48, 40), "b/cell.png": (40, 56)}
    for name, entry in entries.items():
        assert Path(entry["path"]) == (tmp_path / "images" / name).absolute()
        label_map = np.array(Image.open(out / entry["label_png"]))
        assert label_map.shape == sizes[name] == (entry["height"], entry["width"])  # each image's own output
        assert np.array(Image.open(out / entry["overlay_png"])).shape[:2] == sizes[name]
        ours = [r for r in results if r["image_id"] == entry["id"]]
        assert all(r["file_name"] == name for r in ours)
        restored = Instances.from_rle([r["segmentation"] for r in ours], [r["score"] for r in ours],
                                      [r["category_id"] for r in ours], image_size=sizes[name])
        np.testing.assert_array_equal(label_map, restored.to_label_map())
    assert len({e["label_png"] for e in entries.values()} | {e["overlay_png"] for e in entries.values()}) == 6


def test_predict_crash_part_way_leaves_no_partial_folder(tmp_path, tiny_config_file, capsys, monkeypatch):
    run = train_run(tiny_config_file, tmp_path / "run", "--no-eval")
    a, b = write_images(tmp_path)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(a), "--out", str(out)]) == 0
    read = prediction.read_image
    seen = []

    def fails_on_the_second_image(path):
        seen.append(path)
        if len(seen) == 2:
            raise ValueError(f"cannot read image {path}: truncated file")
        return read(path)

    monkeypatch.setattr(prediction, "read_image", fails_on_the_second_image)
    before = snapshot(tmp_path)
    for target, flags in ((tmp_path / "new", []), (out, ["--overwrite"])):
        seen.clear()
        assert main(["predict", str(run), str(a), str(b), "--out", str(target), *flags]) == 2
        assert "truncated file" in error_line(capsys, "predict")
        assert snapshot(tmp_path) == before  # no label PNG without predictions.json; the previous one intact


def test_predict_overwrite_replaces_only_a_previous_prediction(tmp_path, tiny_config_file, capsys):
    run = train_run(tiny_config_file, tmp_path / "run", "--no-eval")
    a, b = write_images(tmp_path)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(a), str(b), "--out", str(out)]) == 0
    (tmp_path / "file").write_text("mine")
    before = snapshot(tmp_path)
    assert main(["predict", str(run), str(b), "--out", str(out)]) == 2
    assert "not empty" in error_line(capsys, "predict")
    assert main(["predict", str(run), str(b), "--out", str(tmp_path / "file"), "--overwrite"]) == 2
    assert "is a file, not a folder" in error_line(capsys, "predict")
    assert snapshot(tmp_path) == before
    (out / "a" / "notes.txt").write_text("my notes on a")
    before = snapshot(tmp_path)
    assert main(["predict", str(run), str(b), "--out", str(out), "--overwrite"]) == 2
    assert "a/notes.txt" in error_line(capsys, "predict")
    assert snapshot(tmp_path) == before

    (out / "a" / "notes.txt").unlink()
    assert main(["predict", str(run), str(b), "--out", str(out), "--overwrite"]) == 0
    index = json.loads((out / "images.json").read_text())
    assert [e["file_name"] for e in index["images"]] == ["cell.png"]  # b alone: its folder is the common one
    assert not (out / "a").exists() and (out / "cell.png").is_file()  # the previous prediction's files are gone


# ----------------------------------------------------------------------------- metrics.json and overlays


def test_metrics_record_what_each_score_was_scored_on(tmp_path, tiny_config_file, capsys):
    run = train_run(tiny_config_file, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    on = metrics["val"]["meanshift"]["scored_on"]
    assert {k: on[k] for k in ("split", "images", "split_images", "image_names", "max_dets", "checkpoint", "step")} \
        == {"split": "val", "images": 2, "split_images": 2, "image_names": ["val_00000", "val_00001"],
            "max_dets": 1000, "checkpoint": "last.pt", "step": 2}
    assert on["grouper"]["name"] == "meanshift" and on["grouper"]["bandwidth"] == 1.0
    assert on["grouper"]["min_size"] == 5 and "random_state" in on["grouper"]  # the defaults are recorded too
    assert metrics["val"]["components"]["scored_on"]["grouper"]["min_size"] == 5
    overlays = run / "overlays_val.png"
    figure = (overlays.stat().st_ino, overlays.read_bytes())

    capsys.readouterr()
    assert main(["evaluate", str(run), "--max-images", "1"]) == 0
    printed = capsys.readouterr().out
    partial = json.loads((run / "metrics.json").read_text())
    assert partial["val"] == metrics["val"]  # the whole split's scores are kept
    assert partial["val[:1]"]["meanshift"]["scored_on"]["image_names"] == ["val_00000"]
    assert partial["val[:1]"]["components"]["scored_on"]["images"] == 1
    assert "'val[:1]'" in printed and "not redrawn" in printed
    assert (overlays.stat().st_ino, overlays.read_bytes()) == figure  # not rewritten without --overwrite

    assert main(["evaluate", str(run), "--grouping", "meanshift", "--set", "grouping.meanshift.bandwidth=2.0",
                 "--overwrite"]) == 0
    printed = capsys.readouterr().out
    again = json.loads((run / "metrics.json").read_text())
    assert again["val"]["meanshift"]["scored_on"]["grouper"]["bandwidth"] == 2.0
    assert again["val"]["components"] == metrics["val"]["components"]
    assert "note: metrics.json: val/meanshift replaced; the earlier entry was scored with another grouper\n" in printed
    assert overlays.stat().st_ino != figure[0]  # --overwrite redraws the figure
