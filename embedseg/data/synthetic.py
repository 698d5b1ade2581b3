"""Synthetic shapes: the quickstart data set, generated on the fly and fully deterministic.

Each image holds a few discs/ellipses (class 1) and rotated boxes (class 2) on a smooth textured
background. Objects of one class share one colour and one shading, and they come in small groups
that touch and overlap, so the foreground of a class is often one connected component holding
several instances: connected components cannot split them, pixel embeddings can. The cues that
separate touching objects are local: every object is shaded like a dome (bright centre, darker
edge) and has a 1 px darker rim, so there is an intensity dip along the boundary between two
touching objects. Later objects occlude earlier ones (painter's order).

Sample `i` of a split is drawn from `np.random.default_rng([seed, split_index, i])`, so it is the
same every time it is requested, and the splits "train", "val" and "test" are disjoint streams.
"""
from __future__ import annotations

import math
import operator
from typing import ClassVar

import numpy as np
import torch.utils.data

from embedseg.data.registry import DATASETS

SPLITS = ("train", "val", "test")

# Class colours in [0, 1] RGB (index = class id - 1), shared by every object of the class.
_CLASS_COLOURS = np.array([[0.95, 0.62, 0.22], [0.32, 0.66, 0.96]], dtype=np.float32)
_BACKGROUND = np.array([0.26, 0.30, 0.22], dtype=np.float32)  # dark olive, away from both classes
_RIM_SHADE = 0.42  # brightness factor of the 1 px rim (the dome falls to ~0.6 at the edge)
_MAX_GROUP = 4  # at most this many objects are chained into one touching group
_FREE_TRIES = 30
_TOUCH_TRIES = 10


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"SyntheticShapes: {name} must be an integer, got {value!r}")  # noqa: TRY004 - bad input
    if value < minimum:
        raise ValueError(f"SyntheticShapes: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"SyntheticShapes: {name} must be a number, got {value!r}")  # noqa: TRY004 - bad input
    value = float(value)
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        rng = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"SyntheticShapes: {name} must be {rng}, got {value}")
    return value


