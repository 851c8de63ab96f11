"""The budget of a compress run: what the final int8 model must meet.

``speedup`` (x, against the unpruned int8 model), ``latency`` (ms), ``size``
(MB gzipped), ``macs`` (fraction kept), ``ram`` (KiB of peak activation
memory) or ``flash`` (KiB of .tflite), each checked at the door so that a
nonsense value ends in one message. Several may be given at once (one speed
target at most); the first in the order speed, MACs, RAM, flash, size is the
primary one, the others are met beside it (:func:`parse_targets`).

Example::

    parse_target(speedup=3).describe()      # "3x faster than the unpruned int8 model"
    primary, *others = parse_targets(speedup=3, size=0.85)
    parse_targets(speedup="max")            # as fast as the accuracy floor allows
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from yolo3.errors import UserError

EXTREMES = {"speedup": "max", "size": "min"}  # --target-speedup max, --target-size min


@dataclass(frozen=True)
class Target:
    """The budget: ``speedup`` (x, against the unpruned int8 model), ``latency`` (ms), ``size`` (MB gzipped) or ``macs`` (fraction kept).

    ``extreme``: ``--target-speedup max`` / ``--target-size min``, as fast (small)
    as the accuracy floor allows; the plan stage turns it into a value
    (:meth:`resolved`) from the sensitivity analysis' predicted losses.
    """

    kind: str
    value: float
    extreme: bool = False

    def describe(self) -> str:
        if self.extreme:
            return {"speedup": "the fastest int8 model", "size": "the smallest gzipped int8 .tflite"}[self.kind] + " within the accuracy floor"
        return {
            "speedup": f"{self.value:g}x faster than the unpruned int8 model",
            "latency": f"int8 latency of at most {self.value:g} ms",
            "size": f"gzipped int8 .tflite of at most {self.value:g} MB",
            "macs": f"at most {self.value:.0%} of the original MACs",
            "ram": f"peak activation memory (RAM) of at most {self.value:g} KiB",
            "flash": f"int8 .tflite (flash) of at most {self.value:g} KiB",
        }[self.kind]

    def resolved(self, value: float) -> Target:
        """The plain target an extreme one was turned into."""
        return Target(self.kind, float(value))

    def to_json(self) -> dict:
        if self.extreme:
            return {"kind": self.kind, "value": EXTREMES[self.kind], "text": self.describe(), "extreme": True}
        return {"kind": self.kind, "value": self.value, "text": self.describe()}


def parse_targets(speedup: float | str | None = None, latency: float | None = None, size: float | str | None = None,
                  macs: float | None = None, ram: float | None = None, flash: float | None = None) -> list[Target]:  # fmt: skip
    """Every target given, checked, the primary first (speed, then MACs, RAM, flash, size); at most one speed target.

    ``speedup`` may be ``"max"`` and ``size`` ``"min"`` (alone: as fast / small as the floor allows).
    """
    if speedup is not None and latency is not None:
        raise UserError("--target-speedup and --target-latency both set the speed: give one of them")
    given = [(k, v) for k, v in (("speedup", speedup), ("latency", latency), ("macs", macs), ("ram", ram), ("flash", flash), ("size", size))
             if v is not None]  # fmt: skip
    targets = [_checked(kind, value) for kind, value in given]
    extreme = [t for t in targets if t.extreme]
    if extreme and len(targets) > 1:
        raise UserError(f"--target-{extreme[0].kind} {EXTREMES[extreme[0].kind]} goes alone: it asks for the most the accuracy floor allows, "
                        "which another target would bound (give numbers to both instead)")  # fmt: skip
    return targets


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


def _checked(kind: str, value: float | str) -> Target:
    if isinstance(value, str):
        word = value.strip().lower()
        if kind in EXTREMES and word == EXTREMES[kind]:
            return Target(kind, math.nan, extreme=True)
        try:
            value = float(word)
        except ValueError:
            also = f" or {EXTREMES[kind]}" if kind in EXTREMES else ""
            raise UserError(f"--target-{kind} must be a positive number{also}, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--target-{kind} must be a positive number, got {value:g}")
    if kind == "speedup" and value < 1:
        raise UserError(f"--target-speedup {value:g} is below 1: a speed-up makes the model faster; the unpruned int8 model is 1x")
    if kind == "macs" and value > 1:
        raise UserError(f"--target-macs is the fraction of the original MACs to keep, in (0, 1]; got {value:g}")
    return Target(kind, float(value))
