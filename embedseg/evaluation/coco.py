"""COCO mask AP of predicted `Instances` against ground-truth `Instances` (pycocotools, 'segm').

Both sides are turned into in-memory COCO datasets (image ids 1..N in list order, annotation ids
from 1 because pycocotools reads a matched id of 0 as "unmatched", category ids = class labels)
and scored with `COCOeval(iouType="segm")` with `params.maxDets = [1, 10, max_dets]`. The numbers
are read from `E.eval["precision"]` / `E.eval["recall"]` at the last maxDets index, exactly as
`COCOeval.summarize()` averages them, but without its text that assumes 100 detections.

`max_dets` defaults to 1000 because dense images (DSB2018: up to 375 nuclei) would otherwise
lose every detection beyond the 100 best-scored ones. COCO's standard 100 gives identical numbers
whenever no image has more than 100 predictions, so the results stay comparable with COCO's.

Conventions of the returned dict (all metrics are fractions in [0, 1]):

- An entry that has no ground truth to score (e.g. APs when no GT is small, or every AP when
  there is no GT at all) is `float('nan')` -- pycocotools' -1. A category without ground truth
  is left out of `per_class` (and, as in COCO, out of the class-aware mean).
- No predictions at all is fine: every AP with ground truth is 0.0.
- `agnostic_*` is a second evaluation with `params.useCats = 0`: labels are ignored and any
  prediction may match any ground-truth instance of its image.
- `crowd` (optional, one bool [H, W] mask or None per image) marks ignore regions. Since such a
  mask carries no class, it is added as one `iscrowd=1` annotation per category that occurs in
  that image's ground truth or predictions, so predictions of any class inside it are ignored
  (COCO crowd rule: IoU with a crowd region = intersection / prediction area).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from embedseg.evaluation.records import ImageRecords
from embedseg.structures import Instances

_AREAS = (("APs", "small"), ("APm", "medium"), ("APl", "large"))


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _annotations(rles: list[dict], start_id: int, **fields) -> list[dict]:
    """Add area, bbox and a unique id (from start_id) to COCO entries that hold an RLE."""
    anns = []
    for i, ann in enumerate(rles):
        rle = ann["segmentation"]
        ann.update(id=start_id + i, area=float(mask_utils.area(rle)),
                   bbox=[float(v) for v in mask_utils.toBbox(rle)], **fields)
        anns.append(ann)
    return anns


def _mean(values: np.ndarray) -> float:
    """Mean of the entries that are not -1 (pycocotools' "nothing to score"), NaN if none."""
    values = values[values > -1]
    return float(np.mean(values)) if values.size else float("nan")


def _run(gt: COCO, dt: COCO, max_dets: int, use_cats: bool) -> COCOeval:
    E = COCOeval(gt, dt, iouType="segm")
    E.params.maxDets = [1, 10, max_dets]
    E.params.useCats = int(use_cats)
    with contextlib.redirect_stdout(io.StringIO()):
        E.evaluate()
        E.accumulate()
    return E


def _summary(E: COCOeval, prefix: str = "", areas: bool = True) -> dict:
    p, precision = E.params, E.eval["precision"]  # [T, R, K, A, M]
    t50, t75 = (np.flatnonzero(np.isclose(p.iouThrs, t))[0] for t in (0.5, 0.75))
    out = {f"{prefix}AP": _mean(precision[:, :, :, 0, -1]),
           f"{prefix}AP50": _mean(precision[t50, :, :, 0, -1]),
           f"{prefix}AP75": _mean(precision[t75, :, :, 0, -1])}
    if areas:
        for key, name in _AREAS:
            out[prefix + key] = _mean(precision[:, :, :, p.areaRngLbl.index(name), -1])
        out[f"{prefix}AR"] = _mean(E.eval["recall"][:, :, 0, -1])  # recall: [T, K, A, M]
    return out


class COCOEvaluator(ImageRecords):
    """COCO mask AP of a data set, one image at a time.

    `process` encodes the image's ground truth, predictions and crowd region as RLE at once (with
    labels and scores), so no dense mask outlives its call; `evaluate` builds the COCO objects
    from them and gives `evaluate_coco`'s dict. `state()` is the plain, picklable list of
    per-image records; `merge(states)` appends other evaluators' records (in image order) so that
    one process can score images encoded elsewhere.
    """

    def __init__(self, class_names: list[str] | None = None, max_dets: int = 1000, class_agnostic: bool = True):
        if max_dets < 1:
            raise ValueError(f"max_dets must be >= 1, got {max_dets}")
        self.class_names, self.max_dets, self.class_agnostic = class_names, int(max_dets), class_agnostic
        self.reset()

    def process(self, ground_truth: Instances, prediction: Instances, crowd: np.ndarray | None = None) -> None:
        """Encode one image; `crowd` is its ignore region (bool [H, W]) or None."""
        check_image(len(self.images), ground_truth, prediction, crowd, self.class_names)
        crowd = crowd if crowd is not None and np.any(crowd) else None
        self.images.append({
            "size": ground_truth.image_size,
            "gt": _encode(ground_truth),
            "pred": _encode(prediction),
            "crowd": None if crowd is None else _encode(Instances(np.asarray(crowd, bool)[None], [1.0], [1])),
        })

    def evaluate(self) -> dict:
        """AP, AP50, AP75, APs, APm, APl, AR, per_class, agnostic_* (see `evaluate_coco`)."""
        names = self._category_names()
        gt_coco, dt_coco = coco_datasets(self.images, names)
        E = _run(gt_coco, dt_coco, self.max_dets, use_cats=True)
        result = _summary(E)
        result["per_class"] = _per_class(E, names)
        if self.class_agnostic:
            result.update(_summary(_run(gt_coco, dt_coco, self.max_dets, use_cats=False), "agnostic_", areas=False))
        result.update(num_images=len(self.images), num_gt=sum(len(im["gt"]["labels"]) for im in self.images),
                      num_pred=len(dt_coco.dataset["annotations"]), max_dets=self.max_dets)
        return result

    def _category_names(self) -> dict[int, str]:
        """{class id: name} of every named class and every label that occurs, in id order."""
        names = self.class_names
        class_ids = set(range(1, len(names) + 1)) if names else set()
        for im in self.images:
            class_ids |= set(im["gt"]["labels"].tolist()) | set(im["pred"]["labels"].tolist())
        return {c: (names[c - 1] if names else str(c)) for c in sorted(class_ids)}


def evaluate_coco(
    ground_truth: list[Instances],
    predictions: list[Instances],
    class_names: list[str] | None = None,
    max_dets: int = 1000,
    class_agnostic: bool = True,
    crowd: list[np.ndarray | None] | None = None,
) -> dict:
    """COCO mask AP of `predictions` against `ground_truth` (one `Instances` per image each).

    `class_names[i]` names class id i + 1 (default: `str(id)`). Returns AP, AP50, AP75, APs,
    APm, APl, AR (all with `max_dets` detections per image), `per_class` {name: AP},
    `agnostic_AP/AP50/AP75` when `class_agnostic`, and num_images, num_gt, num_pred, max_dets.
    See the module docstring for the max_dets default and NaN, crowd and agnostic conventions.
    A `COCOEvaluator` fed the images one by one gives the same dict.
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(f"evaluate_coco needs one prediction per image: {len(ground_truth)} "
                         f"ground-truth images, {len(predictions)} predictions")
    if crowd is not None and len(crowd) != len(ground_truth):
        raise ValueError(f"crowd needs one mask (or None) per image: {len(ground_truth)} images, "
                         f"{len(crowd)} crowd masks")
    evaluator = COCOEvaluator(class_names, max_dets, class_agnostic)
    for gt, pred, region in zip(ground_truth, predictions, crowd or [None] * len(ground_truth)):
        evaluator.process(gt, pred, region)
    return evaluator.evaluate()


def check_image(i: int, gt: Instances, pred: Instances, region: np.ndarray | None,
                class_names: list[str] | None) -> None:
    """Image `i`'s prediction and crowd mask are of its size; labels in 1..len(class_names)."""
    if gt.image_size != pred.image_size:
        raise ValueError(f"image {i}: ground truth is {gt.image_size} but prediction is "
                         f"{pred.image_size}")
    for what, inst in (("ground truth", gt), ("prediction", pred)):
        bad = [int(c) for c in inst.labels if c < 1 or (class_names and c > len(class_names))]
        if bad:
            known = f"1..{len(class_names)}" if class_names else ">= 1"
            raise ValueError(f"image {i}: {what} has class labels {sorted(set(bad))}, "
                             f"expected {known}")
    if region is not None and np.any(region) and np.shape(region) != gt.image_size:
        raise ValueError(f"image {i}: crowd mask has shape {np.shape(region)}, expected {gt.image_size}")


def _encode(instances: Instances) -> dict:
    """RLE counts (str), labels and scores of `instances`: all a COCO annotation needs of them."""
    return {"counts": [rle["counts"] for rle in instances.to_rle()], "labels": instances.labels,
            "scores": instances.scores}


def _entries(encoded: dict, size: tuple, image_id: int, categories=None) -> list[dict]:
    """COCO entries with an RLE of `encoded` (each RLE once per category of `categories` when given)."""
    rle = [{"size": list(size), "counts": c} for c in encoded["counts"]]
    if categories is not None:  # a class-less ignore region must cover predictions of any class
        return [{"image_id": image_id, "category_id": c, "segmentation": dict(rle[0])} for c in categories]
    return [{"image_id": image_id, "category_id": int(c), "segmentation": r, "score": float(s)}
            for r, c, s in zip(rle, encoded["labels"], encoded["scores"])]


def coco_datasets(images: list[dict], names: dict[int, str]) -> tuple[COCO, COCO]:
    """In-memory COCO ground truth (crowd regions included) and detections of `COCOEvaluator`'s
    records; image ids 1..N in list order."""
    coco_images, gt_anns, dt_anns = [], [], []
    for image_id, im in enumerate(images, start=1):
        height, width = im["size"]
        coco_images.append({"id": image_id, "height": height, "width": width})
        gt_anns += _annotations(_entries(im["gt"], im["size"], image_id), len(gt_anns) + 1, iscrowd=0)
        dt_anns += _annotations(_entries(im["pred"], im["size"], image_id), len(dt_anns) + 1, iscrowd=0)
        if im["crowd"] is not None:
            present = sorted(set(im["gt"]["labels"].tolist()) | set(im["pred"]["labels"].tolist()))
            gt_anns += _annotations(_entries(im["crowd"], im["size"], image_id, present), len(gt_anns) + 1,
                                    iscrowd=1)
    categories = [{"id": c, "name": n} for c, n in names.items()]
    return (_coco({"images": coco_images, "categories": categories, "annotations": gt_anns}),
            _coco({"images": coco_images, "categories": categories, "annotations": dt_anns}))


def _per_class(E: COCOeval, names: dict[int, str]) -> dict[str, float]:
    """AP of each category that has ground truth to score."""
    per_class = {}
    for k, c in enumerate(E.params.catIds):
        ap = _mean(E.eval["precision"][:, :, k, 0, -1])
        if not np.isnan(ap):
            per_class[names[c]] = ap
    return per_class
