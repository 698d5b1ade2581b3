"""Ground truth shared by the evaluation tests."""
from __future__ import annotations

import numpy as np
import pytest

from embedseg.structures import Instances


@pytest.fixture
def three_images() -> tuple[list[np.ndarray], list[Instances]]:
    """(label maps, Instances) of three small images: two classes, several instances, one empty image."""
    a = np.zeros((32, 40), np.int32)
    a[2:10, 3:12] = 1
    a[12:20, 3:30] = 2
    a[22:30, 20:38] = 3
    b = np.zeros((24, 24), np.int32)
    b[1:8, 1:8] = 5
    b[10:22, 4:20] = 7
    maps = [a, b, np.zeros((16, 20), np.int32)]
    classes = [{1: 1, 2: 2, 3: 1}, {5: 2, 7: 2}, {}]
    return maps, [Instances.from_label_map(m, labels=c) for m, c in zip(maps, classes)]
