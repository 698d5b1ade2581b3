"""Every anticipated bad input ends in one line `embedseg <cmd>: error: ...`, exit status 2, and leaves
every file that existed before byte-identical (and, unless a case says so, adds none).

The kinds of bad input, one case each (a case's id in brackets):

 1. a truncated checkpoint for `evaluate`, `predict` and `train --resume`  [truncated-checkpoint-*]
 2. an empty checkpoint for `evaluate`, `predict` and `train --resume`  [empty-checkpoint-*]
 3. `--set train.steps=[1,`: a YAML syntax error in an override  [set-yaml-syntax]
 4. `--set nokey=1`: an unknown key  [set-unknown-key]
 5. `--set train=3`: a value in place of a section  [set-value-for-section]
 6. `--set train.steps`: no `=`  [set-without-value]
 7. `--set train.steps=many`: a value of the wrong type  [set-wrong-type]
 8. a config path that is a folder  [config-is-folder]
 9. a config file that does not exist  [config-missing]
10. a config file that is not UTF-8 (the message names the file)  [config-not-utf8]
11. a YAML syntax error in a config file (the message names the file and the line)  [config-yaml-syntax]
12. `train.device: cuda` without a GPU, refused before the run folder is written  [device-cuda-without-gpu]
13. `train --out` that is a file  [out-is-a-file]
14. a COCO json with a flat polygon list  [coco-flat-polygon]
15. a COCO annotation without `category_id`  [coco-no-category-id]
16. a COCO image without `file_name`  [coco-no-file-name]
17. a COCO annotation of an image id the json does not list  [coco-unknown-image-id]
18. a COCO `file_name` that is absolute, or climbs out with `../`  [coco-absolute-file-name, coco-dotdot-file-name]
19. a COCO json that is not valid JSON  [coco-invalid-json]
20. an image whose header claims 40000 x 40000 pixels, in training and in `predict`  [pixel-limit-*]
21. images of different sizes in a training split without `data.crop_size`  [sizes-differ-without-crop]
22. `evaluate --set model.embedding_dim=4`: a config that no longer fits the checkpoint's weights  [config-does-not-fit-weights]
23. a run whose config.yaml was edited so that it no longer fits its weights  [edited-run-config]
24. a truncated PNG met during training with `num_workers: 2` (the run folder it started stays; nothing
    that existed before changes)  [corrupt-image-in-worker]
25. an image file that is not an image (an empty .png) in a training split, refused before the first step  [not-an-image-in-split]
26. `predict` on a missing image path, a folder with no images, a file that is not an image  [predict-*]
27. `evaluate --split nosuchsplit`  [evaluate-unknown-split]
28. `evaluate --grouping nosuchgrouper`, `predict --grouping nosuchgrouper`  [*-unknown-grouper]
29. `compare-grouping --groupers x`  [compare-unknown-grouper]
30. `evaluate` on a folder that is not a run  [evaluate-not-a-run]
31. `data check` on a missing root  [data-check-missing-root]
32. `data synth --out` onto a split folder holding a user's files, with and without --overwrite  [synth-onto-user-files*]
33. `train --resume` after the training data changed: refused, env.txt and log.jsonl untouched  [resume-after-data-changed]
34. `train --resume` with a config that changes the training  [resume-with-another-config]
35. `data check --param` without `=`  [data-check-param-without-value]
36. a run's tuned.yaml (written by `embedseg tune`) with a YAML syntax error  [tuned-yaml-broken]
37. a suite.yaml with a YAML syntax error (`embedseg table`)  [suite-yaml-broken]
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from PIL import Image

from embedseg.cli import main
from embedseg.data import SyntheticShapes, write_dataset


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` by relative path ("folder" for folders)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------- inputs the cases are made of


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run of the tiny config trained for one step (copied into each case's folder)."""
    folder = tmp_path_factory.mktemp("trained")
    config = folder / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    assert main(["train", str(config), "--out", str(folder / "run"), "--no-eval", "--set", "train.steps=1"]) == 0
    return folder / "run"


