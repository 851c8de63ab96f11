"""Atomic file writes: a crash never leaves a half-written model, config or report."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary path, then put the finished file at ``path`` in one step.

    ``write`` receives a path (not a file object) so that libraries which insist
    on opening files themselves (h5py, the TFLite converter's worker process)
    can use it too. The temporary keeps the destination's name, since some
    writers (Keras ``save``) choose the format from the suffix.

    Nothing half-written ever appears beside ``path``, even after ``kill -9``:
    the writer works in a private staging folder under the system temp folder
    (a killed writer's folder is removed by the next write of any process of
    the tool), and the finished bytes are copied into an unnamed file
    (Linux ``O_TMPFILE``) in the destination folder that is linked into place
    only when complete. Where ``O_TMPFILE`` is not available the copy goes to
    a hidden named temporary that is renamed over ``path``.
    """
    from .errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError("is a folder; a file was to be written here", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        remove_stale_staging()
        staging = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}.", dir=_staging_root()))
    except OSError as err:
        raise UserError(f"cannot write here: {err.strerror or err}", path) from None
    try:
        staged = staging / path.name
        try:
            write(staged)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(f"no space left in the temporary folder {staging.parent} ({err.strerror}); set TMPDIR elsewhere",
                            path) from None  # fmt: skip
        try:
            _place(staged, path)
        except OSError as err:
            raise UserError(f"cannot write here: {err.strerror or err}", path) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(staged: Path, path: Path) -> None:
    """Put the finished file ``staged`` at ``path`` atomically, through an unnamed file where the OS has them."""
    mode = 0o666 & ~_umask()
    if not os.path.isdir("/proc/self/fd"):  # the unnamed file is named through /proc
        _place_through_named_temporary(staged, path, mode)
        return
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, mode)
    except (AttributeError, OSError):  # no O_TMPFILE (not Linux, or a file system without it)
        _place_through_named_temporary(staged, path, mode)
        return
    try:
        with open(staged, "rb") as src, os.fdopen(fd, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if not path.exists():
            try:
                _link_unnamed(fd, path)
                return
            except FileExistsError:
                pass
        tmp = path.parent / f".{path.stem}.{os.getpid()}.{os.urandom(4).hex()}{path.suffix}"
        _link_unnamed(fd, tmp)  # named for the instant of the rename only
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)


def _link_unnamed(fd: int, path: Path) -> None:
    """Give the unnamed file ``fd`` the name ``path`` (``linkat`` with ``AT_SYMLINK_FOLLOW`` through ``/proc``).

    A directory descriptor is passed because CPython calls plain ``link()``,
    which does not follow the ``/proc`` link, when no descriptor is given.
    """
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


def _place_through_named_temporary(staged: Path, path: Path, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        shutil.copyfile(staged, tmp_path)
        os.chmod(tmp_path, mode)  # mkstemp makes 0600; a model or report gets the permissions of any new file
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _staging_root() -> Path:
    """The tool's own folder under the system temp folder, one per user (``yolo3-staging-UID``)."""
    root = Path(tempfile.gettempdir()) / f"yolo3-staging-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def remove_stale_staging() -> list[Path]:
    """Delete the staging folders (``PID.XXXX``) of writers that are gone: what a ``kill -9`` left."""
    removed = []
    for folder in _staging_root().iterdir():
        pid = folder.name.split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the named temporaries a killed writer of ``path`` left (``.STEM.PID.XXXX.SUFFIX`` whose process is gone).

    The tool makes such a name only where the OS has no unnamed files, or for
    the instant between linking a finished file and renaming it over ``path``;
    files of that form left by a writer still running are left alone.
    """
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.stem)}.*{glob.escape(path.suffix)}"):
        parts = tmp.name[len(path.stem) + 2 :].split(".")
        if len(parts) >= 2 and parts[0].isdigit() and not _alive(int(parts[0])):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_user_text(path: str | Path, what: str) -> str:
    """The text of a file the user gave (a config, a split list, a names file, a cfg, a json), or one clear message.

    ``what`` names the file in the message ("split file", "names file", ...):
    missing, a folder, unreadable, or not UTF-8 text.
    """
    from .errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"is a folder, not a {what}", path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} does not exist", path) from None
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start}): a {what} is a text file", path) from None
    except OSError as err:
        raise UserError(f"cannot read the {what}: {err.strerror}", path) from None


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """An output file path that can be written: not a folder, under folders (not files), writable. Checked before the work."""
    from .errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"is a folder; the {what} is a file", path)
    _check_writable_parent(path, what)
    return path


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """An output folder that can be made or used: not a file, under folders, writable. Checked before the work."""
    from .errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"exists and is not a folder: the {what} must be a folder", path)
    _check_writable_parent(path, what)
    return path


def _check_writable_parent(path: Path, what: str) -> None:
    import os

    from .errors import UserError

    parent = _existing_parent(path)
    if not parent.is_dir():
        raise UserError(f"{parent} is a file, not a folder: the {what} cannot be made under it", path)
    if not os.access(parent, os.W_OK) or not _can_create_in(parent):
        raise UserError(f"{parent} is not writable: the {what} cannot be made there", path)


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be made in ``folder`` (os.access says yes to root in a read-only mount or /proc)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _existing_parent(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists (a file there means the path cannot be made)."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


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
