"""Named pruning profiles: per-layer ratios found by hand, kept as data so that ``compress.py --preset NAME`` can use them.

A preset names layers by index, so it fits the architecture it was made for
and nothing else; :func:`preset_ratios` checks that. The planner
(``compress.py --target-...``) finds ratios for any architecture from the
user's own data, which is what a new dataset needs: on one dataset the
profile below kept mAP, on another it lost 12 points.
"""

from __future__ import annotations

from dataclasses import dataclass

from yolo3.errors import UserError
from yolo3.spec import Spec, conv_params


@dataclass(frozen=True)
class Preset:
    architecture: str
    filters: dict[int, int]  # layer index -> filters of the architecture it was made for (to recognise it)
    layer_ratios: dict[str, float]
    note: str


TINY_FILTERS = {0: 16, 2: 32, 4: 64, 6: 128, 8: 256, 10: 512, 12: 1024, 13: 256, 14: 512, 18: 128, 21: 256}

PRESETS = {
    "late-heavy": Preset(
        "yolov3-tiny",
        TINY_FILTERS,
        {"0": 0.0, "2": 0.25, "4": 0.25, "6": 0.25, "8": 0.5, "10": 0.5, "12": 0.875, "13": 0.5, "14": 0.625, "18": 0.5, "21": 0.625},
        "the early high-resolution layers lightly, the wide 13x13 and 26x26 layers hard (71 % of the MACs at 416)",
    ),
}


def preset_ratios(name: str, spec: Spec) -> dict[str, float]:
    """The layer ratios of preset ``name``, after checking that ``spec`` is the architecture it was made for."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    preset = PRESETS[name]
    for index, filters in preset.filters.items():
        block = spec.layers[index] if index < len(spec.layers) else None
        if block is None or block.type != "convolutional" or conv_params(block).filters != filters:
            raise UserError(f"preset {name!r} is made for an unpruned {preset.architecture}; this model's layer {index} differs "
                            f"(use a --target and the planner instead)", spec.source)  # fmt: skip
    return dict(preset.layer_ratios)
