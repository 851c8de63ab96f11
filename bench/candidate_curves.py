#!/usr/bin/env python3
"""Benchmark: does comparing compress's candidate plans after a few epochs pick the plan that is best after a full fine-tune?

    python bench/candidate_curves.py -c bench/configs/raccoon-yolov3-tiny.json --model runs/raccoon-yolov3-tiny/best.h5 \\
        --target-speedup 3 --epochs 12 --set compress.time_budget=50 --measurements-from runs/compress-raccoon-two \\
        --run-dir runs/curves-raccoon --out bench/results/candidate-curves-raccoon

Runs compress's own stages up to the plan (one plan per input size for the
target), then fine-tunes every size's plan for ``--epochs`` epochs with the
same distillation and learning rate as the candidates stage, validating after
every epoch, and scores each plan's best epoch on the test split. From these
learning curves it replays successive halving (:mod:`compression.budget.halving`)
with a first round of 1, 2, 3, 5 ... epochs and reports which plan each would
keep, against the plan that is best after all ``--epochs`` (on validation, and
on test). The stages are built as compress builds them, so with the time budget
of an earlier compress run of the same model (``--set compress.time_budget``)
``--measurements-from`` reuses its measuring stages. Nothing after them is
timed, so another job may run beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli

RUNGS = (1, 2, 3, 5, 8, 10)
HORIZON = 60  # compress.finetune_epochs' default: the epochs the extrapolated replay ranks the plans at


def curves_stage(epochs: int):
    """A stage (of this benchmark only) after the plan: every size's plan fine-tuned ``epochs`` epochs, validated each epoch."""
    from compression.budget.context import log
    from compression.budget.stages import FINETUNE_READS, CompressStage, train_plan

    class Curves(CompressStage):
        name, title = "curves", "each input size's plan fine-tuned, validated after every epoch"
        reads = (*FINETUNE_READS, "compress.round_to", "pruning.similarity_w1", "pruning.similarity_w2", "pruning.min_channels")
        needs = ("baseline", "levers", "plan")
        writes = ("curves",)

        def run(self, ctx):
            job = ctx.services
            plan = ctx.result("plan")
            out = {}
            for size in plan["sizes"]:
                log(f"   plan at {size}: {epochs} epochs")
                tuned = train_plan(ctx, size, ctx.output("curves") / str(size), epochs, eval_every=1)
                by_epoch = {int(h["epoch"]): h.get("mAP50") for h in tuned["history"]}
                test = job.evaluate(Path(tuned["best_model"]), "test", job.at_size(size))
                out[str(size)] = {"valid_mAP50": [by_epoch.get(e) for e in range(1, epochs + 1)], "best_valid_mAP50": tuned["best_mAP50"],
                                  "test_mAP50": test["mAP50"], "best_model": tuned["best_model"],
                                  "predicted_ms": plan["predicted_ms"][str(size)], "seconds": tuned["seconds"]}  # fmt: skip
            return {"epochs": epochs, "plans": out}

    return Curves()


def analyse(plans: dict, epochs: int) -> dict:
    """Which plan successive halving keeps for each first-round length, and which plan is best after every epoch."""
    from compression.budget.halving import epochs_trained, rank, simulate_halving

    curves = {n: p["valid_mAP50"] for n, p in plans.items()}
    predicted = {n: p["predicted_ms"] for n, p in plans.items()}
    best_valid = rank(list(plans), {n: p["best_valid_mAP50"] for n, p in plans.items()}, predicted)[0]
    tested = {n: p["test_mAP50"] for n, p in plans.items() if p["test_mAP50"] is not None}
    best_test = rank(list(tested), tested, predicted)[0] if tested else None
    halving = {}
    for rung in RUNGS:
        if rung * (len(plans) - 1).bit_length() > epochs:
            break
        chosen, rounds = simulate_halving(curves, rung, predicted)
        ahead, ahead_rounds = simulate_halving(curves, rung, predicted, horizon=HORIZON)
        halving[str(rung)] = {"chosen": chosen, "rounds": rounds, "epochs_spent": epochs_trained(rounds),
                              "chosen_extrapolated": ahead, "rounds_extrapolated": ahead_rounds}  # fmt: skip
    return {"best_after_all_epochs_valid": best_valid, "best_after_all_epochs_test": best_test, "halving": halving}


