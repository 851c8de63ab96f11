"""Atomic file writes: a crash never leaves a half-written model, config or report."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary name in the destination folder, then rename it to ``path``.

    ``write`` receives a path (not a file object) so that libraries which insist
    on opening files themselves (h5py, the TFLite converter) can use it too.
    The temporary name keeps the destination's suffix, since some writers
    (Keras ``save``) choose the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a model or report gets the permissions of any new file
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


GZIP_LEVEL = 9  # every "gzip_bytes" in every report: the size a model takes compressed, at one level


def gzip_size(data: bytes) -> int:
    import gzip

    return len(gzip.compress(data, GZIP_LEVEL))


def file_sizes(path: str | Path) -> dict:
    """``{"bytes", "gzip_bytes"}`` of a file: the one size schema of every report."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "gzip_bytes": gzip_size(data)}


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
