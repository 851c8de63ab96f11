"""Probe models for timing on the user's device: every block and whole network the latency model of a compress run needs.

The latency model (:mod:`.latency_model`) is fitted to int8 timings of small
probe models: each costly block at a grid of channel counts and input sizes,
and whole networks that map the sum of blocks to network time. On the host,
``compress`` converts and times them itself. For a board, the same probes are
written to a folder with :func:`export_probes` (``yolo3 compress ...
--export-probes DIR``), copied to the board and timed there with
``python -m yolo3.lite profile DIR --out table.json`` (numpy and LiteRT only,
:mod:`yolo3.board`).

A probe's file name is its key (:func:`~.latency_model.probe_key`): what the
probe is, not where it came from, so one folder holds the probes of the model
and of every lever variant compress may try (a levered network shares most
blocks with the unlevered one: they are written once), and ``manifest.json``
says what each file stands for.

Example::

    manifest = export_probes(spec, sizes=[416, 320], base_size=416, levels=(1, .5, .25, .125), round_to=8,
                             levers=["pool_stride", "relu"], folder=Path("probes"))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from yolo3.errors import UserError
from yolo3.reporting import write_json
from yolo3.spec import Spec, format_cfg

from .latency_model import PROBE_FORMAT, Item, _converter_version, block_items, convert_items, network_items, probe_key
from .levers import Levers, lever_variants


@dataclass
class Probe:
    """One probe file: the network variant it belongs to (first seen), the item, and every variant that needs it."""

    key: str
    spec: Spec
    item: Item
    variants: list[int]

    def describe(self) -> dict:
        out = {"kind": self.item.kind, "size": self.item.size, "variants": self.variants}
        if self.item.kind == "block":
            out.update(layer=self.item.layer, type=self.spec.layers[self.item.layer].type, in_shapes=[list(s) for s in self.item.in_shapes],
                       filters=self.item.filters)  # fmt: skip
        else:
            out["filters"] = {str(k): v for k, v in (self.item.filters or {}).items()}
        return out


def probe_set(spec: Spec, sizes: list[int], base_size: int, levels, round_to: int, levers) -> tuple[list[Levers], list[Probe]]:
    """The lever variants (the unlevered network first) and the distinct probes all of them need, in a stable order."""
    variants = [Levers(), *lever_variants(spec, levers)]
    sizes = sorted(set(sizes) | {base_size}, reverse=True)
    probes: dict[str, Probe] = {}
    for k, v in enumerate(variants):
        levered = v.apply_spec(spec)
        for item in block_items(levered, sizes, base_size, levels, round_to) + network_items(levered, sizes, base_size, round_to):
            key = probe_key(levered, item)
            if key in probes:
                if k not in probes[key].variants:
                    probes[key].variants.append(k)
            else:
                probes[key] = Probe(key, levered, item, [k])
    return variants, list(probes.values())


def check_probe_folder(folder: Path) -> None:
    """A new or empty folder, or one this command wrote before (it has our manifest): nothing else a user has is written into."""
    if folder.exists() and not folder.is_dir():
        raise UserError("--export-probes: exists and is not a folder", folder)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "manifest.json").is_file():
        raise UserError("--export-probes: the folder holds files that are not probes of this tool; give a new or empty folder", folder)


def export_probes(spec: Spec, sizes: list[int], base_size: int, levels, round_to: int, levers, folder: Path, source: str = "",
                  progress: bool = True) -> dict:  # fmt: skip
    """Write every probe (``KEY.tflite``) and ``manifest.json`` into ``folder``; the manifest.

    Probes already in the folder are kept (same key, same probe); each file
    appears whole or not at all, and the manifest is written last, so an
    interrupted export leaves a folder the next export completes.
    """
    check_probe_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    variants, probes = probe_set(spec, sizes, base_size, levels, round_to, levers)
    todo = [p for p in probes if not (folder / f"{p.key}.tflite").is_file()]
    by_spec: dict[str, list[Probe]] = {}
    for p in todo:
        by_spec.setdefault(format_cfg(p.spec), []).append(p)
    with tempfile.TemporaryDirectory(prefix="yolo3-probes-") as tmp:
        for n, group in enumerate(by_spec.values()):
            work = Path(tmp) / str(n)
            work.mkdir()
            for p, path in zip(group, convert_items(group[0].spec, [p.item for p in group], work, progress)):
                part = folder / f".{p.key}.{os.getpid()}.tmp"
                shutil.copyfile(path, part)
                os.replace(part, folder / f"{p.key}.tflite")
    manifest = {
        "format": PROBE_FORMAT, "tensorflow": _converter_version(), "model": source, "input_size": base_size,
        "sizes": sorted(set(sizes) | {base_size}, reverse=True), "levels": list(levels), "round_to": round_to,
        "variants": [{"levers": v.to_json(), "names": v.names(), "cfg": format_cfg(v.apply_spec(spec))} for v in variants],
        "probes": {f"{p.key}.tflite": p.describe() for p in probes},
    }  # fmt: skip
    write_json(folder / "manifest.json", manifest)
    return manifest
