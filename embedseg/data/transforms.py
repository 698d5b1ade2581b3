"""Joint image/label augmentation and conversion of raw samples to tensors."""
from __future__ import annotations

import numpy as np
import torch

# Images are scaled to [0, 1] and centred; one fixed normalisation for every data set keeps
# checkpoints usable on any image without stored statistics.
MEAN, STD = 0.5, 0.25


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W], normalised."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    return (torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float() / 255.0 - MEAN) / STD


def sample_to_tensors(sample: dict) -> dict:
    return {
        "image": image_to_tensor(sample["image"]),
        "instances": torch.from_numpy(np.ascontiguousarray(sample["instances"]).astype(np.int64)),
        "semantic": torch.from_numpy(np.ascontiguousarray(sample["semantic"]).astype(np.int64)),
        "image_id": int(sample["image_id"]),
    }


class TrainTransform:
    """Random crop (padding with ignore labels when the image is smaller), flips and 90-degree
    rotations, applied jointly to image, instance and semantic maps, then converted to tensors."""

    def __init__(self, crop_size: int | None = None, flip: bool = True, rot90: bool = True):
        self.crop_size, self.flip, self.rot90 = crop_size, flip, rot90

    def __call__(self, sample: dict) -> dict:
        # Drawn from torch's generator: seeded by the config in the main process and distinct
        # in every DataLoader worker, so workers do not repeat each other's augmentations.
        rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        image, inst, sem = sample["image"], sample["instances"], sample["semantic"]
        if self.crop_size is not None:
            image, inst, sem = random_crop(image, inst, sem, self.crop_size, rng)
        if self.flip and rng.random() < 0.5:
            image, inst, sem = image[:, ::-1], inst[:, ::-1], sem[:, ::-1]
        if self.flip and rng.random() < 0.5:
            image, inst, sem = image[::-1], inst[::-1], sem[::-1]
        if self.rot90:
            k = int(rng.integers(4))
            image, inst, sem = np.rot90(image, k), np.rot90(inst, k), np.rot90(sem, k)
        return sample_to_tensors(dict(sample, image=image, instances=inst, semantic=sem))


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


class TransformedDataset(torch.utils.data.Dataset):
    """Applies a transform to every sample of a dataset."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.transform(self.dataset[i])
