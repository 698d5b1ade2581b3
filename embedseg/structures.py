"""Instances: the one currency between grouping, evaluation and visualisation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class Instances:
    """K instance masks of one image with a score and a class label (1..C) each.

    masks: bool [K, H, W]; scores: float [K]; labels: int [K]. Masks may overlap; when they are
    flattened to a label map the higher score wins.
    """

    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ValueError(f"Instances.masks must be [K, H, W], got shape {self.masks.shape}")
        k = len(self.masks)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.scores) != k or len(self.labels) != k:
            raise ValueError(
                f"Instances needs one score and one label per mask: {k} masks, "
                f"{len(self.scores)} scores, {len(self.labels)} labels"
            )

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.masks.shape[1:])

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        return cls(np.zeros((0, height, width), bool), np.zeros(0), np.zeros(0, np.int64))

    @classmethod
    def from_label_map(cls, label_map: np.ndarray, labels=None, scores=None) -> Instances:
        """One instance per positive id of `label_map` (0 = background, negative = ignored).

        `labels` gives the class of each instance: an array aligned with the sorted ids, a dict
        {id: class}, or a semantic map [H, W] whose majority value inside each instance is taken.
        Without it every instance is class 1.
        """
        label_map = np.asarray(label_map)
        if label_map.ndim != 2:
            raise ValueError(f"label map must be 2-D [H, W], got shape {label_map.shape}")
        if not np.issubdtype(label_map.dtype, np.integer):
            raise ValueError(f"label map must hold integer ids, got dtype {label_map.dtype}")
        ids = np.unique(label_map)
        ids = ids[ids > 0]
        masks = label_map[None] == ids[:, None, None]
        if labels is None:
            classes = np.ones(len(ids), np.int64)
        elif isinstance(labels, dict):
            classes = np.array([labels[int(i)] for i in ids], np.int64)
        else:
            labels = np.asarray(labels)
            if labels.shape == label_map.shape:
                classes = np.array([np.bincount(labels[m].astype(np.int64)).argmax() for m in masks], np.int64)
            elif len(labels) == len(ids):
                classes = labels.astype(np.int64)
            else:
                raise ValueError(
                    f"labels must be a semantic map of shape {label_map.shape} or one class per id "
                    f"({len(ids)}), got shape {labels.shape}"
                )
        scores = np.ones(len(ids)) if scores is None else scores
        return cls(masks, scores, classes)

    def score_order(self) -> np.ndarray:
        """Mask indices by score, highest first (equal scores: the lower index first)."""
        return np.argsort(-self.scores, kind="stable")

    def to_label_map(self) -> np.ndarray:
        """Flatten to an int32 map with ids 1..K in `score_order` (the first mask wins overlaps)."""
        height, width = self.image_size
        label_map = np.zeros((height, width), np.int32)
        for new_id, k in enumerate(self.score_order(), start=1):
            label_map[self.masks[k] & (label_map == 0)] = new_id
        return label_map

    def to_semantic_map(self) -> np.ndarray:
        """Class of every pixel (0 = background); overlaps as in `to_label_map`."""
        class_of_id = np.concatenate([[0], self.labels[self.score_order()]]).astype(np.int64)
        return class_of_id[self.to_label_map()]

    def to_rle(self) -> list[dict]:
        """COCO run-length encodings, one per mask, with `counts` as a str (JSON-ready)."""
        if len(self) == 0:
            return []
        rles = mask_utils.encode(np.asfortranarray(self.masks.transpose(1, 2, 0).astype(np.uint8)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
        return rles

    @classmethod
    def from_rle(cls, rles: list[dict], scores, labels, image_size=None) -> Instances:
        if len(rles) == 0:
            if image_size is None:
                raise ValueError("from_rle needs image_size when there are no RLEs")
            return cls.empty(*image_size)
        rles = [dict(r, counts=r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]) for r in rles]
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
        return cls(masks, scores, labels)

    def to_coco_results(self, image_id: int) -> list[dict]:
        """COCO results entries (segmentation as RLE) for pycocotools' loadRes."""
        return [
            {"image_id": int(image_id), "category_id": int(c), "segmentation": rle, "score": float(s)}
            for rle, c, s in zip(self.to_rle(), self.labels, self.scores)
        ]

    def areas(self) -> np.ndarray:
        return self.masks.reshape(len(self), -1).sum(1)

    def select(self, keep) -> Instances:
        return Instances(self.masks[keep], self.scores[keep], self.labels[keep])
