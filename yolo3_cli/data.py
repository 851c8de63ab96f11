"""A dataset at a glance: images, boxes per class, images without boxes, and every problem found (clipped, empty, unreadable).

    yolo3 data CONFIG_OR_FOLDER [--json] [--no-decode]
"""

from __future__ import annotations

import json

HELP = "summarise a dataset: images, boxes per class, every problem found"


def configure(parser) -> None:
    parser.add_argument("target", help="a config.json (its train and valid sets) or a dataset folder")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster, misses truncated files)")


def run(args) -> int:
    from yolo3.datasets import check_images, read_dataset

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


def _sources(target: str):
    from pathlib import Path

    from yolo3.datasets import discover

    path = Path(target)
    if path.is_file():
        from yolo3.config import load_config

        config = load_config(path)
        return [config.dataset(split) for split in ("train", "valid", "test") if split != "test" or config.has_test_split], config.labels
    return discover(path), None
