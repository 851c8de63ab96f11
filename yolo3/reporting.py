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


# The figures the table reads: (path in the report, required)
FIGURES = ((("mAP50",), True), (("coco", "AP"), True), (("params",), False), (("macs",), False), (("bytes",), False),
           (("gzip_bytes",), False), (("latency", "median_ms"), False))  # fmt: skip


def read_evaluation_report(path: str | Path) -> dict:
    """An evaluation report (``evaluate --json``), its figures checked to be numbers: one message naming the key otherwise."""
    from .errors import UserError
    from .fileio import read_user_text

    try:
        r = json.loads(read_user_text(path, "JSON report"))
    except json.JSONDecodeError as err:
        raise UserError(f"not a JSON report: {err.msg}", path, err.lineno) from None
    if not isinstance(r, dict) or "mAP50" not in r:
        raise UserError("not an evaluation report (no mAP50)", path)
    for keys, required in FIGURES:
        value = r
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
            if value is None:
                break
        if value is None:
            if required:
                raise UserError(f"not an evaluation report: no {'.'.join(keys)}", path)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{'.'.join(keys)} is {json.dumps(value)}, not a number", path)
    return r


def comparison_table(reports: list[tuple[str, dict]]) -> str:
    """Evaluation reports side by side (name, report), then each against the first: the text ``yolo3 compare`` prints."""
    lines = [f"{'model':<28s} {'mAP@0.5':>8s} {'COCO AP':>8s} {'params':>11s} {'MACs':>8s} {'size':>10s} {'gzip':>10s} {'latency':>9s}"]
    base_name, base = reports[0]
    for name, r in reports:
        lat = r.get("latency", {}).get("median_ms")
        lines.append(
            f"{name[:28]:<28s} {r['mAP50']:8.4f} {r['coco']['AP']:8.4f} {int(r.get('params') or 0):11,d} "
            f"{r.get('macs', 0) / 1e9:7.2f}G {int(r.get('bytes') or 0):10,d} {int(r.get('gzip_bytes') or 0):10,d} "
            + (f"{lat:7.1f}ms" if lat else "      -")
        )
    for name, r in reports[1:]:
        parts = [f"mAP@0.5 {100 * (r['mAP50'] - base['mAP50']):+.2f} points"]
        if r.get("latency") and base.get("latency"):
            parts.append(f"{base['latency']['median_ms'] / r['latency']['median_ms']:.2f}x faster")
        if r.get("bytes") and base.get("bytes"):
            parts.append(f"{base['bytes'] / r['bytes']:.2f}x smaller")
        lines.append(f"{name} vs {base_name}: " + ", ".join(parts))
    return "\n".join(lines)
