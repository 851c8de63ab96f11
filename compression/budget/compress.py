"""``yolo3 compress``: from a trained model to an int8 ``.tflite`` that meets a speed or size budget, found by the tool.

The run is a :class:`~compression.pipeline.Pipeline` of the stages in
:mod:`.stages`, built from the options (:func:`build_stages`); each stage is a
folder entry of the run folder that a re-run skips once it is done (a training
stage killed half-way resumes from its checkpoints), and only the stages whose
settings changed are redone. The stages, what each reads, needs and writes:
:func:`stages_markdown` (docs/compress.md shows it).

Decisions (plan, candidates, best epochs, what to keep) see only the
validation split; the report's figures come from the test split.

Example::

    report = run_compress(config, "best.h5", CompressOptions(target=Target("speedup", 3), run_dir=Path("runs/c")))
    report["speedup_vs_unpruned_int8"], report["map50_final_int8"]
"""

from __future__ import annotations

from pathlib import Path

from yolo3.errors import UserError
from yolo3.reporting import write_json

from ..pipeline import Pipeline, Stage, stages_table
from .context import GROUPS, CompressJob, CompressOptions, log
from .stages import (
    Baseline,
    Candidates,
    Cluster,
    ClusterFinetune,
    CostModels,
    Finetune,
    Floor,
    Int8,
    LeversStage,
    PlanConfig,
    PlanStage,
    Prune,
    Reach,
    Report,
    Sensitivity,
)
from .targets import Target, parse_target, parse_targets

__all__ = ["CompressOptions", "Target", "parse_target", "parse_targets", "run_compress", "build_stages", "stages_markdown"]


def build_stages(options: CompressOptions, budgeted: bool = True) -> list[Stage]:
    """The stages a compress job runs, in order, for its options; ``budgeted``: a time budget chooses the training epochs."""
    searched = not (options.preset or options.from_config)
    # levers change the architecture: for a speed, MACs or RAM target only (they buy no size), never for a given plan
    kinds = tuple(t.kind for t in ([options.target, *options.also] if options.target else []))
    levered = searched and bool({"speedup", "latency", "macs", "ram"} & set(kinds))  # a stride for a max-pool, a fused ReLU: less RAM too
    if options.sensitivity_only:
        return [Baseline(), LeversStage(False), Sensitivity()]
    stages: list[Stage] = [Baseline(), LeversStage(levered, budgeted), CostModels()]
    if options.target is not None:
        stages.append(Reach())
    if searched:
        stages.append(Sensitivity())
    stages += [PlanStage(searched, kinds), Candidates(budgeted), Prune(), Finetune(budgeted), Cluster(), ClusterFinetune(), Int8(), Floor(),
               PlanConfig()]  # fmt: skip
    stages.append(Report(tuple(s.name for s in stages)))
    return stages


def stages_markdown() -> str:
    """The stages of a searched compress run as a markdown table (name, what, reads, needs, writes), from the code."""
    return stages_table(build_stages(CompressOptions(target=Target("speedup", 2.0))), GROUPS)


def check_table_covers(job: CompressJob, stages: list[Stage]) -> None:
    """Before anything runs: a ``--latency-table`` holds every probe this run will look up (its sizes, its lever variants)."""
    if job.latency_table is None or job.options.sensitivity_only:
        return
    from .probes import probe_set

    co = job.config.compress
    levered = any(isinstance(s, LeversStage) and s.active for s in stages)
    _, probes = probe_set(job.source_spec(), job.sizes, job.base_size, tuple(co.latency_levels), co.round_to, co.levers if levered else [])
    job.latency_table.check_covers([(p.spec, p.item) for p in probes])


def run_compress(config, model_path: str | None, options: CompressOptions) -> dict:
    """The whole chain for one model (see the module docstring); returns the report (or the sensitivity summary)."""
    if not options.sensitivity_only and options.target is None and not options.preset and not options.from_config:
        raise UserError("give a target (--target-speedup, --target-latency, --target-size, --target-macs, --target-ram or --target-flash), --preset NAME, "
                        "--from-config or --sensitivity-only")  # fmt: skip
    if sum(bool(x) for x in (options.target, options.preset, options.from_config)) > 1:
        raise UserError("give one of a target, --preset and --from-config")
    from .plan import check_fixed_plan

    job = CompressJob(config, model_path, options)
    check_fixed_plan(job)  # before the run folder is made
    stages = build_stages(options, bool(job.config.compress.time_budget))
    check_table_covers(job, stages)
    if job.board_measured is not None:  # before the report it would replace is cleared
        job.board_measured.check_files(job.run_dir)
    pipeline = Pipeline(stages, job.settings, job.run_dir, groups=GROUPS, force=options.force, log=log, services=job)
    write_json(pipeline.run_dir / "job.json", {"settings": job.settings, "stages": [s.name for s in pipeline.stages],
                                               "fingerprints": pipeline.fingerprints})  # fmt: skip
    if options.measurements_from:
        job.notes += pipeline.reuse(Path(options.measurements_from))
    for note in job.notes:
        log(f"note: {note}")
    budget = job.config.compress.time_budget

    def status() -> str:
        return f"{job.time_left(pipeline) / 60:.0f} of {budget:g} min left" if budget else ""

    results = pipeline.run_all(status if budget else None)
    if options.sensitivity_only:
        return {"sensitivity": str(pipeline.run_dir / "sensitivity.json"), "plot": str(pipeline.run_dir / "sensitivity.png"), **results["sensitivity"]}
    return results["report"]
