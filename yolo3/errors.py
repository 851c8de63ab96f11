"""One exception type for every mistake a user can make.

Command-line entry points catch :class:`UserError` and print its message on one
line, so a bad path, a malformed cfg or a truncated ``.weights`` file never ends
in a traceback. The message always names the file, the place in it (line, key,
byte offset) when known, and the reason.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input, reported as ``file:place: reason``."""

    def __init__(self, reason: str, file: str | Path | None = None, place: str | int | None = None):
        self.reason = reason
        self.file = None if file is None else str(file)
        self.place = place
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.place is not None and self.place != "":
            parts.append(f"line {self.place}" if isinstance(self.place, int) else str(self.place))
        prefix = ":".join(parts)
        return f"{prefix}: {self.reason}" if prefix else self.reason


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)`` and turn a :class:`UserError` into one line on stderr and exit code 2."""
    import sys

    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
