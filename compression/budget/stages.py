"""The stages of ``compress``, each a small class that declares what it reads, needs and writes (:mod:`compression.pipeline`).

Every stage reads the job's services (:class:`~.context.CompressJob`) and the
results and files of the stages it needs; what it hands on is its result (kept
in ``stages/NAME.json``) and the files it declares. Each stage also says which
rows it adds to the report (:meth:`ReportRows.report_rows`): a model file, a
label and a note, scored on the test split by the report stage.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from yolo3.names import conv_index, conv_name
from yolo3.reporting import write_json

from ..pipeline import Stage, StageContext
from .context import log
from .plan import chosen


class CompressStage(Stage):
    """A stage of compress: its rows of the report (none by default)."""

    def report_rows(self, ctx: StageContext, result: dict) -> list[dict]:
        """Rows of the report: ``{"stage", "file", "note", "at_plan_size", "arch"}`` (arch: whose int8 latency the row has)."""
        return []


def plan_inputs(ctx: StageContext):
    from .memory_model import MemoryModel
    from .plan import Inputs

    job = ctx.services
    sens = json.loads(ctx.input("sensitivity.json").read_text()) if ctx.has("sensitivity") else None
    size_model = job.size_model(ctx.input("size-model.json"))
    path = ctx.input("memory-model.json")  # None in a run folder whose cost models predate RAM and flash planning
    memory = MemoryModel.from_json(json.loads(path.read_text())) if path.is_file() else None
    return Inputs(job, job.spec(start_h5(ctx)), job.latency_model(ctx.input("latency-model.json")), size_model, sens,
                  ctx.result("levers")["measured_speedup"], memory)  # fmt: skip


def finetune_in(ctx: StageContext, start: Path, folder: Path, epochs: int, size: int, learning_rate: float, eval_every: int | None = None,
                deadline: float | None = None) -> dict:  # fmt: skip
    """Fine-tune ``start`` at input ``size`` in ``folder`` (resumes there), distilling from the baseline; best epoch on validation.

    Validation runs every ``eval_every`` epochs (default: about six times in the run, at most every 5 epochs). With a
    ``deadline`` (``time.time()``) the trainer shortens the run when the machine turns out slower than the schedule assumed.
    """
    from ..steps import finetune

    job = ctx.services
    config = job.derived({"model.input_size": size, "train.eval_every": eval_every or max(1, min(5, epochs // 6 or 1))})
    result = finetune(config, start, folder, epochs, progress=job.options.progress, learning_rate=learning_rate, freeze_backbone_epochs=0,
                      teacher=ctx.input("baseline.h5"), distill_weight=ctx.setting("compress.distillation"),
                      feature_weight=ctx.setting("compress.feature_distillation"), deadline=deadline)  # fmt: skip
    return {"best_model": result["best_model"], "best_mAP50": result["best_mAP50"], "history": result["history"], "seconds": result["seconds"],
            "replicas": result["replicas"], "epochs": result["epochs"], "deadline": result["deadline"]}  # fmt: skip


PROBE_EPOCHS = 3  # epochs that time a plan no candidate round trained (the first traces the graph and is slow)
# a long fine-tune's seconds per epoch over the median of its usual epochs: evaluation every few epochs, set-up and the
# occasional stalled epoch (BCCD, a 3x plan at 416: 786.6 s for 69 epochs, 11.4 s each, against a median epoch of 10.2 s)
EPOCH_OVERHEAD = 1.15
STALLED = 1.6  # an epoch this many times the fastest one stalled (BCCD: 3 of 69 epochs took 20.5 s where the rest took 9-10.5)


def steady_epoch_seconds(tuned: dict, epochs: int) -> float:
    """Seconds per epoch a long fine-tune of this model will take, from a short one (:func:`finetune_in`'s result).

    The median of its epochs after the first (which traces the graph: twice as
    long on BCCD), stalled epochs left out, with :data:`EPOCH_OVERHEAD`; its
    mean when it had one epoch. A short run's mean overstates a long one's
    epoch (BCCD's 352 plan: 16.6 s over its 6 candidate epochs, 10.2 s in its
    fine-tune), and one stalled epoch in a probe of two doubled the estimate,
    so budgeted runs ended early.
    """
    import numpy as np

    times = [e["seconds"] for e in tuned.get("history", [])[1:] if e.get("seconds")]
    if not times:
        return tuned["seconds"] / max(epochs, 1)
    usual = [t for t in times if t <= STALLED * min(times)]
    return EPOCH_OVERHEAD * float(np.median(usual))


def train_plan(ctx: StageContext, size: int, folder: Path, epochs: int, eval_every: int | None = None) -> dict:
    """The plan's model at input ``size`` pruned once into ``folder`` and fine-tuned there to ``epochs`` (resumes a run begun there)."""
    from ..steps import prune_to_plan

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "pruned.h5").exists():
        kept = {conv_index(k): v for k, v in ctx.result("plan")["kept"][str(size)].items()}
        prune_to_plan(start_h5(ctx), kept, size, folder / "pruned.h5", ctx.services.pruning())
    return finetune_in(ctx, folder / "pruned.h5", folder / "run", epochs, size, ctx.setting("pruning.finetune_learning_rate"), eval_every)

# the runtime every timing is made on (or the board's latency table that replaces it): a change redoes each stage that times
RUNTIME_READS = ("compress.threads", "compress.xnnpack", "run.latency_table")
FINETUNE_READS = ("@data", "@train", "compress.distillation", "compress.feature_distillation", "pruning.finetune_learning_rate")
TAIL_READS = ("compress.time_budget", "compress.cluster", "compress.cluster_epochs", "compress.qat", "quantization.qat_epochs")


def fixed_seconds(ctx: StageContext) -> float:
    """Conversions, evaluations and timing after the last fine-tune: about four times what the baseline stage took."""
    return 4 * ctx.pipeline.seconds().get("baseline", 30.0) + 60


def run_ends_at(ctx: StageContext) -> float | None:
    """``time.time()`` at which the run's time budget ends, from the time the stages recorded so far took (None without a budget)."""
    left = ctx.services.time_left(ctx.pipeline)
    return None if left is None else time.time() + left


def tail_epochs(ctx: StageContext) -> tuple[int, int]:
    """(cluster-preserving epochs, QAT epochs) the run will train after the fine-tune."""
    cluster = ctx.setting("compress.cluster_epochs") if ctx.setting("compress.cluster") else 0
    return cluster, ctx.setting("quantization.qat_epochs") if ctx.setting("compress.qat") else 0


def scheduled(folder: Path, decide) -> tuple:
    """What ``decide`` returned for a training stage (epochs first, why last), kept in ``folder/schedule.json`` so that a
    resumed run trains to the same count."""
    from yolo3.reporting import write_json

    path = folder / "schedule.json"
    if path.exists():
        data = json.loads(path.read_text())
        return (int(data["epochs"]), *data.get("also", []), data["why"])
    decided = decide()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, {"epochs": decided[0], "also": list(decided[1:-1]), "why": decided[-1]})
    log(f"   time budget: {decided[-1]}")
    return decided