@dataclass
class Place:
    """A case's folder, with the trained run at hand."""

    tmp: Path
    trained: Path

    def run(self) -> Path:
        run = self.tmp / "run"
        shutil.copytree(self.trained, run)
        return run

    def config(self, text: str = TINY_CONFIG, name: str = "tiny.yaml") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def folder_data(self, num_images: int = 4, size: int = 32) -> Path:
        """A folder data set of synthetic images (train and val) and a config that trains on it."""
        for split in ("train", "val"):
            write_dataset(SyntheticShapes(split=split, num_images=num_images, size=size, min_objects=1, max_objects=3, min_radius=3,
                                          max_radius=6), self.tmp / "data", split)
        return self.config(TINY_CONFIG.replace(
            "dataset: {name: synthetic, size: 64, num_images: 8, max_objects: 4, min_radius: 5, max_radius: 10}",
            f"dataset: {{name: folder, root: {self.tmp / 'data'}}}").replace("  split_params: {val: {num_images: 2}}\n",
                                                                             ""))

    def coco(self, edit: Callable[[dict], None] | None = None, text: str | None = None) -> Path:
        """A COCO data set of two 32 x 32 images with one square each, its json changed by `edit`
        (or replaced by `text`), and a config that trains on it."""
        folder = self.tmp / "coco"
        (folder / "train").mkdir(parents=True)
        for i in (1, 2):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / "train" / f"im{i}.png")
        square = [[4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]]
        coco = {"images": [{"id": i, "file_name": f"im{i}.png", "height": 32, "width": 32} for i in (1, 2)],
                "annotations": [{"id": i, "image_id": i, "category_id": 1, "segmentation": square, "iscrowd": 0,
                                 "area": 256.0, "bbox": [4, 4, 16, 16]} for i in (1, 2)],
                "categories": [{"id": 1, "name": "square"}]}
        if edit is not None:
            edit(coco)
        (folder / "train.json").write_text(json.dumps(coco) if text is None else text)
        return self.config(TINY_CONFIG.replace(
            "dataset: {name: synthetic, size: 64, num_images: 8, max_objects: 4, min_radius: 5, max_radius: 10}",
            f"dataset: {{name: coco, root: {folder}, annotations: '{{split}}.json', images: '{{split}}'}}")
            .replace("  split_params: {val: {num_images: 2}}\n", ""))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG file whose header claims `width` x `height` grey pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    command: str  # as the error line names it
    make: Callable[[Place], list[str]]  # writes the case's inputs, returns the command line
    expected: tuple[str, ...]  # parts of the error line
    adds_files: bool = False  # the command may add files (never change or remove one)


CASES: list[Case] = []


def case(id: str, command: str, *expected: str, adds_files: bool = False):
    def register(make):
        CASES.append(Case(id, command, make, expected, adds_files))
        return make
    return register


def bad_checkpoint(place: Place, kind: str) -> Path:
    run = place.run()
    checkpoint = run / "checkpoints" / "last.pt"
    if kind == "truncated":
        truncate(checkpoint, 0.5)
    else:
        checkpoint.write_bytes(b"")
    return run


for kind, reason in (("truncated", "truncated or not a torch checkpoint"), ("empty", "is empty")):
    case(f"{kind}-checkpoint-evaluate", "evaluate", "last.pt", reason)(
        lambda p, kind=kind: ["evaluate", str(bad_checkpoint(p, kind))])
    case(f"{kind}-checkpoint-predict", "predict", "last.pt", reason)(
        lambda p, kind=kind: ["predict", str(bad_checkpoint(p, kind)), str(png_header_only(p.tmp / "a.png", 8, 8)),
                              "--out", str(p.tmp / "pred")])
    case(f"{kind}-checkpoint-resume", "train", "last.pt", reason)(
        lambda p, kind=kind: ["train", str(bad_checkpoint(p, kind) / "config.yaml"), "--out", str(p.tmp / "run"),
                              "--resume"])


@case("set-yaml-syntax", "train", "--set 'train.steps=[1,'", "not valid YAML")
def _(p):
    return ["train", str(p.config()), "--out", str(p.tmp / "run"), "--set", "train.steps=[1,"]


