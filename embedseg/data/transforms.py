"""Joint image/label augmentation and conversion of raw samples to tensors.

`TrainTransform` draws one geometric transform per sample (random crop position, scale,
small rotation, flips, 90-degree turns) and applies it to the image (bilinear) and to the
instance and semantic maps (nearest) alike; pixels that fall outside the image become ignore
labels (-1). Intensity jitter (gamma, contrast, brightness) touches the image only. With no
scale or rotation the crop is a plain array slice, so the cheap path stays cheap; otherwise
only the source region under the crop window is resampled, once, with `grid_sample`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Images are scaled to [0, 1] and centred; one fixed normalisation for every data set keeps
# checkpoints usable on any image without stored statistics.
MEAN, STD = 0.5, 0.25
# Labels are resampled as float32, which holds every integer id below 2**24 exactly.
_MAX_RESAMPLED_ID = 2**24 - 2


def normalise(image: torch.Tensor) -> torch.Tensor:
    """float [3, H, W] in [0, 1] -> network input."""
    return (image - MEAN) / STD


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W], normalised."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    return normalise(torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float() / 255.0)


def _check(condition: bool, key: str, value, expected: str) -> None:
    if not condition:
        raise ValueError(f"data.{key} = {value!r}: expected {expected}")


class TrainTransform:
    """Random crop (ignore-padded when the image is smaller), scale, rotation, flips, 90-degree
    turns and intensity jitter, applied jointly to image, instance and semantic maps.

    crop_size: side of the square crops (None: keep the image size).
    scale_range: [lo, hi]; the content is zoomed by a factor drawn log-uniformly from it
        (2 = objects twice as large). None or [1, 1]: no scaling.
    rotate_degrees: rotation by an angle drawn uniformly from [-r, r] (0: none).
    brightness / contrast: additive / multiplicative jitter of up to this fraction.
    gamma: intensity ** g with log g drawn uniformly from [-gamma, gamma].
    """

    def __init__(self, crop_size: int | None = None, flip: bool = True, rot90: bool = True,
                 scale_range: list[float] | None = None, rotate_degrees: float = 0.0,
                 brightness: float = 0.0, contrast: float = 0.0, gamma: float = 0.0):
        _check(crop_size is None or crop_size >= 1, "crop_size", crop_size, "a positive number of pixels or null")
        if scale_range is not None:
            _check(len(scale_range) == 2 and 0 < scale_range[0] <= scale_range[1], "scale_range", scale_range,
                   "[lo, hi] with 0 < lo <= hi")
        _check(0 <= rotate_degrees <= 180, "rotate_degrees", rotate_degrees, "an angle in [0, 180]")
        for key, value in (("brightness", brightness), ("contrast", contrast)):
            _check(0 <= value < 1, key, value, "a fraction in [0, 1)")
        _check(0 <= gamma <= 2, "gamma", gamma, "a log-range in [0, 2]")
        self.crop_size, self.flip, self.rot90 = crop_size, flip, rot90
        self.scale_range = None if scale_range is None or tuple(scale_range) == (1, 1) else tuple(map(float, scale_range))
        self.rotate_degrees, self.brightness, self.contrast, self.gamma = rotate_degrees, brightness, contrast, gamma

    @classmethod
    def from_config(cls, data) -> TrainTransform:
        """Build from a `DataConfig` (the `data:` block of an experiment)."""
        return cls(data.crop_size, data.flip, data.rot90, data.scale_range, data.rotate_degrees,
                   data.brightness, data.contrast, data.gamma)

    def __call__(self, sample: dict) -> dict:
        # Drawn from torch's generator: seeded by the config in the main process and distinct
        # in every DataLoader worker, so workers do not repeat each other's augmentations.
        rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        image, inst, sem = sample["image"], sample["instances"], sample["semantic"]
        if self.scale_range is not None or self.rotate_degrees > 0:
            scale = math.exp(rng.uniform(*np.log(self.scale_range))) if self.scale_range else 1.0
            angle = math.radians(rng.uniform(-self.rotate_degrees, self.rotate_degrees))
            size = (self.crop_size,) * 2 if self.crop_size is not None else inst.shape
            image_t, inst_t, sem_t = affine_crop(image, inst, sem, size, scale, angle, rng)
        else:
            if self.crop_size is not None:
                image, inst, sem = random_crop(image, inst, sem, self.crop_size, rng)
            image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
            inst_t = torch.from_numpy(np.ascontiguousarray(inst).astype(np.int64))
            sem_t = torch.from_numpy(np.ascontiguousarray(sem).astype(np.int64))
        dims = []  # flips and quarter turns of all three maps together
        if self.flip and rng.random() < 0.5:
            dims.append(-1)
        if self.flip and rng.random() < 0.5:
            dims.append(-2)
        if dims:
            image_t, inst_t, sem_t = (t.flip(dims) for t in (image_t, inst_t, sem_t))
        k = int(rng.integers(4)) if self.rot90 else 0
        if k:
            image_t, inst_t, sem_t = (t.rot90(k, (-2, -1)) for t in (image_t, inst_t, sem_t))
        image_t = self.jitter_intensity(image_t, rng)
        return {"image": normalise(image_t).contiguous(), "instances": inst_t.contiguous(),
                "semantic": sem_t.contiguous(), "image_id": int(sample["image_id"])}

    def jitter_intensity(self, image: torch.Tensor, rng) -> torch.Tensor:
        """Gamma, contrast (about the image mean) and brightness of a [3, H, W] image in [0, 1].

        One draw per image, shared by its channels, so grey images stay grey.
        """
        if not (self.gamma or self.contrast or self.brightness):
            return image
        if self.gamma:
            image = image.clamp(0, 1).pow(math.exp(rng.uniform(-self.gamma, self.gamma)))
        if self.contrast:
            mean = image.mean()
            image = (image - mean) * (1 + rng.uniform(-self.contrast, self.contrast)) + mean
        if self.brightness:
            image = image + rng.uniform(-self.brightness, self.brightness)
        return image.clamp(0, 1)


def random_crop(image, inst, sem, size: int, rng):
    h, w = inst.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:  # pad small images; padded pixels are ignored by every loss
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        inst = np.pad(inst, ((0, ph), (0, pw)), constant_values=-1)
        sem = np.pad(sem, ((0, ph), (0, pw)), constant_values=-1)
        h, w = inst.shape
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return image[y:y + size, x:x + size], inst[y:y + size, x:x + size], sem[y:y + size, x:x + size]


def affine_crop(image: np.ndarray, inst: np.ndarray, sem: np.ndarray, size: tuple[int, int], scale: float,
                angle: float, rng) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A `size` (h, w) window of the image zoomed by `scale` and rotated by `angle` (radians).

    The window (size / scale source pixels) is placed uniformly at random: inside the image when
    it fits, else so that it holds the whole image. Returns the image float [3, h, w] in [0, 1]
    (bilinear, black outside) and instances/semantic int64 [h, w] (nearest, -1 outside).
    """
    out_h, out_w = int(size[0]), int(size[1])
    height, width = inst.shape
    top_id = max(int(np.abs(inst).max(initial=0)), int(np.abs(sem).max(initial=0)))
    if top_id > _MAX_RESAMPLED_ID:
        raise ValueError(f"label ids up to {top_id} cannot be resampled exactly (limit {_MAX_RESAMPLED_ID}); "
                         "renumber the instances")
    # window centre in source pixel coordinates (pixel i spans [i, i + 1))
    half_h, half_w = out_h / scale / 2, out_w / scale / 2
    cy = rng.uniform(min(half_h, height - half_h), max(half_h, height - half_h))
    cx = rng.uniform(min(half_w, width - half_w), max(half_w, width - half_w))
    # output pixel centres -> source points: centre + R(angle) (offset / scale)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    oy = torch.arange(out_h, dtype=torch.float32) + 0.5 - out_h / 2
    ox = torch.arange(out_w, dtype=torch.float32) + 0.5 - out_w / 2
    sy = cy + cos * oy[:, None] + sin * ox[None, :]
    sx = cx - sin * oy[:, None] + cos * ox[None, :]
    # resample only the source rows/columns the window touches (plus one pixel for bilinear)
    y0 = max(0, math.floor(sy.min()) - 1)
    y1 = min(height, math.ceil(sy.max()) + 1)
    x0 = max(0, math.floor(sx.min()) - 1)
    x1 = min(width, math.ceil(sx.max()) + 1)
    if y1 <= y0 or x1 <= x0:  # cannot happen for a window placed as above; keep shapes right anyway
        y0, y1, x0, x1 = 0, height, 0, width
    grid = torch.stack([2 * (sx - x0) / (x1 - x0) - 1, 2 * (sy - y0) / (y1 - y0) - 1], dim=-1)[None]
    region = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float() / 255.0
    labels = np.stack([inst[y0:y1, x0:x1], sem[y0:y1, x0:x1]]).astype(np.float32) + 1  # 0 = outside
    out_image = F.grid_sample(region, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    out_labels = F.grid_sample(torch.from_numpy(labels)[None], grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[0].round().long() - 1
    return out_image, out_labels[0], out_labels[1]


class TransformedDataset(torch.utils.data.Dataset):
    """Applies a transform to every sample of a dataset."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.transform(self.dataset[i])
