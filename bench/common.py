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
    """CPU name, its widest vector extension (int8 speed depends on it more than on the name), cores, Python."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = next((name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx512f", "AVX-512"), ("avx_vnni", "AVX-VNNI"),
                                         ("avx2", "AVX2")) if flag in flags), None)  # fmt: skip
    return f"{cpu}{f' ({isa})' if isa else ''}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_results(out_stem: Path, data: dict, markdown: str) -> None:
    out_stem = Path(out_stem)
    write_json(out_stem.with_suffix(".json"), data)
    atomic_write_text(out_stem.with_suffix(".md"), markdown.rstrip() + "\n")
    print(markdown)
    print(f"wrote {out_stem.with_suffix('.json')} and {out_stem.with_suffix('.md')}")
