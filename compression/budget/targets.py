"""The budget of a compress run: what the final int8 model must meet.

``speedup`` (x, against the unpruned int8 model), ``latency`` (ms), ``size``
(MB gzipped) or ``macs`` (fraction kept), each checked at the door so that a
nonsense value ends in one message. Several may be given at once (one speed
target at most); the first in the order speed, MACs, size is the primary one,
the others are met beside it (:func:`parse_targets`).

Example::

    parse_target(speedup=3).describe()      # "3x faster than the unpruned int8 model"
    primary, *others = parse_targets(speedup=3, size=0.85)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from yolo3.errors import UserError


@dataclass(frozen=True)
class Target:
    """The budget: ``speedup`` (x, against the unpruned int8 model), ``latency`` (ms), ``size`` (MB gzipped) or ``macs`` (fraction kept)."""

    kind: str
    value: float

    def describe(self) -> str:
        return {
            "speedup": f"{self.value:g}x faster than the unpruned int8 model",
            "latency": f"int8 latency of at most {self.value:g} ms",
            "size": f"gzipped int8 .tflite of at most {self.value:g} MB",
            "macs": f"at most {self.value:.0%} of the original MACs",
        }[self.kind]

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.value, "text": self.describe()}


def parse_targets(speedup: float | None = None, latency: float | None = None, size: float | None = None, macs: float | None = None) -> list[Target]:
    """Every target given, checked, the primary first (speed, then MACs, then size); at most one speed target."""
    if speedup is not None and latency is not None:
        raise UserError("--target-speedup and --target-latency both set the speed: give one of them")
    given = [(k, v) for k, v in (("speedup", speedup), ("latency", latency), ("macs", macs), ("size", size)) if v is not None]
    return [_checked(kind, value) for kind, value in given]


def parse_target(speedup: float | None = None, latency: float | None = None, size: float | None = None, macs: float | None = None) -> Target | None:
    """Exactly one target, checked: nonsense values end in one message."""
    given = {k: v for k, v in (("speedup", speedup), ("latency", latency), ("size", size), ("macs", macs)) if v is not None}
    if len(given) > 1:
        raise UserError(f"give one target at a time (got {', '.join('--target-' + k for k in given)})")
    if not given:
        return None
    return _checked(*next(iter(given.items())))


def describe_all(targets: list[Target]) -> str:
    """The targets in words, joined: "3x faster than the unpruned int8 model and gzipped int8 .tflite of at most 0.85 MB"."""
    return " and ".join(t.describe() for t in targets)


def _checked(kind: str, value: float) -> Target:
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--target-{kind} must be a positive number, got {value:g}")
    if kind == "speedup" and value < 1:
        raise UserError(f"--target-speedup {value:g} is below 1: a speed-up makes the model faster; the unpruned int8 model is 1x")
    if kind == "macs" and value > 1:
        raise UserError(f"--target-macs is the fraction of the original MACs to keep, in (0, 1]; got {value:g}")
    return Target(kind, float(value))
