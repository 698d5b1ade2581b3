"""`embedseg predict`'s output folder: a label PNG and an overlay per image, predictions.json, images.json.

Output names keep the images' folder structure below the folder they all share (the images of one
folder give flat outputs), so two images of the same name in two folders never overwrite each other;
two images of one folder that differ only in their extension get it added (`cell_tif.png`). The
folder is written whole or not at all: everything goes into a temporary folder beside --out, which
is renamed to --out at the end, so a crash never leaves label PNGs without predictions.json.
`--overwrite` replaces a previous prediction (the files its images.json lists) and nothing else.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from embedseg.data.io import IMAGE_EXTENSIONS, image_size, read_image
from embedseg.outputs import atomic_path, describe_entries, write_json
from embedseg.structures import Instances
from embedseg.viz import save_overlay


def list_images(inputs: list[str]) -> list[Path]:
    """The image files of `inputs` (files, and the image files directly inside folders), each once; each
    file's header is read, so that one that is not an image, or too large, is refused before any prediction."""
    paths: list[Path] = []
    for p in map(Path, inputs):
        found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS) \
            if p.is_dir() else [p]
        if not found:
            raise FileNotFoundError(f"folder {p} holds no image files ({'/'.join(IMAGE_EXTENSIONS)})")
        paths += found
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image(s) not found: {', '.join(missing)}")
    unique = {Path(os.path.abspath(p)): None for p in paths}  # an image given twice is predicted once
    for path in unique:
        image_size(path)
    return list(unique)


def output_stems(paths: list[Path]) -> list[str]:
    """Each image's output name without extension, relative to --out (see the module docstring)."""
    common = Path(os.path.commonpath([p.parent for p in paths]))
    stems = [(p.parent.relative_to(common) / p.stem).as_posix() for p in paths]
    shared = {s for s, n in Counter(s.lower() for s in stems).items() if n > 1}  # case-blind file systems
    stems = [f"{s}_{p.suffix[1:].lower()}" if s.lower() in shared else s for s, p in zip(stems, paths)]
    clash = [s for s, n in Counter(s.lower() for s in stems).items() if n > 1]
    if clash:
        raise ValueError(f"two images would be written as {clash[0]}.png; rename one or predict them separately")
    return stems


def previous_prediction(out: Path) -> set[Path]:
    """Files a previous `embedseg predict` wrote into `out`, as its images.json lists them (empty if none)."""
    try:
        images = json.loads((out / "images.json").read_text())["images"]
        outputs = [(e.get("label_png", f"{Path(e['file_name']).stem}.png"),
                    e.get("overlay_png", f"{Path(e['file_name']).stem}_overlay.png")) for e in images]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if not (out / "predictions.json").is_file():
        return set()
    return {out / "images.json", out / "predictions.json"} | {out / name for pair in outputs for name in pair}


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, a non-empty folder without `overwrite`, or one that holds
    anything but a previous prediction."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out")
    files = [p for p in out.rglob("*") if p.is_symlink() or not p.is_dir()] if out.is_dir() else []
    if not files:
        return
    if not overwrite:
        raise FileExistsError(f"output directory {out} is not empty; use --overwrite to replace the previous "
                              "prediction in it, or choose another --out")
    ours = previous_prediction(out)
    foreign = [p.relative_to(out).as_posix() for p in files if p not in ours]
    if foreign:
        raise FileExistsError(f"--out {out} holds {describe_entries(foreign)}, which predict did not write; "
                              "--overwrite only replaces a previous prediction: choose another --out")


def write_predictions(out: Path, paths: list[Path], stems: list[str], predict: Callable[[np.ndarray], Instances],
                      class_names: list[str], overwrite: bool) -> int:
    """Predict every image into a temporary folder beside `out`, then put it in place of `out`
    (a previous prediction there is removed, after `check_out_folder` passes again). Returns the
    number of instances."""
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)  # left by an earlier process of the same id
    partial.mkdir(parents=True)
    try:
        count = predict_into(partial, paths, stems, predict, class_names)
        check_out_folder(out, overwrite)
        if out.is_dir():
            replaced = out.parent / f".{out.name}.replaced-{os.getpid()}"
            os.replace(out, replaced)  # holds only a previous prediction (or nothing): checked just above
            os.replace(partial, out)
            shutil.rmtree(replaced)
        else:
            os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # only still there when something failed
    return count


def predict_into(folder: Path, paths: list[Path], stems: list[str], predict: Callable[[np.ndarray], Instances],
                 class_names: list[str]) -> int:
    """The prediction files of every image in `folder`; returns the number of instances."""
    results, images = [], []
    common = Path(os.path.commonpath([p.parent for p in paths]))
    for image_id, (path, stem) in enumerate(zip(tqdm(paths, desc="predict", disable=None), stems)):
        image = read_image(path)
        instances = predict(image)
        label_map = instances.to_label_map()
        label_png, overlay_png = f"{stem}.png", f"{stem}_overlay.png"
        with atomic_path(folder / label_png) as tmp:
            Image.fromarray(label_map.astype(np.uint16 if label_map.max() > 255 else np.uint8)).save(tmp)
        save_overlay(image, instances, folder / overlay_png)
        file_name = path.relative_to(common).as_posix()
        results += [dict(r, file_name=file_name) for r in instances.to_coco_results(image_id)]
        images.append({"id": image_id, "file_name": file_name, "path": str(path), "height": image.shape[0],
                       "width": image.shape[1], "label_png": label_png, "overlay_png": overlay_png})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    write_json(folder / "predictions.json", results)
    write_json(folder / "images.json", {"images": images, "categories": categories})
    return len(results)
