"""What every compression runner does with its outputs: size them, and give fine-tuning a fresh folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from yolo3.errors import UserError
from yolo3.fileio import file_sizes  # noqa: F401  (the runners import it from here)


def check_output(path: Path, suffix: str, force: bool) -> Path:
    """The output path, refused (one message) when its suffix is wrong or it exists and ``force`` is not given."""
    from yolo3.fileio import check_output_path

    path = Path(path)
    if path.suffix.lower() != suffix:
        raise UserError(f"the output must end in {suffix}", path)
    check_output_path(path)
    if path.exists() and not force:
        raise UserError("exists; pass --force to overwrite it", path)
    return path


def fresh_run_dir(out_path: Path, force: bool) -> Path:
    """The fine-tuning run folder beside ``out_path`` (same name, no suffix), emptied only when forced."""
    run_dir = Path(out_path).with_suffix("")
    if run_dir.exists():
        if not force:
            raise UserError("the fine-tuning run folder exists; pass --force to replace it", run_dir)
        shutil.rmtree(run_dir)
    return run_dir
