"""Image and label files on disk: where data roots are, which files count, how they are read.

One reader for every path an image takes (training, evaluation, `embedseg predict`), so a model
sees the same pixels in all three:

- `read_image`: any PNG / TIF / JPG / BMP -> uint8 RGB [H, W, 3]. Grey is repeated into three
  channels, alpha is dropped, palettes are expanded. Images of more than 8 bits (16-bit or float
  microscopy) are rescaled from their own min..max to 0..255: such images often fill only a small
  part of their range (a 12-bit camera in a 16-bit file), and a fixed division would leave them dark.
- `read_label`: a single-channel integer label image (8/16/32 bit) -> int64 [H, W], non-negative.

A relative data `root` is looked up under `$EMBEDSEG_DATA` first, then in the current directory
(`resolve_root`).

Images of more than `max_pixels()` pixels (default 10000 x 10000 = 1e8; `$EMBEDSEG_MAX_PIXELS` sets
another limit) are refused from their header, before any pixel is decoded: a file that claims
40000 x 40000 pixels would need gigabytes. PIL's own decompression-bomb limit follows the same number.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_EXTENSIONS = (".png", ".tif", ".tiff")  # lossless formats only: a JPEG would blur the ids
DATA_ENV = "EMBEDSEG_DATA"
MAX_PIXELS_ENV = "EMBEDSEG_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 10000 * 10000


def resolve_root(root: str | os.PathLike, what: str = "dataset") -> Path:
    """The existing folder that a dataset's `root` parameter names.

    Absolute (or `~`) paths are taken as given. A relative path is looked up under
    `$EMBEDSEG_DATA` when that is set, then relative to the current directory, so configs can say
    `root: dsb2018` and every machine points EMBEDSEG_DATA at its own data folder. The error
    names every place that was looked at.
    """
    path = Path(root).expanduser()
    candidates = [path]
    if not path.is_absolute():
        base = os.environ.get(DATA_ENV)
        candidates = ([Path(base).expanduser() / path] if base else []) + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    hint = "" if path.is_absolute() or os.environ.get(DATA_ENV) else (
        f"; ${DATA_ENV} is not set: set it to the folder that holds the data sets, or give an absolute root")
    raise FileNotFoundError(
        f"{what}: data root folder {' or '.join(str(c) for c in candidates)} does not exist{hint}")


def max_pixels() -> int:
    """The largest image (width x height) that is read: `$EMBEDSEG_MAX_PIXELS`, else 1e8."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(text))
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"${MAX_PIXELS_ENV} = {text!r}: expected a positive number of pixels, e.g. 400000000")
    return limit


def open_image(path: Path) -> Image.Image:
    """The opened (not yet decoded) image at `path`; a file PIL cannot identify, or one whose header
    claims more than `max_pixels()` pixels, is a ValueError naming the file."""
    limit = max_pixels()
    try:
        Image.MAX_IMAGE_PIXELS = None  # for this open only: the check below names the size and the limit
        image = Image.open(path)
    except Image.UnidentifiedImageError:  # an OSError whose message only repeats the path
        raise ValueError(f"cannot read {path}: not an image PIL can read (expected {'/'.join(IMAGE_EXTENSIONS)})") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit  # PIL's own limit, for any other image opened, is the same
    width, height = image.size
    if width * height > limit:
        image.close()
        raise ValueError(f"{path}: {width}x{height} = {width * height} pixels, more than the limit of {limit} "
                         f"pixels (set ${MAX_PIXELS_ENV} to a larger number of pixels to read it)")
    return image


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header (see `open_image` for the errors)."""
    with open_image(Path(path)) as image:
        return image.size


def _read_array(path: Path, palette_to_rgb: bool) -> np.ndarray:
    """The pixel array of an image file; palette images give indices unless `palette_to_rgb`."""
    convert = ("CMYK", "YCbCr", "LAB", "HSV") + (("P", "PA") if palette_to_rgb else ())
    with open_image(path) as im:
        try:
            if im.mode in convert:
                im = im.convert("RGBA" if im.mode == "PA" else "RGB")
            return np.array(im)
        except (OSError, ValueError) as err:  # e.g. a truncated file: its header was read, its pixels not
            raise ValueError(f"cannot read {path}: {err}") from err


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file (see the module docstring for grey, alpha and >8 bits)."""
    path = Path(path)
    array = _read_array(path, palette_to_rgb=True)
    if array.ndim == 3 and array.shape[2] in (2, 4):  # LA / RGBA: drop alpha
        array = array[..., :-1]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"{path}: expected a grey, RGB or RGBA image, got an array of shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"{path}: image holds NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        array = np.round(array).astype(np.uint8)
    return np.ascontiguousarray(array)


def read_label(path: str | os.PathLike, what: str = "label image") -> np.ndarray:
    """int64 [H, W] of a single-channel non-negative integer label image; errors name `what` and the file."""
    path = Path(path)
    array = _read_array(path, palette_to_rgb=False)
    if array.ndim == 3:
        if array.shape[2] in (2, 4):  # LA / RGBA: ignore alpha
            array = array[..., :-1]
        if not (array == array[..., :1]).all():
            raise ValueError(
                f"{path}: {what} must be a single-channel integer label image, got {array.shape[2]} "
                "different channels (colour-coded masks are not supported)"
            )
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: {what} must be a 2-d label image, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not (array == np.round(array)).all():
            raise ValueError(f"{path}: {what} must hold integer labels, found non-integer values")
    elif not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: {what} must hold integer labels, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"{path}: {what} must be non-negative (0 = background), found {array.min()}")
    return array.astype(np.int64)


def check_same_size(label: np.ndarray, label_path: Path, what: str, image: np.ndarray, image_path: Path) -> None:
    """Raise a ValueError naming both files when a label map and its image differ in size."""
    if label.shape != image.shape[:2]:
        raise ValueError(
            f"size mismatch: {what} {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) "
            f"but image {image_path} is {image.shape[1]}x{image.shape[0]}"
        )


def read_class_names(path: Path) -> list[str]:
    """The class names of a `classes.txt`: one per line, blank lines skipped."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} holds no class names (expected one name per line)")
    return names