@case("set-unknown-key", "train", "unknown key 'nokey'")
def _(p):
    return ["train", str(p.config()), "--out", str(p.tmp / "run"), "--set", "nokey=1"]


@case("set-value-for-section", "train", "train must be a mapping")
def _(p):
    return ["train", str(p.config()), "--out", str(p.tmp / "run"), "--set", "train=3"]


@case("set-without-value", "train", "--set 'train.steps'", "expected KEY=VALUE")
def _(p):
    return ["train", str(p.config()), "--out", str(p.tmp / "run"), "--set", "train.steps"]


@case("set-wrong-type", "train", "train.steps = 'many'", "expected int")
def _(p):
    return ["train", str(p.config()), "--out", str(p.tmp / "run"), "--set", "train.steps=many"]


@case("config-is-folder", "train", "is a folder", "expected a YAML file")
def _(p):
    (p.tmp / "configs").mkdir()
    return ["train", str(p.tmp / "configs"), "--out", str(p.tmp / "run")]


@case("config-missing", "config show", "nothere.yaml", "does not exist")
def _(p):
    return ["config", "show", str(p.tmp / "nothere.yaml")]


@case("config-not-utf8", "train", "latin.yaml", "not UTF-8")
def _(p):
    (p.tmp / "latin.yaml").write_bytes(TINY_CONFIG.replace("name: tiny", "name: caf\xe9").encode("latin-1"))
    return ["train", str(p.tmp / "latin.yaml"), "--out", str(p.tmp / "run")]


@case("config-yaml-syntax", "train", "broken.yaml", "line 3", "not valid YAML")
def _(p):
    return ["train", str(p.config("name: broken\nseed: 0\ntrain: {steps: 2\n", "broken.yaml")), "--out",
            str(p.tmp / "run")]


@case("device-cuda-without-gpu", "train", "train.device = 'cuda'", "no CUDA device")
def _(p):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    return ["train", str(p.config()), "--out", str(p.tmp / "run"), "--set", "train.device=cuda"]


@case("out-is-a-file", "train", "is a file, not a folder")
def _(p):
    (p.tmp / "results.txt").write_text("mine")
    return ["train", str(p.config()), "--out", str(p.tmp / "results.txt")]


def train_on_coco(p: Place, edit=None, text=None) -> list[str]:
    return ["train", str(p.coco(edit, text)), "--out", str(p.tmp / "run"), "--no-eval"]


@case("coco-flat-polygon", "train", "train.json", "annotation id 1", "flat list", "[[x1, y1, x2, y2, ...]")
def _(p):
    return train_on_coco(p, lambda c: c["annotations"][0].update(segmentation=[4.0, 4.0, 20.0, 4.0, 20.0, 20.0]))


@case("coco-no-category-id", "train", "train.json", "annotation id 2", "category_id")
def _(p):
    return train_on_coco(p, lambda c: c["annotations"][1].pop("category_id"))


@case("coco-no-file-name", "train", "train.json", "has no file_name")
def _(p):
    return train_on_coco(p, lambda c: c["images"][0].pop("file_name"))


@case("coco-unknown-image-id", "train", "train.json", "annotation id 2", "image id 7", "lists no image")
def _(p):
    return train_on_coco(p, lambda c: c["annotations"][1].update(image_id=7))


@case("coco-absolute-file-name", "train", "train.json", "points outside the image folder")
def _(p):
    return train_on_coco(p, lambda c: c["images"][0].update(file_name=str(p.tmp / "coco" / "train" / "im1.png")))


@case("coco-dotdot-file-name", "train", "train.json", "'../train/im2.png'", "points outside the image folder")
def _(p):
    return train_on_coco(p, lambda c: c["images"][1].update(file_name="../train/im2.png"))


@case("coco-invalid-json", "train", "train.json", "not valid JSON", "line 1")
def _(p):
    return train_on_coco(p, text='{"images": [')


