"""The layer table of a network, as Darknet prints it: type, filters, size/stride, input -> output, MACs; totals.

    yolo3 info NAME_OR_CFG [--classes N] [--size S] [--json]
    yolo3 info MODEL.tflite [--json]      # flash, peak activation memory, LiteRT's arena, operators
"""

from __future__ import annotations

import json

HELP = "layer table, parameters and multiply-accumulates of a network"


def configure(parser) -> None:
    parser.add_argument("model", help="built-in name (yolov3, yolov3-spp, yolov3-tiny, yolov3-tiny-relu, yolov4-tiny, yolo-fastest), a Darknet .cfg, "
                        "or a .tflite (flash, peak activation memory, operators)")
    parser.add_argument("--classes", type=int, help="class count (default: the cfg's, 80 for built-ins)")
    parser.add_argument("--size", type=int, help="input size, a multiple of 32 (default: the cfg's, 416 for built-ins)")
    parser.add_argument("--json", action="store_true", help="print JSON (params, trainable_params, macs, ...)")


def run(args) -> int:
    if args.model.lower().endswith(".tflite"):
        return _tflite_info(args)
    from yolo3.spec import analyse, layer_table, totals
    from yolo3.zoo import resolve_spec

    spec = resolve_spec(args.model, args.classes, args.size)
    infos = analyse(spec)
    t = totals(infos)
    if args.json:
        print(json.dumps({
            "model": args.model,
            "classes": spec.num_classes,
            "input_size": [spec.height, spec.width],
            "layers": len(spec.layers),
            "convolutions": len(spec.conv_indices()),
            "params": t.params,
            "trainable_params": t.trainable_params,
            "macs": t.macs,
        }, indent=2))  # fmt: skip
    else:
        print(layer_table(spec, infos))
    return 0


def _tflite_info(args) -> int:
    """A .tflite: its flash and RAM (yolo3.tflite_memory) and its operators by type."""
    from yolo3.errors import UserError
    from yolo3.tflite_memory import format_memory, memory_report

    if args.classes is not None or args.size is not None:
        raise UserError("--classes and --size describe a network to build; a .tflite has its own", args.model)
    report = memory_report(args.model)
    if args.json:
        print(json.dumps({"model": args.model, **report}, indent=2))
    else:
        print(format_memory(report))
        print("operators: " + ", ".join(f"{name} x{n}" for name, n in report["operator_counts"].items()))
    return 0
