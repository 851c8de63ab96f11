"""A latency table measured on the user's device: what ``compress --latency-table`` plans with instead of this machine's timing.

The table is what ``python -m yolo3.lite profile PROBES --out table.json``
writes on the board (:mod:`yolo3.board`) from the probes ``compress
--export-probes`` exported (:mod:`.probes`): the device's description, the
probes' manifest, and the median milliseconds of every probe file. A probe's
file name is its key (:func:`~.latency_model.probe_key`), so the latency model
finds a block's or a network's board time by computing the key of what it
would have timed on the host — with the converter version the probes were
exported with, so a later TensorFlow on the host does not orphan the table.

Example::

    table = LatencyTable.load(Path("table.json"))
    table.check_covers(needed_probes)        # one line naming what is missing and how to export it
    table.network_ms(spec, 320)              # the unpruned network at 320 px on the board
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from yolo3.errors import UserError
from yolo3.spec import Spec

from .latency_model import PROBE_FORMAT, Item, probe_key

EXPORT_HINT = "export the probes for this model and these settings (yolo3 compress -c CONFIG --model MODEL --export-probes DIR), profile them on the device, and give the new table"


@dataclass
class LatencyTable:
    """The board's timings by probe key, its device description and the manifest of the probes it timed."""

    path: Path
    device: dict
    manifest: dict
    ms: dict[str, float]  # probe key -> median milliseconds

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        """Read and check a table; anything that is not a table of this tool ends in one line naming the file."""
        path = Path(path)
        if not path.is_file():
            raise UserError("--latency-table: no such file" if not path.exists() else "--latency-table: is not a file", path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"--latency-table: not a JSON latency table ({type(e).__name__})", path) from None
        if not isinstance(data, dict) or not isinstance(data.get("device"), dict) or not isinstance(data.get("probes"), dict):
            raise UserError("--latency-table: not a table written by python -m yolo3.lite profile (no device or probes)", path)
        manifest = data.get("manifest")
        if not isinstance(manifest, dict):
            raise UserError("--latency-table: the probes were profiled without their manifest.json; profile the folder "
                            "compress --export-probes wrote, as it is", path)  # fmt: skip
        if manifest.get("format") != PROBE_FORMAT:
            raise UserError(f"--latency-table: its probes are of format {manifest.get('format')!r}, this version of the tool makes format "
                            f"{PROBE_FORMAT}; {EXPORT_HINT}", path)  # fmt: skip
        ms = {}
        for name, timing in data["probes"].items():
            value = timing.get("median_ms") if isinstance(timing, dict) else None
            if not isinstance(name, str) or not name.endswith(".tflite") or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UserError(f"--latency-table: probe entry {name!r} has no positive median_ms", path)
            ms[name[: -len(".tflite")]] = float(value)
        if not ms:
            raise UserError("--latency-table: no probe was timed yet (run or resume python -m yolo3.lite profile)", path)
        return cls(path, data["device"], manifest, ms)

    @property
    def threads(self) -> int:
        return int(self.device.get("threads") or 1)

    @property
    def xnnpack(self) -> bool:
        return str(self.device.get("delegate", "xnnpack")) == "xnnpack"

    def describe(self) -> str:
        """One line: the device as the profile recorded it (CPU, machine, runtime, threads, delegate)."""
        d = self.device
        return f"{d.get('cpu', '?')} ({d.get('machine', '?')}), {d.get('runtime', '?')}, {d.get('threads', '?')} thread(s), {d.get('delegate', '?')}"

    def key(self, spec: Spec, item: Item) -> str:
        """The probe key of ``item`` as the export computed it (with the converter version recorded in the manifest)."""
        return probe_key(spec, item, self.manifest.get("tensorflow"))

    def missing(self, spec: Spec, items: list[Item]) -> list[Item]:
        return [it for it in items if self.key(spec, it) not in self.ms]

    def lookup(self, spec: Spec, items: list[Item]) -> list[float]:
        """The board's milliseconds of every item, in order; one line when the table lacks any."""
        gaps = self.missing(spec, items)
        if gaps:
            raise UserError(f"--latency-table: holds no timing for {len(gaps)} of the {len(items)} probes needed here, e.g. "
                            f"{describe_item(spec, gaps[0])}; {EXPORT_HINT}", self.path)  # fmt: skip
        return [self.ms[self.key(spec, it)] for it in items]

    def network_ms(self, spec: Spec, size: int) -> float:
        """The board's time of the whole network ``spec`` (as it is, unpruned) at input ``size``."""
        return self.lookup(spec, [Item("network", size, filters={})])[0]

    def check_covers(self, needed: list[tuple[Spec, Item]]) -> None:
        """Before a run: every probe it will look up is in the table (else one line naming one missing probe and the way to export)."""
        gaps = [(s, it) for s, it in needed if self.key(s, it) not in self.ms]
        if gaps:
            sizes = ", ".join(map(str, self.manifest.get("sizes", []))) or "?"
            raise UserError(f"--latency-table: holds no timing for {len(gaps)} of the {len(needed)} probes this run needs, e.g. "
                            f"{describe_item(*gaps[0])} (the table's probes were exported for input sizes {sizes} from "
                            f"{self.manifest.get('model') or 'an unnamed model'}); {EXPORT_HINT}", self.path)  # fmt: skip


def describe_item(spec: Spec, item: Item) -> str:
    """What a probe is, for a message: ``the whole network at 320 px`` or ``layer 4 (convolutional) at 416 px, 32 -> 64 channels``."""
    if item.kind == "network":
        return f"the whole network at {item.size} px" + (" (narrowed)" if item.filters else "")
    channels = "+".join(str(s[2]) for s in item.in_shapes)
    out = f" -> {item.filters}" if item.filters is not None else ""
    return f"layer {item.layer} ({spec.layers[item.layer].type}) at {item.size} px, {channels}{out} channels"