@case("pixel-limit-train", "train", "40000x40000", "100000000 pixels", "EMBEDSEG_MAX_PIXELS")
def _(p):
    config = p.folder_data()
    png_header_only(p.tmp / "data" / "train" / "images" / "train_00001.png", 40000, 40000)
    return ["train", str(config), "--out", str(p.tmp / "run")]


@case("pixel-limit-predict", "predict", "huge.png", "40000x40000", "EMBEDSEG_MAX_PIXELS")
def _(p):
    return ["predict", str(p.run()), str(png_header_only(p.tmp / "huge.png", 40000, 40000)), "--out",
            str(p.tmp / "pred")]


@case("sizes-differ-without-crop", "train", "train_00000.png", "32x32", "train_00002.png", "24x24",
      "data.crop_size")
def _(p):
    config = p.folder_data()
    for folder in ("images", "masks", "semantic"):
        path = p.tmp / "data" / "train" / folder / "train_00002.png"
        Image.open(path).crop((0, 0, 24, 24)).save(path)
    return ["train", str(config), "--out", str(p.tmp / "run")]


@case("config-does-not-fit-weights", "evaluate", "last.pt", "model.embedding_dim 8 -> 4", "is (8, ", "(4, ")
def _(p):
    return ["evaluate", str(p.run()), "--set", "model.embedding_dim=4"]


@case("edited-run-config", "evaluate", "config.yaml", "last.pt", "model.width 0.125 -> 0.25", "in the checkpoint")
def _(p):
    run = p.run()
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("width: 0.125", "width: 0.25"))
    return ["evaluate", str(run)]


@case("corrupt-image-in-worker", "train", "train_00002.png", "truncated", adds_files=True)
def _(p):
    config = p.folder_data()
    truncate(p.tmp / "data" / "train" / "images" / "train_00002.png", 0.6)  # its header is intact
    return ["train", str(config), "--out", str(p.tmp / "run"), "--set", "train.num_workers=2",
            "--set", "train.steps=4"]


@case("not-an-image-in-split", "train", "train_00001.png", "not an image")
def _(p):
    config = p.folder_data()
    (p.tmp / "data" / "train" / "images" / "train_00001.png").write_bytes(b"")
    return ["train", str(config), "--out", str(p.tmp / "run")]


@case("predict-missing-image", "predict", "nothere.png", "not found")
def _(p):
    return ["predict", str(p.run()), str(p.tmp / "nothere.png"), "--out", str(p.tmp / "pred")]


@case("predict-folder-without-images", "predict", "empty", "no image files")
def _(p):
    (p.tmp / "empty").mkdir()
    (p.tmp / "empty" / "notes.txt").write_text("no images here")
    return ["predict", str(p.run()), str(p.tmp / "empty"), "--out", str(p.tmp / "pred")]


@case("predict-not-an-image", "predict", "notes.txt", "not an image")
def _(p):
    (p.tmp / "notes.txt").write_text("not an image")
    return ["predict", str(p.run()), str(p.tmp / "notes.txt"), "--out", str(p.tmp / "pred")]


@case("evaluate-unknown-split", "evaluate", "nosuchsplit", "train, val, test")
def _(p):
    return ["evaluate", str(p.run()), "--split", "nosuchsplit"]


@case("evaluate-unknown-grouper", "evaluate", "nosuchgrouper", "meanshift")
def _(p):
    return ["evaluate", str(p.run()), "--grouping", "nosuchgrouper"]


@case("predict-unknown-grouper", "predict", "nosuchgrouper", "meanshift")
def _(p):
    return ["predict", str(p.run()), str(png_header_only(p.tmp / "a.png", 8, 8)), "--out", str(p.tmp / "pred"),
            "--grouping", "nosuchgrouper"]


@case("compare-unknown-grouper", "compare-grouping", "'x'", "meanshift")
def _(p):
    return ["compare-grouping", str(p.run()), "--groupers", "x"]


@case("tuned-yaml-broken", "evaluate", "tuned.yaml", "not valid YAML", "line 2")
def _(p):
    run = p.run()
    (run / "tuned.yaml").write_text("grouping:\n  meanshift: {bandwidth: 0.5\n")
    return ["evaluate", str(run)]


