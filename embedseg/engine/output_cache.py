"""Network outputs cached on disk, so that several groupers or parameter settings reuse one network pass.

`cache_outputs` writes image i's outputs (the predictor's dict: embedding, seediness, semantic) to
FOLDER/<i:06d>.npz, one file per image, each written whole (embedseg.outputs), and FOLDER/cache.json
last: a folder with a cache.json holds every image it lists. `OutputCache` reads them back one image
at a time, so a sweep never holds more than one image's outputs in memory.

Every output is stored as float32, as the network gives it, so grouping the cached outputs gives what
grouping the network's outputs gives. Half precision does not do that: the seediness values near 1 at
an instance's centre tie, so a grouper starts from another seed pixel, and a spatial embedding holds
pixel positions, which float16 rounds to half a pixel on a 500-pixel image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedseg.outputs import atomic_path, write_json

INDEX = "cache.json"
FORMAT = 3
OLDER_FORMATS = {1: "every output as float16", 2: "the embedding as float16"}  # reuse_or_cache replaces them


def image_file(folder: Path, index: int) -> Path:
    return Path(folder) / f"{index:06d}.npz"


def cache_outputs(predictor, dataset, folder: str | Path, indices=None, key: dict | None = None,
                  progress: bool = True) -> OutputCache:
    """Run `predictor` on `dataset[i]["image"]` for every i of `indices` (default: all) and store the
    outputs in `folder` as float32; `key` (JSON, e.g. checkpoint and split) is recorded with them so
    that a reader can tell which network pass they are. Returns the reader."""
    folder = Path(folder)
    indices = list(range(len(dataset)) if indices is None else indices)
    for i in tqdm(indices, desc="cache outputs", disable=None if progress else True, leave=False):
        outputs = predictor(dataset[i]["image"])
        with atomic_path(image_file(folder, i)) as tmp:
            np.savez(tmp, **{name: np.asarray(value, np.float32) for name, value in outputs.items()})
    write_json(folder / INDEX, {"images": indices, "key": key, "format": FORMAT})
    return OutputCache(folder)


class OutputCache:
    """Reader of a `cache_outputs` folder: `cache[i]` is image i's outputs as float32 arrays."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if not index.exists():
            raise FileNotFoundError(f"{self.folder} holds no output cache ({INDEX} is missing; "
                                    f"cache_outputs writes it last)")
        meta = json.loads(index.read_text())
        self.indices, self.key, self.format = list(meta["images"]), meta["key"], meta.get("format", 1)
        self.listed = set(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        path = image_file(self.folder, index)
        if index not in self.listed:  # a file of an earlier cache in the same folder does not count
            raise KeyError(f"image {index} is not in the output cache {self.folder} ({len(self)} images cached)")
        with np.load(path) as stored:
            return {name: stored[name].astype(np.float32, copy=False) for name in stored.files}


def reuse_or_cache(predictor, dataset, folder: str | Path, indices, key: dict, overwrite: bool = False,
                   progress: bool = True) -> OutputCache:
    """The cache in `folder` when it holds the outputs of `key` for every image of `indices`; else the
    outputs computed and cached there. A cache of another `key` or an older storage format is replaced
    only with `overwrite`."""
    folder, indices = Path(folder), list(indices)
    if (folder / INDEX).exists():
        cache = OutputCache(folder)
        same = cache.key == key and cache.format == FORMAT
        if same and set(indices) <= set(cache.indices):
            return cache
        if not same and not overwrite:
            differ = sorted(k for k in {*key, *(cache.key or {})} if key.get(k) != (cache.key or {}).get(k))
            held = (f"the outputs of another network pass ({', '.join(differ)} differ)" if differ else
                    f"outputs in an older storage format ({cache.format}: {OLDER_FORMATS.get(cache.format, 'unknown')})")
            raise FileExistsError(f"{folder} holds {held}; use --overwrite to replace them, or another folder")
    return cache_outputs(predictor, dataset, folder, indices, key, progress)
