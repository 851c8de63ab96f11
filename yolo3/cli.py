"""``python -m yolo3``: info, export, data, anchors, compare, synth.

python -m yolo3 info NAME_OR_CFG [--classes N] [--size S] [--json]
python -m yolo3 export --cfg CFG --weights IN --out OUT [--force]
python -m yolo3 data CONFIG_OR_FOLDER [--json] [--no-decode]
python -m yolo3 synth OUT_FOLDER [--count N] [--seed S] [--labels a,b,c]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError, run_cli


def cmd_info(args) -> int:
    from .spec import analyse, layer_table, totals
    from .zoo import resolve_spec

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


def _check_out(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError("exists; pass --force to overwrite it", path)


def cmd_export(args) -> int:
    from .models import load_model, save_model

    out = Path(args.out)
    if out.suffix.lower() not in (".weights", ".h5"):
        raise UserError("the output must end in .weights or .h5", out)
    _check_out(out, args.force)
    loaded = load_model(args.weights, architecture=args.cfg)
    if out.suffix.lower() == ".weights":
        from .darknet import write_weights
        from .keras_model import get_darknet_weights

        write_weights(out, loaded.spec, get_darknet_weights(loaded.model, loaded.spec, loaded.header))
    else:
        save_model(loaded.model, loaded.spec, out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def _sources(target: str):
    from .datasets import discover

    path = Path(target)
    if path.is_file():
        from .config import load_config

        config = load_config(path)
        return [config.dataset("train"), config.dataset("valid")], config.labels
    return discover(path), None


def cmd_data(args) -> int:
    from .datasets import check_images, read_dataset

    sources, labels = _sources(args.target)
    summaries = []
    for source in sources:
        ds = read_dataset(source, labels)
        problems = list(ds.problems)
        if not args.no_decode:
            problems += check_images(ds.records, progress=not args.json)
        kinds: dict[str, int] = {}
        for p in problems:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        summaries.append({
            "dataset": source.label or str(source.annotations),
            "format": source.format,
            "images": len(ds.records),
            "boxes": ds.num_boxes,
            "classes": len(ds.names),
            "boxes_per_class": ds.box_counts(),
            "images_without_boxes": sum(1 for r in ds.records if len(r.classes) == 0),
            "problem_counts": kinds,
            "problems": [str(p) for p in problems],
        })  # fmt: skip
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    for s in summaries:
        print(f"== {s['dataset']} ({s['format']}): {s['images']} images, {s['boxes']} boxes, {s['classes']} classes")
        present = {k: v for k, v in s["boxes_per_class"].items() if v}
        width = max((len(k) for k in present), default=5)
        for name, count in present.items():
            print(f"   {name:<{width}s} {count:6d}")
        absent = [k for k, v in s["boxes_per_class"].items() if not v]
        if absent:
            print(f"   no boxes: {', '.join(absent)}")
        if s["images_without_boxes"]:
            print(f"   images without boxes: {s['images_without_boxes']}")
        if s["problems"]:
            print("   problems: " + ", ".join(f"{k} {v}" for k, v in s["problem_counts"].items()))
            for p in s["problems"]:
                print(f"     {p}")
        else:
            print("   problems: none")
    return 0


def cmd_synth(args) -> int:
    from .synthetic import ensure_folders

    out = Path(args.out)
    names = [n.strip() for n in args.labels.split(",") if n.strip()]
    made = ensure_folders(out / "images", out / "annotations", args.count, names, args.seed)
    print(("wrote" if made else "up to date:") + f" {args.count} images in {out}/images, VOC xml in {out}/annotations")
    return 0


def cmd_anchors(args) -> int:
    from .anchors import box_sizes, kmeans_anchors
    from .config import load_config
    from .datasets import read_dataset
    from .zoo import resolve_spec

    config = load_config(args.config)
    dataset = read_dataset(config.dataset("train"), config.labels)
    spec = resolve_spec(config.model.architecture)
    k = args.k or len(spec.layers[spec.yolo_indices()[0]].get_floats("anchors")) // 2
    wh = box_sizes(dataset.records, config.model.input_size)
    try:
        anchors, mean_iou = kmeans_anchors(wh, k, seed=args.seed)
    except ValueError as err:
        raise UserError(str(err), args.config) from None
    flat = [int(round(v)) for v in anchors.reshape(-1)]
    if args.json:
        print(json.dumps({"anchors": flat, "mean_iou": mean_iou, "boxes": len(wh)}))
    else:
        print(f"{k} anchors from {len(wh)} training boxes at input {config.model.input_size} (mean best IoU {mean_iou:.3f}):")
        print(f'  "anchors": {json.dumps(flat)}')
        print("put this line into the model section of the config")
    return 0


def cmd_compare(args) -> int:
    rows = []
    for path in args.reports:
        try:
            r = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError("no such report", path) from None
        except json.JSONDecodeError as err:
            raise UserError(f"not a JSON report: {err.msg}", path, err.lineno) from None
        if "mAP50" not in r:
            raise UserError("not an evaluation report (no mAP50)", path)
        rows.append((Path(r.get("model", path)).name, r))
    header = f"{'model':<28s} {'mAP@0.5':>8s} {'COCO AP':>8s} {'params':>11s} {'MACs':>8s} {'size':>10s} {'gzip':>10s} {'latency':>9s}"
    print(header)
    base = rows[0][1]
    for name, r in rows:
        lat = r.get("latency", {}).get("median_ms")
        size = r.get("model_bytes")
        gz = r.get("model_gzip_bytes")
        print(
            f"{name[:28]:<28s} {r['mAP50']:8.4f} {r['coco']['AP']:8.4f} {r.get('params', 0):11,d} "
            f"{r.get('macs', 0) / 1e9:7.2f}G {size or 0:10,d} {gz or 0:10,d} "
            + (f"{lat:7.1f}ms" if lat else "      -")
        )
    if len(rows) > 1:
        for name, r in rows[1:]:
            parts = [f"mAP@0.5 {100 * (r['mAP50'] - base['mAP50']):+.2f} points"]
            if r.get("latency") and base.get("latency"):
                parts.append(f"{base['latency']['median_ms'] / r['latency']['median_ms']:.2f}x faster")
            if r.get("model_bytes") and base.get("model_bytes"):
                parts.append(f"{base['model_bytes'] / r['model_bytes']:.2f}x smaller")
            print(f"{name} vs {rows[0][0]}: " + ", ".join(parts))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m yolo3", description="YOLOv3 models, Darknet files and datasets")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="layer table, parameters and multiply-accumulates of a network")
    p.add_argument("model", help="built-in name (yolov3, yolov3-spp, yolov3-tiny) or a Darknet .cfg")
    p.add_argument("--classes", type=int, help="class count (default: the cfg's, 80 for built-ins)")
    p.add_argument("--size", type=int, help="input size, a multiple of 32 (default: the cfg's, 416 for built-ins)")
    p.add_argument("--json", action="store_true", help="print JSON (params, trainable_params, macs, ...)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="convert a model between Darknet .weights and Keras .h5")
    p.add_argument("--cfg", required=True, help="the network's .cfg (or a built-in name)")
    p.add_argument("--weights", required=True, help="input .weights or .h5")
    p.add_argument("--out", required=True, help="output .weights or .h5")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("data", help="summarise a dataset: images, boxes per class, every problem found")
    p.add_argument("target", help="a config.json (its train and valid sets) or a dataset folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster, misses truncated files)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("anchors", help="anchors by IoU k-means on the training boxes of a config")
    p.add_argument("config", help="config.json")
    p.add_argument("-k", type=int, help="number of anchors (default: the architecture's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_anchors)

    p = sub.add_parser("compare", help="compare evaluation reports (evaluate.py --json) side by side")
    p.add_argument("reports", nargs="+", help="JSON reports; the first is the baseline")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("synth", help="generate the synthetic shapes dataset (VOC xml + JPEG)")
    p.add_argument("out", help="output folder (gets images/ and annotations/)")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", default="circle,square,triangle")
    p.set_defaults(func=cmd_synth)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def entry() -> None:
    sys.exit(run_cli(main))
