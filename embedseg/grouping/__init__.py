"""Grouping: network outputs of one image -> scored instance masks (embedseg.grouping.base).

Registries (embedseg.grouping.registry): GROUPERS, the algorithms that turn embeddings into masks,
and POSTPROCESS, the steps every grouper's masks can go through before they are scored.
"""
from embedseg.grouping.base import Grouper
from embedseg.grouping.components import ConnectedComponentsGrouper
from embedseg.grouping.hdbscan import HDBSCANGrouper
from embedseg.grouping.meanshift import MeanShiftGrouper
from embedseg.grouping.oracle_centres import OracleCentresGrouper
from embedseg.grouping.postprocess import DropRelativelySmall, DropSmall, MergeContinuous, SplitDisconnected
from embedseg.grouping.registry import GROUPERS, POSTPROCESS, build_grouper, build_postprocess, default_groupers
from embedseg.grouping.seeds import SeedsGrouper
from embedseg.grouping.spatial import SpatialGrouper

__all__ = ["GROUPERS", "POSTPROCESS", "ConnectedComponentsGrouper", "DropRelativelySmall", "DropSmall", "Grouper",
           "HDBSCANGrouper", "MeanShiftGrouper", "MergeContinuous", "OracleCentresGrouper", "SeedsGrouper",
           "SpatialGrouper", "SplitDisconnected", "build_grouper", "build_postprocess", "default_groupers"]
