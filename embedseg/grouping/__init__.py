from embedseg.grouping.base import GROUPERS
from embedseg.grouping.components import ConnectedComponentsGrouper
from embedseg.grouping.hdbscan import HDBSCANGrouper
from embedseg.grouping.meanshift import MeanShiftGrouper
from embedseg.grouping.seeds import SeedsGrouper


def build_grouper(name: str, **params):
    return GROUPERS.build(name, **params)


__all__ = ["GROUPERS", "ConnectedComponentsGrouper", "HDBSCANGrouper", "MeanShiftGrouper", "SeedsGrouper",
           "build_grouper"]
