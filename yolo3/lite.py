"""The edge runner: detect with a ``.tflite`` file using only numpy, Pillow and LiteRT.

    python -m yolo3.lite MODEL.tflite IMAGE|FOLDER|VIDEO|CAMERA ... [--threads 2] [--no-xnnpack] [--score 0.25] [--json] [--draw OUT_DIR]

Prints one line per image or frame (boxes in image pixels, scores, class names, latency), or
one JSON object with ``--json``.
Everything the decoder needs (anchors, class count and names, the cfg) is
embedded in the ``.tflite`` by ``convert.py`` as metadata named ``yolo3``, read
here with a few lines of flatbuffer parsing, so the runner needs no other file.
It imports ``ai_edge_litert`` or, where that is what the device has,
``tflite_runtime`` — never TensorFlow.

Example::

    from yolo3.lite import TFLitePredictor
    predictor = TFLitePredictor("model-int8.tflite", threads=2)
    detections = predictor.detect_file("dog.jpg", score_threshold=0.25)
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

from .errors import UserError, run_cli
from .postprocess import Detections, HeadSpec, predictor_detections
from .preprocess import letterbox, load_image

METADATA_NAME = "yolo3"


def _interpreter_class():
    """LiteRT's Interpreter from ai_edge_litert, else from tflite_runtime; a missing or mismatched runtime ends in one line."""
    from importlib.util import find_spec

    if find_spec("ai_edge_litert") is not None:
        return _import_interpreter("ai_edge_litert", "ai-edge-litert")
    if find_spec("tflite_runtime") is not None:
        check_tflite_runtime_numpy()
        return _import_interpreter("tflite_runtime", "tflite-runtime")
    raise UserError("neither ai_edge_litert nor tflite_runtime is installed: pip install -r requirements.txt (see README.md)")


def make_interpreter(path: str | Path | None = None, content: bytes | None = None, threads: int = 2, xnnpack: bool = True):
    """LiteRT's interpreter (not yet allocated) with ``threads``; ``xnnpack=False`` runs its built-in kernels only, as a runtime without XNNPACK does."""
    Interpreter = _interpreter_class()
    options = {}
    if not xnnpack:
        options["experimental_op_resolver_type"] = sys.modules[Interpreter.__module__].OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if content is not None:
        return Interpreter(model_content=content, num_threads=threads, **options)
    return Interpreter(model_path=str(path), num_threads=threads, **options)


def load_interpreter(path: str | Path | None = None, content: bytes | None = None, threads: int = 2, xnnpack: bool = True,
                     delegate: str | None = None):  # fmt: skip
    """:func:`make_interpreter` (or with an external ``delegate`` library) with its tensors allocated; what LiteRT refuses ends in one line."""
    def first_line(err: Exception) -> str:
        return str(err).strip().splitlines()[0] if str(err).strip() else "no reason given"

    where = path if path is not None else "<model bytes>"
    if path is not None and content is None and not Path(path).is_file():
        raise UserError("model file does not exist", path)
    try:
        if delegate:
            Interpreter = _interpreter_class()
            try:
                loaded = sys.modules[Interpreter.__module__].load_delegate(delegate)
            except (ValueError, OSError) as err:
                raise UserError(f"--delegate: cannot load it ({first_line(err)})", delegate) from None
            source = {"model_content": content} if content is not None else {"model_path": str(path)}
            interpreter = Interpreter(**source, num_threads=threads, experimental_delegates=[loaded])
        else:
            interpreter = make_interpreter(path, content, threads, xnnpack)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise UserError(f"LiteRT cannot load this model ({first_line(err)})", where) from None
    return interpreter


def check_tflite_runtime_numpy(numpy_version: str | None = None) -> None:
    """tflite-runtime (2.14 is its last release) was built against numpy 1: under numpy 2 it cannot load, so say what to install before it fails."""
    numpy_version = numpy_version or np.__version__
    if int(numpy_version.split(".")[0]) >= 2:
        from importlib.metadata import PackageNotFoundError, version

        try:
            runtime = version("tflite-runtime")
        except PackageNotFoundError:
            runtime = "?"
        raise UserError(f"tflite-runtime {runtime} was built against numpy 1 and numpy {numpy_version} is installed: "
                        "pip install 'numpy<2' (or use requirements-tflite-runtime.txt)")  # fmt: skip


