"""Evaluation reports (``yolo3 evaluate --json``) side by side, against the first.

    yolo3 compare A.json B.json [...]
"""

from __future__ import annotations

import json
from pathlib import Path

from yolo3.errors import UserError

HELP = "compare evaluation reports (evaluate --json) side by side"


def configure(parser) -> None:
    parser.add_argument("reports", nargs="+", help="JSON reports; the first is the baseline")


# The figures the table reads: (path in the report, required)
FIGURES = ((("mAP50",), True), (("coco", "AP"), True), (("params",), False), (("macs",), False), (("bytes",), False),
           (("gzip_bytes",), False), (("latency", "median_ms"), False))  # fmt: skip


def read_report(path: str) -> dict:
    """An evaluation report (``evaluate --json``), its figures checked to be numbers: one message naming the key otherwise."""
    from yolo3.fileio import read_user_text

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


def run(args) -> int:
    rows = []
    for path in args.reports:
        r = read_report(path)
        rows.append((Path(str(r.get("model", path))).name, r))
    header = f"{'model':<28s} {'mAP@0.5':>8s} {'COCO AP':>8s} {'params':>11s} {'MACs':>8s} {'size':>10s} {'gzip':>10s} {'latency':>9s}"
    print(header)
    base = rows[0][1]
    for name, r in rows:
        lat = r.get("latency", {}).get("median_ms")
        size = r.get("bytes")
        gz = r.get("gzip_bytes")
        print(
            f"{name[:28]:<28s} {r['mAP50']:8.4f} {r['coco']['AP']:8.4f} {int(r.get('params') or 0):11,d} "
            f"{r.get('macs', 0) / 1e9:7.2f}G {int(size or 0):10,d} {int(gz or 0):10,d} "
            + (f"{lat:7.1f}ms" if lat else "      -")
        )
    if len(rows) > 1:
        for name, r in rows[1:]:
            parts = [f"mAP@0.5 {100 * (r['mAP50'] - base['mAP50']):+.2f} points"]
            if r.get("latency") and base.get("latency"):
                parts.append(f"{base['latency']['median_ms'] / r['latency']['median_ms']:.2f}x faster")
            if r.get("bytes") and base.get("bytes"):
                parts.append(f"{base['bytes'] / r['bytes']:.2f}x smaller")
            print(f"{name} vs {rows[0][0]}: " + ", ".join(parts))
    return 0
