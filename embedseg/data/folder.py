"""Image + label-image folders (DSB2018, CVPPP, exported synthetic data).

Layout::

    <root>/classes.txt                       optional, one class name per line
    <root>/<split>/images/<stem>.<png|jpg|jpeg|tif|tiff|bmp>
    <root>/<split>/masks/<stem>.<png|tif|tiff>      integer label image, 0 = background (8/16 bit)
    <root>/<split>/semantic/<stem>.<png|tif|tiff>   optional per-pixel class map (0 = background);
                                                    without the folder every instance is class 1

Files are read with `embedseg.data.io` (`read_image`, `read_label`); a relative `root` is looked
up under `$EMBEDSEG_DATA` first, then in the current directory (`resolve_root`). `write_dataset`
writes any dataset of the sample contract in this layout.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from embedseg.data.base import checked_index
from embedseg.data.io import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    check_same_size,
    image_size,
    read_class_names,
    read_image,
    read_label,
    resolve_root,
)
from embedseg.data.registry import DATASETS
from embedseg.outputs import atomic_path, describe_entries, write_text

logger = logging.getLogger(__name__)


def _index_folder(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """stem -> file for the files in `folder` with one of `extensions` (case-insensitive)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        if path.stem in found:
            raise ValueError(f"two files with the stem {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def label_file_pattern(folder: Path, stem: str) -> str:
    """How an error names the label file that `stem` should have in `folder`."""
    return f"{folder / stem}.<{'|'.join(e[1:] for e in LABEL_EXTENSIONS)}>"


@dataclass
class SplitFiles:
    """The files of one split folder, matched by stem (no file is opened)."""

    image_dir: Path
    mask_dir: Path
    semantic_dir: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    semantic: dict[str, Path] | None  # None when the split has no semantic/ folder

    @classmethod
    def index(cls, split_dir: Path) -> SplitFiles:
        """Index `<split_dir>/{images,masks[,semantic]}`; a missing images/ or masks/ folder is an error."""
        image_dir, mask_dir, semantic_dir = (split_dir / d for d in ("images", "masks", "semantic"))
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"FolderDataset: folder {folder} does not exist")
        semantic = _index_folder(semantic_dir, LABEL_EXTENSIONS) if semantic_dir.is_dir() else None
        return cls(image_dir, mask_dir, semantic_dir, _index_folder(image_dir, IMAGE_EXTENSIONS),
                   _index_folder(mask_dir, LABEL_EXTENSIONS), semantic)

    def without(self, kind: str) -> list[str]:
        """Sorted stems of the images that have no file in `kind` ("masks" or "semantic")."""
        other = getattr(self, kind) or {}
        return sorted(stem for stem in self.images if stem not in other)

    def orphan_masks(self) -> list[str]:
        return sorted(set(self.masks) - set(self.images))


