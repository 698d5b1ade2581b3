"""Matching metrics of the nuclei and leaf benchmarks, next to COCO AP.

- `matching_ap`: AP at one IoU threshold by one-to-one matching, as used for DSB2018 and by
  EmbedSeg (Lalit et al. 2021), whose `utils/metrics.py` is StarDist's `matching`: per image
  AP = TP / (TP + FP + FN) (StarDist calls it `accuracy`), then the mean over images. A GT and a
  predicted instance may be paired when IoU >= t; TP is the size of the largest one-to-one
  pairing (StarDist: `linear_sum_assignment` that maximises the number of pairs with IoU >= t).
  For t > 0.5 and non-overlapping masks at most one pair per instance qualifies, so TP is the
  plain count; for t <= 0.5 (or overlapping masks) the optimal pairing is computed with
  `scipy.optimize.linear_sum_assignment`. The mean over the thresholds 0.5:0.05:0.95 is the
  DSB2018 Kaggle score.
- `sbd`, `dic`, `abs_dic`: the CVPPP leaf segmentation challenge (Scharr et al. 2016):
  Dice(a, b) = 2|a n b| / (|a| + |b|); BD(La, Lb) = 1/M sum_i max_j Dice(La_i, Lb_j) over the
  M objects of La; SBD = min(BD(gt, pred), BD(pred, gt)); DiC = #pred - #gt. Each is computed
  per image and averaged over images (the challenge reports mean SBD, mean DiC and mean |DiC|).
  Background is excluded. Unlike the challenge's script we count the objects present rather than
  `max - min` of the label values, so the labels need not be consecutive.
- `map_r`: region mAP^r (Hariharan et al. 2014, SDS; reported by Fathi et al. 2017 on VOC 2012
  at IoU 0.5..0.9). Per class, predictions of the whole data set are ranked by score; within an
  image, in descending score order, each prediction takes the still-unmatched GT of its class with
  the highest IoU and is a TP when that IoU >= t (SDS `overlaps_to_labels`), otherwise a FP.
  AP per class is the VOC 2010+ "all points" area under the interpolated precision/recall curve
  (precision made monotone from the right, summed over recall steps, as `VOCap` does); mAP^r is
  the mean over the classes that have ground truth.

Conventions (stated because the references differ on them):

- One image is an `Instances` or an integer label map [H, W] (0 = background, < 0 = ignored;
  every object class 1 and score 1). A data set is a list of them, ground truth and predictions
  aligned. Masks are used as given, so overlapping predicted masks are allowed; with disjoint
  masks (every grouper here) this is exactly the label-map computation of EmbedSeg and CVPPP.
- `matching_ap`, `sbd` and `dic` ignore classes (the benchmarks have one class); `map_r` is per
  class.
- Empty images: AP at t is 1.0 when an image has neither GT nor predictions (StarDist/EmbedSeg
  return 0 there; it never happens on DSB2018 or CVPPP, where every image has objects), else 0.0
  when either side is empty. SBD is 1.0 when both sides are empty and 0.0 when exactly one is.
  A class with no GT is left out of mAP^r (as in VOC); with no GT at all mAP^r is NaN.
- `crowd` (one bool mask [H, W] or None per image): a prediction with at least half of its
  pixels in the crowd region is dropped before matching, the COCO rule for detections that
  match an ignore region at IoU 0.5 (intersection over the prediction's area).
- All values are fractions in [0, 1] except DiC and |DiC|, which are object counts per image.

Every pairwise overlap of an image comes from one sparse product of pixel-membership matrices
(no Python loop over instance pairs); the SDS greedy matching loops over predictions only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from embedseg.evaluation.records import ImageRecords
from embedseg.structures import Instances

MATCHING_METRICS = ("matching_ap", "sbd", "dic", "map_r")
MAP_R_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)  # Fathi et al. 2017, Table 1
MISSED_KINDS = ("merged", "low_iou", "not_found")  # why a GT object was missed (missed_kinds)
MISSED_KEYS = tuple(f"missed_{kind}" for kind in MISSED_KINDS)  # their counts' keys in the results
# keys of evaluate_matching that are counts, not fractions
COUNT_KEYS = ("DiC", "abs_DiC", *MISSED_KEYS)


# ----------------------------------------------------------------------------- overlaps


@dataclass
class _Regions:
    """The objects of one image as a sparse pixel-membership matrix [K, H*W]."""

    pixels: sparse.csr_matrix
    scores: np.ndarray
    labels: np.ndarray
    image_size: tuple

    @property
    def areas(self) -> np.ndarray:
        return np.diff(self.pixels.indptr)  # one stored 1 per pixel of each row

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def select(self, keep: np.ndarray) -> _Regions:
        return _Regions(self.pixels[keep], self.scores[keep], self.labels[keep], self.image_size)


def _regions(image, what: str) -> _Regions:
    if isinstance(image, Instances):
        k = len(image)
        flat = image.masks.reshape(k, int(np.prod(image.image_size)))
        foreground = np.flatnonzero(flat.any(0))  # scan the [K, H*W] stack once, cheaply
        rows, cols = np.nonzero(flat[:, foreground])  # row-major: already CSR order
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=k))])
        pixels = sparse.csr_matrix((np.ones(len(cols), np.int64), foreground[cols], indptr), shape=flat.shape)
        return _Regions(pixels, image.scores, image.labels, image.image_size)
    label_map = np.asarray(image)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"{what}: expected Instances or an integer label map [H, W], got an array "
                         f"of shape {label_map.shape} and dtype {label_map.dtype}")
    flat = label_map.ravel()
    foreground = np.flatnonzero(flat > 0)
    ids, rows = np.unique(flat[foreground], return_inverse=True)
    pixels = sparse.csr_matrix((np.ones(len(foreground), np.int64), (rows, foreground)),
                               shape=(len(ids), flat.size))
    return _Regions(pixels, np.ones(len(ids)), np.ones(len(ids), np.int64), label_map.shape)


@dataclass
class ImageOverlap:
    """Pixel counts of every GT x predicted pair of one image, with the data the metrics need."""

    intersection: np.ndarray  # [G, P] pixels in both
    gt_area: np.ndarray  # [G]
    pred_area: np.ndarray  # [P]
    gt_labels: np.ndarray  # [G]
    pred_labels: np.ndarray  # [P]
    pred_scores: np.ndarray  # [P]

    @cached_property  # used per class by map_r: computed once
    def iou(self) -> np.ndarray:
        union = self.gt_area[:, None] + self.pred_area[None, :] - self.intersection
        return self.intersection / np.maximum(union, 1)

    @cached_property
    def dice(self) -> np.ndarray:
        total = self.gt_area[:, None] + self.pred_area[None, :]
        return 2 * self.intersection / np.maximum(total, 1)


def image_overlap(gt, pred, crowd: np.ndarray | None = None, where: str = "image") -> ImageOverlap:
    """Overlaps of one image (`Instances` or label maps); see the module docstring for `crowd`."""
    g, p = _regions(gt, f"{where} ground truth"), _regions(pred, f"{where} prediction")
    if g.image_size != p.image_size:
        raise ValueError(f"{where}: ground truth is {tuple(g.image_size)} but prediction is "
                         f"{tuple(p.image_size)}")
    if crowd is not None and len(p):
        crowd = np.asarray(crowd, bool)
        if crowd.shape != tuple(g.image_size):
            raise ValueError(f"{where}: crowd mask has shape {crowd.shape}, expected {tuple(g.image_size)}")
        inside = p.pixels @ crowd.ravel().astype(np.int64)
        p = p.select(inside * 2 < p.areas)
    intersection = (g.pixels @ p.pixels.T).toarray()
    return ImageOverlap(intersection, g.areas, p.areas, g.labels, p.labels, p.scores)


def pairwise_iou(gt, pred) -> np.ndarray:
    """IoU [G, P] of every ground-truth and predicted object of one image."""
    return image_overlap(gt, pred).iou


def _overlaps(ground_truth, predictions, crowd=None) -> list[ImageOverlap]:
    """One ImageOverlap per image; a single image (not in a list) is accepted too."""
    ground_truth, predictions, crowd = _image_lists(ground_truth, predictions, crowd)
    return [image_overlap(g, p, c, where=f"image {i}")
            for i, (g, p, c) in enumerate(zip(ground_truth, predictions, crowd))]


def _image_lists(ground_truth, predictions, crowd) -> tuple[list, list, list]:
    """Aligned lists of ground truth, predictions and crowd masks (None where there is none), checked."""
    if isinstance(ground_truth, Instances) or (isinstance(ground_truth, np.ndarray) and ground_truth.ndim == 2):
        ground_truth, predictions = [ground_truth], [predictions]
        crowd = None if crowd is None else [crowd]
    if len(ground_truth) != len(predictions):
        raise ValueError(f"matching metrics need one prediction per image: {len(ground_truth)} "
                         f"ground-truth images, {len(predictions)} predictions")
    if len(ground_truth) == 0:
        raise ValueError("matching metrics need at least one image")
    if crowd is not None and len(crowd) != len(ground_truth):
        raise ValueError(f"crowd needs one mask (or None) per image: {len(ground_truth)} images, "
                         f"{len(crowd)} crowd masks")
    return list(ground_truth), list(predictions), list(crowd or [None] * len(ground_truth))


def _thresholds(values, what: str) -> np.ndarray:
    t = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if t.ndim != 1 or t.size == 0 or np.any(t <= 0) or np.any(t > 1):
        raise ValueError(f"{what} must be IoU thresholds in (0, 1], got {values!r}")
    return t


# ----------------------------------------------------------------------------- AP at IoU t


def max_pairs(iou: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """For each t, the size of the largest one-to-one pairing of rows and columns with iou >= t."""
    counts = []
    for t in thresholds:  # a few thresholds; everything inside is vectorised
        candidate = iou >= t
        sub = candidate[candidate.any(1)][:, candidate.any(0)]
        if sub.size == 0:
            counts.append(0)
        elif (sub.sum(0) <= 1).all() and (sub.sum(1) <= 1).all():
            counts.append(int(sub.sum()))  # every candidate pair is already unique
        else:
            rows, cols = linear_sum_assignment(sub, maximize=True)
            counts.append(int(sub[rows, cols].sum()))
    return np.asarray(counts, np.int64)


def match_counts(overlap: ImageOverlap, thresholds: Sequence[float]) -> np.ndarray:
    """[T, 3] integer (TP, FP, FN) of one image at each IoU threshold."""
    tp = max_pairs(overlap.iou, thresholds)
    n_gt, n_pred = overlap.intersection.shape
    return np.stack([tp, n_pred - tp, n_gt - tp], axis=1)


def matched_ground_truth(iou: np.ndarray, threshold: float) -> np.ndarray:
    """[G] bool: the GT objects of a largest one-to-one pairing with predictions at iou >= threshold."""
    matched = np.zeros(iou.shape[0], bool)
    candidate = iou >= threshold
    rows, cols = np.nonzero(candidate.any(1))[0], np.nonzero(candidate.any(0))[0]
    if len(rows):
        sub = candidate[np.ix_(rows, cols)]
        r, c = linear_sum_assignment(sub, maximize=True)
        matched[rows[r[sub[r, c]]]] = True
    return matched


def missed_kinds(overlap: ImageOverlap, threshold: float) -> np.ndarray:
    """[3] counts of one image's GT objects left unmatched at `threshold`, by why (each GT in one kind):
    merged (a prediction holds at least half of it and at least half of another GT object), low IoU
    (the best prediction reaches IoU 0.1), not found (none does)."""
    missed = ~matched_ground_truth(overlap.iou, threshold)
    holds = overlap.intersection * 2 >= overlap.gt_area[:, None]  # [G, P]: p holds at least half of g
    merging = holds.sum(0) >= 2  # [P]: predictions that hold half of two or more GT objects
    merged = missed & (holds & merging[None]).any(1)
    low = missed & ~merged & (overlap.iou.max(1, initial=0.0) >= 0.1)
    return np.array([merged.sum(), low.sum(), (missed & ~merged & ~low).sum()], np.int64)


def image_matching_ap(overlap: ImageOverlap, thresholds: np.ndarray) -> np.ndarray:
    """[T] TP / (TP + FP + FN) of one image at each threshold (1.0 with neither GT nor predictions)."""
    tp, fp, fn = match_counts(overlap, thresholds).T
    total = tp + fp + fn
    return np.where(total > 0, tp / np.maximum(total, 1), 1.0)


def _matching_ap(overlaps: list[ImageOverlap], thresholds: np.ndarray) -> np.ndarray:
    return np.mean([image_matching_ap(o, thresholds) for o in overlaps], axis=0)


def matching_ap(ground_truth, predictions, iou_threshold: float | Sequence[float] = 0.5, crowd=None):
    """Mean over images of TP / (TP + FP + FN) at `iou_threshold` (EmbedSeg's AP, StarDist's accuracy).

    Takes one image or a list of images. A scalar threshold gives a float; a sequence gives
    {threshold: AP}.
    """
    thresholds = _thresholds(iou_threshold, "iou_threshold")
    values = _matching_ap(_overlaps(ground_truth, predictions, crowd), thresholds)
    if np.ndim(iou_threshold) == 0:
        return float(values[0])
    return {float(t): float(v) for t, v in zip(thresholds, values)}


# ----------------------------------------------------------------------------- CVPPP: SBD, DiC


def _sbd_image(overlap: ImageOverlap) -> float:
    n_gt, n_pred = overlap.intersection.shape
    if n_gt == 0 or n_pred == 0:
        return float(n_gt == n_pred)  # both empty: nothing to find, nothing wrong
    dice = overlap.dice
    return float(min(dice.max(1).mean(), dice.max(0).mean()))


def sbd(ground_truth, predictions, crowd=None) -> float:
    """Symmetric Best Dice (CVPPP), averaged over images."""
    return float(np.mean([_sbd_image(o) for o in _overlaps(ground_truth, predictions, crowd)]))


def _dic(overlaps: list[ImageOverlap]) -> np.ndarray:
    return np.array([o.intersection.shape[1] - o.intersection.shape[0] for o in overlaps], np.float64)


def dic(ground_truth, predictions, crowd=None) -> float:
    """Mean signed Difference in Count (#predicted - #GT objects per image); a count, not a fraction."""
    return float(_dic(_overlaps(ground_truth, predictions, crowd)).mean())


def abs_dic(ground_truth, predictions, crowd=None) -> float:
    """Mean |DiC| over images (CVPPP); a count, not a fraction."""
    return float(np.abs(_dic(_overlaps(ground_truth, predictions, crowd))).mean())


# ----------------------------------------------------------------------------- mAP^r


def greedy_true_positives(iou: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[T, P] bool: SDS matching of one image and class, for every threshold at once.

    Predictions in descending score order each take the still-unmatched GT with the highest IoU;
    a TP when that IoU >= t. The loop runs over predictions, vectorised over thresholds and GT.
    """
    n_gt, n_pred = iou.shape
    tp = np.zeros((len(thresholds), n_pred), bool)
    if n_gt == 0 or n_pred == 0:
        return tp
    covered = np.zeros((len(thresholds), n_gt), bool)
    order = np.argsort(-scores, kind="stable")
    order = order[iou.max(0)[order] >= thresholds.min()]  # below every threshold: a FP everywhere
    steps = np.arange(len(thresholds))
    for k in order:
        row = np.where(covered, -1.0, iou[:, k])  # [T, G]
        best = row.argmax(1)
        ok = row[steps, best] >= thresholds
        tp[ok, k] = True
        covered[steps[ok], best[ok]] = True
    return tp


def voc_ap(true_positive: np.ndarray, num_gt: int) -> np.ndarray:
    """[T] VOC 2010+ AP ("all points") of ranked detections `true_positive` [T, N] (best first)."""
    tp = np.cumsum(true_positive, axis=1)
    fp = np.cumsum(~true_positive, axis=1)
    rows = len(true_positive)
    recall = np.hstack([np.zeros((rows, 1)), tp / num_gt, np.ones((rows, 1))])
    precision = np.hstack([np.zeros((rows, 1)), tp / np.maximum(tp + fp, 1), np.zeros((rows, 1))])
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    return (np.diff(recall, axis=1) * envelope[:, 1:]).sum(1)


def image_true_positives(overlap: ImageOverlap, thresholds: np.ndarray) -> np.ndarray:
    """[T, P] bool: which predictions of one image are SDS true positives (each matched within its class)."""
    flags = np.zeros((len(thresholds), len(overlap.pred_labels)), bool)
    for c in np.unique(overlap.pred_labels):
        g, p = overlap.gt_labels == c, overlap.pred_labels == c
        flags[:, p] = greedy_true_positives(overlap.iou[g][:, p], overlap.pred_scores[p], thresholds)
    return flags


@dataclass
class RankedImage:
    """What mAP^r keeps of one image: class of every GT, class, score and TP flags [T, P] of every prediction."""

    gt_labels: np.ndarray
    pred_labels: np.ndarray
    pred_scores: np.ndarray
    true_positive: np.ndarray


def ranked_image(overlap: ImageOverlap, thresholds: np.ndarray) -> RankedImage:
    return RankedImage(overlap.gt_labels, overlap.pred_labels, overlap.pred_scores,
                       image_true_positives(overlap, thresholds))


def map_r_of_images(images: list[RankedImage], num_thresholds: int) -> np.ndarray:
    """[T] mean over the classes with GT of the VOC AP of the data set's ranked predictions of that class."""
    classes = np.unique(np.concatenate([im.gt_labels for im in images]))
    per_class = []
    for c in classes:
        num_gt = sum(int((im.gt_labels == c).sum()) for im in images)
        scores = np.concatenate([im.pred_scores[im.pred_labels == c] for im in images])
        flags = np.concatenate([im.true_positive[:, im.pred_labels == c] for im in images], axis=1)
        order = np.argsort(-scores, kind="stable")  # data-set ranking; ties keep image order
        per_class.append(voc_ap(flags[:, order], num_gt))
    if not per_class:
        return np.full(num_thresholds, np.nan)
    return np.mean(per_class, axis=0)


def _map_r(overlaps: list[ImageOverlap], thresholds: np.ndarray) -> np.ndarray:
    return map_r_of_images([ranked_image(o, thresholds) for o in overlaps], len(thresholds))


def map_r(ground_truth, predictions, thresholds: Sequence[float] = MAP_R_THRESHOLDS, crowd=None) -> dict:
    """Region mAP^r at each IoU threshold: {threshold: mean over classes of VOC AP}."""
    t = _thresholds(thresholds, "thresholds")
    values = _map_r(_overlaps(ground_truth, predictions, crowd), t)
    return {float(a): float(v) for a, v in zip(t, values)}


# ----------------------------------------------------------------------------- entry point


def threshold_key(prefix: str, threshold: float) -> str:
    """'match_AP' + 0.5 -> 'match_AP50'; 0.55 -> '...55'; 0.525 -> '...52.5'."""
    return f"{prefix}{round(100 * threshold, 4):g}"


class MatchingEvaluator(ImageRecords):
    """The matching metrics of a data set, one image at a time (see the module docstring).

    `process` reduces each image to what the metrics need -- per-image AP at each IoU threshold,
    SBD, the object counts, and for mAP^r the class, score and TP flags of every prediction --
    so no mask outlives its call. `evaluate` gives `evaluate_matching`'s dict. `state()` is the
    plain, picklable list of per-image records; `merge(states)` appends other evaluators' records
    (in image order) so that one process can score images evaluated elsewhere.
    """

    def __init__(self, metrics: Sequence[str] = MATCHING_METRICS, iou_thresholds: Sequence[float] = (0.5,),
                 map_r_thresholds: Sequence[float] = MAP_R_THRESHOLDS):
        unknown = [m for m in metrics if m not in MATCHING_METRICS]
        if unknown:
            raise ValueError(f"unknown matching metric(s) {unknown}; choices: {', '.join(MATCHING_METRICS)}")
        self.metrics = tuple(metrics)
        self.iou_thresholds = _thresholds(iou_thresholds, "iou_thresholds") if "matching_ap" in metrics else None
        self.map_r_thresholds = _thresholds(map_r_thresholds, "map_r_thresholds") if "map_r" in metrics else None
        self.reset()

    def process(self, ground_truth, prediction, crowd: np.ndarray | None = None) -> None:
        """Score one image (`Instances` or label maps); see the module docstring for `crowd`."""
        o = image_overlap(ground_truth, prediction, crowd, where=f"image {len(self.images)}")
        record = {"num_gt": o.intersection.shape[0], "num_pred": o.intersection.shape[1]}
        if self.iou_thresholds is not None:
            record["matching_ap"] = image_matching_ap(o, self.iou_thresholds)
            record["missed"] = missed_kinds(o, self.iou_thresholds[0])
        if "sbd" in self.metrics:
            record["sbd"] = _sbd_image(o)
        if self.map_r_thresholds is not None:
            record["map_r"] = ranked_image(o, self.map_r_thresholds)
        self.images.append(record)

    def evaluate(self) -> dict:
        """The flat dict of `evaluate_matching`."""
        if not self.images:
            raise ValueError("matching metrics need at least one image")
        out = {}
        if self.iou_thresholds is not None:
            self._per_threshold(out, "match_AP", self.iou_thresholds,
                                np.mean([im["matching_ap"] for im in self.images], axis=0))
            missed = np.sum([im["missed"] for im in self.images], axis=0)
            out.update({key: int(n) for key, n in zip(MISSED_KEYS, missed)})
        if "sbd" in self.metrics:
            out["SBD"] = float(np.mean([im["sbd"] for im in self.images]))
        if "dic" in self.metrics:
            counts = np.array([im["num_pred"] - im["num_gt"] for im in self.images], np.float64)
            out.update(DiC=float(counts.mean()), abs_DiC=float(np.abs(counts).mean()))
        if self.map_r_thresholds is not None:
            t = self.map_r_thresholds
            self._per_threshold(out, "mAPr", t, map_r_of_images([im["map_r"] for im in self.images], len(t)))
        out["num_images"] = len(self.images)
        return out

    def image_scores(self) -> list[dict]:
        """One flat dict per image, in the order processed: object counts, matching AP at each IoU
        threshold and why objects were missed at the first, SBD (those the metrics keep per image)."""
        rows = []
        for im in self.images:
            row = {"num_gt": im["num_gt"], "num_pred": im["num_pred"]}
            if self.iou_thresholds is not None:
                row.update({threshold_key("match_AP", a): float(v) for a, v in zip(self.iou_thresholds, im["matching_ap"])})
                row.update({key: int(n) for key, n in zip(MISSED_KEYS, im["missed"])})
            if "sbd" in im:
                row["SBD"] = float(im["sbd"])
            rows.append(row)
        return rows

    @staticmethod
    def _per_threshold(out: dict, prefix: str, thresholds: np.ndarray, scores: np.ndarray) -> None:
        out.update({threshold_key(prefix, a): float(v) for a, v in zip(thresholds, scores)})
        if len(thresholds) > 1:
            out[prefix] = float(np.mean(scores))


def evaluate_matching(
    ground_truth: list,
    predictions: list,
    metrics: Sequence[str] = MATCHING_METRICS,
    iou_thresholds: Sequence[float] = (0.5,),
    map_r_thresholds: Sequence[float] = MAP_R_THRESHOLDS,
    crowd: list | None = None,
) -> dict:
    """The matching metrics named in `metrics` as one flat dict (for metrics.json).

    Keys: `matching_ap` -> match_AP50 (one per `iou_thresholds`, plus match_AP, their mean, when
    there is more than one) and missed_merged, missed_low_iou, missed_not_found (GT objects over all
    images left unmatched at the first threshold, by why: `missed_kinds`); `sbd` -> SBD; `dic` -> DiC (mean signed) and abs_DiC (mean |DiC|),
    both object counts per image, not fractions; `map_r` -> mAPr50 ... mAPr90 and mAPr (their
    mean); always num_images. Everything else is a fraction in [0, 1] (NaN: nothing to score).
    A `MatchingEvaluator` fed the images one by one gives the same dict.
    """
    evaluator = MatchingEvaluator(metrics, iou_thresholds, map_r_thresholds)
    for g, p, c in zip(*_image_lists(ground_truth, predictions, crowd)):
        evaluator.process(g, p, c)
    return evaluator.evaluate()