class Baseline(CompressStage):
    name, title, measuring = "baseline", "the input model at its size, saved as .h5 and as int8; both scored on validation", True
    reads = ("@model", "@data", "compress.calibration_samples")
    writes = ("baseline.h5", "baseline-int8.tflite")

    def run(self, ctx: StageContext) -> dict:
        from yolo3.darknet import expected_floats
        from yolo3.evaluation import load_for_config
        from yolo3.models import compression_info, save_model

        from ..quantize.tflite_export import export_tflite

        job = ctx.services
        loaded = load_for_config(job.config, str(job.source))
        h5 = ctx.output("baseline.h5")
        save_model(loaded.model, loaded.spec, h5, compression_info(job.source) or None)
        weights_bytes = job.source.stat().st_size if job.source.suffix.lower() == ".weights" else 20 + 4 * expected_floats(loaded.spec)
        calibration = job.calibration()
        int8 = ctx.output("baseline-int8.tflite")
        report = export_tflite(h5, int8, "int8", calibration, job.config.labels, job.base_size, loaded.spec)
        return {
            "source": str(job.source), "input_size": job.base_size, "float_weights_bytes": weights_bytes, **loaded.summary(),
            "float": {"valid": job.evaluate(h5, "valid")}, "int8": {"valid": job.evaluate(int8, "valid"), "bytes": report["bytes"],
                                                                    "gzip_bytes": report["gzip_bytes"]},
            "calibration_images": len(calibration),
        }  # fmt: skip

    def report_rows(self, ctx, result):
        return [{"stage": "unpruned float (Keras)", "file": "baseline.h5", "note": f"the input model at {result['input_size']}", "arch": "unpruned"},
                {"stage": "unpruned int8", "file": "baseline-int8.tflite", "note": "post-training int8 of the input model", "arch": "unpruned"}]


def start_h5(ctx: StageContext) -> Path:
    """The model the plan prunes: the levered one (the baseline itself when no lever is used)."""
    return ctx.input("levered.h5")