def markdown(data: dict) -> str:
    plans, epochs = data["plans"], data["epochs"]
    names = sorted(plans, key=int)
    lines = [f"Candidate plans for {data['target']} on `{data['config']}` ({data['model']}); {data['machine']}", "",
             f"Each input size's plan fine-tuned {epochs} epochs with distillation, validation mAP@0.5 after each epoch; "
             "the best epoch's model scored on the test split.", "",
             "| epoch | " + " | ".join(f"{n} px" for n in names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for e in range(epochs):
        lines.append(
            f"| {e + 1} | "
            + " | ".join(f"{plans[n]['valid_mAP50'][e]:.4f}" if plans[n]["valid_mAP50"][e] is not None else "" for n in names)
            + " |"
        )
    lines.append("| best, validation | " + " | ".join(f"**{plans[n]['best_valid_mAP50']:.4f}**" for n in names) + " |")
    if any(plans[n]["test_mAP50"] is not None for n in names):
        lines.append("| its test mAP@0.5 | " + " | ".join(f"{plans[n]['test_mAP50']:.4f}" for n in names) + " |")
    lines.append("| predicted int8 ms | " + " | ".join(f"{plans[n]['predicted_ms']:.2f}" for n in names) + " |")
    a = data["analysis"]
    lines += ["", f"Best after {epochs} epochs: {a['best_after_all_epochs_valid']} px on validation"
              + (f", {a['best_after_all_epochs_test']} px on test." if a["best_after_all_epochs_test"] else "."), "",
              f"| first round (epochs) | rounds: epochs and order | plan kept | ranked by a - b/t at epoch {HORIZON}: plan kept | candidate epochs trained |",
              "|---|---|---|---|---|"]  # fmt: skip
    for rung, h in a["halving"].items():
        order = "; ".join(f"{r['epochs']}: " + " > ".join(r["valid_mAP50"]) for r in h["rounds"])
        lines.append(f"| {rung} | {order} | {h['chosen']} px | {h['chosen_extrapolated']} px | {h['epochs_spent']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--target-speedup")
    parser.add_argument("--target-size")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, as yolo3's --set")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--measurements-from", help="reuse the measuring stages of another run folder (same model and config)")
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    from compression.budget.compress import CompressOptions, build_stages, parse_targets
    from compression.budget.context import GROUPS, CompressJob, log
    from compression.pipeline import Pipeline
    from yolo3.config import load_config, parse_overrides

    config = load_config(args.config, parse_overrides(args.set))
    targets = parse_targets(args.target_speedup, None, args.target_size, None)
    options = CompressOptions(target=targets[0], also=tuple(targets[1:]), run_dir=Path(args.run_dir), progress=False,
                              measurements_from=args.measurements_from)  # fmt: skip
    job = CompressJob(config, args.model, options)
    stages = build_stages(options, budgeted=bool(config.compress.time_budget))  # as compress builds them: --measurements-from reuses its stages
    upto = [s.name for s in stages].index("plan") + 1
    pipeline = Pipeline(
        [*stages[:upto], curves_stage(args.epochs)], job.settings, job.run_dir, groups=GROUPS, log=log, services=job
    )
    if args.measurements_from:
        for note in pipeline.reuse(Path(args.measurements_from)):
            log(f"note: {note}")
    results = pipeline.run_all()
    plans = results["curves"]["plans"]
    data = {"command": "python bench/candidate_curves.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "config": Path(args.config).name,
            "model": args.model, "target": targets[0].describe(), "epochs": args.epochs,
            "plans": plans, "analysis": analyse(plans, args.epochs)}  # fmt: skip
    write_results(Path(args.out), data, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
