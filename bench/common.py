"""Helpers shared by the benchmarks: the machine's description and writing JSON + markdown."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from yolo3.fileio import atomic_write_text  # noqa: E402
from yolo3.reporting import write_json  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_results(out_stem: Path, data: dict, markdown: str) -> None:
    out_stem = Path(out_stem)
    write_json(out_stem.with_suffix(".json"), data)
    atomic_write_text(out_stem.with_suffix(".md"), markdown.rstrip() + "\n")
    print(markdown)
    print(f"wrote {out_stem.with_suffix('.json')} and {out_stem.with_suffix('.md')}")