class _Shape:
    """One object: class, centre, rotation and semi-axes, rasterised on demand."""

    __slots__ = ("a", "b", "cls", "cx", "cy", "extent", "group", "theta")

    def __init__(self, cls, cy, cx, theta, a, b, group):
        self.cls, self.cy, self.cx, self.theta, self.a, self.b = cls, cy, cx, theta, a, b
        self.group = group
        # radius of the bounding circle
        self.extent = max(a, b) if cls == 1 else math.hypot(a, b)

    def radial_extent(self, ny: float, nx: float) -> float:
        """Distance from the centre to the outline along the unit direction (ny, nx)."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        p = nx * c + ny * s
        q = -nx * s + ny * c
        if self.cls == 1:
            return 1.0 / math.sqrt((p / self.a) ** 2 + (q / self.b) ** 2)
        return min(self.a / max(abs(p), 1e-9), self.b / max(abs(q), 1e-9))

    def rasterise(self, size: int):
        """(slices into the image, inside mask, shade) for the part of the object in the image."""
        r = math.ceil(self.extent) + 2
        iy, ix = round(self.cy), round(self.cx)
        y0, x0 = iy - r, ix - r
        n = 2 * r + 1
        dy = (np.arange(y0, y0 + n, dtype=np.float32) - self.cy)[:, None]
        dx = (np.arange(x0, x0 + n, dtype=np.float32) - self.cx)[None, :]
        c, s = math.cos(self.theta), math.sin(self.theta)
        u = (dx * c + dy * s) / self.a
        v = (dy * c - dx * s) / self.b
        if self.cls == 1:
            rr = u * u + v * v
            inside = rr <= 1.0
            shade = 0.6 + 0.4 * np.sqrt(np.clip(1.0 - rr, 0.0, None))
        else:
            inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
            shade = 0.6 + 0.4 * np.sqrt(np.clip((1.0 - u * u) * (1.0 - v * v), 0.0, None))
        # 1 px rim: inside pixels with a 4-neighbour outside the object's own outline (computed on
        # the uncropped patch, so the image border does not draw a rim)
        interior = inside.copy()
        interior[1:, :] &= inside[:-1, :]
        interior[:-1, :] &= inside[1:, :]
        interior[:, 1:] &= inside[:, :-1]
        interior[:, :-1] &= inside[:, 1:]
        shade = np.where(inside & ~interior, np.float32(_RIM_SHADE), shade).astype(np.float32)
        # crop to the image
        ty0, tx0 = max(y0, 0), max(x0, 0)
        ty1, tx1 = min(y0 + n, size), min(x0 + n, size)
        if ty0 >= ty1 or tx0 >= tx1:
            return None
        local = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
        return (slice(ty0, ty1), slice(tx0, tx1)), inside[local], shade[local]


@DATASETS.register("synthetic")
class SyntheticShapes(torch.utils.data.Dataset):
    """Touching, overlapping discs (class 1) and boxes (class 2) on a textured background.

    Args:
        split: "train", "val" or "test" (disjoint random streams).
        num_images: length of the split.
        size: image side in pixels (square images).
        min_objects, max_objects: number of objects drawn per image (before occlusion removes
            objects with less than ~30 visible pixels; ids stay consecutive 1..N).
        min_radius, max_radius: range of the semi-axes of discs and half-sides of boxes (pixels).
        touching: probability that a new object is placed touching/overlapping an existing object
            of the same class (its centre at 0.6-0.95 x the sum of the two radii along the line
            between the centres) instead of at a random free position.
        noise: std of the per-pixel Gaussian noise, in [0, 1] intensity units.
        seed: base seed; sample i of a split depends only on (seed, split, i).
    """

    num_classes = 2
    class_names: ClassVar[list[str]] = ["disc", "box"]

    def __init__(
        self,
        split: str = "train",
        num_images: int = 1000,
        size: int = 128,
        min_objects: int = 4,
        max_objects: int = 10,
        min_radius: float = 6.0,
        max_radius: float = 16.0,
        touching: float = 0.7,
        noise: float = 0.06,
        seed: int = 0,
    ):
        if split not in SPLITS:
            raise ValueError(f"SyntheticShapes: split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split
        self.split_index = SPLITS.index(split)
        self.num_images = _check_int("num_images", num_images, 1)
        self.size = _check_int("size", size, 16)
        self.min_objects = _check_int("min_objects", min_objects, 0)
        self.max_objects = _check_int("max_objects", max_objects, 1)
        if self.max_objects < self.min_objects:
            raise ValueError(
                f"SyntheticShapes: max_objects ({max_objects}) must be >= min_objects ({min_objects})"
            )
        self.min_radius = _check_float("min_radius", min_radius, 2.0)
        self.max_radius = _check_float("max_radius", max_radius, 2.0)
        if self.max_radius < self.min_radius:
            raise ValueError(
                f"SyntheticShapes: max_radius ({max_radius}) must be >= min_radius ({min_radius})"
            )
        if self.max_radius > self.size / 4:
            raise ValueError(
                f"SyntheticShapes: max_radius ({max_radius}) must be <= size / 4 ({self.size / 4:g})"
            )
        self.touching = _check_float("touching", touching, 0.0, 1.0)
        self.noise = _check_float("noise", noise, 0.0, 1.0)
        self.seed = _check_int("seed", seed, 0)
        # objects with fewer visible pixels are dropped (scaled down for tiny radii)
        self.min_visible = int(min(30.0, 0.5 * math.pi * self.min_radius**2))

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(split={self.split!r}, num_images={self.num_images}, size={self.size}, "
            f"objects={self.min_objects}..{self.max_objects}, seed={self.seed})"
        )

    def __getitem__(self, index) -> dict:
        index = operator.index(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"SyntheticShapes index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, self.split_index, index])
        image, instances, semantic = self._generate(rng)
        return {
            "image": image,
            "instances": instances,
            "semantic": semantic,
            "image_id": index,
            "name": f"{self.split}_{index:05d}",
        }

    # -- generation ---------------------------------------------------------------------------

    def _draw_shape(self, rng: np.random.Generator, cls: int) -> tuple[float, float, float]:
        lo, hi = self.min_radius, self.max_radius
        theta = float(rng.uniform(0.0, math.pi))
        if cls == 1:  # ellipse / disc
            a = float(rng.uniform(lo, hi))
            b = float(rng.uniform(max(lo, 0.55 * a), a)) if a > lo else a
        else:  # rectangle / square; a bit smaller than discs so the areas are comparable
            a = float(rng.uniform(lo, hi)) * 0.85
            b = a if rng.random() < 0.35 else a * float(rng.uniform(0.55, 1.0))
            a, b = max(a, 0.85 * lo), max(b, 0.85 * lo)
        return theta, a, b

    def _place(self, rng: np.random.Generator) -> list[_Shape]:
        size = self.size
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        shapes: list[_Shape] = []
        group_sizes: list[int] = []
        for _ in range(n):
            placed = None
            anchors = [s for s in shapes if group_sizes[s.group] < _MAX_GROUP]
            if anchors and rng.random() < self.touching:
                anchor = anchors[int(rng.integers(len(anchors)))]
                theta, a, b = self._draw_shape(rng, anchor.cls)
                new = _Shape(anchor.cls, 0.0, 0.0, theta, a, b, anchor.group)
                margin = 0.5 * min(a, b)
                for _ in range(_TOUCH_TRIES):
                    phi = float(rng.uniform(0.0, 2.0 * math.pi))
                    ny, nx = math.sin(phi), math.cos(phi)
                    dist = float(rng.uniform(0.6, 0.95)) * (
                        anchor.radial_extent(ny, nx) + new.radial_extent(ny, nx)
                    )
                    cy, cx = anchor.cy + dist * ny, anchor.cx + dist * nx
                    if margin <= cy <= size - 1 - margin and margin <= cx <= size - 1 - margin:
                        new.cy, new.cx = cy, cx
                        placed = new
                        group_sizes[anchor.group] += 1
                        break
            if placed is None:  # a random free position (the best of a few tries)
                cls = int(rng.integers(1, 3))
                theta, a, b = self._draw_shape(rng, cls)
                new = _Shape(cls, 0.0, 0.0, theta, a, b, len(group_sizes))
                margin = 0.5 * min(a, b)
                cand = rng.uniform(margin, size - 1 - margin, size=(_FREE_TRIES, 2))
                if shapes:
                    centres = np.array([[s.cy, s.cx] for s in shapes])
                    radii = np.array([s.extent for s in shapes])
                    gap = np.linalg.norm(cand[:, None, :] - centres[None], axis=-1) - radii - new.extent
                    gap = gap.min(axis=1)
                    # the first candidate that is free (uniform over free space), else the least
                    # crowded one (taking the argmax always would push objects into the corners)
                    free = np.flatnonzero(gap >= 2.0)
                    best = int(free[0]) if len(free) else int(np.argmax(gap))
                else:
                    best = 0
                new.cy, new.cx = float(cand[best, 0]), float(cand[best, 1])
                placed = new
                group_sizes.append(1)
            shapes.append(placed)
        return shapes

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth low-frequency pattern: two sums of random plane waves mixed into RGB."""
        size = self.size
        coords = np.arange(size, dtype=np.float32) / size
        image = np.broadcast_to(_BACKGROUND, (size, size, 3)).astype(np.float32)
        for amplitude in (0.10, 0.06):
            freq = rng.uniform(0.7, 3.5, size=3)
            angle = rng.uniform(0.0, 2.0 * math.pi, size=3)
            phase = rng.uniform(0.0, 2.0 * math.pi, size=3)
            pattern = np.zeros((size, size), dtype=np.float32)
            for f, t, p in zip(freq, angle, phase):
                wy = np.float32(2 * math.pi * f * math.sin(t))
                wx = np.float32(2 * math.pi * f * math.cos(t))
                pattern += np.sin(coords[:, None] * wy + coords[None, :] * wx + np.float32(p))
            pattern /= 3.0
            tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
            image = image + np.float32(amplitude) * pattern[:, :, None] * tint
        return image

    def _render(self, rasters, size):
        label = np.zeros((size, size), dtype=np.int32)
        shade = np.zeros((size, size), dtype=np.float32)
        for k, (sl, inside, sh) in enumerate(rasters, start=1):
            label[sl][inside] = k
            shade[sl][inside] = sh[inside]
        return label, shade

    def _generate(self, rng: np.random.Generator):
        size = self.size
        shapes = self._place(rng)
        rasters, classes = [], []
        for s in shapes:
            r = s.rasterise(size)
            if r is not None and r[1].any():
                rasters.append(r)
                classes.append(s.cls)
        label, shade = self._render(rasters, size)
        # drop objects that occlusion left (almost) invisible, then paint again without them so
        # image and labels agree (removing occluders only makes the others more visible)
        visible = np.bincount(label.ravel(), minlength=len(rasters) + 1)[1:]
        keep = visible >= self.min_visible
        if not keep.all():
            rasters = [r for r, k in zip(rasters, keep) if k]
            classes = [c for c, k in zip(classes, keep) if k]
            label, shade = self._render(rasters, size)
        cls_lut = np.array([0] + classes, dtype=np.int64)
        semantic = cls_lut[label]

        image = self._background(rng)
        jitter = rng.uniform(0.92, 1.08, size=(2, 1)).astype(np.float32)  # per class, per image
        colour_lut = np.concatenate([np.zeros((1, 3), np.float32), _CLASS_COLOURS * jitter])
        fg = label > 0
        image[fg] = colour_lut[semantic[fg]] * shade[fg][:, None]
        if self.noise > 0:
            image += np.float32(self.noise) * rng.standard_normal(image.shape, dtype=np.float32)
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return image, label, semantic