def _import_interpreter(module: str, package: str):
    try:
        if module == "ai_edge_litert":
            from ai_edge_litert.interpreter import Interpreter
        else:
            from tflite_runtime.interpreter import Interpreter
    except (ImportError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{package} is installed but cannot be imported ({first}); reinstall it with the numpy it was built for") from None
    return Interpreter


# ---------------------------------------------------------------------------
# Metadata: a minimal flatbuffer reader for the TFLite Model table
# ---------------------------------------------------------------------------


def _table_field(buf: bytes, table: int, field: int) -> int | None:
    """Absolute position of field ``field`` of the table at ``table``, or None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    entry = 4 + 2 * field
    if entry >= vt_size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + entry)[0]
    return table + offset if offset else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _vector(buf: bytes, pos: int) -> tuple[int, int]:
    start = _deref(buf, pos)
    return start + 4, struct.unpack_from("<I", buf, start)[0]


def read_metadata(model: bytes, name: str = METADATA_NAME) -> bytes | None:
    """The bytes of the metadata entry ``name`` of a TFLite flatbuffer, or None.

    Model table fields (schema.fbs): 4 = buffers, 6 = metadata; Metadata: 0 = name,
    1 = buffer index; Buffer: 0 = data.
    """
    try:
        root = _deref(model, 0)
        meta_field = _table_field(model, root, 6)
        buffers_field = _table_field(model, root, 4)
        if meta_field is None or buffers_field is None:
            return None
        meta_start, meta_len = _vector(model, meta_field)
        buf_start, _ = _vector(model, buffers_field)
        for i in range(meta_len):
            entry = _deref(model, meta_start + 4 * i)
            name_pos = _table_field(model, entry, 0)
            if name_pos is None:
                continue
            s_start = _deref(model, name_pos)
            s_len = struct.unpack_from("<I", model, s_start)[0]
            if model[s_start + 4 : s_start + 4 + s_len].decode("utf-8", "replace") != name:
                continue
            index_pos = _table_field(model, entry, 1)
            index = struct.unpack_from("<I", model, index_pos)[0] if index_pos is not None else 0
            buffer = _deref(model, buf_start + 4 * index)
            data_pos = _table_field(model, buffer, 0)
            if data_pos is None:
                return None
            d_start, d_len = _vector(model, data_pos)
            return bytes(model[d_start : d_start + d_len])
    except (struct.error, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------


def _damaged(path, what: str) -> UserError:
    return UserError(f"this .tflite was not written by yolo3-compress (or is damaged): {what}", path)


def parse_metadata(raw: bytes | None, path) -> dict:
    """The ``yolo3`` metadata entry as a dict ({} when there is none), its shape checked: one message for anything else."""
    if not raw:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(path, f"its yolo3 metadata is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise _damaged(path, "its yolo3 metadata is not a JSON object")
    for key, kind in (("heads", list), ("names", list), ("output_shapes", list), ("postprocess", dict), ("cfg", str)):
        if key in meta and not isinstance(meta[key], kind):
            raise _damaged(path, f"metadata '{key}' is not a {kind.__name__}")
    post = meta.get("postprocess", {})
    if post.get("nms") and not isinstance(post.get("outputs", []), list):
        raise _damaged(path, "metadata 'postprocess.outputs' is not a list")
    return meta


def metadata_heads(meta: dict, path) -> list:
    """The detection heads (anchors, classes, scale_xy) the metadata records, checked."""
    if "heads" not in meta or not meta["heads"]:
        raise _damaged(path, "its metadata names no detection heads ('heads' is missing)")
    try:
        return [HeadSpec(tuple((float(a), float(b)) for a, b in h["anchors"]), int(h["classes"]), float(h.get("scale_xy", 1.0)))
                for h in meta["heads"]]  # fmt: skip
    except (KeyError, TypeError, ValueError) as err:
        raise _damaged(path, f"a head in its metadata lacks anchors or classes, or has values of the wrong kind ({type(err).__name__}: {err})") from None


class TFLitePredictor:
    """Raw head outputs of a ``.tflite`` model, quantizing the input and dequantizing the outputs as needed.

    ``heads`` (anchors and class counts, in output order) come from the embedded
    metadata unless given.
    """

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int = 2, heads: list[HeadSpec] | None = None, xnnpack: bool = True):
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise UserError("model file does not exist", path) from None
        self.metadata = parse_metadata(read_metadata(data), path)
        self.interpreter = load_interpreter(path, content=data, threads=threads, xnnpack=xnnpack)
        self.threads = threads
        self.input = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        if heads is None:
            if not self.metadata:
                raise UserError("this .tflite has no yolo3 metadata; give the config it was made from", path)
            heads = metadata_heads(self.metadata, path)
        self.heads = heads
        self.names = self.metadata.get("names")
        self.input_hw = tuple(int(v) for v in self.input["shape"][1:3])
        self.in_model_nms = bool(self.metadata.get("postprocess", {}).get("nms"))
        if self.in_model_nms:
            self.outputs = self._named_outputs(outputs, self.metadata["postprocess"].get("outputs", []))
            return
        # Order the outputs as the heads: by their shapes (recorded in the metadata), else coarse grid first.
        shapes = [tuple(s) for s in self.metadata.get("output_shapes", [])]
        by_shape = {tuple(int(v) for v in d["shape"][1:]): d for d in outputs}
        if shapes and len(by_shape) == len(outputs) and all(s in by_shape for s in shapes):
            self.outputs = [by_shape[s] for s in shapes]
        else:
            self.outputs = sorted(outputs, key=lambda d: int(d["shape"][1]))
        if len(self.outputs) != len(self.heads):
            raise UserError(f"{len(self.outputs)} outputs but {len(self.heads)} heads", path)

    def _named_outputs(self, outputs: list[dict], names: list[str]) -> list[dict]:
        """The outputs of a model with in-model NMS, in the order ``names`` (boxes, classes, scores, count), by signature name."""
        signatures = self.interpreter._get_full_signature_list() or {}
        named = next(iter(signatures.values()), {}).get("outputs", {})
        by_index = {d["index"]: d for d in outputs}
        if not names or any(n not in named or named[n] not in by_index for n in names):
            raise UserError(f"the model's outputs are not the {', '.join(names) or 'named'} outputs its metadata promises", self.path)
        return [by_index[named[n]] for n in names]

    @property
    def name(self) -> str:
        return str(self.path)

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)

    def _dequantize(self, detail: dict, y: np.ndarray) -> np.ndarray:
        if y.dtype == np.float32:
            return y
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale

    def invoke(self, tensor: np.ndarray) -> list[np.ndarray]:
        """One image (1, h, w, 3) float in [0, 1] -> head outputs, each (1, gh, gw, depth) float32."""
        self.interpreter.set_tensor(self.input["index"], self._quantize(tensor))
        self.interpreter.invoke()
        return [self._dequantize(d, self.interpreter.get_tensor(d["index"])) for d in self.outputs]

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        results = [self.invoke(batch[k : k + 1]) for k in range(len(batch))]
        return [np.concatenate([r[i] for r in results]) for i in range(len(self.outputs))]

    def detect_file(self, path: str | Path, score_threshold: float = 0.25, nms_iou: float = 0.45, max_detections: int = 100) -> Detections:
        tensor, box = letterbox(load_image(path), self.input_hw)
        outputs = self.invoke(tensor[None])
        return predictor_detections(self, [o[0] for o in outputs], box, score_threshold, nms_iou, max_detections)


def measure_latency(invoke, tensor: np.ndarray, runs: int = 20, warmup: int = 3) -> dict:
    """Median and spread of ``invoke(tensor)`` wall time in milliseconds (pre/post-processing excluded)."""
    for _ in range(warmup):
        invoke(tensor)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        invoke(tensor)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": float(np.median(times)), "min_ms": times[0], "max_ms": times[-1], "runs": runs}


def interleaved_latency(invokes: list, tensors: list[np.ndarray], rounds: int = 10, runs: int = 5, progress=None) -> list[dict]:
    """Median wall time of every ``invokes[k](tensors[k])``, timed in alternation (round after round, each a few runs).

    A shared machine's load drifts from one minute to the next; timing the
    models in turn puts the same minutes into every median, so their ratios
    hold even when the absolute times do not. ``progress`` is called after
    every model of every round (e.g. a tqdm bar's ``update``).
    """
    times: list[list[float]] = [[] for _ in invokes]
    for invoke, tensor in zip(invokes, tensors):
        invoke(tensor)  # the first call allocates and compiles
    for _ in range(rounds):
        for k, (invoke, tensor) in enumerate(zip(invokes, tensors)):
            invoke(tensor)  # warm the caches for this model
            for _ in range(runs):
                t0 = time.perf_counter()
                invoke(tensor)
                times[k].append((time.perf_counter() - t0) * 1000)
            if progress is not None:
                progress(1)
    return [{"median_ms": float(np.median(t)), "min_ms": float(min(t)), "max_ms": float(max(t)), "runs": len(t)} for t in times]


def _describe(name: str, dets: Detections, names, model_ms: float, total_ms: float) -> str:
    found = ", ".join(f"{names[c] if names and 0 <= c < len(names) else c} {sc:.2f} [{', '.join(f'{v:.0f}' for v in box)}]"
                      for box, sc, c in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.classes.tolist()))  # fmt: skip
    return f"{name}: {len(dets)} detection{'' if len(dets) == 1 else 's'} ({model_ms:.1f} ms model, {total_ms:.1f} ms total)" + (f": {found}" if found else "")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("benchmark", "profile"):  # timing on the device: yolo3/board.py
        from . import board

        return board.benchmark_main(argv[1:]) if argv[0] == "benchmark" else board.profile_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m yolo3.lite",
        epilog="Also: python -m yolo3.lite benchmark MODEL.tflite ... | profile PROBES_DIR --out table.json (timing on this device).",
        description="Detect objects with a .tflite YOLOv3 written by this tool (numpy, Pillow and LiteRT only; OpenCV for video).",
    )
    parser.add_argument("model", help="a .tflite written by convert.py (labels, anchors and input size travel inside it)")
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, video files, or a camera index (0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-xnnpack", action="store_true", help="LiteRT's built-in kernels only (no XNNPACK delegate), as some runtimes run")
    parser.add_argument("--score", type=float, default=0.25, help="score threshold")
    parser.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--json", action="store_true", help="one JSON object per image or frame instead of a line of text")
    parser.add_argument("--draw", help="folder to write the images (and frames) with their boxes drawn; made if missing")
    parser.add_argument("--max-frames", type=int, help="stop a video or camera after this many frames")
    args = parser.parse_args(argv)
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if not 0 <= args.score < 1 or not 0 < args.nms <= 1:
        raise UserError("--score must be in [0, 1) and --nms in (0, 1]")
    draw_dir = Path(args.draw) if args.draw else None
    if draw_dir is not None:
        if draw_dir.exists() and not draw_dir.is_dir():
            raise UserError("--draw: exists and is not a folder", draw_dir)
        draw_dir.mkdir(parents=True, exist_ok=True)
    predictor = TFLitePredictor(args.model, args.threads, xnnpack=not args.no_xnnpack)
    from .detection import iter_inputs

    failed = 0
    model_times = []
    for name, image in iter_inputs(args.inputs, args.max_frames):
        if isinstance(image, UserError):
            failed += 1
            print(f"error: {image.message}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        tensor, box = letterbox(image, predictor.input_hw)
        t1 = time.perf_counter()
        outputs = predictor.invoke(tensor[None])
        t2 = time.perf_counter()
        dets = predictor_detections(predictor, [o[0] for o in outputs], box, args.score, args.nms)
        total_ms, model_ms = (time.perf_counter() - t0) * 1000, (t2 - t1) * 1000
        model_times.append(model_ms)
        if args.json:
            print(json.dumps({"image": name, "seconds": round(total_ms / 1000, 4), "model_ms": round(model_ms, 3),
                              "detections": dets.to_json(predictor.names)}))  # fmt: skip
        else:
            print(_describe(name, dets, predictor.names, model_ms, total_ms))
        if draw_dir is not None:
            from .draw import draw_detections

            stem = Path(name.split("#")[0]).stem + (f"-{int(name.split('#')[1]):06d}" if "#" in name else "")
            draw_detections(image, dets, predictor.names).save(draw_dir / f"{stem}.jpg", quality=92)
    if model_times:
        print(f"{len(model_times)} image{'' if len(model_times) == 1 else 's'}: model latency median {float(np.median(model_times)):.1f} ms "
              f"({args.threads} thread{'' if args.threads == 1 else 's'}{', built-in kernels' if args.no_xnnpack else ''})", file=sys.stderr)  # fmt: skip
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
