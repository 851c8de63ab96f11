"""``compress.py``: from a trained model to an int8 ``.tflite`` that meets a speed or size budget, found by the tool.

The chain, each stage a folder entry of the run folder that a re-run skips
once it is done (a training stage killed half-way resumes from its
checkpoints):

 1. ``baseline``     the input model at the config's size: float and int8, scored
 2. ``cost-models``  int8 latency of every block on this machine (:mod:`.latency_model`),
                     bytes per weight (:class:`~.planner.SizeModel`)
 3. ``sensitivity``  every unit pruned alone, every input size, every layer clustered,
                     int8 error per layer (:mod:`.sensitivity`)
 4. ``plan``         per-unit channel counts at each input size (:mod:`.planner`), each
                     checked by timing its architecture as int8, corrected when short
 5. ``candidates``   a short fine-tune of each input size's plan; the best on validation wins
 6. ``prune``        the baseline pruned to the plan (similarity / |BN scale|)
 7. ``finetune``     fine-tuning with distillation from the baseline
 8. ``cluster``      k-means of the kernels where the validation split allows
 9. ``cluster-finetune``  cluster-preserving fine-tuning (the better of before/after kept)
10. ``int8``         post-training int8 and quantization-aware training; the better kept
11. ``report``       every stage on the test split, the final model timed against the
                     unpruned int8 model in one interleaved run; JSON, markdown, PNG

Decisions (plan, candidates, best epochs, what to keep) see only the
validation split; the report's figures come from the test split.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from yolo3.errors import UserError
from yolo3.fileio import atomic_write_text
from yolo3.names import conv_index, conv_name
from yolo3.reporting import to_json, write_json

SLACK = 0.07  # a plan timed this much faster than its speed target is searched again to prune less
STAGES = ("baseline", "cost-models", "sensitivity", "plan", "candidates", "prune", "finetune", "cluster", "cluster-finetune", "int8", "report")
# what each stage depends on, besides the stages before it
STAGE_INPUTS = {
    "baseline": ("model", "config", "calibration"),
    "cost-models": ("model", "config", "measure"),
    "sensitivity": ("model", "config", "measure", "sensitivity"),
    "plan": ("model", "config", "measure", "plan"),
}
OUTPUTS = {  # files and folders a stage writes, removed when it is redone
    "baseline": ["baseline.h5", "baseline-int8.tflite"],
    "cost-models": ["latency-model.json", "size-model.json"],
    "sensitivity": ["sensitivity.json", "sensitivity.png"],
    "plan": ["plan.json", "plan-config.json"],
    "candidates": ["candidates"],
    "prune": ["pruned.h5", "pruned.cfg", "pruned.weights"],
    "finetune": ["finetune", "finetuned.h5"],
    "cluster": ["clustered.h5"],
    "cluster-finetune": ["cluster-finetune", "clustered-finetuned.h5"],
    "int8": ["ptq-int8.tflite", "qat", "qat-int8.tflite", "final-int8.tflite"],
    "report": ["report.json", "report.md", "report.png"],
}


@dataclass(frozen=True)
class Target:
    """The budget: ``speedup`` (x, against the unpruned int8 model), ``latency`` (ms), ``size`` (MB gzipped) or ``macs`` (fraction kept)."""

    kind: str
    value: float

    def describe(self) -> str:
        return {
            "speedup": f"{self.value:g}x faster than the unpruned int8 model",
            "latency": f"int8 latency of at most {self.value:g} ms",
            "size": f"gzipped int8 .tflite of at most {self.value:g} MB",
            "macs": f"at most {self.value:.0%} of the original MACs",
        }[self.kind]

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.value, "text": self.describe()}


def parse_target(speedup: float | None = None, latency: float | None = None, size: float | None = None, macs: float | None = None) -> Target | None:
    """Exactly one target, checked: nonsense values end in one message."""
    given = {k: v for k, v in (("speedup", speedup), ("latency", latency), ("size", size), ("macs", macs)) if v is not None}
    if len(given) > 1:
        raise UserError(f"give one target at a time (got {', '.join('--target-' + k for k in given)})")
    if not given:
        return None
    kind, value = next(iter(given.items()))
    import math

    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--target-{kind} must be a positive number, got {value:g}")
    if kind == "speedup" and value < 1:
        raise UserError(f"--target-speedup {value:g} is below 1: a speed-up makes the model faster; the unpruned int8 model is 1x")
    if kind == "macs" and value > 1:
        raise UserError(f"--target-macs is the fraction of the original MACs to keep, in (0, 1]; got {value:g}")
    return Target(kind, float(value))


@dataclass
class CompressOptions:
    target: Target | None = None
    preset: str | None = None
    from_config: bool = False
    sensitivity_only: bool = False
    run_dir: Path | None = None
    threads: int | None = None
    sizes: list[int] | None = None
    force: bool = False
    progress: bool = True
    epochs: dict = field(default_factory=dict)  # overrides: finetune, candidate, cluster, qat
    measurements_from: Path | None = None  # another run folder whose baseline, cost models and sensitivity this job may reuse


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _digest(data) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class RunFolder:
    """The stages done so far: ``stages/NAME.json`` with the fingerprint of what the stage was made from."""

    def __init__(self, path: Path, fingerprints: dict[str, str], force: bool):
        from yolo3.fileio import check_output_folder

        self.path = check_output_folder(path, "run folder (--run-dir)")
        self.fingerprints = fingerprints
        (self.path / "stages").mkdir(parents=True, exist_ok=True)
        stale = [s for s in STAGES if self._record(s) is not None and self._record(s).get("fingerprint") != fingerprints[s]]
        if stale:
            first = stale[0]
            if not force:
                raise UserError(
                    f"this run folder holds stage {first!r} (and what follows) made from other inputs (model, config, target or "
                    "settings); pass --force to redo it and the stages after it, or choose another --run-dir",
                    self.path,
                )
            for s in STAGES[STAGES.index(first) :]:
                self.clear(s)

    def _file(self, stage: str) -> Path:
        return self.path / "stages" / f"{stage}.json"

    def _record(self, stage: str) -> dict | None:
        f = self._file(stage)
        if not f.exists():
            return None
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {"fingerprint": None}

    def done(self, stage: str) -> dict | None:
        record = self._record(stage)
        return record["result"] if record and record.get("fingerprint") == self.fingerprints[stage] else None

    def finish(self, stage: str, result: dict, seconds: float) -> None:
        write_json(self._file(stage), {"stage": stage, "fingerprint": self.fingerprints[stage], "seconds": seconds, "result": result})

    def clear(self, stage: str) -> None:
        self._file(stage).unlink(missing_ok=True)
        for name in OUTPUTS[stage]:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def file(self, name: str) -> Path:
        return self.path / name


def native_size(source: Path, config) -> int:
    """The input size a model file was made for: the width in its embedded (or given) cfg."""
    from yolo3.models import spec_from_h5
    from yolo3.zoo import resolve_spec

    spec = spec_from_h5(source) if source.suffix.lower() == ".h5" else None
    spec = spec or resolve_spec(config.model.architecture)
    return spec.width


def stage_fingerprints(job: dict) -> dict[str, str]:
    """One fingerprint per stage: its own inputs and every earlier stage's."""
    out = {}
    chain: list = []
    for stage in STAGES:
        chain.append([job[k] for k in STAGE_INPUTS.get(stage, ("model", "config", "measure", "plan", "chain"))])
        out[stage] = _digest(chain)
    return out


