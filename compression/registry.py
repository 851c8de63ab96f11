"""The registry of compression methods that the job runner (:mod:`compression.job`) runs by name.

A method is a :class:`Method` subclass decorated with :func:`register`. The
package fills the registry when it is imported (``compression/__init__.py``
imports :mod:`compression.prune.methods` and :mod:`compression.cluster.methods`,
as NNCF's algorithm selector does), so nothing here imports a method and no
module of the package imports one that imports it back.

Example::

    from compression.registry import method_class
    method_class("similarity").title      # "similarity pruning"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from yolo3.errors import UserError

if TYPE_CHECKING:
    from .job import Job


@dataclass
class Transformed:
    """What a method made: the model, the record saved with it (what fine-tuning must keep), details for the report."""

    loaded: object  # yolo3.models.LoadedModel
    record: dict | None = None
    details: dict = field(default_factory=dict)
    structural: bool = False  # the architecture changed: also written as Darknet .cfg + .weights, layer table shown



class Method:
    """A compression method of :func:`run_job`; subclasses register themselves in :data:`METHODS` by ``name``."""

    name = ""
    title = ""

    def __init__(self, config, **options):
        self.config = config
        self.options = options

    def default_epochs(self) -> int:
        return self.config.pruning.finetune_epochs

    def default_output(self, source: Path) -> Path:
        return source.with_name(f"{source.stem}-{self.name}.h5")

    def check(self, job: Job, epochs: int) -> None:
        """Refuse settings that cannot work, before any work is done."""

    def needs_run_dir(self, epochs: int) -> bool:
        return epochs > 0

    def transform(self, job: Job, loaded, run_dir: Path | None, report: dict) -> Transformed:
        raise NotImplementedError

    def learning_rate(self) -> float:
        return self.config.pruning.finetune_learning_rate

    def finetune_hooks(self, made: Transformed, epochs: int) -> tuple:
        """What fine-tuning must keep (or do) for this method's result."""
        return ()

    def scores_after_transform(self) -> bool:
        return True

    def keep_finetuned(self, report: dict) -> bool:
        """Whether the fine-tuned model replaces the transformed one (a compressed model is kept only if fine-tuning did not hurt it)."""
        return True

    def finish(self, job: Job, made: Transformed, final, report: dict) -> None:
        """Last checks and details on the model written (sparsity, distinct values)."""

    @classmethod
    def format_details(cls, report: dict) -> list[str]:
        """Lines of the terminal report that only this method has."""
        return []


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def methods() -> dict[str, type[Method]]:
    """Every registered method, by name (the package registers its own on import: :mod:`compression`)."""
    return dict(METHODS)


def method_class(name: str) -> type[Method]:
    """The method registered as ``name``; an unknown name ends in one message listing the known ones."""
    if name not in METHODS:
        raise UserError(f"unknown compression method {name!r} (available: {', '.join(METHODS)})")
    return METHODS[name]


