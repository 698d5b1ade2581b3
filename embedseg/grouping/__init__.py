from embedseg.grouping.base import GROUPERS
from embedseg.grouping.components import ConnectedComponentsGrouper
from embedseg.grouping.meanshift import MeanShiftGrouper


def build_grouper(name: str, **params):
    return GROUPERS.build(name, **params)


__all__ = ["GROUPERS", "ConnectedComponentsGrouper", "MeanShiftGrouper", "build_grouper"]