class LeversStage(CompressStage):
    """Architecture levers beside channels: each variant timed as int8 and fine-tuned briefly; the fastest within the floor is kept.

    Variants: the first 1, 2, ... eligible conv + max-pool pairs folded into a
    stride (:func:`~.levers.pool_stride_pairs`), then all of them with ReLU.
    Each is timed against the unpruned network (random weights, int8,
    interleaved) and fine-tuned for ``compress.lever_epochs`` with distillation;
    a variant is eligible when its validation mAP is within half the floor of
    the control's (the unlevered model through the same short fine-tune: the
    recipe's own effect on the model is not the lever's) (the other half is left to channels and
    input size); the fastest eligible one is kept, found by bisection over the
    variants worth training (:func:`fastest_passing`): trying them fastest
    first spent a 30-minute budget's share on three variants that all broke
    the floor (BCCD) and never reached the two pairs that held it. The choice does not read
    the target, so ``--measurements-from`` reuses it (and what was measured
    on it) for another target. ``levered.h5`` is the model every later stage
    prunes.
    """

    name, title = "levers", "architecture levers (max-pool folded into stride, ReLU): timed as int8, fine-tuned briefly, the fastest within the floor kept"
    measuring = True
    lend_ignores = ("compress.time_budget",)  # the budget only stops the search early: a finished search is lent to any budget
    needs = ("baseline",)
    writes = ("levers", "levers.json", "levered.h5")

    def __init__(self, active: bool, budgeted: bool = False):
        self.active = active
        self.reads = (*FINETUNE_READS, "run.max_loss", "run.base_size", "compress.levers", "compress.lever_epochs",
                      *RUNTIME_READS, *(("compress.time_budget",) if budgeted else ())) if active else ()  # fmt: skip

    def run(self, ctx: StageContext) -> dict:
        from .latency_model import measure_networks
        from .levers import lever_variants

        job = ctx.services
        if not self.active:
            return self._none(ctx, "no search: the plan is given")
        spec = job.spec(ctx.input("baseline.h5"))
        allowed = ctx.setting("compress.levers")
        variants = lever_variants(spec, allowed)
        if not variants:
            return self._none(ctx, "the network has no conv + 2x2 max-pool pair and no LeakyReLU" if allowed else "compress.levers is []")
        size = job.base_size
        times = measure_networks([(spec, size)] + [(v.apply_spec(spec), size) for v in variants], job.threads, job.options.progress,
                                 xnnpack=job.xnnpack, table=job.latency_table)  # fmt: skip
        half_floor = ctx.setting("run.max_loss") / 2
        epochs = ctx.setting("compress.lever_epochs")
        lr = ctx.setting("pruning.finetune_learning_rate")
        timed = [{"levers": v.to_json(), "names": v.names(), "ms": ms, "speedup": times[0] / ms} for v, ms in zip(variants, times[1:])]
        # ordered fastest first; each variant holds the changes of every slower one, so the search bisects
        # this order (fastest_passing) instead of walking it, and a budget's share reaches the simple variants
        order = sorted(worth_training([t["ms"] for t in timed], times[0]), key=lambda k: timed[k]["ms"])
        share = LEVER_SHARE * 60 * ctx.setting("compress.time_budget") if "compress.time_budget" in self.reads else None
        # the control: the unlevered model through the same short fine-tune, so that a variant's loss is the lever's, not the recipe's
        base_valid = ctx.result("baseline")["float"]["valid"]["mAP50"]
        control = finetune_in(ctx, ctx.input("baseline.h5"), ctx.output("levers") / "control", epochs, size, lr) if epochs and order else None
        control_valid = control["best_mAP50"] if control else base_valid
        tried, spent, stopped = [], control["seconds"] if control else 0.0, False
        tried_at: dict[int, dict] = {}  # position in ``order`` -> its record in ``tried``

        def within_half_floor(n: int) -> bool | None:
            """Fine-tune ``order[n]`` briefly; whether it stays within half the floor (None: the budget's share is spent)."""
            nonlocal spent, stopped
            done = len(tried) + (1 if control else 0)  # fine-tunes so far, all of the same length
            if share and tried and spent + spent / done > share:  # another one would take the stage past its share of the budget
                log(f"   lever variants: search stopped after {len(tried)} of {len(order)}, the time budget's share for levers ({share / 60:.0f} min) is spent")
                stopped = True
                return None
            k = order[n]
            v = variants[k]
            folder = ctx.output("levers") / f"variant-{k}"
            folder.mkdir(parents=True, exist_ok=True)
            start = folder / "levered.h5"
            if not start.exists():
                lever_model(ctx.input("baseline.h5"), v, start)
            log(f"   lever variant {len(tried) + 1} (of {len(order)} worth training, searched by bisection): {', '.join(v.names())}: {timed[k]['speedup']:.2f}x as int8; {epochs} epochs")
            tuned = finetune_in(ctx, start, folder / "run", epochs, size, lr) if epochs else None
            valid = tuned["best_mAP50"] if tuned else job.evaluate(start, "valid")["mAP50"]
            tried.append({**timed[k], "valid_mAP50": valid, "loss_points": 100 * (control_valid - valid), "model": tuned["best_model"] if tuned else str(start),
                          "epoch_seconds": steady_epoch_seconds(tuned, epochs) if tuned else None})  # fmt: skip
            spent += tuned["seconds"] if tuned else 0.0
            tried_at[n] = tried[-1]
            return tried[-1]["loss_points"] <= half_floor

        found = fastest_passing(len(order), within_half_floor)
        pick = tried_at[found] if found is not None else None
        data = {"unpruned_ms": times[0], "timed": timed, "tried": tried, "half_floor_points": half_floor, "epochs": epochs,
                "control_valid_mAP50": control_valid, "base_valid_mAP50": base_valid}  # fmt: skip
        measured = sorted([t["epoch_seconds"] for t in tried if t["epoch_seconds"]] + ([steady_epoch_seconds(control, epochs)] if control else []))
        epoch_seconds = measured[len(measured) // 2] if measured else None  # at the model's size, for the time budget
        if pick is None:
            if order:
                data["why"] = f"no variant stayed within half the floor ({half_floor:g} points) after {epochs} epochs"
            else:  # none was trained: none was worth its accuracy cost in time
                data["why"] = (f"no variant was {100 * (MIN_GAIN - 1):.0f} % faster than the one before it as int8 ("
                               + ", ".join(f"{'; '.join(t['names'])}: {t['speedup']:.2f}x" for t in timed) + ")")  # fmt: skip
            return {**self._none(ctx, data["why"], data), "epoch_seconds": epoch_seconds, "search_complete": not stopped}
        shutil.copyfile(pick["model"], ctx.output("levered.h5"))
        why = f"the fastest variant within half the floor ({half_floor:g} points on validation after {epochs} epochs)"
        data.update(chosen=pick["levers"], why=why)
        write_json(ctx.output("levers.json"), data)
        return {"chosen": pick["levers"], "names": pick["names"], "measured_speedup": pick["speedup"], "valid_mAP50": pick["valid_mAP50"],
                "loss_points": pick["loss_points"], "why": why, "tried": len(tried), "epoch_seconds": epoch_seconds,
                "search_complete": not stopped}  # fmt: skip

    def _none(self, ctx: StageContext, why: str, data: dict | None = None) -> dict:
        from .levers import Levers

        shutil.copyfile(ctx.input("baseline.h5"), ctx.output("levered.h5"))
        write_json(ctx.output("levers.json"), {**(data or {}), "chosen": Levers().to_json(), "why": why})
        return {"chosen": Levers().to_json(), "names": [], "measured_speedup": 1.0, "why": why, "search_complete": True}

    def lendable(self, result: dict) -> bool:
        return result.get("search_complete") is True
    def report_rows(self, ctx, result):
        if not result["names"]:
            return []
        return [{"stage": "levers, fine-tuned", "file": "levered.h5", "arch": None,
                 "note": f"{'; '.join(result['names'])} ({result['measured_speedup']:.2f}x as int8, random weights)"}]  # fmt: skip


MIN_GAIN = 1.03  # a lever variant timed at less than this speed-up is not worth its accuracy
LEVER_SHARE = 0.25  # with a time budget, the levers' fine-tunes may take this share of it


def fastest_passing(count: int, passes: Callable[[int], bool | None]) -> int | None:
    """The lowest index in ``range(count)`` for which ``passes`` holds, trying about log2(count) of them.

    The indices are lever variants from the fastest (the most changes) to the
    slowest (the fewest), each containing the changes of the slower ones, so
    a variant's accuracy cost is taken to shrink with its index: when one
    passes, every slower one would too. ``passes`` returning None stops the
    search (the time budget's share is spent); the best found so far is returned.
    """
    lo, hi, found = 0, count - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        verdict = passes(mid)
        if verdict is None:
            break
        if verdict:
            found, hi = mid, mid - 1
        else:
            lo = mid + 1
    return found


def worth_training(ms: list[float], unlevered_ms: float) -> list[int]:
    """The variants (each adding changes to the one before) that are faster by ``MIN_GAIN`` than every variant with fewer changes.

    A variant timed within the noise of a simpler one adds changes, and their
    accuracy cost, for nothing measurable (on BCCD two max-pool pairs and four
    timed 1.49x alike; the four lost 1.9 points where the two lost none).
    """
    keep, best = [], unlevered_ms
    for k, t in enumerate(ms):
        if t * MIN_GAIN < best:
            keep.append(k)
            best = t
    return keep


def lever_model(source_h5: Path, levers, out: Path) -> None:
    """``source_h5`` with ``levers`` applied, saved as ``out`` (.h5 with its cfg)."""
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
    from yolo3.models import load_model, save_model

    loaded = load_model(source_h5)
    spec, weights = levers.apply(loaded.spec, get_darknet_weights(loaded.model, loaded.spec))
    model = build_model(spec, size=loaded.input_hw[0])
    set_darknet_weights(model, spec, weights)
    save_model(model, spec, out)


class CostModels(CompressStage):
    name, measuring = "cost-models", True
    version = 2  # 2: also memory-model.json
    title = "int8 latency of every block on this machine (or from the board's latency table), bytes per weight, RAM and flash of the int8 graph"
    reads = ("run.sizes", "run.base_size", *RUNTIME_READS, "compress.latency_levels", "compress.round_to", "clustering.clusters")
    needs = ("baseline", "levers")
    writes = ("latency-model.json", "size-model.json", "memory-model.json")

    def run(self, ctx: StageContext) -> dict:
        from yolo3.models import load_model

        from .latency_model import measure_latency_model
        from .memory_model import MemoryModel
        from .planner import measure_size_model

        job = ctx.services
        loaded = load_model(start_h5(ctx))
        model = measure_latency_model(loaded.spec, job.sizes, job.base_size, job.threads, tuple(ctx.setting("compress.latency_levels")),
                                      ctx.setting("compress.round_to"), progress=job.options.progress, xnnpack=job.xnnpack,
                                      table=job.latency_table)  # fmt: skip
        write_json(ctx.output("latency-model.json"), model.to_json())
        size = measure_size_model(loaded.model, loaded.spec, ctx.setting("clustering.clusters"), ctx.result("baseline")["int8"]["gzip_bytes"])
        write_json(ctx.output("size-model.json"), size.to_json())
        memory = MemoryModel.measure(job.spec(ctx.input("baseline.h5")), job.base_size, ctx.input("baseline-int8.tflite"))
        write_json(ctx.output("memory-model.json"), memory.to_json())
        full = next(n for n in model.networks if n["size"] == job.base_size and not n["filters"])
        return {"unpruned_ms": full["ms"], "unpruned_predicted_ms": full["predicted_ms"], "alpha": model.alpha, "beta": model.beta,
                "blocks_timed": len(model.blocks), "networks_timed": len(model.networks), "seconds": model.seconds,
                "timed_on": job.latency_table.describe() if job.latency_table else "this machine"}  # fmt: skip


class Reach(CompressStage):
    name, title = "reach", "whether the cost models can reach the target at all (before the slow sensitivity analysis)"
    reads = ("run.target", "run.also", "run.sizes", "run.base_size", "compress.round_to", "compress.cluster", "pruning.min_channels")
    needs = ("baseline", "levers", "cost-models")

    def run(self, ctx: StageContext) -> dict:
        from .plan import check_reachable

        check_reachable(plan_inputs(ctx))
        return {"reachable": True}


class Sensitivity(CompressStage):
    name, title, measuring = "sensitivity", "every unit pruned alone, every input size, every layer clustered, int8 error per layer", True
    reads = ("@data", "run.sizes", "compress.sensitivity_ratios", "compress.bn_images", "compress.debug_images", "clustering.clusters",
             "pruning.similarity_w1", "pruning.similarity_w2", "pruning.min_channels", "pruning.round_to")  # fmt: skip
    needs = ("baseline", "levers")
    writes = ("sensitivity.json", "sensitivity.png")

    def run(self, ctx: StageContext) -> dict:
        from yolo3.datasets import read_dataset
        from yolo3.models import load_model

        from .sensitivity import plot_sensitivity, run_sensitivity

        job = ctx.services
        loaded = load_model(start_h5(ctx))
        valid = read_dataset(job.config.dataset("valid"), job.config.labels)
        debug = [str(r.image) for r in valid.records[: ctx.setting("compress.debug_images")]]
        result = run_sensitivity(loaded, job.config, job.sizes, tuple(ctx.setting("compress.sensitivity_ratios")), ctx.setting("clustering.clusters"),
                                 debug, progress=job.options.progress, scorer=job.scorer)  # fmt: skip
        write_json(ctx.output("sensitivity.json"), result)
        plot_sensitivity(result, ctx.output("sensitivity.png"))
        return {"seconds": result["seconds"], "base_mAP50": result["pruning"]["base_mAP50"], "sizes": result["sizes"]}


class PlanStage(CompressStage):
    name, title = "plan", "channels per unit at each input size, searched for the target (or a preset / the config's ratios), timed as int8"
    writes = ("plan.json",)

    def __init__(self, searched: bool, target_kinds: tuple[str, ...] = ()):
        self.searched = searched
        self.needs = ("baseline", "levers", "cost-models", "sensitivity") if searched else ("baseline", "levers", "cost-models")
        common = ("run.target", "run.also", "run.preset", "run.from_config", "compress.round_to", "pruning.min_channels", "clustering.exclude",
                  "compress.cluster_first_layer")  # fmt: skip
        if not searched:  # the plan is given: its ratios and size
            self.reads = (*common, "run.plan_size", "pruning.similarity_layer_ratios")
        else:  # searched; clustering settings change the plan only where it is planned for size
            self.reads = (*common, "run.sizes", *RUNTIME_READS, "compress.cluster_budget")
            if "size" in target_kinds:
                self.reads += ("compress.cluster",)

    def run(self, ctx: StageContext) -> dict:
        from .plan import cluster_exclusions, fixed_plan, search_plan

        inputs = plan_inputs(ctx)
        if self.searched:
            data = search_plan(inputs)
            exclude = cluster_exclusions(inputs.spec, ctx.services.config, inputs.sensitivity)
        else:
            data, exclude = fixed_plan(inputs)
        write_json(ctx.output("plan.json"), data)
        sizes = sorted(int(s) for s in data["candidates"])
        return {"sizes": sizes, "best_by_prediction": data["best_by_prediction"], "cluster_exclude": exclude, "target": data.get("target"),
                "kept": {s: c["kept"] for s, c in data["candidates"].items()},
                "predicted_ms": {s: c["predicted_ms"] for s, c in data["candidates"].items()},
                "predicted_mAP50": {s: c.get("predicted_mAP50") for s, c in data["candidates"].items()}}  # fmt: skip


class Candidates(CompressStage):
    name, title = "candidates", "short distilled fine-tunes of each input size's plan, successive halving on validation until one is left"
    needs = ("baseline", "levers", "plan")

    def __init__(self, budgeted: bool = True):
        # with a time budget the epochs depend on what follows (the reserve); without one, on the configured epochs alone
        own = ("compress.candidate_epochs", "compress.round_to", "pruning.similarity_w1", "pruning.similarity_w2", "pruning.min_channels")
        self.reads = (*FINETUNE_READS, *own, *((*TAIL_READS, "compress.finetune_epochs") if budgeted else ("compress.time_budget",)))
    writes = ("candidates",)

    def run(self, ctx: StageContext) -> dict:
        from .halving import rank, survivors

        job = ctx.services
        plan = ctx.result("plan")
        sizes = plan["sizes"]
        epochs = ctx.setting("compress.candidate_epochs")
        if len(sizes) == 1 or epochs == 0:
            size = plan["best_by_prediction"]
            return {"chosen": size, "why": "the only candidate" if len(sizes) == 1 else "least predicted loss (candidate_epochs = 0)", "runs": {}}
        why = None
        t_base = ctx.result("levers").get("epoch_seconds")
        if ctx.setting("compress.time_budget") and t_base:
            # a pruned plan trains faster: this errs short; successive halving trains about half of them again
            per = {s: 1.5 * t_base * (s / job.base_size) ** 2 for s in sizes}
            cluster, qat = tail_epochs(ctx)
            reserve = t_base * (ctx.setting("compress.finetune_epochs") + cluster + 2 * qat) + fixed_seconds(ctx)
            from .schedule import candidate_schedule

            predicted = {s: plan.get("predicted_mAP50", {}).get(str(s)) or 0.0 for s in sizes}
            decided = scheduled(ctx.output("candidates"), lambda: candidate_schedule(job.time_left(ctx.pipeline), per, reserve, epochs, predicted))
            epochs, why = decided[0], decided[-1]
            sizes = list(decided[1]) if len(decided) == 3 else sizes  # a record written before plans could be left out has none
            if len(sizes) == 1:
                return {"chosen": sizes[0], "why": why, "runs": {}, "schedule": why}
        runs: dict[str, dict] = {}
        alive, trained, rounds = list(sizes), 0, []
        while True:  # successive halving: every plan trains `epochs`, the better half `epochs` more, ... until one is left
            trained += epochs
            for size in alive:
                log(f"   candidate at {size}: to {trained} epochs")
                tuned = train_plan(ctx, size, ctx.output("candidates") / str(size), trained)
                runs[str(size)] = {"mAP50": tuned["best_mAP50"], "best_model": tuned["best_model"], "predicted_ms": plan["predicted_ms"][str(size)],
                                   "epochs": trained, "epoch_seconds": steady_epoch_seconds(tuned, epochs)}  # fmt: skip
            order = rank([str(s) for s in alive], {str(s): runs[str(s)]["mAP50"] for s in alive}, plan["predicted_ms"])
            rounds.append({"epochs": trained, "valid_mAP50": {n: runs[n]["mAP50"] for n in order}})
            alive = [int(n) for n in survivors(order)]
            if len(alive) == 1:
                break
        return {"chosen": alive[0], "why": f"successive halving on validation mAP@0.5: {len(sizes)} plans after {epochs} epochs, the better half "
                f"{epochs} more, until one was left", "plans": sizes, "runs": runs, "rounds": rounds, "epochs": epochs, "schedule": why}  # fmt: skip


class Prune(CompressStage):
    name, title = "prune", "the baseline pruned to the chosen plan (similarity / |BN scale|), also as Darknet .cfg + .weights"
    reads = ("@data", "compress.round_to", "pruning.similarity_w1", "pruning.similarity_w2", "pruning.min_channels")
    needs = ("baseline", "levers", "plan", "candidates")
    writes = ("pruned.h5", "pruned.cfg", "pruned.weights")

    def run(self, ctx: StageContext) -> dict:
        from ..steps import prune_to_plan

        job = ctx.services
        size, kept = chosen(ctx)
        info = prune_to_plan(start_h5(ctx), kept, size, ctx.output("pruned.h5"), job.pruning())
        return {**info, "valid": job.evaluate(ctx.output("pruned.h5"), "valid", job.at_size(size)),
                "predicted_ms": ctx.result("plan")["predicted_ms"][str(size)]}  # fmt: skip

    def report_rows(self, ctx, result):
        return [{"stage": "pruned (one shot)", "file": "pruned.h5", "note": f"{result['size']} px, before fine-tuning", "arch": "final"}]


class Finetune(CompressStage):
    name, title = "finetune", "fine-tuning with distillation from the baseline (continues the chosen candidate's run); epochs fill the time budget"
    needs = ("baseline", "levers", "plan", "candidates", "prune")

    def __init__(self, budgeted: bool = True):
        self.reads = (*FINETUNE_READS, "compress.finetune_epochs", *(TAIL_READS if budgeted else ("compress.time_budget",)))
    writes = ("finetune", "finetuned.h5")

    def run(self, ctx: StageContext) -> dict:
        job = ctx.services
        size, _ = chosen(ctx)
        epochs = ctx.setting("compress.finetune_epochs")
        start = ctx.input("pruned.h5")
        run = ctx.result("candidates").get("runs", {}).get(str(size))
        if run and Path(run["best_model"]).with_name("last.h5").exists():
            start = Path(run["best_model"]).with_name("last.h5")  # go on from the candidate's short fine-tune
        why, probed, deadline = None, 0, None
        ends_at = run_ends_at(ctx)
        lr = ctx.setting("pruning.finetune_learning_rate")
        t_base = ctx.result("levers").get("epoch_seconds")
        epoch_seconds = (run or {}).get("epoch_seconds") or (t_base * (size / job.base_size) ** 2 if t_base else None)
        if ctx.setting("compress.time_budget") and epoch_seconds:
            from .schedule import finetune_epochs, tail_seconds

            if not run:  # no candidate round timed this plan: a guess from the unpruned model errs long, so time the plan itself
                probe = finetune_in(ctx, start, ctx.output("finetune") / "probe", PROBE_EPOCHS, size, lr, eval_every=PROBE_EPOCHS)
                epoch_seconds, probed = steady_epoch_seconds(probe, PROBE_EPOCHS), PROBE_EPOCHS
                last = Path(probe["best_model"]).with_name("last.h5")
                start = last if last.exists() else Path(probe["best_model"])  # the fine-tune goes on from the timed epochs
            tail = tail_seconds(epoch_seconds, *tail_epochs(ctx), fixed_seconds(ctx))
            epochs, why = scheduled(ctx.output("finetune"), lambda: finetune_epochs(ends_at - time.time(), epoch_seconds, tail, epochs))
            deadline = ends_at - tail  # the schedule holds only while the machine keeps its speed: the trainer checks before every epoch
        tuned = finetune_in(ctx, start, ctx.output("finetune"), epochs, size, lr, deadline=deadline)
        shutil.copyfile(tuned["best_model"], ctx.output("finetuned.h5"))
        return {"start": str(start), "valid_mAP50": tuned["best_mAP50"], "epochs": tuned["epochs"] + probed, "planned_epochs": epochs + probed,
                "probe_epochs": probed, "history": tuned["history"], "seconds": tuned["seconds"], "replicas": tuned["replicas"], "schedule": why,
                "deadline": tuned["deadline"]}  # fmt: skip

    def report_rows(self, ctx, result):
        short = f" (shortened by {result['deadline']})" if result.get("deadline") else ""
        return [{"stage": "pruned + fine-tuned", "file": "finetuned.h5", "note": f"{result['epochs']} epochs, distilled{short}", "arch": "final"}]


class Cluster(CompressStage):
    name, title = "cluster", "k-means of the kernels where validation allows: the most sensitive layers per weight stay out"
    reads = ("@data", "run.from_config", "compress.cluster", "compress.cluster_budget", "compress.cluster_first_layer", "clustering.clusters",
             "clustering.exclude", "clustering.seed")  # fmt: skip
    needs = ("baseline", "plan", "candidates", "finetune")
    writes = ("clustered.h5",)

    def run(self, ctx: StageContext) -> dict:
        """Cluster the fine-tuned model: layers stay out, the most sensitive per weight first, until the loss fits the budget."""
        from yolo3.models import load_model, save_model

        from ..cluster.clustering import cluster_model, conv_layer_names
        from .sensitivity import clustering_sensitivity

        job = ctx.services
        size, _ = chosen(ctx)
        if not ctx.setting("compress.cluster"):
            return {"skipped": "compress.cluster is false"}
        clusters = ctx.setting("clustering.clusters")
        loaded = load_model(ctx.input("finetuned.h5"))
        base = job.scorer.score(loaded.model, loaded.spec)
        first = conv_name(loaded.spec.conv_indices()[0])
        exclude = {conv_name(conv_index(e)) for e in ctx.setting("clustering.exclude")}
        if ctx.setting("run.from_config"):
            order: list[str] = []
        else:
            if not ctx.setting("compress.cluster_first_layer"):
                exclude.add(first)
            sens = clustering_sensitivity(loaded, job.scorer, clusters, job.options.progress, base)
            # clustering buys size only (int8 speed is the same): leave out first the layers that lose most per weight clustered
            layers = sens["layers"]
            order = sorted((n for n in layers if n not in exclude), key=lambda n: -(max(layers[n]["loss"], 0.0) + 1e-4) / layers[n]["weights"])
        budget = ctx.setting("compress.cluster_budget")
        original = loaded.model.get_weights()
        tries = []
        while True:
            loaded.model.set_weights(original)
            report = cluster_model(loaded.model, loaded.spec, clusters, False, sorted(exclude), ctx.setting("clustering.seed"))
            score = job.scorer.score(loaded.model, loaded.spec)
            tries.append({"excluded": sorted(exclude), "mAP50": score})
            if base - score <= budget or not order:
                break
            exclude.add(order.pop(0))  # the layer that lost most when clustered alone stays float-valued
        names = conv_layer_names(loaded.spec, sorted(exclude))
        record = {"clustering": {"clusters": clusters, "per_channel": False, "layers": names}}
        save_model(loaded.model, loaded.spec, ctx.output("clustered.h5"), record)
        return {"valid_before": base, "valid_after": score, "excluded": sorted(exclude), "tries": tries, "clustered_layers": names,
                "codebook_bytes": report["codebook_bytes"], "size": size, "clusters": clusters}  # fmt: skip

    def report_rows(self, ctx, result):
        if "skipped" in result:
            return []
        return [{"stage": "clustered", "file": "clustered.h5", "arch": "final",
                 "note": f"{result['clusters']} values per kernel, excluded: " + (", ".join(result["excluded"]) or "none")}]  # fmt: skip


class ClusterFinetune(CompressStage):
    name, title = "cluster-finetune", "cluster-preserving fine-tuning; the better of before and after on validation is kept"
    reads = ("@data", "@train", "compress.distillation", "compress.feature_distillation", "compress.cluster_epochs", "clustering.finetune_learning_rate")
    needs = ("baseline", "plan", "candidates", "finetune", "cluster")
    writes = ("cluster-finetune", "clustered-finetuned.h5")

    def run(self, ctx: StageContext) -> dict:
        clustered = ctx.result("cluster")
        if "skipped" in clustered:
            return {"skipped": clustered["skipped"], "kept": "finetuned.h5", "model": "finetuned.h5"}
        size, _ = chosen(ctx)
        epochs = ctx.setting("compress.cluster_epochs")
        out = ctx.output("clustered-finetuned.h5")
        before = clustered["valid_after"]
        if epochs == 0:
            shutil.copyfile(ctx.input("clustered.h5"), out)
            return {"epochs": 0, "valid": before, "kept": "clustered, not fine-tuned", "model": out.name}
        ends_at, deadline = run_ends_at(ctx), None
        if ends_at is not None:  # what the int8 stage needs after it: QAT's epochs (about two epochs' time each) and the fixed cost
            from .schedule import tail_seconds

            # read from the job, not declared: like the clock, the deadline only shortens a run when the machine slows, and a QAT
            # setting must redo the int8 stage alone, not this one
            c = ctx.services.config
            qat = c.quantization.qat_epochs if c.compress.qat else 0
            epoch_seconds = steady_epoch_seconds(ctx.result("finetune"), ctx.result("finetune")["epochs"])
            deadline = ends_at - tail_seconds(epoch_seconds, 0, qat, fixed_seconds(ctx))
        tuned = finetune_in(ctx, ctx.input("clustered.h5"), ctx.output("cluster-finetune"), epochs, size,
                            ctx.setting("clustering.finetune_learning_rate"), deadline=deadline)  # fmt: skip
        better = tuned["best_mAP50"] >= before
        shutil.copyfile(tuned["best_model"] if better else ctx.input("clustered.h5"), out)
        return {"epochs": epochs, "valid_before": before, "valid_finetuned": tuned["best_mAP50"], "model": out.name,
                "kept": "fine-tuned" if better else "clustered, not fine-tuned (fine-tuning did not help on validation)"}  # fmt: skip

    def report_rows(self, ctx, result):
        if "skipped" in result:
            return []
        return [{"stage": "clustered + fine-tuned", "file": "clustered-finetuned.h5", "note": result["kept"], "arch": "final"}]


INT8_LADDER_READS = ("@data", "@train", "compress.qat", "compress.int8_equalization", "compress.int8_ranges", "compress.int8_bias_correction",
                     "compress.int8_adaround", "compress.calibration_samples", "quantization.*")  # fmt: skip


def int8_ladder(ctx: StageContext, model_h5: Path, size: int, files) -> dict:
    """The int8 repair ladder (:func:`compression.steps.int8_keep_better`) on ``model_h5`` at ``size``, as the run's settings ask.

    One place for the int8 stage and the floor's fallbacks, so that every int8
    model ``compress`` can deliver went through the same steps. The stage must
    declare :data:`INT8_LADDER_READS`.
    """
    from ..steps import int8_keep_better

    job = ctx.services
    config = job.at_size(size)
    qat_epochs = ctx.setting("quantization.qat_epochs") if ctx.setting("compress.qat") else 0
    adaround = ctx.setting("quantization.adaround_iterations") if ctx.setting("compress.int8_adaround") else 0
    return int8_keep_better(config, model_h5, size, job.calibration(), files, qat_epochs=qat_epochs,
                            score=lambda p: job.evaluate(p, "valid", config)["mAP50"], progress=job.options.progress,
                            ranges=ctx.setting("compress.int8_ranges"), adaround_iterations=adaround,
                            matches=lambda p: job.matches(p, "valid", config), confidence=ctx.setting("quantization.repair_confidence"),
                            bias_correction=ctx.setting("compress.int8_bias_correction"), equalization=ctx.setting("compress.int8_equalization"))  # fmt: skip


class Int8(CompressStage):
    name, title = "int8", "post-training int8 (activation equalisation, min/max and refitted activation ranges, bias correction, AdaRound) and quantization-aware training, each kept only if it beats the best so far on validation with quantization.repair_confidence; the kept one is plan-int8.tflite"
    reads = INT8_LADDER_READS
    needs = ("baseline", "plan", "candidates", "finetune", "cluster", "cluster-finetune")
    writes = ("ptq-int8.tflite", "equalized.h5", "equalized-int8.tflite", "ranges-int8.tflite", "ranges-mean-int8.tflite", "bias-int8.tflite", "adaround.h5", "adaround-int8.tflite", "qat", "qat-int8.tflite", "plan-int8.tflite")
    version = 7  # 2: also activation ranges by quantization error; 3: also AdaRound; 4: a step kept only if it wins with quantization.repair_confidence; 5: also the mean refit; 6: also bias correction; 7: also activation equalisation

    def run(self, ctx: StageContext) -> dict:
        from ..steps import Int8Files

        size, _ = chosen(ctx)
        start = ctx.input(ctx.result("cluster-finetune")["model"])
        files = Int8Files(ctx.output("ptq-int8.tflite"), ctx.output("qat"), ctx.output("qat-int8.tflite"), ctx.output("plan-int8.tflite"),
                          ctx.output("ranges-int8.tflite"), ctx.output("adaround.h5"), ctx.output("adaround-int8.tflite"),
                          ctx.output("ranges-mean-int8.tflite"), ctx.output("bias-int8.tflite"), ctx.output("equalized.h5"),
                          ctx.output("equalized-int8.tflite"))  # fmt: skip
        return {"start": start.name, **int8_ladder(ctx, start, size, files)}

    def report_rows(self, ctx, result):
        tried = result["results"]

        def verdict(name: str) -> str:
            r = tried[name]
            if "gain_points" not in r:
                return ""
            kept = "kept" if result["chosen"] == name else "not kept"
            return f"; {kept}: {r['gain_points']:+.2f} points over {r['vs']} on validation" + (
                f" ({r['sure_gain_points']:+.2f} with {100 * result['confidence']:.0f} % confidence)" if result.get("confidence", 0.5) > 0.5 else "")

        rows = [{"stage": "int8, post-training", "file": "ptq-int8.tflite", "note": "calibrated on training images", "arch": "final"}]
        if "equalized" in tried:
            e = tried["equalized"]
            rows.append({"stage": "int8, activation equalisation", "file": "equalized-int8.tflite", "arch": "final",
                         "note": f"the activations before {e['pairs']} depthwise convolutions equalised (median channel x{e['median_expansion']:.2f})"
                                 + verdict("equalized")})  # fmt: skip
        if "ranges" in tried:
            r = tried["ranges"]["activation_ranges"]
            how = "by quantization error" if r.get("method", "mse") == "mse" else "to the mean of per-image extremes"
            rows.append({"stage": "int8, refitted activation ranges", "file": tried["ranges"]["file"], "arch": "final",
                         "note": f"{r['narrowed']} of {r['tensors']} ranges narrowed {how}" + verdict("ranges")})  # fmt: skip
        if "bias" in tried:
            b = tried["bias"]["bias_correction"]
            rows.append({"stage": "int8, bias correction", "file": "bias-int8.tflite", "arch": "final",
                         "note": f"{b['layers']} convolutions' int8 means brought to float (median shift {b['median_shift_steps']:.2f} steps), "
                                 f"activation ranges {tried['bias']['ranges']}" + verdict("bias")})  # fmt: skip
        if "adaround" in tried:
            r = tried["adaround"]
            rows.append({"stage": "int8, AdaRound", "file": "adaround-int8.tflite", "arch": "final",
                         "note": f"learned rounding of the weights ({r['layers_improved']} layers improved), activation ranges {r['ranges']}"
                         + verdict("adaround")})  # fmt: skip
        if "qat" in tried:
            q = tried["qat"]
            rows.append({"stage": "int8, quantization-aware training", "file": "qat-int8.tflite", "arch": "final",
                         "note": f"{q['scheme']}, activation ranges started at {'the refitted ranges' if q.get('start_ranges') == 'mse' else 'min/max'}"
                         + verdict("qat")})  # fmt: skip
        return rows


def floor_choice(options: list[dict], max_loss: float, wanted: str, confidence: float = 0.5) -> tuple[dict, str | None]:
    """The model to deliver and, when the plan breaks the floor, the message that says so.

    ``options`` are the plan first, then the fallbacks, each with ``loss_points``
    (validation, against the unpruned float model), ``loss_bound`` (the loss
    not exceeded with ``confidence``; absent = the loss itself), ``what`` and —
    when the plan breaks the floor — ``speedup`` (measured against the unpruned
    int8 model). An option holds the floor when its bound is within
    ``max_loss``. The plan is delivered when it holds; otherwise the fastest
    option that holds, or, when none does, the one with the smallest bound.
    """

    def bound(o: dict) -> float:
        return o.get("loss_bound", o["loss_points"])

    def told(o: dict) -> str:
        if "loss_bound" not in o or confidence <= 0.5:
            return f"{o['loss_points']:.2f} points"
        return f"{o['loss_points']:.2f} points (at most {o['loss_bound']:.2f} with {100 * confidence:.0f} % confidence)"

    if bound(options[0]) <= max_loss:
        return options[0], None
    within = [o for o in options if bound(o) <= max_loss]
    pick = max(within, key=lambda o: o["speedup"]) if within else min(options, key=bound)
    head = f"{wanted} costs {told(options[0]).replace(' points', ' mAP@0.5 points', 1)} on validation, more than the floor of {max_loss:g} (--max-loss)"
    if within:
        return pick, f"{head}; the fastest model within the floor is {pick['what']}: {pick['speedup']:.2f}x faster than the unpruned int8 model at {told(pick)}"
    return pick, f"{head}; no model holds the floor, not even {options[-1]['what']} ({told(options[-1])}); the best on validation is {pick['what']}"


def judge_losses(reference: list, options: list[dict], matches: list[list], confidence: float, rounds: int = 1000) -> tuple[int, float]:
    """Each option's validation mAP, loss and loss bound against the reference, from detections matched on the same images.

    The bound is the ``confidence`` quantile of a paired bootstrap over the
    validation images (:mod:`yolo3.resampling`); at 0.5 it is the loss as
    measured. Returns the number of validation images and the reference's mAP@0.5.
    """
    import numpy as np

    from yolo3.resampling import loss_bound, paired_map_loss, weighted_map50

    images = len(reference[0].ground_truth) if reference else 0
    ones = np.ones((1, images))
    ref_map = float(weighted_map50(reference, ones)[0])
    for o, m in zip(options, matches):
        o["valid"] = float(weighted_map50(m, ones)[0])
        o["loss_points"] = 100 * (ref_map - o["valid"])
        if confidence > 0.5:
            samples = paired_map_loss(reference, m, rounds)
            o["loss_bound"] = max(o["loss_points"], loss_bound(samples, confidence))
            o["loss_spread"] = float(np.std(samples))
        else:
            o["loss_bound"] = o["loss_points"]
    return images, ref_map


class Floor(CompressStage):
    """The accuracy floor: the delivered model loses at most ``run.max_loss`` mAP@0.5 points on validation against the unpruned float model.

    "At most" with ``compress.floor_confidence``: the loss is judged at that
    quantile of a paired bootstrap over the validation images, so a loss the
    split cannot tell from a larger one does not pass on a lucky draw (on
    raccoon's 32 validation images a 2x plan's loss had a bootstrap standard
    deviation of 1.5 points; on its 40 test images 4.7). When the plan's int8
    model breaks the floor, the fastest model that holds it is delivered
    instead — the levered model as int8 (levers only, no channel cut), else the
    unpruned int8 model — with one message that says what the target would
    have cost; ``--strict`` stops with that message instead. A fallback whose
    post-training int8 breaks the floor goes through the int8 stage's repair
    ladder first (:func:`int8_ladder`): on a depthwise model such as
    Yolo-Fastest plain int8 alone can lose several points, and delivering it
    unrepaired would throw away what the ladder wins back.
    """

    name, title = "floor", "the accuracy floor on validation: the plan's int8 model, or the fastest model within the floor, becomes final-int8.tflite"
    reads = tuple(dict.fromkeys(("@data", "run.max_loss", "run.strict", "run.target", "run.also", *RUNTIME_READS, "compress.calibration_samples",
                                 "compress.floor_confidence", *INT8_LADDER_READS)))  # fmt: skip
    needs = ("baseline", "levers", "plan", "candidates", "int8")
    writes = ("levered-int8.tflite", "final-int8.tflite", "fallback-repair")
    version = 3  # 2: the loss judged at a bootstrap quantile; 3: a fallback that breaks the floor as plain int8 is repaired

    def run(self, ctx: StageContext) -> dict:
        from yolo3.errors import UserError

        from ..quantize.tflite_export import export_tflite
        from .latency_model import time_models
        from .plan import board_ms

        job = ctx.services
        max_loss = ctx.setting("run.max_loss")
        confidence = ctx.setting("compress.floor_confidence")
        int8 = ctx.result("int8")
        size, _ = chosen(ctx)
        how = {"ptq": "post-training int8", "ranges": "post-training int8, refitted activation ranges", "adaround": "post-training int8, AdaRound",
               "qat": "quantization-aware training"}  # fmt: skip
        options = [{"name": "plan", "file": "plan-int8.tflite", "size": size, "what": f"the plan at {size} px ({how.get(int8['chosen'], int8['chosen'])})"}]
        levers = ctx.result("levers")
        if levers["names"]:
            spec = job.spec(ctx.input("levered.h5"))
            export_tflite(ctx.input("levered.h5"), ctx.output("levered-int8.tflite"), "int8", job.calibration(), job.config.labels, job.base_size, spec)
            options.append({"name": "levers", "file": "levered-int8.tflite", "h5": "levered.h5", "size": job.base_size,
                            "what": "the levers alone (" + "; ".join(levers["names"]) + f") at {job.base_size} px"})  # fmt: skip
        options.append({"name": "unpruned", "file": "baseline-int8.tflite", "h5": "baseline.h5", "size": job.base_size,
                        "what": f"the unpruned int8 model at {job.base_size} px"})  # fmt: skip

        def path(file: str) -> Path:  # the levers' int8 file and the repaired fallbacks are this stage's own outputs, the others come from before
            return ctx.output(file) if Path(file).parts[0] in self.writes else ctx.input(file)

        log(f"   judging {len(options)} model(s) on validation against the unpruned float model (paired bootstrap, {100 * confidence:.0f} % confidence)")
        reference = job.matches(ctx.input("baseline.h5"), "valid")
        images, base_valid = judge_losses(reference, options, [job.matches(path(o["file"]), "valid", job.at_size(o["size"])) for o in options], confidence)
        if options[0]["loss_bound"] > max_loss:
            repaired = [o for o in options[1:] if o["loss_bound"] > max_loss and self.repaired(ctx, o)]
            if repaired:
                judge_losses(reference, repaired, [job.matches(path(o["file"]), "valid", job.at_size(o["size"])) for o in repaired], confidence)
            if job.latency_table:  # planned for a board: its table (and the plan's prediction) rank the fallbacks
                times = [board_ms(ctx, "unpruned", size)] + [board_ms(ctx, o["name"], size) for o in options]
            else:
                times = time_models([ctx.input("baseline-int8.tflite")] + [path(o["file"]) for o in options], job.threads, 5, 5, job.options.progress,
                                    job.xnnpack)  # fmt: skip
            for o, ms in zip(options, times[1:]):
                # the unpruned int8 model is the reference itself: timing it twice measures only the noise
                o["speedup"] = 1.0 if o["file"] == "baseline-int8.tflite" else times[0] / ms
        wanted = job.describe_targets()
        if job.options.target is not None and job.options.target.extreme:
            planned = ctx.result("plan")["target"]
            wanted = f"the plan for {planned['text']} (the most the floor allowed by prediction)"
        pick, message = floor_choice(options, max_loss, wanted, confidence)
        if message:
            if ctx.setting("run.strict"):
                raise UserError(message + "; stopped (--strict): nothing was delivered", job.run_dir)
            log(f"note: {message}; it is delivered as final-int8.tflite")
        shutil.copyfile(path(pick["file"]), ctx.output("final-int8.tflite"))
        return {"max_loss": max_loss, "confidence": confidence, "validation_images": images, "base_valid_mAP50": base_valid, "options": options,
                "delivered": pick["name"], "size": pick["size"], "loss_points": pick["loss_points"], "loss_bound": pick["loss_bound"],
                "message": message}  # fmt: skip

    def repaired(self, ctx: StageContext, option: dict) -> bool:
        """Put a fallback through the int8 repair ladder; whether a step was kept (then ``option`` names the repaired file)."""
        import dataclasses

        from ..steps import Int8Files

        name, folder = option["name"], ctx.output("fallback-repair")
        folder.mkdir(exist_ok=True)
        files = dataclasses.replace(Int8Files.beside(folder, f"{name}-"), adaround_h5=folder / f"{name}-adaround.h5",
                                    adaround=folder / f"{name}-adaround-int8.tflite")  # fmt: skip
        log(f"   {option['what']} loses {option['loss_points']:.2f} points as post-training int8, beyond the floor: the int8 repair ladder on it")
        result = int8_ladder(ctx, ctx.input(option["h5"]), option["size"], files)
        option["repair"] = {"chosen": result["chosen"], "valid_mAP50": {step: r["valid"] for step, r in result["results"].items()}}
        if result["chosen"] == "ptq":
            log("   no repair step won on validation: its post-training int8 stays")
            return False
        option["file"] = f"fallback-repair/{name}-final-int8.tflite"
        option["what"] += f" (int8 repaired: {result['chosen']})"
        return True

    def report_rows(self, ctx, result):
        rows = []
        if (ctx.run_dir / "levered-int8.tflite").exists():
            rows.append({"stage": "levers only, int8", "file": "levered-int8.tflite", "note": "post-training int8 of the levered model", "arch": None})
        pick = next(o for o in result["options"] if o["name"] == result["delivered"])
        note = f"{pick['what']}: {pick['loss_points']:+.2f} points on validation"
        if result.get("confidence", 0.5) > 0.5:
            note += f" (at most {pick['loss_bound']:+.2f} with {100 * result['confidence']:.0f} % confidence over {result['validation_images']} images)"
        rows.append({"stage": "final int8", "file": "final-int8.tflite", "note": note + f", floor {result['max_loss']:g}", "arch": "delivered"})
        return rows


class PlanConfig(CompressStage):
    name, title = "plan-config", "the plan that ran, as an ordinary config (size, ratios, clustering exclusions, epochs)"
    reads = ("@model", "@data", "compress.round_to", "compress.distillation", "compress.feature_distillation", "compress.finetune_epochs", "compress.cluster_epochs",
             "compress.cluster", "compress.qat", "quantization.qat_epochs")  # fmt: skip
    needs = ("baseline", "levers", "plan", "candidates", "finetune", "cluster", "int8")
    writes = ("plan-config.json",)

    def run(self, ctx: StageContext) -> dict:
        """plan-config.json: edit it and run ``compress --from-config`` (or evaluate.py -p 3, clustering.py) again."""
        from yolo3.config import to_raw
        from yolo3.fileio import atomic_write_text

        from .planner import ChannelMap, ratios_for

        job = ctx.services
        size, kept = chosen(ctx)
        clustered = ctx.result("cluster")
        exclude = clustered["excluded"] if "skipped" not in clustered else ctx.result("plan")["cluster_exclude"]
        ratios = ratios_for(kept, ChannelMap(job.spec(start_h5(ctx))))
        config = job.derived({
            "model.input_size": size,
            "pruning.similarity_layer_ratios": ratios, "pruning.similarity_ratio": None, "pruning.similarity_kernels": [1, 3],
            "pruning.round_to": ctx.setting("compress.round_to"), "pruning.distillation": ctx.setting("compress.distillation"),
            "pruning.feature_distillation": ctx.setting("compress.feature_distillation"),
            "pruning.finetune_epochs": ctx.result("finetune")["epochs"],
            "clustering.exclude": exclude, "clustering.finetune_epochs": ctx.setting("compress.cluster_epochs"),
            "quantization.qat_epochs": ctx.setting("quantization.qat_epochs"),
            # the chain's own settings, so that `compress --from-config` on this file runs the same chain
            "compress.finetune_epochs": ctx.result("finetune")["epochs"], "compress.cluster_epochs": ctx.setting("compress.cluster_epochs"),
            "compress.time_budget": 0.0,  # the epochs above are what the budget chose: run them as they are
            "compress.cluster": ctx.setting("compress.cluster"), "compress.qat": ctx.setting("compress.qat"),
            "compress.distillation": ctx.setting("compress.distillation"),
            "compress.feature_distillation": ctx.setting("compress.feature_distillation"),
        })  # fmt: skip
        raw = to_raw(config, job.run_dir)
        raw["model"]["weights"] = "levered.h5"  # the model the ratios apply to (the baseline itself when no lever is used)
        atomic_write_text(ctx.output("plan-config.json"), json.dumps(raw, indent=2) + "\n")
        return {"input_size": size, "clustering_exclude": exclude}


class Report(CompressStage):
    name, title = "report", "every stage's model on the test split; the final model timed against the unpruned int8 model (and the board's figures)"
    reads = ("@data", *RUNTIME_READS, "run.board_measured", "run.target", "run.also")
    rewritable = True  # a new --board-measured redoes the report alone, without --force
    writes = ("report.json", "report.md", "report.png")

    def __init__(self, needs: tuple[str, ...]):
        self.needs = needs

    def run(self, ctx: StageContext) -> dict:
        from .report import build_report

        return build_report(ctx)
