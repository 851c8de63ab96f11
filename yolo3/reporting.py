"""Writing reports: JSON files written atomically, numbers made JSON-safe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .fileio import atomic_write_text


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data) -> None:
    """Write ``data`` as indented JSON, atomically (NaN becomes null)."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2) + "\n")


def to_json(data) -> str:
    return json.dumps(_clean(data), indent=2)