def load_labelled_image(image_path: Path, mask_path: Path, semantic_path: Path | None = None,
                        class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [H, W, 3], instances int32 [H, W], semantic int64 [H, W]) of one folder sample.

    Without a semantic map every instance pixel is class 1. Every error names the file at fault.
    """
    image = read_image(image_path)
    instances = read_label(mask_path, "mask")
    check_same_size(instances, mask_path, "mask", image, image_path)
    if instances.size and instances.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{mask_path}: instance ids must fit in int32, found {instances.max()}")
    if semantic_path is None:
        return image, instances.astype(np.int32), (instances > 0).astype(np.int64)
    semantic = read_label(semantic_path, "semantic map")
    check_same_size(semantic, semantic_path, "semantic map", image, image_path)
    num_classes = len(class_names) if class_names else 1
    if semantic.size and semantic.max() > num_classes:
        raise ValueError(
            f"{semantic_path}: class id {semantic.max()} > number of classes {num_classes} "
            f"({', '.join(class_names or ['object'])})"
        )
    return image, instances.astype(np.int32), semantic


@DATASETS.register("folder")
class FolderDataset(Dataset):
    """Images with integer label masks in `<root>/<split>/{images,masks[,semantic]}`.

    image_id is the index in sorted stem order and name the stem. Class names come from
    `class_names`, else `<root>/classes.txt`, else ["object"].
    """

    def __init__(self, root: str, split: str = "train", class_names: list[str] | None = None):
        self.root = resolve_root(root, "FolderDataset")
        self.split = split
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"FolderDataset: split folder {split_dir} does not exist")
        if class_names is None:
            classes_file = self.root / "classes.txt"
            class_names = read_class_names(classes_file) if classes_file.is_file() else ["object"]
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise ValueError("FolderDataset: class_names must hold at least one name")
        self.num_classes = len(self.class_names)

        files = SplitFiles.index(split_dir)
        if not files.images:
            raise ValueError(
                f"FolderDataset: no images ({'/'.join(IMAGE_EXTENSIONS)}) in {files.image_dir}: empty split"
            )
        missing = files.without("masks")
        if missing:
            raise FileNotFoundError(
                f"FolderDataset: image {files.images[missing[0]]} has no mask "
                f"{label_file_pattern(files.mask_dir, missing[0])}"
                + (f" ({len(missing)} images without a mask)" if len(missing) > 1 else "")
            )
        orphans = files.orphan_masks()
        if orphans:
            logger.warning("%d mask(s) in %s have no image, e.g. %s", len(orphans), files.mask_dir,
                           files.masks[orphans[0]])
        self.has_semantic = files.semantic is not None
        missing = files.without("semantic") if self.has_semantic else []
        if missing:
            raise FileNotFoundError(
                f"FolderDataset: image {files.images[missing[0]]} has no semantic map "
                f"{label_file_pattern(files.semantic_dir, missing[0])} (when {files.semantic_dir} exists, every "
                "image needs one)"
            )

        self.stems = sorted(files.images)
        self.image_paths = [files.images[s] for s in self.stems]
        self.mask_paths = [files.masks[s] for s in self.stems]
        self.semantic_paths = [files.semantic[s] for s in self.stems] if self.has_semantic else None

    def __len__(self) -> int:
        return len(self.stems)

    def __repr__(self) -> str:
        return f"FolderDataset(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"

    def image_sizes(self) -> dict[Path, tuple[int, int]]:
        """(width, height) of every image file, from its header (no pixel is decoded)."""
        return {path: image_size(path) for path in self.image_paths}

    def __getitem__(self, index) -> dict:
        index = checked_index(index, len(self), "FolderDataset")
        semantic_path = self.semantic_paths[index] if self.semantic_paths is not None else None
        image, instances, semantic = load_labelled_image(self.image_paths[index], self.mask_paths[index],
                                                         semantic_path, self.class_names)
        return {
            "image": image,
            "instances": instances.astype(np.int32),
            "semantic": semantic.astype(np.int64),
            "image_id": index,
            "name": self.stems[index],
        }


def _label_png(array: np.ndarray, what: str, name: str) -> Image.Image:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"sample {name!r}: {what} must be [H, W], got shape {array.shape}")
    if array.size and array.min() < 0:
        raise ValueError(
            f"sample {name!r}: {what} holds negative (ignore) labels, which a PNG label image cannot store"
        )
    top = int(array.max()) if array.size else 0
    if top > np.iinfo(np.uint16).max:
        raise ValueError(f"sample {name!r}: {what} id {top} does not fit in a 16-bit PNG")
    return Image.fromarray(array.astype(np.uint8 if top < 256 else np.uint16))


SAMPLE_FOLDERS = ("images", "masks", "semantic")


def previous_write(split_dir: Path) -> tuple[list[Path], list[str]]:
    """(files that an earlier `write_dataset` left in `split_dir`, names of everything else in it).

    Its files are the `<folder>/<name>.png` of every name that has a PNG in all of images/, masks/
    and semantic/; any other file or folder is someone else's.
    """
    stems = [{p.stem for p in (split_dir / sub).glob("*.png") if p.is_file() and not p.is_symlink()}
             for sub in SAMPLE_FOLDERS]
    ours = {split_dir / sub / f"{stem}.png" for sub in SAMPLE_FOLDERS for stem in set.intersection(*stems)}
    foreign = [entry.relative_to(split_dir).as_posix() + ("/" if entry.is_dir() else "")
               for entry in sorted(split_dir.rglob("*")) if entry not in ours
               and not (entry.parent == split_dir and entry.name in SAMPLE_FOLDERS and entry.is_dir()
                        and not entry.is_symlink())]
    return sorted(ours), foreign


def write_dataset(dataset, out_dir, split: str, overwrite: bool = False) -> Path:
    """Write every sample of `dataset` as `<out_dir>/<split>/{images,masks,semantic}/<name>.png`.

    Also writes `<out_dir>/classes.txt`. Masks are 8-bit PNGs when every id is < 256, else 16-bit.
    Refuses to write into a non-empty `<out_dir>/<split>` unless `overwrite`, in which case the
    samples of an earlier `write_dataset` there are replaced; a split folder that holds anything else
    is refused even then (nothing is removed that this function did not write). Returns `out_dir`,
    the root that `FolderDataset(out_dir, split)` reads back.
    """
    out_dir = Path(out_dir).expanduser()
    split_dir = out_dir / split
    if split_dir.exists() and not split_dir.is_dir():
        raise FileExistsError(f"{split_dir} exists and is not a folder")
    if split_dir.is_dir() and any(split_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{split_dir} is not empty; pass overwrite=True (--overwrite) to replace the data set written there"
            )
        ours, foreign = previous_write(split_dir)
        if foreign:
            raise FileExistsError(f"{split_dir} holds {describe_entries(foreign)}, which are not samples written by "
                                  "data synth (write_dataset); overwrite replaces only those: choose another folder")
        for path in ours:
            path.unlink()

    class_names = [str(c) for c in getattr(dataset, "class_names", ["object"])]
    classes_file = out_dir / "classes.txt"
    if classes_file.is_file() and not overwrite and read_class_names(classes_file) != class_names:
        raise FileExistsError(
            f"{classes_file} lists other classes ({', '.join(read_class_names(classes_file))}) than "
            f"this dataset ({', '.join(class_names)}); pass overwrite=True to replace it"
        )
    dirs = {sub: split_dir / sub for sub in SAMPLE_FOLDERS}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    write_text(classes_file, "".join(f"{c}\n" for c in class_names))

    seen: set[str] = set()
    for index in tqdm(range(len(dataset)), desc=f"writing {split}", unit="img", disable=None):
        sample = dataset[index]
        name = str(sample.get("name", f"{index:05d}"))
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"sample {index}: name {name!r} is not a valid file name")
        if name in seen:
            raise ValueError(f"sample {index}: name {name!r} occurs twice; names must be unique")
        seen.add(name)
        image = np.asarray(sample["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"sample {name!r}: image must be uint8 [H, W, 3], got {image.dtype} {image.shape} "
                "(write_dataset expects raw samples, not transformed tensors)"
            )
        masks = _label_png(sample["instances"], "instances", name)
        semantic = _label_png(sample["semantic"], "semantic", name)
        for folder, png in (("images", Image.fromarray(image)), ("masks", masks), ("semantic", semantic)):
            with atomic_path(dirs[folder] / f"{name}.png") as tmp:
                png.save(tmp)
    logger.info("wrote %d samples to %s", len(seen), split_dir)
    return out_dir
