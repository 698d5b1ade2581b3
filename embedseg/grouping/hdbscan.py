"""HDBSCAN grouping: density-based clusters of the foreground embeddings (the `hdbscan` package)."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from embedseg.distances import squared_distances
from embedseg.grouping.base import (
    MIN_SIZES,
    Grouper,
    foreground_embeddings,
    masks_from_assignment,
    no_masks,
    random_generator,
    subsample,
)
from embedseg.grouping.registry import GROUPERS

PROJECTIONS = (None, "pca", "random")
SELECTION_METHODS = ("eom", "leaf")
# The scaled min_cluster_size never goes below this many sampled points: fewer is noise to HDBSCAN.
MIN_SAMPLE_CLUSTER_SIZE = 5


@GROUPERS.register("hdbscan")
class HDBSCANGrouper(Grouper):
    """HDBSCAN on a sample of the foreground pixels, every pixel then joins its nearest cluster.

    Plain HDBSCAN on every foreground pixel (tens of thousands of 64-d points) is far too slow for
    one image. Here:

    1. at most `sample_size` foreground pixels are drawn with `random_state` and projected to
       `n_components` dimensions (`projection`: "pca" of the sample, the default, which keeps the
       directions that separate the clusters and makes the density estimate faster; a Gaussian
       "random" projection; or None to cluster the full embedding);
    2. `hdbscan.HDBSCAN` clusters the sample (a single cluster allowed: an image may hold one
       object). `min_cluster_size` and `min_samples` are given in pixels of the whole image, as for
       plain use, and scaled by the sampled fraction (at least MIN_SAMPLE_CLUSTER_SIZE sampled
       points), so a cluster keeps the same meaning; `cluster_selection_method` as in hdbscan;
    3. each cluster's centre is the mean embedding of its sampled members, and every foreground
       pixel joins the nearest centre in one [N, K] distance computation (only within
       `max_distance` of it, when set; otherwise the foreground is used up). Embeddings trained
       to pull each instance to its centre make the nearest centre the right cluster.

    Clusters smaller than `min_size` pixels are dropped. Proposal score = the cluster's mean
    membership strength (`probabilities_` of its sampled members).
    """

    search_space: ClassVar[dict[str, list]] = {"min_cluster_size": [5, 10, 20, 40, 80, 160], "cluster_selection_method": ["eom", "leaf"],
                    "min_size": MIN_SIZES}

    def __init__(self, min_cluster_size: int = 20, min_samples: int | None = None,
                 cluster_selection_method: str = "eom", sample_size: int | None = 4000,
                 projection: str | None = "pca", n_components: int = 16, max_distance: float | None = None,
                 min_size: int = 20, random_state: int = 0, postprocess: list[str | dict] | None = None):
        import hdbscan  # noqa: F401  (here: building the grouper checks it is installed, importing embedseg does not)

        super().__init__(postprocess)
        if min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {min_cluster_size}")
        if min_samples is not None and min_samples < 1:
            raise ValueError(f"min_samples must be >= 1 or None (= min_cluster_size), got {min_samples}")
        if cluster_selection_method not in SELECTION_METHODS:
            raise ValueError(f"cluster_selection_method must be one of {SELECTION_METHODS}, "
                             f"got {cluster_selection_method!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if sample_size is not None and sample_size < 2:
            raise ValueError(f"sample_size must be >= 2 or None (every foreground pixel), got {sample_size}")
        if max_distance is not None and max_distance <= 0:
            raise ValueError(f"max_distance must be positive or None, got {max_distance}")
        self.min_cluster_size, self.min_samples = min_cluster_size, min_samples
        self.cluster_selection_method, self.sample_size = cluster_selection_method, sample_size
        self.projection, self.n_components = projection, n_components
        self.max_distance, self.min_size, self.random_state = max_distance, min_size, random_state

    def propose(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        import hdbscan

        pixel_index, x, image_size = foreground_embeddings(outputs)
        n = len(x)
        generator = random_generator(self.random_state)
        sample = subsample(n, self.sample_size, generator)
        fraction = len(sample) / max(n, 1)
        cluster_size = max(MIN_SAMPLE_CLUSTER_SIZE, round(self.min_cluster_size * fraction))
        if len(sample) <= cluster_size:  # too few pixels for even one cluster
            return no_masks(image_size)
        min_samples = None
        if self.min_samples is not None:  # scaled like the cluster size, and hdbscan needs fewer than the points
            min_samples = min(max(1, round(self.min_samples * fraction)), len(sample) - 1)

        xs = x[sample]
        clusterer = hdbscan.HDBSCAN(
            min_cluster_size=cluster_size, min_samples=min_samples,
            cluster_selection_method=self.cluster_selection_method,
            allow_single_cluster=True,  # an image may hold a single object
            core_dist_n_jobs=1,  # not hdbscan's 4 parallel jobs: the caller's torch threads hold the cores
        ).fit(self._project(xs, generator).double().numpy())
        labels = torch.from_numpy(clusterer.labels_.astype(np.int64))
        k = int(labels.max()) + 1
        if k == 0:
            return no_masks(image_size)

        member = labels >= 0
        counts = torch.bincount(labels[member], minlength=k).float()
        centres = torch.zeros(k, x.shape[1]).index_add_(0, labels[member], xs[member]) / counts[:, None]
        strength = torch.from_numpy(clusterer.probabilities_.astype(np.float32))
        membership = torch.zeros(k).index_add_(0, labels[member], strength[member]) / counts

        nearest_sq, assignment = squared_distances(x, centres).min(1)
        if self.max_distance is not None:
            assignment[nearest_sq > self.max_distance**2] = -1
        masks, kept = masks_from_assignment(assignment, pixel_index, k, image_size, self.min_size)
        return masks, membership[kept]

    def _project(self, xs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The sample in the space HDBSCAN clusters: as is, or projected to n_components dimensions."""
        d = xs.shape[1]
        if self.projection is None or self.n_components >= d:
            return xs
        if self.projection == "pca":
            centred = xs - xs.mean(0)
            _, _, vt = torch.linalg.svd(centred, full_matrices=False)
            return centred @ vt[: self.n_components].T
        basis = torch.randn(d, self.n_components, generator=generator) / self.n_components**0.5
        return xs @ basis
