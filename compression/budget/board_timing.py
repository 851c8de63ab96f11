"""The board's own timing of a compress run's final model, put into the report beside what was planned or predicted.

A plan made from a latency table is a prediction; the report names the one
command that times the delivered model against the unpruned int8 model on the
board (:func:`board_command`), and ``compress ... --board-measured FILE`` reads
what that command printed (``python -m yolo3.lite benchmark ... --json``): the
device and each model's median. The files are recognised by name and checked
by content (the benchmark records each file's SHA-1), so a measurement of an
older run's model is refused rather than reported.

Example::

    measured = BoardMeasurement.load(Path("board.json"))
    measured.check_files(run_dir)            # the run's own baseline-int8.tflite and final-int8.tflite
    measured.speedup                         # unpruned / final, both on the board
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from yolo3.board import file_sha1
from yolo3.errors import UserError

FILES = ("baseline-int8.tflite", "final-int8.tflite")


def board_command(threads: int, xnnpack: bool = True, delegate: str | None = None) -> str:
    """The command that times the final model against the unpruned int8 model on the board, from the run folder's copy."""
    runtime = f" --delegate {delegate}" if delegate else "" if xnnpack else " --no-xnnpack"
    return f"python -m yolo3.lite benchmark {' '.join(FILES)} --threads {threads}{runtime} --json > board.json"


@dataclass
class BoardMeasurement:
    """Median milliseconds of the unpruned and the final int8 model on the board, with the board's description."""

    path: Path
    device: dict
    unpruned_ms: float
    final_ms: float
    digests: dict[str, str | None]  # file name -> SHA-1 the benchmark read (None: an older benchmark that did not record it)

    @property
    def speedup(self) -> float:
        return self.unpruned_ms / self.final_ms

    @classmethod
    def load(cls, path: Path) -> BoardMeasurement:
        path = Path(path)
        hint = f"time them on the board with: {board_command(2)} (--threads and the runtime as planned)"
        if not path.is_file():
            raise UserError("--board-measured: no such file" if not path.exists() else "--board-measured: is not a file", path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            raise UserError(f"--board-measured: not the JSON of python -m yolo3.lite benchmark --json; {hint}", path) from None
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, dict) or not isinstance(data.get("device"), dict):
            raise UserError(f"--board-measured: not the JSON of python -m yolo3.lite benchmark --json (no device or models); {hint}", path)
        found: dict[str, dict] = {}
        for name, timing in models.items():
            if Path(str(name)).name in FILES and isinstance(timing, dict):
                found[Path(str(name)).name] = timing
        missing = [f for f in FILES if f not in found]
        if missing:
            raise UserError(f"--board-measured: holds no timing of {' and '.join(missing)}; {hint}", path)
        ms = {}
        for name in FILES:
            value = found[name].get("median_ms")
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UserError(f"--board-measured: {name} has no positive median_ms", path)
            ms[name] = float(value)
        return cls(path, data["device"], ms[FILES[0]], ms[FILES[1]], {f: found[f].get("sha1") for f in FILES})

    def check_files(self, run_dir: Path) -> None:
        """The timed files are this run's (by SHA-1, where the benchmark recorded it)."""
        for name, digest in self.digests.items():
            if digest and (run_dir / name).is_file() and file_sha1(run_dir / name) != digest:
                raise UserError(f"--board-measured: the {name} timed on the board is not this run's (another SHA-1): copy the run's "
                                "files to the board and time them again", self.path)  # fmt: skip

    def to_json(self) -> dict:
        return {"file": str(self.path), "device": self.device, "unpruned_ms": self.unpruned_ms, "final_ms": self.final_ms,
                "speedup": self.speedup, "sha1": self.digests}  # fmt: skip
