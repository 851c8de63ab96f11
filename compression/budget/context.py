"""What every stage of a compress run shares: the checked options, the config, the settings they read, and the services
(scoring on the validation split, evaluation of any model file, calibration images, the cost models of the run folder).

The stages (:mod:`.stages`) hold no state of their own: what one stage made
for another travels through the pipeline's results and files; this object only
answers questions (the same answer every time for the same run).

Example::

    job = CompressJob(config, "best.h5", CompressOptions(target=Target("speedup", 3)))
    job.settings["compress.finetune_epochs"], job.evaluate(Path("final-int8.tflite"), "test")
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from yolo3.errors import UserError
from yolo3.reporting import to_json

from .targets import Target

# Settings read by many stages, by name (the stages table in docs/compress.md lists them)
GROUPS: dict[str, tuple[str, ...]] = {
    "@model": ("model.file", "model.architecture", "model.anchors", "model.labels", "model.labels_file", "run.base_size"),
    "@data": ("train.annot_format", "train.train_image_folder", "train.train_annot_folder", "train.train_list", "train.holdout_fraction",
              "valid.*", "test.*"),  # fmt: skip
    "@train": ("train.*",),
}
EPOCH_KEYS = {"finetune": "compress.finetune_epochs", "candidate": "compress.candidate_epochs", "cluster": "compress.cluster_epochs",
              "qat": "quantization.qat_epochs"}  # fmt: skip


@dataclass
class CompressOptions:
    target: Target | None = None
    also: tuple[Target, ...] = ()  # further targets met beside the primary one (e.g. a size beside a speed-up)
    preset: str | None = None
    from_config: bool = False
    sensitivity_only: bool = False
    run_dir: Path | None = None
    threads: int | None = None
    no_xnnpack: bool = False  # time with LiteRT's built-in kernels (compress.xnnpack false)
    sizes: list[int] | None = None
    force: bool = False
    progress: bool = True
    epochs: dict = field(default_factory=dict)  # overrides: finetune, candidate, cluster, qat
    measurements_from: Path | None = None  # another run folder whose measuring stages this job may reuse
    time_budget: float | None = None  # minutes (default: compress.time_budget); 0 = the configured epochs as given
    max_loss: float = 1.0  # mAP@0.5 points the delivered model may lose on validation against the unpruned float model
    strict: bool = False  # stop when the target needs more loss than max_loss, instead of delivering the best model within it
    latency_table: Path | None = None  # plan with the board's timings (python -m yolo3.lite profile) instead of this machine's
    board_measured: Path | None = None  # the board's timing of the final model (python -m yolo3.lite benchmark --json), for the report


def check_max_loss(points: float) -> None:
    """The accuracy floor must be a number of mAP@0.5 points in [0, 100]."""
    import math

    if not isinstance(points, (int, float)) or not math.isfinite(points) or not 0 <= points <= 100:
        raise UserError(f"--max-loss is in mAP@0.5 points, between 0 and 100; got {points}")


def check_time_budget(minutes: float) -> None:
    """The time budget is a number of minutes in [0, one week]; 0 switches it off."""
    import math

    if not isinstance(minutes, (int, float)) or not math.isfinite(minutes) or not 0 <= minutes <= 10080:
        raise UserError(f"--time-budget is in minutes, between 0 (no budget) and 10080 (a week); got {minutes}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def file_digest(path: Path) -> str:
    """A short SHA-1 of a file: what the run's settings record of an input file, so that a changed file redoes what read it."""
    from yolo3.board import file_sha1

    return file_sha1(path)[:16]


def native_size(source: Path, config) -> int:
    """The input size a model file was made for: the width in its embedded (or given) cfg."""
    from yolo3.models import spec_from_h5
    from yolo3.zoo import resolve_spec

    spec = spec_from_h5(source) if source.suffix.lower() == ".h5" else None
    spec = spec or resolve_spec(config.model.architecture)
    return spec.width


def flat_settings(config) -> dict:
    """Every config key as ``section.key`` with its (resolved) value."""
    out = {}
    for section in ("model", "train", "valid", "test", "pruning", "clustering", "quantization", "compress"):
        sec = getattr(config, section)
        for key, value in (sec.values.items() if sec is not None else ()):
            out[f"{section}.{key}"] = value
    return json.loads(to_json(out))


