"""detect.py's work: run any predictor on images, a folder or a video and draw labelled boxes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .draw import draw_detections
from .errors import UserError
from .postprocess import Detections, detect
from .preprocess import letterbox, load_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_TYPES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def detect_array(predictor, image: np.ndarray, score: float, nms_iou: float, max_detections: int = 100) -> Detections:
    tensor, box = letterbox(image, predictor.input_hw)
    outputs = predictor(tensor[None])
    return detect([o[0] for o in outputs], predictor.heads, predictor.input_hw, box, score, nms_iou, max_detections)


def _images(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_TYPES)
        if not files:
            raise UserError("no images in this folder", source)
        return files
    return [source]


def _frames(path: Path) -> Iterator[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UserError("cannot open this video", path)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def run_detect(predictor, source: str | Path, out: str | Path, names: Sequence[str], score: float = 0.25, nms_iou: float = 0.45) -> list[dict]:
    """Detect on an image, every image of a folder, or every frame of a video; write drawn copies to ``out``."""
    source, out = Path(source), Path(out)
    if not source.exists():
        raise UserError("does not exist", source)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        import cv2

        writer = None
        target = out / f"{source.stem}-detections.mp4"
        for k, frame in enumerate(_frames(source)):
            dets = detect_array(predictor, frame, score, nms_iou)
            drawn = np.asarray(draw_detections(frame, dets, names))
            if writer is None:
                fps = cv2.VideoCapture(str(source)).get(cv2.CAP_PROP_FPS) or 25
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
            writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            results.append({"frame": k, "detections": dets.to_json(names)})
        if writer is not None:
            writer.release()
        return results
    for image_path in _images(source):
        image = load_image(image_path)
        dets = detect_array(predictor, image, score, nms_iou)
        draw_detections(image, dets, names).save(out / f"{image_path.stem}.jpg", quality=92)
        results.append({"image": str(image_path), "detections": dets.to_json(names)})
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    return results