@case("suite-yaml-broken", "table", "suite.yaml", "not valid YAML")
def _(p):
    (p.tmp / "mine").mkdir()
    (p.tmp / "mine" / "suite.yaml").write_text("title: mine\nrows: [a\n")
    return ["table", str(p.tmp / "mine" / "suite.yaml")]


@case("evaluate-not-a-run", "evaluate", "notes", "is it a run directory?")
def _(p):
    (p.tmp / "notes").mkdir()
    (p.tmp / "notes" / "todo.txt").write_text("train more")
    return ["evaluate", str(p.tmp / "notes")]


@case("data-check-missing-root", "data check", "nothere", "does not exist")
def _(p):
    return ["data", "check", str(p.tmp / "nothere")]


def user_files_in_split(p: Place) -> Path:
    write_dataset(SyntheticShapes(split="train", num_images=2, size=64), p.tmp / "data", "train")
    (p.tmp / "data" / "train" / "images" / "my_cell.tif").write_bytes(b"a user's own image")
    (p.tmp / "data" / "train" / "notes.txt").write_text("where these came from")
    return p.tmp / "data"


@case("synth-onto-user-files", "data synth", "data/train", "not empty", "--overwrite")
def _(p):
    return ["data", "synth", "--out", str(user_files_in_split(p)), "--splits", "train", "--num-images", "2",
            "--size", "64"]


@case("synth-onto-user-files-overwrite", "data synth", "images/my_cell.tif", "notes.txt", "not samples written")
def _(p):
    return ["data", "synth", "--out", str(user_files_in_split(p)), "--splits", "train", "--num-images", "2",
            "--size", "64", "--overwrite"]


@case("resume-after-data-changed", "train", "--resume", "has 5 images", "trained on 4")
def _(p):
    config = p.folder_data()
    assert main(["train", str(config), "--out", str(p.tmp / "run"), "--no-eval", "--set", "train.steps=1"]) == 0
    env = p.tmp / "run" / "env.txt"  # as a run started from a shell records it (pytest's argv is the same every time)
    env.write_text(env.read_text().replace("argv ", "argv embedseg train tiny.yaml --out run # "))
    for folder in ("images", "masks", "semantic"):
        shutil.copy(p.tmp / "data" / "train" / folder / "train_00000.png",
                    p.tmp / "data" / "train" / folder / "train_00009.png")
    return ["train", str(config), "--out", str(p.tmp / "run"), "--no-eval", "--resume", "--set", "train.steps=1"]


@case("resume-with-another-config", "train", "--resume", "train.lr 0.001 -> 0.5")
def _(p):
    run = p.run()
    return ["train", str(run / "config.yaml"), "--out", str(run), "--resume", "--set", "train.lr=0.5"]


@case("data-check-param-without-value", "data check", "--param 'annotations'", "KEY=VALUE")
def _(p):
    return ["data", "check", str(p.tmp), "--param", "annotations"]


# ----------------------------------------------------------------------------- the test


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line_and_changes_nothing(bad, tmp_path, trained_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBEDSEG_DATA", raising=False)
    monkeypatch.delenv("EMBEDSEG_MAX_PIXELS", raising=False)
    argv = bad.make(Place(tmp_path, trained_run))
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"embedseg {bad.command}: error: "), err
    for part in bad.expected:
        assert part in err, (part, err)
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before
    if not bad.adds_files:
        assert after == before


def test_the_module_covers_at_least_25_kinds_of_bad_input():
    kinds = [line for line in __doc__.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(kinds) >= 25 and len(CASES) >= 25


def test_debug_shows_the_traceback_instead_of_the_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothere")]) == 2
    assert capsys.readouterr().err.startswith("embedseg evaluate: error: run directory")
    with pytest.raises(FileNotFoundError, match="run directory .*nothere does not exist"):
        main(["--debug", "evaluate", str(tmp_path / "nothere")])
    assert capsys.readouterr().err == ""