class CompressJob:
    """One compress job: checked options, the config (with the command line's overrides), its settings, and shared services."""

    def __init__(self, config, model_path: str | Path | None, options: CompressOptions):
        from yolo3.config import with_overrides

        self.options = options
        check_max_loss(options.max_loss)
        source = Path(model_path) if model_path else config.model.weights
        if source is None:
            raise UserError("nothing to compress: give --model or set model.weights in the config")
        if not source.is_file():
            raise UserError("model file does not exist" if not source.exists() else "is not a file", source)
        if source.suffix.lower() not in (".h5", ".weights"):
            raise UserError("compress takes a Keras .h5 written by this tool or Darknet .weights (with the config's architecture)", source)
        self.source = source
        self.notes: list[str] = []
        self._scorer = None
        self._cache: dict = {}
        overrides = {EPOCH_KEYS[k]: int(v) for k, v in options.epochs.items()}
        self.latency_table = None
        if options.latency_table is not None:
            from .latency_table import LatencyTable

            if options.threads or options.no_xnnpack:
                raise UserError("--latency-table plans for the device it was profiled on (its threads and delegate); "
                                "--threads / --no-xnnpack choose this machine's timing: give one or the other")  # fmt: skip
            self.latency_table = LatencyTable.load(options.latency_table)
        self.board_measured = None
        if options.board_measured is not None:
            from .board_timing import BoardMeasurement

            self.board_measured = BoardMeasurement.load(options.board_measured)
        if options.threads:
            overrides["compress.threads"] = options.threads
        if options.no_xnnpack:
            overrides["compress.xnnpack"] = False
        if options.time_budget is not None:
            check_time_budget(options.time_budget)
            overrides["compress.time_budget"] = float(options.time_budget)
        if options.sizes:
            bad = [s for s in options.sizes if s <= 0 or s % 32]
            if bad:
                raise UserError(f"--sizes: {bad[0]} is not a positive multiple of 32")
            overrides["compress.sizes"] = list(options.sizes)
        if not config.has_test_split:
            fraction = config.compress.holdout_fraction
            overrides["train.holdout_fraction"] = fraction
            self.notes.append(f"the config has no test split: {fraction:.0%} of the training images are held out as the validation "
                              "split that every decision uses, and the valid section is the test split the report uses")  # fmt: skip
        self.plan_size = None
        if options.from_config:  # the config's input size is the plan's; the unpruned reference runs at the model's own size
            self.plan_size = config.model.input_size
            overrides["model.input_size"] = native_size(source, config)
        self.config = with_overrides(config, overrides) if overrides else config
        co = self.config.compress
        self.threads = co.threads
        self.xnnpack = co.xnnpack
        base = self.config.model.input_size
        self.base_size = base
        sizes = {s for s in co.sizes if s <= base}
        if not options.from_config and not options.preset and not options.sensitivity_only:
            sizes = self._above_box_floor(sizes, source)
        self.sizes = sorted(sizes | {base} | ({self.plan_size} if self.plan_size else set()), reverse=True)
        self.run_dir = options.run_dir or Path(self.config.train.run_dir).with_name(Path(self.config.train.run_dir).name + "-compress")
        self.settings = {
            **flat_settings(self.config),
            "model.file": {"path": str(source.resolve()), "sha1": file_digest(source)},
            "run.base_size": base, "run.sizes": self.sizes, "run.plan_size": self.plan_size,
            "run.target": options.target.to_json() if options.target else None, "run.also": [t.to_json() for t in options.also],
            "run.preset": options.preset,
            "run.from_config": options.from_config, "run.max_loss": options.max_loss, "run.strict": options.strict,
            "run.latency_table": {"path": str(options.latency_table.resolve()), "sha1": file_digest(options.latency_table)} if self.latency_table else None,
            "run.board_measured": self.board_measured.to_json() if self.board_measured else None,
        }  # fmt: skip

    def _above_box_floor(self, sizes: set[int], source: Path) -> set[int]:
        """The candidate sizes the training boxes allow (:func:`~.sizes.size_floor`); a note names those dropped and why."""
        from yolo3.datasets import read_dataset

        from .sizes import size_floor

        records = read_dataset(self.config.dataset("train"), self.config.labels).records
        spec = self.source_spec()
        percent = self.config.compress.small_boxes
        if percent >= 100:
            return sizes
        floor, why = size_floor(records, spec, percent)
        base = self.config.model.input_size
        dropped = sorted(s for s in sizes if s < floor and s != base)  # the model's own size is always a candidate
        if dropped:
            kept = f"; the model's own size, {base}, stays the only candidate" if floor > base else ""
            self.notes.append(f"input sizes {', '.join(map(str, dropped))} not considered: {why}{kept}")
        return {s for s in sizes if s >= floor}

    @property
    def targets(self) -> list[Target]:
        """Every target of the run, the primary first (none for a preset or a given plan)."""
        return [self.options.target, *self.options.also] if self.options.target else []

    def time_left(self, pipeline) -> float | None:
        """Seconds of the time budget left after the stages recorded so far (None without a budget)."""
        budget = self.config.compress.time_budget
        return None if not budget else budget * 60 - sum(pipeline.seconds().values())

    def describe_targets(self) -> str:
        from .targets import describe_all

        return describe_all(self.targets) if self.targets else "the plan"

    # -- configs ----------------------------------------------------------------------------------

    def derived(self, overrides: dict):
        """The job's config with dotted keys set (e.g. another input size)."""
        from yolo3.config import with_overrides

        return with_overrides(self.config, overrides)

    def at_size(self, size: int):
        return self.derived({"model.input_size": size})

    def pruning(self):
        """The pruning section as the planner uses it: ``round_to`` from ``compress.round_to``."""
        return self.derived({"pruning.round_to": self.config.compress.round_to}).pruning

    # -- scoring and evaluation -------------------------------------------------------------------

    @property
    def scorer(self):
        """Scores on the validation split; BN re-estimation for pruned variants on training images (compress.bn_images)."""
        from .sensitivity import BnRecalibration, Scorer

        if self._scorer is None:
            n = self.config.compress.bn_images
            recalibration = BnRecalibration(self.calibration(n)) if n else None
            self._scorer = Scorer(self.config, "valid", recalibration=recalibration)
        return self._scorer

    def evaluate(self, path: Path, split: str, config=None) -> dict:
        """mAP@0.5 and COCO AP of a model file (Keras or .tflite) on a split; the same code for every stage.

        The detections, matched to the ground truth, are kept for
        :meth:`matches` (paired comparisons of two models on the same images).
        """
        from yolo3.evaluation import detect_split
        from yolo3.metrics import evaluate_detections, match_detections

        config = config or self.config
        key = self._matches_key(path, split, config)
        if ("report", *key) in self._cache:  # the same bytes already scored (a stage's copy of an earlier stage's file)
            return dict(self._cache[("report", *key)])
        run = detect_split(config, str(path), split, self.threads)
        matches = match_detections(run.records, run.detections, len(config.labels))
        report = evaluate_detections(run.records, run.detections, config.labels, matches=matches)
        result = {"mAP50": report["mAP50"], "coco_AP": report["coco"]["AP"], "images": len(run.records)}
        self._cache[key], self._cache[("report", *key)] = matches, dict(result)
        return result

    @staticmethod
    def _matches_key(path: Path, split: str, config) -> tuple:
        """The file by its content (a copy scores as its original; a file rewritten under the same name is scored again)."""
        from yolo3.board import file_sha1

        return ("matches", file_sha1(path), Path(path).suffix.lower(), split, config.model.input_size, tuple(config.labels))

    def matches(self, path: Path, split: str, config=None) -> list:
        """A model file's detections on a split matched to the ground truth per class (:func:`yolo3.metrics.match_detections`), for paired comparisons."""
        config = config or self.config
        key = self._matches_key(path, split, config)
        if key not in self._cache:
            self.evaluate(path, split, config)
        return self._cache[key]

    def calibration(self, count: int | None = None) -> list[str]:
        """``count`` training images (default compress.calibration_samples), chosen with a fixed seed."""
        from yolo3.datasets import read_dataset

        from ..quantize.tflite_export import calibration_images

        count = self.config.compress.calibration_samples if count is None else count
        return calibration_images(read_dataset(self.config.dataset("train"), self.config.labels).records, count)

    # -- what the measuring stages wrote ----------------------------------------------------------

    def source_spec(self):
        """The architecture of the model to compress: the cfg an .h5 of this tool embeds, else the config's."""
        spec = self.spec(self.source) if self.source.suffix.lower() == ".h5" else None
        if spec is None:
            from yolo3.zoo import resolve_spec

            spec = resolve_spec(self.config.model.architecture)
        return spec

    def spec(self, baseline_h5: Path):
        from yolo3.models import spec_from_h5

        key = ("spec", str(baseline_h5))
        if key not in self._cache:
            self._cache[key] = spec_from_h5(baseline_h5)
        return self._cache[key]

    @staticmethod
    def latency_model(path: Path):
        from .latency_model import LatencyModel

        return LatencyModel.from_json(json.loads(path.read_text()))

    @staticmethod
    def size_model(path: Path):
        from .planner import SizeModel

        return SizeModel.from_json(json.loads(path.read_text()))