class Compressor:
    """One compress job: the config, the model, the run folder, and the stages' results so far."""

    def __init__(self, config, model_path: str | Path | None, options: CompressOptions):
        from yolo3.config import with_overrides

        self.options = options
        source = Path(model_path) if model_path else config.model.weights
        if source is None:
            raise UserError("nothing to compress: give --model or set model.weights in the config")
        if not source.is_file():
            raise UserError("model file does not exist" if not source.exists() else "is not a file", source)
        if source.suffix.lower() not in (".h5", ".weights"):
            raise UserError("compress takes a Keras .h5 written by this tool or Darknet .weights (with the config's architecture)", source)
        self.source = source
        self.notes: list[str] = []
        if not config.has_test_split:
            fraction = config.compress.holdout_fraction
            config = with_overrides(config, {"train.holdout_fraction": fraction})
            self.notes.append(f"the config has no test split: {fraction:.0%} of the training images are held out as the validation "
                              "split that every decision uses, and the valid section is the test split the report uses")  # fmt: skip
        self.plan_size = None
        if options.from_config:  # the config's input size is the plan's; the unpruned reference runs at the model's own size
            self.plan_size = config.model.input_size
            config = with_overrides(config, {"model.input_size": native_size(source, config)})
        self.config = config
        co = config.compress
        self.threads = options.threads or co.threads
        base = config.model.input_size
        sizes = options.sizes or co.sizes
        bad = [s for s in sizes if s <= 0 or s % 32]
        if bad:
            raise UserError(f"--sizes: {bad[0]} is not a positive multiple of 32")
        self.sizes = sorted({s for s in sizes if s <= base} | {base} | ({self.plan_size} if self.plan_size else set()), reverse=True)
        self.base_size = base
        run_dir = options.run_dir or Path(config.train.run_dir).with_name(Path(config.train.run_dir).name + "-compress")
        job = {
            "model": {"file": str(source.resolve()), "sha1": file_digest(source)},
            "calibration": co.calibration_samples,
            "config": json.loads(to_json({k: v for k, v in config.raw.items() if k not in ("compress",)})),
            "measure": {"threads": self.threads, "sizes": self.sizes, "ratios": list(co.sensitivity_ratios), "round_to": co.round_to,
                        "levels": list(co.latency_levels),
                        "clusters": config.clustering.clusters, "debug_images": co.debug_images},
            "sensitivity": {"bn_images": co.bn_images},  # fmt: skip
            "plan": {"target": options.target.to_json() if options.target else None, "preset": options.preset, "from_config": options.from_config,
                     "candidate_epochs": options.epochs.get("candidate", co.candidate_epochs)},  # fmt: skip
            "chain": {k: co.values[k] for k in ("finetune_epochs", "distillation", "cluster", "cluster_budget", "cluster_first_layer",
                                                "cluster_epochs", "qat")} | {"epochs": options.epochs,  # fmt: skip
                      "pruning": config.pruning.values, "clustering": config.clustering.values, "quantization": config.quantization.values},
        }
        self.job = json.loads(to_json(job))
        self._check_fixed_plan()  # before the run folder is made
        self.run = RunFolder(run_dir, stage_fingerprints(self.job), options.force)
        write_json(self.run.file("job.json"), self.job)
        if options.measurements_from:
            self._reuse_measurements(Path(options.measurements_from))
        self.results: dict[str, dict] = {}
        self._scorer = None
        self._test = None

    # -- helpers --------------------------------------------------------------------------------

    def _reuse_measurements(self, other: Path) -> None:
        """Copy the measuring stages of another run folder, where they were made from the same inputs as this job's."""
        if not (other / "stages").is_dir():
            raise UserError("--measurements-from: not a compress run folder (no stages/)", other)
        for stage in ("baseline", "cost-models", "sensitivity"):
            record = other / "stages" / f"{stage}.json"
            if self.run.done(stage) is not None or not record.exists():
                continue
            if json.loads(record.read_text()).get("fingerprint") != self.run.fingerprints[stage]:
                self.notes.append(f"--measurements-from: {stage} there was made from other inputs; measured again")
                break
            for name in OUTPUTS[stage]:
                if (other / name).is_file():
                    shutil.copyfile(other / name, self.run.file(name))
            shutil.copyfile(record, self.run.path / "stages" / f"{stage}.json")

    def _check_fixed_plan(self) -> None:
        """A preset or the config's ratios must fit the model: say so before any work is done."""
        if not (self.options.preset or self.options.from_config):
            return
        from yolo3.models import spec_from_h5
        from yolo3.zoo import resolve_spec

        from .presets import preset_ratios
        from .pruning import resolve_layer_ratios

        spec = (spec_from_h5(self.source) if self.source.suffix.lower() == ".h5" else None) or resolve_spec(self.config.model.architecture)
        if self.options.preset:
            preset_ratios(self.options.preset, spec)
        else:
            resolve_layer_ratios(spec, self.config.pruning.similarity_layer_ratios, self.config.path)

    @property
    def scorer(self):
        """Scores on the validation split; BN re-estimation for pruned variants on training images (compress.bn_images)."""
        from .sensitivity import BnRecalibration, Scorer

        if self._scorer is None:
            n = self.config.compress.bn_images
            recalibration = BnRecalibration(self.calibration(n)) if n else None
            self._scorer = Scorer(self.config, "valid", recalibration=recalibration)
        return self._scorer

    def derived(self, overrides: dict):
        from yolo3.config import with_overrides

        return with_overrides(self.config, overrides)

    def evaluate(self, path: Path, split: str, config=None) -> dict:
        """mAP@0.5 and COCO AP of a model file (Keras or .tflite) on a split; the same code for every stage."""
        from yolo3.evaluation import evaluate_config

        report = evaluate_config(config or self.config, str(path), progress=False, threads=self.threads, latency_runs=0, split=split)
        return {"mAP50": report["mAP50"], "coco_AP": report["coco"]["AP"], "images": report["images"]}

    def calibration(self, count: int | None = None) -> list[str]:
        """``count`` training images (default compress.calibration_samples), chosen with a fixed seed."""
        from yolo3.datasets import read_dataset

        from .tflite_export import calibration_images

        count = self.config.compress.calibration_samples if count is None else count
        return calibration_images(read_dataset(self.config.dataset("train"), self.config.labels).records, count)

    def stage(self, name: str, func, index: int) -> dict:
        done = self.run.done(name)
        label = f"[{index}/{len(STAGES)}] {name}"
        if done is not None:
            _log(f"{label}: done before, skipped")
            self.results[name] = done
            return done
        _log(f"{label} ...")
        t0 = time.perf_counter()
        result = func()
        seconds = time.perf_counter() - t0
        self.run.finish(name, result, seconds)
        self.results[name] = result
        _log(f"{label}: finished in {seconds / 60:.1f} min")
        return result

    # -- the stages -----------------------------------------------------------------------------

    def baseline(self) -> dict:
        from yolo3.darknet import expected_floats
        from yolo3.evaluation import load_for_config
        from yolo3.models import compression_info, save_model

        from .tflite_export import export_tflite

        loaded = load_for_config(self.config, str(self.source))
        h5 = self.run.file("baseline.h5")
        save_model(loaded.model, loaded.spec, h5, compression_info(self.source) or None)
        weights_bytes = self.source.stat().st_size if self.source.suffix.lower() == ".weights" else 20 + 4 * expected_floats(loaded.spec)
        calibration = self.calibration()
        int8 = self.run.file("baseline-int8.tflite")
        report = export_tflite(h5, int8, "int8", calibration, self.config.labels, self.base_size, loaded.spec)
        return {
            "source": str(self.source), "input_size": self.base_size, "float_weights_bytes": weights_bytes, **loaded.summary(),
            "float": {"valid": self.evaluate(h5, "valid")}, "int8": {"valid": self.evaluate(int8, "valid"), "bytes": report["bytes"],
                                                                     "gzip_bytes": report["gzip_bytes"]},
            "calibration_images": len(calibration),
        }  # fmt: skip

    def cost_models(self) -> dict:
        from yolo3.models import load_model

        from .latency_model import measure_latency_model
        from .planner import measure_size_model

        loaded = load_model(self.run.file("baseline.h5"))
        co = self.config.compress
        model = measure_latency_model(loaded.spec, self.sizes, self.base_size, self.threads, tuple(co.latency_levels), co.round_to,
                                      progress=self.options.progress)  # fmt: skip
        write_json(self.run.file("latency-model.json"), model.to_json())
        size = measure_size_model(loaded.model, loaded.spec, self.config.clustering.clusters, self.results["baseline"]["int8"]["gzip_bytes"])
        write_json(self.run.file("size-model.json"), size.to_json())
        full = next(n for n in model.networks if n["size"] == self.base_size and not n["filters"])
        return {"unpruned_ms": full["ms"], "unpruned_predicted_ms": full["predicted_ms"], "alpha": model.alpha, "beta": model.beta,
                "blocks_timed": len(model.blocks), "networks_timed": len(model.networks), "seconds": model.seconds}  # fmt: skip

    def sensitivity(self) -> dict:
        from yolo3.datasets import read_dataset
        from yolo3.evaluation import load_for_config

        from .sensitivity import plot_sensitivity, run_sensitivity

        loaded = load_for_config(self.config, str(self.source))
        valid = read_dataset(self.config.dataset("valid"), self.config.labels)
        debug = [str(r.image) for r in valid.records[: self.config.compress.debug_images]]
        result = run_sensitivity(loaded, self.config, self.sizes, tuple(self.config.compress.sensitivity_ratios), self.config.clustering.clusters,
                                 debug, progress=self.options.progress, scorer=self.scorer)  # fmt: skip
        write_json(self.run.file("sensitivity.json"), result)
        plot_sensitivity(result, self.run.file("sensitivity.png"))
        return {"seconds": result["seconds"], "base_mAP50": result["pruning"]["base_mAP50"], "sizes": result["sizes"]}

    # -- planning -------------------------------------------------------------------------------

    def _latency_model(self):
        from .latency_model import LatencyModel

        return LatencyModel.from_json(json.loads(self.run.file("latency-model.json").read_text()))

    def _size_model(self):
        from .planner import SizeModel

        return SizeModel.from_json(json.loads(self.run.file("size-model.json").read_text()))

    def _spec(self):
        from yolo3.models import spec_from_h5

        return spec_from_h5(self.run.file("baseline.h5"))

    def predicted_ms(self, kept: dict[int, int], size: int) -> float:
        from .planner import ChannelMap, LatencyCost

        return LatencyCost(self._latency_model(), ChannelMap(self._spec()))(kept, size)

    def cluster_candidates(self, sensitivity: dict) -> set[int]:
        """Layers the clustering step is predicted to cluster (the rule of :meth:`cluster`, on the unpruned model's sensitivity)."""
        spec = self._spec()
        layers = sensitivity["clustering"]["layers"]
        budget = self.config.compress.cluster_budget
        excluded = {conv_index(e) for e in self.config.clustering.exclude}
        chosen = {i for i in spec.conv_indices() if i not in excluded}
        if not self.config.compress.cluster_first_layer:
            chosen.discard(spec.conv_indices()[0])
        return {i for i in chosen if layers.get(conv_name(i), {"loss": 0})["loss"] <= budget}

    def plan(self) -> dict:
        from .planner import ChannelMap, LatencyCost, MacsCost, SizeCost, plan_budget, ratios_for

        spec = self._spec()
        cmap = ChannelMap(spec)
        full = cmap.full()
        target = self.options.target
        if self.options.preset or self.options.from_config:
            return self._fixed_plan(cmap)
        sens = json.loads(self.run.file("sensitivity.json").read_text())
        base_map = sens["pruning"]["base_mAP50"]
        points = {u["group"]: u["points"] for u in sens["pruning"]["units"].values()}
        size_loss = {int(s): base_map - m for s, m in sens["sizes"].items()}
        latency = self._latency_model()
        if target.kind in ("speedup", "latency"):
            cost = LatencyCost(latency, cmap)
            target_value = cost(full, self.base_size) / target.value if target.kind == "speedup" else target.value
        elif target.kind == "macs":
            cost = MacsCost(cmap)
            target_value = cost(full, self.base_size) * target.value
        else:
            cost = SizeCost(self._size_model(), cmap, self.cluster_candidates(sens) if self.config.compress.cluster else set())
            target_value = target.value * 1e6
        plan = plan_budget(cmap, points, size_loss, cost, target_value, self.sizes, self._pruning())
        checks = {}
        if target.kind in ("speedup", "latency") and plan.feasible:
            plan, checks = self._check_latency(plan, cmap, points, size_loss, cost, target_value)
        if not plan.feasible:
            self._unreachable(plan, cost, full)
        unit_ms = LatencyCost(latency, cmap)
        candidates = {}
        for size, cand in plan.per_size.items():
            if cand is None:
                continue
            candidates[str(size)] = {**cand.to_json(), "predicted_ms": unit_ms(cand.kept, size),
                                     "predicted_mAP50": base_map - cand.loss, "check": checks.get(size)}  # fmt: skip
        best = plan.best
        data = {
            "target": target.to_json(), "cost": plan.cost_name, "cost_unit": plan.cost_unit, "target_cost": target_value,
            "unpruned_cost": cost(full, self.base_size), "reach": {str(k): v for k, v in plan.reach.items()},
            "candidates": candidates, "best_by_prediction": best.size,
            "trace": [c.to_json() | {"predicted_ms": unit_ms(c.kept, c.size)} for c in plan.trace],
            "method": "greedy, NetAdapt-style, loss from the sensitivity analysis, cost from the measured models",
        }  # fmt: skip
        write_json(self.run.file("plan.json"), data)
        self._write_plan_config(best.size, ratios_for(best.kept, cmap), self.cluster_exclusions(sens))
        return {"sizes": sorted(int(s) for s in candidates), "best_by_prediction": best.size,
                "kept": {str(s): c["kept"] for s, c in candidates.items()}}  # fmt: skip

    def _pruning(self):
        return self.derived({"pruning.round_to": self.config.compress.round_to}).pruning

    def _check_latency(self, plan, cmap, points, size_loss, cost, target_value):
        """Time each size's plan as int8 (random weights) against the unpruned network, and correct the plan by what was measured.

        A plan measured short of the target is searched again aiming lower by
        the model's error there; a plan measured well inside the target
        (more than ``SLACK``) is searched again aiming higher, so that it
        prunes no more than the target needs, and kept only if it still meets
        the target when timed. At most three timings per size.
        """
        from .latency_model import measure_networks
        from .planner import plan_budget

        full = cmap.full()
        checks: dict[int, dict] = {}
        met_before: dict[int, tuple] = {}  # the last plan of each size that met the target when timed, with its timing
        history: dict[int, list] = {s: [] for s in plan.per_size}
        targets = {s: target_value for s in plan.per_size}
        for attempt in range(3):
            pending = [s for s, c in plan.per_size.items() if c is not None and s not in checks]
            if not pending:
                break
            specs = [(cmap.spec, self.base_size)] + [(cmap.spec_with(plan.per_size[s].kept), s) for s in pending]
            measured = measure_networks(specs, self.threads, self.options.progress)
            for s, ms in zip(pending, measured[1:]):
                cand = plan.per_size[s]
                # the target in measured milliseconds: the same speed-up against the unpruned network timed in this run
                wanted = measured[0] * target_value / cost(full, self.base_size) if self.options.target.kind == "speedup" else target_value
                entry = {"attempt": attempt + 1, "measured_ms": ms, "unpruned_measured_ms": measured[0], "predicted_ms": cand.cost,
                         "wanted_ms": wanted, "met": ms <= wanted * 1.02}  # fmt: skip
                history[s].append(entry)
                if entry["met"]:
                    met_before[s] = (cand, entry)
                    if ms >= wanted * (1 - SLACK) or attempt == 2:
                        checks[s] = entry
                        continue
                elif s in met_before or attempt == 2:  # a relaxed plan fell short: back to the one that met (or none met)
                    if s in met_before:
                        plan.per_size[s], checks[s] = met_before[s]
                    else:
                        checks[s] = entry
                    continue
                # the model was off here by ms / predicted: aim by as much lower (too slow) or higher (faster than needed)
                targets[s] *= wanted / ms * 0.99
                again = plan_budget(cmap, points, size_loss, cost, targets[s], [s], self._pruning())
                plan.per_size[s] = again.per_size[s]
                plan.reach[s] = again.reach[s]
                plan.trace += again.trace
                if plan.per_size[s] is None and s in met_before:
                    plan.per_size[s], checks[s] = met_before[s]
        checks = {s: {**entry, "timings": [dict(t) for t in history[s]]} for s, entry in checks.items()}
        for s, entry in checks.items():
            if not entry["met"]:
                plan.per_size[s] = None  # measured too slow after three tries: not a candidate
        return plan, checks

    def _unreachable(self, plan, cost, full) -> None:
        size, reach = min(plan.reach.items(), key=lambda kv: kv[1])
        target = self.options.target
        unpruned = cost(full, self.base_size)
        if target.kind == "speedup":
            best = f"{unpruned / reach:.2f}x (predicted)"
        elif target.kind == "latency":
            best = f"{reach:.2f} ms (predicted)"
        elif target.kind == "size":
            best = f"{reach / 1e6:.3f} MB (predicted)"
        else:
            best = f"{reach / unpruned:.1%} of the MACs"
        raise UserError(f"{target.describe()} cannot be reached: the most the planner can reach is {best}, with every unit at "
                        f"the fewest channels it may keep (pruning.min_channels; after the sensitivity analysis, the fewest it was measured at) "
                        f"at input size {size}; nothing written so far was removed",
                        self.run.path)  # fmt: skip

    def check_reachable(self) -> None:
        """Before the slow sensitivity analysis: can the cost models reach the target at all?"""
        from .planner import ChannelMap, LatencyCost, MacsCost, SizeCost, unit_floor

        target = self.options.target
        if target is None:
            return
        cmap = ChannelMap(self._spec())
        full = cmap.full()
        floor = {u: unit_floor(c, self._pruning()) for u, c in cmap.units.items()}
        if target.kind in ("speedup", "latency"):
            cost = LatencyCost(self._latency_model(), cmap)
            value = cost(full, self.base_size) / target.value if target.kind == "speedup" else target.value
        elif target.kind == "macs":
            cost = MacsCost(cmap)
            value = cost(full, self.base_size) * target.value
        else:
            every = set(cmap.spec.conv_indices()) if self.config.compress.cluster else set()
            cost = SizeCost(self._size_model(), cmap, every)
            value = target.value * 1e6
        reach = {s: cost(floor, s) for s in self.sizes}
        if min(reach.values()) > value:
            from .planner import Plan

            self._unreachable(Plan(value, cost.name, cost.unit, {}, reach), cost, full)

    def _fixed_plan(self, cmap) -> dict:
        """A plan that was not searched: a named preset, or the config's own ratios, input size and exclusions."""
        from .planner import ratios_for
        from .presets import preset_ratios
        from .pruning import resolve_layer_ratios
        from .sensitivity import kept_count

        if self.options.preset:
            given = preset_ratios(self.options.preset, cmap.spec)
            size = self.base_size
            exclude = [conv_name(cmap.spec.conv_indices()[0])] if not self.config.compress.cluster_first_layer else []
            origin = f"preset {self.options.preset}"
        else:
            given = self.config.pruning.similarity_layer_ratios
            size = self.plan_size
            exclude = list(self.config.clustering.exclude)
            origin = f"the config's pruning.similarity_layer_ratios, model.input_size and clustering.exclude ({self.config.path})"
        ratios = resolve_layer_ratios(cmap.spec, given, self.config.path)
        kept = {u: kept_count(c, ratios.get(u, 0.0), self._pruning()) for u, c in cmap.units.items()}
        data = {"origin": origin, "candidates": {str(size): {"size": size, "kept": {conv_name(k): v for k, v in kept.items()},
                                                             "predicted_ms": self.predicted_ms(kept, size)}},  # fmt: skip
                "best_by_prediction": size, "target": self.options.target.to_json() if self.options.target else None}
        write_json(self.run.file("plan.json"), data)
        self._write_plan_config(size, ratios_for(kept, cmap), exclude)
        return {"sizes": [size], "best_by_prediction": size, "kept": {str(size): data["candidates"][str(size)]["kept"]}}

    def cluster_exclusions(self, sensitivity: dict | None) -> list[str]:
        spec = self._spec()
        if sensitivity is None:
            return list(self.config.clustering.exclude)
        chosen = self.cluster_candidates(sensitivity)
        return [conv_name(i) for i in spec.conv_indices() if i not in chosen]

    def _write_plan_config(self, size: int, ratios: dict[str, float], exclude: list[str]) -> None:
        """The plan as an ordinary config: edit it and run ``compress.py --from-config`` (or evaluate.py -p 3, clustering.py) again."""
        from yolo3.config import to_raw

        co = self.config.compress
        config = self.derived({
            "model.input_size": size,
            "pruning.similarity_layer_ratios": ratios, "pruning.similarity_ratio": None, "pruning.similarity_kernels": [1, 3],
            "pruning.round_to": co.round_to, "pruning.distillation": co.distillation, "pruning.finetune_epochs": self.epochs("finetune"),
            "clustering.exclude": exclude, "clustering.finetune_epochs": self.epochs("cluster"),
            "quantization.qat_epochs": self.epochs("qat"),
        })  # fmt: skip
        raw = to_raw(config, self.run.path)
        raw["model"]["weights"] = "baseline.h5"
        atomic_write_text(self.run.file("plan-config.json"), json.dumps(raw, indent=2) + "\n")

    def epochs(self, kind: str) -> int:
        co = self.config.compress
        default = {"finetune": co.finetune_epochs, "candidate": co.candidate_epochs, "cluster": co.cluster_epochs,
                   "qat": self.config.quantization.qat_epochs}[kind]  # fmt: skip
        return int(self.options.epochs.get(kind, default))

    # -- pruning and fine-tuning ----------------------------------------------------------------

    def _prune_to(self, kept: dict[int, int], size: int, out: Path) -> dict:
        """The baseline pruned to ``kept`` channels per unit, at input ``size``, saved as ``out`` (.h5 + Darknet files)."""
        from yolo3.darknet import write_weights
        from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
        from yolo3.models import load_model, save_model
        from yolo3.spec import analyse, totals, with_size, write_cfg

        from .planner import ChannelMap
        from .sensitivity import prune_to_ratios

        loaded = load_model(self.run.file("baseline.h5"))
        cmap = ChannelMap(loaded.spec)
        ratios = {u: (c - kept.get(u, c)) / c for u, c in cmap.units.items()}
        weights = get_darknet_weights(loaded.model, loaded.spec)
        spec, new_weights = prune_to_ratios(loaded.spec, weights, {u: r for u, r in ratios.items() if r > 0}, self._pruning())
        spec = with_size(spec, size)
        model = build_model(spec, size=size)
        set_darknet_weights(model, spec, new_weights)
        save_model(model, spec, out)
        write_cfg(spec, out.with_suffix(".cfg"))
        write_weights(out.with_suffix(".weights"), spec, new_weights)
        t = totals(analyse(spec, size, size))
        return {"params": t.params, "macs": t.macs, "size": size, "filters": {conv_name(i): spec.layers[i].get_int("filters") for i in spec.conv_indices()}}

    def _finetune(self, start: Path, run_dir: Path, epochs: int, size: int, learning_rate: float, hooks=()) -> dict:
        """Fine-tune ``start`` at input ``size`` in ``run_dir`` (resumes there), distilling from the baseline; best epoch on validation."""
        from yolo3.training import RunOptions, train

        from .distillation import Distillation

        co = self.config.compress
        config = self.derived({"model.input_size": size, "train.eval_every": max(1, min(5, epochs // 6 or 1))})
        if co.distillation:
            hooks = (*hooks, Distillation(self.run.file("baseline.h5"), co.distillation))
        options = RunOptions(str(start), True, epochs, str(run_dir), self.options.progress, learning_rate=learning_rate,
                             freeze_backbone_epochs=0, hooks=tuple(hooks))  # fmt: skip
        result = train(config, options)
        return {"best_model": result["best_model"], "best_mAP50": result["best_mAP50"], "history": result["history"], "seconds": result["seconds"]}

    def candidates(self) -> dict:
        """A short fine-tune of each input size's plan; the best validation mAP@0.5 wins (NetAdapt's short-term fine-tune)."""
        plan = self.results["plan"]
        sizes = plan["sizes"]
        epochs = self.epochs("candidate")
        if len(sizes) == 1 or epochs == 0:
            size = plan["best_by_prediction"]
            return {"chosen": size, "why": "the only candidate" if len(sizes) == 1 else "least predicted loss (candidate_epochs = 0)", "runs": {}}
        runs = {}
        for size in sizes:
            folder = self.run.file("candidates") / str(size)
            folder.mkdir(parents=True, exist_ok=True)
            kept = {conv_index(k): v for k, v in plan["kept"][str(size)].items()}
            if not (folder / "pruned.h5").exists():
                self._prune_to(kept, size, folder / "pruned.h5")
            _log(f"   candidate at {size}: {epochs} epochs")
            tuned = self._finetune(folder / "pruned.h5", folder / "run", epochs, size, self.config.pruning.finetune_learning_rate)
            runs[str(size)] = {"mAP50": tuned["best_mAP50"], "best_model": tuned["best_model"], "predicted_ms": self.predicted_ms(kept, size)}
        chosen = max(runs, key=lambda s: (round(runs[s]["mAP50"], 4), -runs[s]["predicted_ms"]))
        if int(chosen) != plan["best_by_prediction"]:  # plan-config.json must describe the plan that is run, not the predicted best
            from .planner import ChannelMap, ratios_for

            kept = {conv_index(k): v for k, v in plan["kept"][chosen].items()}
            sens = json.loads(self.run.file("sensitivity.json").read_text()) if self.run.file("sensitivity.json").exists() else None
            self._write_plan_config(int(chosen), ratios_for(kept, ChannelMap(self._spec())), self.cluster_exclusions(sens))
        return {"chosen": int(chosen), "why": f"best validation mAP@0.5 after {epochs} epochs", "runs": runs}

    def _chosen(self) -> tuple[int, dict[int, int]]:
        size = self.results["candidates"]["chosen"]
        kept = {conv_index(k): v for k, v in self.results["plan"]["kept"][str(size)].items()}
        return size, kept

    def prune(self) -> dict:
        size, kept = self._chosen()
        info = self._prune_to(kept, size, self.run.file("pruned.h5"))
        return {**info, "valid": self.evaluate(self.run.file("pruned.h5"), "valid", self.derived({"model.input_size": size})),
                "predicted_ms": self.predicted_ms(kept, size)}  # fmt: skip

    def finetune(self) -> dict:
        size, _ = self._chosen()
        start = self.run.file("pruned.h5")
        run = self.results["candidates"].get("runs", {}).get(str(size))
        if run and Path(run["best_model"]).with_name("last.h5").exists():
            start = Path(run["best_model"]).with_name("last.h5")  # go on from the candidate's short fine-tune
        tuned = self._finetune(start, self.run.file("finetune"), self.epochs("finetune"), size, self.config.pruning.finetune_learning_rate)
        shutil.copyfile(tuned["best_model"], self.run.file("finetuned.h5"))
        return {"start": str(start), "valid_mAP50": tuned["best_mAP50"], "epochs": self.epochs("finetune"),
                "history": tuned["history"], "seconds": tuned["seconds"]}  # fmt: skip

    # -- clustering and int8 --------------------------------------------------------------------

    def cluster(self) -> dict:
        """Cluster the fine-tuned model where validation allows: layers stay out, the most sensitive per weight first, until the loss fits the budget."""
        from yolo3.models import load_model, save_model

        from .clustering import cluster_model, conv_layer_names
        from .sensitivity import clustering_sensitivity

        size, _ = self._chosen()
        if not self.config.compress.cluster:
            return {"skipped": "compress.cluster is false"}
        loaded = load_model(self.run.file("finetuned.h5"))
        base = self.scorer.score(loaded.model, loaded.spec)
        first = conv_name(loaded.spec.conv_indices()[0])
        exclude = {conv_name(conv_index(e)) for e in self.config.clustering.exclude}
        if self.options.from_config:
            order: list[str] = []
        else:
            if not self.config.compress.cluster_first_layer:
                exclude.add(first)
            sens = clustering_sensitivity(loaded, self.scorer, self.config.clustering.clusters, self.options.progress, base)
            # clustering buys size only (int8 speed is the same): leave out first the layers that lose most per weight clustered
            layers = sens["layers"]
            order = sorted((n for n in layers if n not in exclude), key=lambda n: -(max(layers[n]["loss"], 0.0) + 1e-4) / layers[n]["weights"])
        budget = self.config.compress.cluster_budget
        original = loaded.model.get_weights()
        tries = []
        while True:
            loaded.model.set_weights(original)
            report = cluster_model(loaded.model, loaded.spec, self.config.clustering.clusters, False, sorted(exclude), self.config.clustering.seed)
            score = self.scorer.score(loaded.model, loaded.spec)
            tries.append({"excluded": sorted(exclude), "mAP50": score})
            if base - score <= budget or not order:
                break
            exclude.add(order.pop(0))  # the layer that lost most when clustered alone stays float-valued
        names = conv_layer_names(loaded.spec, sorted(exclude))
        record = {"clustering": {"clusters": self.config.clustering.clusters, "per_channel": False, "layers": names}}
        save_model(loaded.model, loaded.spec, self.run.file("clustered.h5"), record)
        self._update_plan_config_exclusions(sorted(exclude))
        return {"valid_before": base, "valid_after": score, "excluded": sorted(exclude), "tries": tries, "clustered_layers": names,
                "codebook_bytes": report["codebook_bytes"], "size": size}  # fmt: skip

    def _update_plan_config_exclusions(self, exclude: list[str]) -> None:
        path = self.run.file("plan-config.json")
        raw = json.loads(path.read_text())
        raw.setdefault("clustering", {})["exclude"] = exclude
        atomic_write_text(path, json.dumps(raw, indent=2) + "\n")

    def cluster_finetune(self) -> dict:
        from .constraints import KeepClusters

        if "skipped" in self.results["cluster"]:
            return {"skipped": self.results["cluster"]["skipped"], "kept": "finetuned.h5"}
        size, _ = self._chosen()
        epochs = self.epochs("cluster")
        out = self.run.file("clustered-finetuned.h5")
        before = self.results["cluster"]["valid_after"]
        if epochs == 0:
            shutil.copyfile(self.run.file("clustered.h5"), out)
            return {"epochs": 0, "valid": before, "kept": "clustered, not fine-tuned"}
        names = self.results["cluster"]["clustered_layers"]
        tuned = self._finetune(self.run.file("clustered.h5"), self.run.file("cluster-finetune"), epochs, size,
                               self.config.clustering.finetune_learning_rate, (KeepClusters(names),))  # fmt: skip
        better = tuned["best_mAP50"] >= before
        shutil.copyfile(tuned["best_model"] if better else self.run.file("clustered.h5"), out)
        return {"epochs": epochs, "valid_before": before, "valid_finetuned": tuned["best_mAP50"],
                "kept": "fine-tuned" if better else "clustered, not fine-tuned (fine-tuning did not help on validation)"}  # fmt: skip

    def int8(self) -> dict:
        from yolo3.models import load_model

        from .qat import qat_finetune
        from .tflite_export import export_tflite

        size, _ = self._chosen()
        config = self.derived({"model.input_size": size})
        start = self.run.file("clustered-finetuned.h5") if self.run.file("clustered-finetuned.h5").exists() else self.run.file("finetuned.h5")
        loaded = load_model(start)
        calibration = self.calibration()
        ptq = self.run.file("ptq-int8.tflite")
        export_tflite(start, ptq, "int8", calibration, self.config.labels, size, loaded.spec)
        results = {"ptq": {"valid": self.evaluate(ptq, "valid", config)["mAP50"]}}
        if self.config.compress.qat and self.epochs("qat"):
            trained = qat_finetune(config, start, loaded.model, self.run.file("qat"), self.epochs("qat"), self.options.progress,
                                   None, calibration[:64])  # fmt: skip
            qat = self.run.file("qat-int8.tflite")
            export_tflite(start, qat, "int8", calibration, self.config.labels, size, loaded.spec,
                          qat={"scheme": trained["scheme"], "weights": trained["weights"]})  # fmt: skip
            results["qat"] = {"valid": self.evaluate(qat, "valid", config)["mAP50"], "scheme": trained["scheme"]}
        chosen = max(results, key=lambda k: results[k]["valid"])
        shutil.copyfile(self.run.file(f"{chosen}-int8.tflite"), self.run.file("final-int8.tflite"))
        return {"start": start.name, "results": results, "chosen": chosen, "calibration_images": len(calibration)}

    # -- the report -----------------------------------------------------------------------------

    def report(self) -> dict:
        from .compress_report import build_report

        return build_report(self)

    def run_all(self) -> dict:
        for note in self.notes:
            _log(f"note: {note}")
        opts = self.options
        if opts.sensitivity_only:
            self.stage("sensitivity", self.sensitivity, 3)
            return {"sensitivity": str(self.run.file("sensitivity.json")), "plot": str(self.run.file("sensitivity.png")),
                    **self.results["sensitivity"]}  # fmt: skip
        searched = not (opts.preset or opts.from_config)
        self.stage("baseline", self.baseline, 1)
        self.stage("cost-models", self.cost_models, 2)
        self.check_reachable()
        if searched:
            self.stage("sensitivity", self.sensitivity, 3)
        self.stage("plan", self.plan, 4)
        self.stage("candidates", self.candidates, 5)
        self.stage("prune", self.prune, 6)
        self.stage("finetune", self.finetune, 7)
        self.stage("cluster", self.cluster, 8)
        self.stage("cluster-finetune", self.cluster_finetune, 9)
        self.stage("int8", self.int8, 10)
        return self.stage("report", self.report, 11)


def run_compress(config, model_path: str | None, options: CompressOptions) -> dict:
    """The whole chain for one model (see the module docstring); returns the report (or the sensitivity summary)."""
    if not options.sensitivity_only and options.target is None and not options.preset and not options.from_config:
        raise UserError("give a target (--target-speedup, --target-latency, --target-size or --target-macs), --preset NAME, "
                        "--from-config or --sensitivity-only")  # fmt: skip
    if sum(bool(x) for x in (options.target, options.preset, options.from_config)) > 1:
        raise UserError("give one of a target, --preset and --from-config")
    return Compressor(config, model_path, options).run_all()
