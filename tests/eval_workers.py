"""A synthetic evaluation set-up shared by the engine evaluation tests and their spawned ranks: the
synthetic data set, an oracle "network" whose outputs come from each image's ground truth, and the
groupers and evaluators to run on them."""
from __future__ import annotations

import pickle

import numpy as np

from embedseg.data import build_dataset
from embedseg.evaluation import build_evaluators
from embedseg.grouping import build_grouper

METRICS = ["coco", "matching_ap", "sbd", "dic", "map_r"]


def dataset(num_images: int = 5):
    return build_dataset("synthetic", "val", size=48, num_images=num_images, max_objects=4, min_radius=4, max_radius=9)


class OraclePredictor:
    """Outputs from the ground truth: instance k's pixels embed at (2k, 0) plus noise drawn from the image,
    seediness 0.9 on objects, class probabilities one-hot. Deterministic per image, whatever the order."""

    def __init__(self, ds):
        self.truth = {ds[i]["image"].tobytes(): ds[i] for i in range(len(ds))}

    def __call__(self, image):
        sample = self.truth[image.tobytes()]
        ids, semantic = sample["instances"], sample["semantic"]
        rng = np.random.default_rng(int(ids.sum()))
        embedding = np.stack([2.0 * np.maximum(ids, 0), np.zeros(ids.shape)]).astype(np.float32)
        embedding += rng.normal(0, 0.3, embedding.shape).astype(np.float32)
        classes = int(semantic.max()) + 1
        probabilities = (semantic[None] == np.arange(max(classes, 2))[:, None, None]).astype(np.float32)
        return {"embedding": embedding, "seediness": (0.9 * (ids > 0)).astype(np.float32), "semantic": probabilities}


def groupers() -> dict:
    return {"meanshift": build_grouper("meanshift", bandwidth=1.0, min_size=5),
            "components": build_grouper("components", min_size=5)}


def evaluators(class_names) -> list:
    return build_evaluators(METRICS, class_names)


def distributed_rank(rank: int, world: int, address: str, out: str) -> None:
    """One rank of a gloo process group: its shard of the images, gathered and scored on rank 0."""
    import torch
    import torch.distributed as dist

    from embedseg.engine.evaluator import run_groupers_distributed, score_groupers

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        ds = dataset()
        run = run_groupers_distributed(OraclePredictor(ds), ds, groupers(), lambda: evaluators(ds.class_names),
                                       progress=False)
        if rank == 0:
            with open(out, "wb") as f:
                pickle.dump({"results": score_groupers(run), "indices": run.indices, "names": run.names}, f)
        else:
            assert run is None
    finally:
        dist.destroy_process_group()
