"""Compress a trained YOLOv3 to an int8 .tflite that meets a speed or size budget; the tool finds the settings.

    yolo3 compress -c config.json --model IN(.h5|.weights) --target-speedup 3
    yolo3 compress -c config.json --model IN.h5 --target-latency 12 | --target-size 1.0 | --target-macs 0.3 | --target-ram 512 | --target-flash 900
    yolo3 compress -c config.json --model IN.h5 --sensitivity-only
    yolo3 compress -c config.json --model IN.h5 --preset late-heavy
    yolo3 compress -c RUN/plan-config.json --from-config            (a plan, edited or not, run again)
    yolo3 compress -c config.json --model IN.h5 --export-probes DIR  (then on the board: python -m yolo3.lite profile DIR --out table.json)
    yolo3 compress -c config.json --model IN.h5 --target-speedup 2 --latency-table table.json   (planned for that board)

The run folder (--run-dir; default: train.run_dir + "-compress") ends with final-int8.tflite,
report.json / .md / .png and plan-config.json, the plan as an ordinary config. The same
command after a crash or kill -9 skips the stages already done. Decisions use the validation
split; the report's figures come from the test split.
"""

from __future__ import annotations

from .common import add_config, load, positive, write_report

HELP = "meet a budget (--target-speedup/-latency/-size/-macs/-ram/-flash): the tool plans pruning and input size, then runs the chain"


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("--model", help="the trained float model (.h5 written by this tool, or .weights); default: model.weights")
    target = parser.add_argument_group("the budget (one or several: one speed target, a MACs and a size target may go together)")
    target.add_argument("--target-speedup", metavar="X", help="X times faster than the unpruned int8 model (int8 LiteRT, this machine or the "
                        "--latency-table's board); "
                        "max: the fastest model within --max-loss")
    target.add_argument("--target-latency", type=float, metavar="MS", help="int8 latency of at most MS milliseconds on this machine (or the --latency-table's board)")
    target.add_argument("--target-size", metavar="MB", help="gzipped int8 .tflite of at most MB megabytes; min: the smallest within --max-loss")
    target.add_argument("--target-macs", type=float, metavar="FRACTION", help="at most this fraction of the original MACs (0.3 = 70 %% fewer)")
    target.add_argument("--target-ram", type=float, metavar="KIB", help="peak activation memory of the int8 model (the tensor arena's floor) "
                        "of at most KIB KiB")
    target.add_argument("--target-flash", type=float, metavar="KIB", help="int8 .tflite of at most KIB KiB (what flash holds)")
    parser.add_argument("--max-loss", type=float, default=1.0, metavar="POINTS",
                        help="the accuracy floor: mAP@0.5 points the delivered model may lose on the validation split against the unpruned "
                        "float model (default 1.0); a target that needs more ends in a message and the fastest model within the floor")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="minutes the whole run may take (default: compress.time_budget, 90); the fine-tuning epochs are chosen to fill it; 0 = the configured epochs")
    parser.add_argument("--strict", action="store_true", help="stop when the target cannot be met within --max-loss instead of delivering the best model within it")
    parser.add_argument("--preset", help="instead of a target: a named per-layer profile (late-heavy)")
    parser.add_argument("--from-config", action="store_true", help="instead of a target: the config's pruning ratios, input size and clustering exclusions")
    parser.add_argument("--sensitivity-only", action="store_true", help="only the sensitivity analysis (JSON and PNG in the run folder)")
    parser.add_argument("--run-dir", help="the run folder (default: train.run_dir + '-compress')")
    parser.add_argument("--threads", type=int, help="LiteRT threads the latency is measured and planned for (default: compress.threads)")
    parser.add_argument("--no-xnnpack", action="store_true", help="measure and plan for LiteRT's built-in kernels, without XNNPACK (compress.xnnpack false)")
    parser.add_argument("--sizes", help="input sizes the planner may choose, e.g. 416,352,320 (default: compress.sizes)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs after pruning (default: compress.finetune_epochs)")
    parser.add_argument("--measurements-from", metavar="RUN", help="reuse the baseline, cost models and sensitivity of another run folder "
                        "made from the same model, config and settings (to try another target without measuring again)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="redo the stages a changed input invalidates instead of refusing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--export-probes", metavar="DIR", help="write the probe models the latency model needs (the model, its lever variants, "
                        "every candidate input size) and a manifest to DIR, then stop: time them on the device with "
                        "python -m yolo3.lite profile DIR --out table.json")  # fmt: skip
    parser.add_argument("--latency-table", metavar="TABLE", help="plan for the device that timed the probes: the table python -m yolo3.lite "
                        "profile wrote there replaces this machine's timing (the report gives predicted board latency and the command to measure it)")
    parser.add_argument("--board-measured", metavar="FILE", help="the board's timing of this run's final model (python -m yolo3.lite benchmark "
                        "baseline-int8.tflite final-int8.tflite --json), put into the report beside the prediction")
    parser.add_argument("--bundle", help="also write a folder for the device: final-int8.tflite, labels and a runner needing only numpy, Pillow and LiteRT")


def parse_sizes(text: str | None) -> list[int] | None:
    from yolo3.errors import UserError

    if not text:
        return None
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sizes must be comma-separated multiples of 32, got {text!r}") from None
    if not sizes:
        raise UserError("--sizes: give at least one input size")
    return sizes


def run(args) -> int:
    from pathlib import Path

    from compression.budget.compress import CompressOptions, parse_targets, run_compress
    from compression.budget.context import check_max_loss, check_time_budget
    from compression.budget.report import format_markdown
    from yolo3.bundle import check_bundle_folder, write_bundle

    if args.export_probes:
        return export(args)
    targets = parse_targets(args.target_speedup, args.target_latency, args.target_size, args.target_macs, args.target_ram, args.target_flash)
    check_max_loss(args.max_loss)
    if args.time_budget is not None:
        check_time_budget(args.time_budget)
    positive("--threads", args.threads)
    positive("--epochs", args.epochs, 0)
    sizes = parse_sizes(args.sizes)
    config = load(args)
    if args.bundle:
        check_bundle_folder(args.bundle, args.force)
    options = CompressOptions(
        target=targets[0] if targets else None, also=tuple(targets[1:]), preset=args.preset, from_config=args.from_config, sensitivity_only=args.sensitivity_only,
        run_dir=Path(args.run_dir) if args.run_dir else None, threads=args.threads, no_xnnpack=args.no_xnnpack, sizes=sizes, force=args.force,
        progress=not args.quiet, epochs={} if args.epochs is None else {"finetune": args.epochs},
        measurements_from=Path(args.measurements_from) if args.measurements_from else None, max_loss=args.max_loss, strict=args.strict,
        time_budget=args.time_budget, latency_table=Path(args.latency_table) if args.latency_table else None,
        board_measured=Path(args.board_measured) if args.board_measured else None,
    )  # fmt: skip
    report = run_compress(config, args.model, options)
    if args.sensitivity_only:
        print(f"sensitivity analysis: {report['sensitivity']} and {report['plot']}")
    else:
        print(format_markdown(report))
        final = Path(report["plan_config"]).parent / "final-int8.tflite"
        print(f"wrote {final}, report.json/.md/.png and plan-config.json there")
        if args.bundle:
            bundle = write_bundle(final, args.bundle, args.force)
            print(f"wrote the device bundle {bundle['folder']} ({len(bundle['files'])} files, {bundle['bytes']:,} bytes)")
    write_report(args.json, report)
    return 0


def export(args) -> int:
    """``--export-probes DIR``: the probes for the device and the commands that come next; no target, no training."""
    from pathlib import Path

    from compression.budget.compress import CompressOptions
    from compression.budget.context import CompressJob
    from compression.budget.probes import check_probe_folder, export_probes
    from yolo3.errors import UserError

    given = [f for f in ("target_speedup", "target_latency", "target_size", "target_macs", "target_ram", "target_flash", "preset", "bundle",
                         "latency_table", "board_measured")
             if getattr(args, f)]  # fmt: skip
    if given or args.from_config or args.sensitivity_only:
        flag = "--" + (given[0] if given else "from_config" if args.from_config else "sensitivity_only").replace("_", "-")
        raise UserError(f"--export-probes only writes the probes for the device; give {flag} in a run of its own")
    positive("--threads", args.threads)
    folder = Path(args.export_probes)
    check_probe_folder(folder)
    config = load(args)
    job = CompressJob(config, args.model, CompressOptions(sizes=parse_sizes(args.sizes), progress=not args.quiet))
    co = job.config.compress
    manifest = export_probes(job.source_spec(), job.sizes, job.base_size, tuple(co.latency_levels), co.round_to, co.levers, folder,
                             str(job.source), progress=not args.quiet)  # fmt: skip
    total = sum(p.stat().st_size for p in folder.glob("*.tflite"))
    print(f"wrote {len(manifest['probes'])} probes ({total / 1e6:.1f} MB) and manifest.json to {folder}: input sizes "
          f"{', '.join(map(str, manifest['sizes']))}, {len(manifest['variants'])} network variants ({len(manifest['variants']) - 1} with levers)")
    print("on the device, from the bundle folder (python -m yolo3.lite needs numpy and LiteRT only):")
    print(f"    python -m yolo3.lite profile {folder.name} --threads N [--no-xnnpack] [--delegate LIB] --out table.json")
    return 0
