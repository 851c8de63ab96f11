"""Run any predictor on images, folders, videos or a camera, and draw labelled boxes: detect.py's and the edge runner's work.

numpy and Pillow only (OpenCV for video, imported when a video is asked
for), so the edge runner and its device bundle use this very module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .draw import draw_detections
from .errors import UserError
from .postprocess import Detections, predictor_detections
from .preprocess import IMAGE_SUFFIXES, VIDEO_SUFFIXES, letterbox, load_image


def detect_array(predictor, image: np.ndarray, score: float, nms_iou: float, max_detections: int = 100) -> Detections:
    tensor, box = letterbox(image, predictor.input_hw)
    outputs = predictor(tensor[None])
    return predictor_detections(predictor, [o[0] for o in outputs], box, score, nms_iou, max_detections)


def _images(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError("no images in this folder", source)
        return files
    return [source]


def _cv2():
    try:
        import cv2
    except ImportError:
        raise UserError("reading a video or a camera needs OpenCV (pip install opencv-python-headless)") from None
    return cv2


def _frames(path: Path | int) -> Iterator[np.ndarray]:
    cv2 = _cv2()
    capture = cv2.VideoCapture(path if isinstance(path, int) else str(path))
    if not capture.isOpened():
        raise UserError("cannot open this camera" if isinstance(path, int) else "cannot open this video", str(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def is_video(source: str) -> bool:
    """A camera index ("0") or a video file."""
    return source.isdigit() or Path(source).suffix.lower() in VIDEO_SUFFIXES


def iter_inputs(sources: Sequence[str], max_frames: int | None = None) -> Iterator[tuple[str, np.ndarray | UserError]]:
    """(name, RGB image) for every image, every image of a folder and every frame of a video or camera, in order.

    An input that cannot be read comes as (name, the error) so that a caller
    can report it and go on with the others.
    """
    for source in sources:
        if is_video(source):
            path: Path | int = int(source) if source.isdigit() else Path(source)
            if isinstance(path, Path) and not path.is_file():
                yield source, UserError("does not exist", source)
                continue
            try:
                for k, frame in enumerate(_frames(path)):
                    if max_frames is not None and k >= max_frames:
                        break
                    yield f"{source}#{k}", frame
            except UserError as err:
                yield source, err
            continue
        path = Path(source)
        if not path.exists():
            yield source, UserError("does not exist", source)
            continue
        try:
            files = _images(path)
        except UserError as err:
            yield source, err
            continue
        for f in files:
            try:
                yield str(f), load_image(f)
            except UserError as err:
                yield str(f), err


def run_detect(predictor, source: str | Path, out: str | Path, names: Sequence[str], score: float = 0.25, nms_iou: float = 0.45) -> list[dict]:
    """Detect on an image, every image of a folder, or every frame of a video; write drawn copies to ``out``."""
    source, out = Path(source), Path(out)
    if not source.exists():
        raise UserError("does not exist", source)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        cv2 = _cv2()

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
