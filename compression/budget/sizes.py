"""The input sizes compress may choose: a range read from the user's boxes, not a fixed list.

A smaller input is the cheapest latency lever (every layer computes fewer
pixels), but it shrinks the objects too. The rule: at the smallest input the
small objects of the training set must still span at least one cell of the
finest detection head, the head meant for them. "Small" is the
``percentile``-th percentile (default 10) of the boxes' shorter side, measured
after the letterbox (the image's longer side scaled to the input). So

    floor = stride_finest / p10(shorter side / longer image side), rounded up to a multiple of 32

and the candidates are multiples of 32 between the floor and the model's own
size, at most ``count`` of them spread evenly (the model's size always one).

Example::

    floor, why = size_floor(records, spec)        # 256, "10% of the training boxes have a shorter side under 6.3% ..."
    candidate_sizes(floor, 416, 4)                 # [416, 352, 320, 256]
"""

from __future__ import annotations

import math

import numpy as np

from yolo3.spec import Spec, analyse

SMALLEST = 32  # one multiple of the coarsest stride


def finest_stride(spec: Spec, size: int = 416) -> int:
    """The stride of the detection head with the finest grid (16 for YOLOv3-tiny, 8 for YOLOv3)."""
    infos = analyse(spec, size, size)
    return max(1, min(size // infos[i].out_shape[0] for i in spec.yolo_indices()))


def size_floor(records, spec: Spec, percentile: float = 10.0) -> tuple[int, str]:
    """The smallest input size the boxes allow (see the module docstring) and the reason in words."""
    fractions = []
    for r in records:
        if len(r.boxes):
            side = max(r.width, r.height)
            b = np.asarray(r.boxes, float)
            fractions.extend(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / side)
    stride = finest_stride(spec)
    if not fractions:
        return SMALLEST, f"no training boxes: the floor is {SMALLEST}"
    small = float(np.percentile(fractions, percentile))
    need = stride / max(small, 1e-6)
    floor = max(SMALLEST, int(math.ceil(need / 32 - 1e-9)) * 32)
    return floor, (f"{percentile:g}% of the training boxes have a shorter side under {small:.1%} of the image's longer side; "
                   f"they keep one cell ({stride} px) of the finest head from input {int(math.ceil(need))} px up, so the smallest "
                   f"input considered is {floor}")  # fmt: skip


def candidate_sizes(floor: int, base: int, count: int) -> list[int]:
    """Multiples of 32 from ``floor`` to ``base``, at most ``count`` spread evenly, ``base`` first; just ``[base]`` if the floor is above it."""
    options = list(range(base, floor - 1, -32)) if base >= floor else [base]
    if options[0] != base:
        options.insert(0, base)
    if len(options) <= count:
        return options
    picks = np.linspace(0, len(options) - 1, count).round().astype(int)
    return sorted({options[i] for i in picks}, reverse=True)
