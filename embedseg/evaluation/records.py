"""The per-image records every streaming evaluator keeps (embedseg.evaluation.evaluators)."""
from __future__ import annotations

from collections.abc import Sequence


class ImageRecords:
    """`self.images`, one plain picklable record per processed image: `reset` empties it, `state` is a
    copy of it, `merge(states)` appends other evaluators' records (in image order)."""

    def reset(self) -> None:
        self.images: list[dict] = []

    def state(self) -> list[dict]:
        return list(self.images)

    def merge(self, states: Sequence[list[dict]]) -> None:
        for state in states:
            self.images.extend(state)
