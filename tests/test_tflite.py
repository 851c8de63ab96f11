"""TFLite export, evaluation of a .tflite, the edge runner without TensorFlow, detect.py."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from yolo3.lite import TFLitePredictor, read_metadata

NAMES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, synthetic_valid):
    """A 96-px YOLOv3-tiny with plausible (random, BN-stable) weights, saved as .h5."""
    from conftest import random_weights
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.models import save_model
    from yolo3.zoo import build_spec

    spec = build_spec("yolov3-tiny", 3, 96)
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=4))
    folder = tmp_path_factory.mktemp("tflite")
    save_model(model, spec, folder / "model.h5")
    return folder, model, spec


# A light 96-px detector for the repair ladder: conv -> depthwise -> conv chains (what CLE equalises), a few thousand weights,
# so that every rung (five conversions, AdaRound, an epoch of QAT) runs in seconds.
LIGHT_CFG = """[net]
width=96
height=96
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=relu
[convolutional]
batch_normalize=1
groups=8
filters=8
size=3
stride=2
pad=1
activation=relu6
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=relu
[convolutional]
batch_normalize=1
groups=16
filters=16
size=3
stride=2
pad=1
activation=relu
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=3
num=3
"""


@pytest.fixture(scope="module")
def light_model(tmp_path_factory):
    """The light detector above with random, BN-stable weights, saved as .h5."""
    from conftest import random_weights
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.models import save_model
    from yolo3.spec import parse_cfg

    spec = parse_cfg(LIGHT_CFG, "light.cfg")
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=4))
    path = tmp_path_factory.mktemp("light") / "light.h5"
    save_model(model, spec, path)
    return path


@pytest.fixture(scope="module")
def exported(small_model, synthetic_valid):
    from compression.quantize.tflite_export import export_tflite

    folder, _, spec = small_model
    images = sorted(str(p) for p in (synthetic_valid / "images").glob("*.jpg"))[:8]
    reports = {}
    for fmt in ("float32", "int8"):
        reports[fmt] = export_tflite(folder / "model.h5", folder / f"model-{fmt}.tflite", fmt, images, NAMES, 96, spec)
    return folder, reports


def test_int8_is_full_integer_with_embedded_metadata(exported):
    folder, reports = exported
    r = reports["int8"]
    assert r["inputs"][0]["dtype"] == "int8" and all(o["dtype"] == "int8" for o in r["outputs"])
    assert r["inputs"][0]["scale"] == pytest.approx(1 / 255, rel=1e-3)
    assert "CONV_2D" in r["operators"] and "DELEGATE" not in r["operators"]
    assert r["gzip_bytes"] < r["bytes"] < reports["float32"]["bytes"] / 3
    meta = json.loads(read_metadata((folder / "model-int8.tflite").read_bytes()))
    assert meta["names"] == NAMES and len(meta["heads"]) == 2 and "[yolo]" in meta["cfg"]


def test_int16x8_keeps_float_io_and_int16_activations(small_model, synthetic_valid):
    from compression.quantize.tflite_export import export_tflite
    from yolo3.lite import _interpreter_class

    folder, model, spec = small_model
    images = sorted(str(p) for p in (synthetic_valid / "images").glob("*.jpg"))[:4]
    out = folder / "model-int16x8.tflite"
    r = export_tflite(folder / "model.h5", out, "int16x8", images, NAMES, 96, spec)
    assert r["inputs"][0]["dtype"] == "float32" and all(o["dtype"] == "float32" for o in r["outputs"])
    interpreter = _interpreter_class()(model_path=str(out))
    kinds = {str(d["dtype"].__name__) for d in interpreter.get_tensor_details()}
    assert "int16" in kinds and "int8" in kinds  # activations in int16, weights in int8
    x = np.random.RandomState(1).rand(1, 96, 96, 3).astype(np.float32)
    for a, b in zip([np.asarray(o) for o in model(x)], TFLitePredictor(out).invoke(x)):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99  # int16 activations track float closer than int8


def test_tflite_outputs_match_keras(exported, small_model):
    folder, _ = exported
    _, model, _ = small_model
    x = np.random.RandomState(0).rand(1, 96, 96, 3).astype(np.float32)
    keras_out = [np.asarray(o) for o in model(x)]
    f32 = TFLitePredictor(folder / "model-float32.tflite").invoke(x)
    for a, b in zip(keras_out, f32):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-3
    q = TFLitePredictor(folder / "model-int8.tflite").invoke(x)
    for a, b in zip(keras_out, q):
        assert a.shape == b.shape
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95  # int8 tracks the float outputs


# run python -m yolo3.lite as a device without TensorFlow would: any import of it fails
BLOCK_TENSORFLOW = (
    "import sys, runpy\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization'):\n"
    "            raise ImportError('tensorflow is not available on this device')\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv = ['yolo3.lite'] + sys.argv[1:]\n"
    "runpy.run_module('yolo3.lite', run_name='__main__')\n"
)


def test_edge_runner_needs_no_tensorflow(exported, synthetic_valid, tmp_path):
    folder, _ = exported
    image = sorted((synthetic_valid / "images").glob("*.jpg"))[0]
    draw = tmp_path / "drawn"
    draw.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_TENSORFLOW, str(folder / "model-int8.tflite"), str(image), "--score", "0.01", "--draw", str(draw), "--json"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["image"] == str(image) and isinstance(result["detections"], list)
    assert (draw / image.name).exists()


def _config(tmp_path, synthetic_valid, model):
    cfg = {
        "model": {"architecture": "yolov3-tiny", "input_size": 96, "labels": NAMES, "weights": str(model)},
        "train": {"train_image_folder": str(synthetic_valid / "images"), "train_annot_folder": str(synthetic_valid / "annotations")},
        "valid": {"valid_image_folder": str(synthetic_valid / "images"), "valid_annot_folder": str(synthetic_valid / "annotations")},
        "quantization": {"adaround_iterations": 20, "qat_epochs": 1},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_evaluate_tflite_gives_the_same_keys(exported, synthetic_valid, tmp_path):
    folder, _ = exported
    config = _config(tmp_path, synthetic_valid, folder / "model.h5")
    reports = {}
    for name in ("model.h5", "model-float32.tflite"):
        out = tmp_path / f"{name}.json"
        r = subprocess.run(
            [sys.executable, "evaluate.py", "-c", str(config), "--model", str(folder / name), "--quiet", "--json", str(out), "--latency-runs", "3"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        reports[name] = json.loads(out.read_text())
    keras, lite = reports["model.h5"], reports["model-float32.tflite"]
    assert set(lite) - set(keras) == {"peak_activation_bytes", "arena_span_bytes"} and set(keras) <= set(lite)  # RAM: a .tflite's own
    assert 96 * 96 * 16 * 4 <= lite["peak_activation_bytes"] <= lite["arena_span_bytes"]  # float32: four bytes per value
    assert lite["runtime"] == "litert" and lite["latency"]["median_ms"] > 0
    assert (lite["params"], lite["macs"]) == (keras["params"], keras["macs"])
    assert lite["mAP50"] == pytest.approx(keras["mAP50"], abs=0.02)


def test_convert_cli_and_detect(exported, synthetic_valid, tmp_path):
    folder, _ = exported
    config = _config(tmp_path, synthetic_valid, folder / "model.h5")
    out = tmp_path / "m.tflite"
    run = lambda *a: subprocess.run([sys.executable, *a], capture_output=True, text=True, cwd=ROOT)
    r = run("convert.py", "-c", str(config), "--format", "dynamic", "--out", str(out), "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "operators:" in r.stdout and out.exists()
    assert json.loads((tmp_path / "c.json").read_text())["format"] == "dynamic"
    again = run("convert.py", "-c", str(config), "--format", "dynamic", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    bad = run("convert.py", "-c", str(config), "--format", "int4", "--out", str(tmp_path / "x.tflite"))
    assert bad.returncode == 2 and "--format" in bad.stderr and "Traceback" not in bad.stderr
    image = sorted((synthetic_valid / "images").glob("*.jpg"))[0]
    d = run("detect.py", "-c", str(config), "--model", str(out), "-i", str(image), "-o", str(tmp_path / "det"), "--score", "0.01")
    assert d.returncode == 0, d.stderr[-2000:]
    assert (tmp_path / "det" / f"{image.stem}.jpg").exists()


def test_int8_debug_ranks_a_planted_error_first_and_float_layers_stay_float(tmp_path, synthetic_valid):
    from compression.quantize.convert import convert_config
    from conftest import toy_config
    from yolo3.config import load_config
    from yolo3.lite import _interpreter_class
    from yolo3.models import load_model, save_model

    config_path = toy_config(tmp_path, synthetic_valid)
    loaded = load_model(tmp_path / "toy.h5")
    layer = loaded.model.get_layer("conv_4")
    kernel = layer.get_weights()[0]
    kernel[0, 0, 0, :] = 40 * np.abs(kernel).max()  # one huge weight per output channel: the others round to a few int8 steps
    layer.set_weights([kernel, *layer.get_weights()[1:]])
    save_model(loaded.model, loaded.spec, tmp_path / "planted.h5")
    config = load_config(config_path)
    r = convert_config(config, str(tmp_path / "planted.h5"), "int8", samples=8, out=str(tmp_path / "d.tflite"), debug=True,
                       float_layers="auto:1")  # fmt: skip
    worst = next(iter(r["debug"]["layers"]))
    assert worst == "conv_4", r["debug"]["layers"]
    assert r["float_layers"] == ["conv_4"]
    interpreter = _interpreter_class()(model_path=str(tmp_path / "d.tflite"))
    tensors = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()
    float_convs = [tensors[op["outputs"][0]]["name"] for op in ops if op["op_name"] == "CONV_2D" and tensors[op["outputs"][0]]["dtype"] == np.float32]
    assert len(float_convs) == 1 and "conv_4" in float_convs[0], float_convs
    assert r["inputs"][0]["dtype"] == "int8"  # the rest stays full integer, input and output included
    r2 = convert_config(config, str(tmp_path / "planted.h5"), "int8", samples=4, out=str(tmp_path / "n.tflite"), float_layers="conv_0,2")
    assert r2["float_layers"] == ["conv_0", "conv_2"]


def test_selective_quantization_and_calibration_flags_end_in_one_line(tmp_path, synthetic_valid):
    from compression.quantize.convert import convert_config
    from conftest import toy_config
    from yolo3.config import load_config
    from yolo3.errors import UserError

    config = load_config(toy_config(tmp_path, synthetic_valid))
    (tmp_path / "empty").mkdir()
    for kwargs, message in (({"float_layers": "conv_99"}, "not a convolution of this model"), ({"float_layers": "maxpool_1"}, "not a convolution"),
                            ({"float_layers": "auto:0"}, "between 1 and"), ({"float_layers": "auto:x"}, "takes a number"),
                            ({"calibration": str(tmp_path / "empty")}, "no images"), ({"calibration": str(tmp_path / "nowhere")}, "not a folder"),
                            ({"debug": True, "fmt": "float16"}, "are for int8")):  # fmt: skip
        fmt = kwargs.pop("fmt", "int8")
        with pytest.raises(UserError, match=message):
            convert_config(config, None, fmt, samples=4, out=str(tmp_path / "x.tflite"), force=True, **kwargs)
    assert not (tmp_path / "x.tflite").exists()
    r = convert_config(config, None, "int8", samples=3, out=str(tmp_path / "c.tflite"), calibration=str(synthetic_valid / "images"))
    assert r["calibration_images"] == 3


def test_edge_tpu_report_finds_the_first_unsupported_operator(tmp_path, synthetic_valid):
    from compression.quantize.edgetpu import edge_tpu_report
    from compression.quantize.tflite_export import export_tflite
    from conftest import TOY_CFG, random_weights
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.models import save_model
    from yolo3.spec import parse_cfg

    images = sorted(str(p) for p in (synthetic_valid / "images").glob("*.jpg"))[:4]
    for name, cfg in (("leaky", TOY_CFG), ("linear", TOY_CFG.replace("activation=leaky", "activation=linear"))):
        spec = parse_cfg(cfg, f"{name}.cfg")
        model = build_model(spec)
        set_darknet_weights(model, spec, random_weights(spec, seed=2))
        save_model(model, spec, tmp_path / f"{name}.h5")
        export_tflite(tmp_path / f"{name}.h5", tmp_path / f"{name}.tflite", "int8", images, NAMES, 64, spec)
    leaky = edge_tpu_report(tmp_path / "leaky.tflite")
    first = next(r for r in leaky["operators"] if r["index"] == leaky["first_unsupported"])
    assert first["op"] == "LEAKY_RELU" and "relu" in first["why"] and leaky["mapped_operators"] < leaky["total_operators"]
    linear = edge_tpu_report(tmp_path / "linear.tflite")
    assert linear["first_unsupported"] is None and linear["unsupported"] == [], linear["unsupported"]
    # in-model NMS: decode ops the Edge TPU runs, then the post-processing operator on the CPU at the end (as in Coral's SSD models)
    from compression.quantize.tflite_export import ExportOptions

    spec = parse_cfg(TOY_CFG.replace("activation=leaky", "activation=linear"), "linear.cfg")
    export_tflite(tmp_path / "linear.h5", tmp_path / "nms.tflite", "int8", images, NAMES, 64, spec, options=ExportOptions(nms=True))
    fused = edge_tpu_report(tmp_path / "nms.tflite")
    ops = [r["op"] for r in fused["operators"]]
    assert fused["first_unsupported"] is None and "TFLite_Detection_PostProcess" in ops, fused["unsupported"]
    assert set(ops[ops.index("TFLite_Detection_PostProcess") + 1 :]) <= {"CAST", "MUL"}, ops  # only the count's product after it


def _fast_nms_reference(outputs, heads, input_hw, score_threshold, iou, max_detections, classes_per_box):
    """What TFLite's "fast" NMS should give, from the numpy decode: boxes ranked by their best class and suppressed across
    classes, each kept box with its ``classes_per_box`` best classes; the entries above the threshold, best first."""
    from yolo3.postprocess import Detections, decode, nms

    boxes, scores = [], []
    for output, head in zip(outputs, heads):
        b, obj, probs = decode(output, head, input_hw)
        boxes.append(b), scores.append(obj[:, None] * probs)
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    best = scores.max(1)
    above = np.nonzero(best > score_threshold)[0]
    kept = above[nms(boxes[above], best[above], np.zeros(len(above), np.int64), iou, max_detections)]
    box, score, cls = [], [], []
    for i in kept:
        for c in np.argsort(-scores[i], kind="stable")[:classes_per_box]:
            if scores[i, c] > score_threshold:
                box.append(boxes[i]), score.append(scores[i, c]), cls.append(c)
    order = np.argsort(-np.asarray(score), kind="stable")[:max_detections]
    return Detections(np.asarray(box)[order], np.asarray(score)[order], np.asarray(cls)[order])


def test_in_model_nms_gives_the_numpy_decodes_detections(tmp_path, synthetic_valid):
    """--nms: TFLite's post-processing operator decodes as the numpy path does (float: to 0.02 px; int8: within quantization),
    outputs boxes / classes / scores / count, gives the same detections whatever the thread count, and the int8 file stays
    integer up to that operator; each kept box reports its best classes (quantization.nms_classes_per_box, at most the
    class count) and ``count`` counts those entries."""
    from compression.quantize.convert import convert_config
    from conftest import toy_config
    from yolo3.config import load_config
    from yolo3.lite import _interpreter_class
    from yolo3.postprocess import iou_one_to_many, predictor_detections
    from yolo3.preprocess import letterbox, load_image

    config = load_config(toy_config(tmp_path, synthetic_valid))
    files = {}
    for name, fmt, kwargs in (("f", "float32", {}), ("fn", "float32", {"nms": True}), ("q", "int8", {}),
                              ("qn", "int8", {"nms": True, "input_type": "uint8"})):  # fmt: skip
        r = convert_config(config, None, fmt, samples=8, out=str(tmp_path / f"{name}.tflite"), **kwargs)
        files[name] = TFLitePredictor(tmp_path / f"{name}.tflite", threads=1)
    files["fn2"] = TFLitePredictor(tmp_path / "fn.tflite", threads=2)
    r_in, r_out = r["inputs"][0], r["outputs"]
    assert r["in_model_nms"]["outputs"] == ["boxes", "classes", "scores", "count"]
    assert (r_in["dtype"], r_in["zero_point"]) == ("uint8", 0) and r_in["scale"] == pytest.approx(1 / 255, rel=1e-3)  # camera bytes as they are
    per_box = min(config.quantization.nms_classes_per_box, len(NAMES))
    assert r["in_model_nms"]["classes_per_box"] == per_box == 3
    assert sorted(o["shape"] for o in r_out) == [[1], [1, 300], [1, 300], [1, 300, 4]] and {o["dtype"] for o in r_out} == {"float32"}
    assert files["qn"].in_model_nms and not files["q"].in_model_nms
    interpreter = _interpreter_class()(model_path=str(tmp_path / "qn.tflite"))
    tensors = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()
    last = next(k for k, op in enumerate(ops) if op["op_name"] == "TFLite_Detection_PostProcess")
    for op in ops[:last]:  # every operator before the post-processing one computes in 8 bits (after it: the count's int32 product)
        if op["op_name"] not in ("DEQUANTIZE", "QUANTIZE"):
            assert {np.dtype(tensors[i]["dtype"]).name for i in op["outputs"]} <= {"int8", "uint8"}, op["op_name"]
    images = sorted((synthetic_valid / "images").glob("*.jpg"))[:6]
    matched = total = 0
    classes_seen = set()
    for path in images:
        tensor, _ = letterbox(load_image(path), (64, 64))

        def dets(name, tensor=tensor):
            p = files[name]
            return predictor_detections(p, [o[0] for o in p.invoke(tensor[None])], None, 0.005, 0.45, 100)

        raw = [o[0] for o in files["f"].invoke(tensor[None])]
        expected, fused = _fast_nms_reference(raw, files["f"].heads, (64, 64), 0.005, 0.45, 100, per_box), dets("fn")
        assert len(fused) == len(expected) > 0
        np.testing.assert_allclose(fused.boxes, expected.boxes, atol=0.02)
        np.testing.assert_allclose(fused.scores, expected.scores, atol=1e-4)
        np.testing.assert_array_equal(fused.classes, expected.classes)
        classes_seen |= set(fused.classes.tolist())
        two = dets("fn2")  # LiteRT's per-class NMS drops class T with T threads; the fast NMS used here must not
        np.testing.assert_array_equal(two.classes, fused.classes)
        np.testing.assert_allclose(two.scores, fused.scores)
        q, qn = dets("q"), dets("qn")
        for box, score in zip(q.boxes[:3], q.scores[:3]):  # the int8 file with NMS finds the int8 file's best boxes
            total += 1
            overlap = iou_one_to_many(box, qn.boxes)
            best = int(np.argmax(overlap))
            matched += bool(overlap[best] > 0.8 and abs(qn.scores[best] - score) < 0.03)
    assert 2 in classes_seen, classes_seen  # the class a 2-thread per-class NMS would lose
    assert total >= 10 and matched >= 0.8 * total, (matched, total)
    # the same one-line refusals as every other flag
    from yolo3.errors import UserError

    for kwargs, message in (({"fmt": "int16x8", "nms": True}, "int16x8"), ({"fmt": "float16", "input_type": "uint8"}, "for --format int8"),
                            ({"input_type": "int4"}, "--input-type")):  # fmt: skip
        fmt = kwargs.pop("fmt", "int8")
        with pytest.raises(UserError, match=message):
            convert_config(config, None, fmt, samples=4, out=str(tmp_path / "x.tflite"), **kwargs)


def test_peak_activation_memory_of_a_hand_made_graph_is_the_hand_count():
    from yolo3.tflite_memory import Step, lifetimes, peak_activation

    # input 0 (100 B) -> A (reads constant 9) -> 1 (200 B) -> B -> 2 (50 B); C reads 1 and 2 -> output 3 (30 B)
    steps = [Step("A", (0, 9), (1,)), Step("B", (1,), (2,)), Step("C", (1, 2), (3,))]
    sizes = {0: 100, 1: 200, 2: 50, 3: 30, 9: 999}
    assert lifetimes(steps, (0,), (3,)) == {0: (0, 2), 1: (0, 2), 2: (1, 2), 3: (2, 2)}  # the constant is flash, not RAM; the input lives on
    assert peak_activation(steps, sizes, (0,), (3,)) == (100 + 200 + 50 + 30, 2)
    # a chain frees as it goes: the peak is the largest neighbouring pair (plus the input, which LiteRT keeps)
    chain = [Step("A", (0,), (1,)), Step("B", (1,), (2,)), Step("C", (2,), (3,))]
    assert peak_activation(chain, {0: 10, 1: 400, 2: 300, 3: 5}, (0,), (3,)) == (10 + 400 + 300, 1)


def test_memory_report_and_info_of_a_tflite(exported):
    from yolo3.tflite_memory import memory_report

    folder, _ = exported
    path = folder / "model-int8.tflite"
    r = memory_report(path)
    assert r["flash_bytes"] == path.stat().st_size
    # no arena can hold less than what is alive at the peak; the 96-px input and the first 16-channel maps dominate it
    assert 96 * 96 * 16 <= r["peak_activation_bytes"] <= r["arena_span_bytes"]
    assert r["operator_counts"]["CONV_2D"] >= 10 and r["operators"] == sum(r["operator_counts"].values())
    out = subprocess.run([sys.executable, "-m", "yolo3", "info", str(path), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["peak_activation_bytes"] == r["peak_activation_bytes"]
    bad = subprocess.run([sys.executable, "-m", "yolo3", "info", str(folder / "model-int8.tflite"), "--size", "64"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "a .tflite has its own" in bad.stderr and "Traceback" not in bad.stderr


def test_built_in_kernels_give_the_xnnpack_results(exported):
    """--no-xnnpack / compress.xnnpack false: the same model on LiteRT's built-in kernels, timed by the same call compress uses."""
    from compression.budget.latency_model import time_models
    from yolo3.lite import TFLitePredictor

    folder, _ = exported
    path = folder / "model-int8.tflite"
    image = np.random.default_rng(0).uniform(0, 1, (1, 96, 96, 3)).astype(np.float32)
    a = TFLitePredictor(path, 1).invoke(image)
    b = TFLitePredictor(path, 1, xnnpack=False).invoke(image)
    for x, y in zip(a, b):
        diff = np.abs(x.astype(np.float32) - y.astype(np.float32))  # int8 kernels round apart by a few output steps, rarely
        assert diff.max() <= 0.05 * float(np.abs(x).max()) and diff.mean() <= 0.01 * float(np.abs(x).max())
    ms = time_models([path, path], threads=1, rounds=2, runs=2, progress=False, xnnpack=False)
    assert len(ms) == 2 and all(t > 0 for t in ms)



def test_profile_and_benchmark_on_the_device_without_tensorflow(exported, tmp_path):
    """python -m yolo3.lite profile / benchmark: numpy + LiteRT only; an interrupted profile resumes; a foreign table is refused."""
    folder, _ = exported
    probes = tmp_path / "probes"
    probes.mkdir()
    for name in ("block-0.tflite", "block-1.tflite", "network-0.tflite"):
        shutil.copy(folder / "model-int8.tflite", probes / name)
    (probes / "manifest.json").write_text(json.dumps({"probes": {"block-0.tflite": {"layer": 0}}}))
    table = tmp_path / "table.json"

    def lite(*args):
        return subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW, *args], capture_output=True, text=True, cwd=ROOT)

    r = lite("profile", str(probes), "--out", str(table), "--threads", "1", "--rounds", "1", "--runs", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(table.read_text())
    assert sorted(data["probes"]) == ["block-0.tflite", "block-1.tflite", "network-0.tflite"] and all(t["median_ms"] > 0 for t in data["probes"].values())
    assert data["device"]["threads"] == 1 and data["device"]["delegate"] == "xnnpack" and "litert" in data["device"]["runtime"]
    assert data["manifest"] == {"probes": {"block-0.tflite": {"layer": 0}}}
    del data["probes"]["block-1.tflite"]  # as if the profile had been stopped before the last chunk
    table.write_text(json.dumps(data))
    r = lite("profile", str(probes), "--out", str(table), "--threads", "1", "--rounds", "1", "--runs", "1")
    assert r.returncode == 0 and "2 timed before, 1 to time" in r.stderr, r.stderr[-2000:]
    assert len(json.loads(table.read_text())["probes"]) == 3
    for args, message in (
        (["profile", str(probes), "--out", str(table), "--threads", "2"], "other device settings"),
        (["profile", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t.json")], "does not exist"),
        (["benchmark", str(probes / "missing.tflite")], "model file does not exist"),
        (["benchmark", str(probes / "block-0.tflite"), "--threads", "0"], "--threads must be at least 1"),
    ):
        r = lite(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-1000:])
    r = lite("benchmark", str(probes / "block-0.tflite"), str(probes / "network-0.tflite"), "--no-xnnpack", "--rounds", "1", "--runs", "1", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    timed = json.loads(r.stdout)
    assert timed["device"]["delegate"] == "none (built-in kernels)" and len(timed["models"]) == 2


def test_convert_repair_keeps_the_better_int8_on_validation(light_model, synthetic_valid, tmp_path):
    """--repair auto: the model as converted, after cross-layer equalisation (of the weights, and of the activations before each
    depthwise convolution), then with biases absorbed and corrected, then with
    activation ranges by quantization error on top of the best so far, then AdaRound and QAT on the best so far, each scored on validation, the best kept; bad steps end in one line."""
    config = _config(tmp_path, synthetic_valid, light_model)
    out = tmp_path / "r.tflite"
    run = lambda *a: subprocess.run([sys.executable, *a], capture_output=True, text=True, cwd=ROOT)  # noqa: E731
    r = run("convert.py", "-c", str(config), "--format", "int8", "--samples", "4", "--repair", "auto", "--out", str(out), "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    repair = json.loads((tmp_path / "r.json").read_text())["repair"]
    steps = {s["step"]: s for s in repair["steps"]}
    # ranges, by each refit (least error, mean of per-image extremes), on top of the best of none, CLE and bias, and, when another
    # step won, on the unrepaired model as well (steps need not stack)
    ranges = {"ranges", "ranges-mean"} | ({"ranges-alone", "ranges-mean-alone"} if steps["ranges"]["on"] != "none" else set())
    # bias correction on the best of none and CLE, and with high biases absorbed first where a pair can take them
    assert set(steps) - {"bias-absorbed"} == {"none", "cle", "cle-activations", "bias", "adaround", "qat"} | ranges
    assert steps["cle-activations"]["pairs"] == LIGHT_CFG.count("groups=") and steps["cle-activations"]["largest_expansion"] >= 1
    assert steps["bias"]["on"] in ("none", "cle", "cle-activations") and steps["bias"]["bias_correction"]["layers"] == LIGHT_CFG.count("[convolutional]") and steps["bias"]["bias_correction"]["images"] == 4
    assert all(why.startswith("conv_") and ": " in why for why in steps["bias"]["not_absorbed"])  # each pair left alone says why
    assert "bias-absorbed" not in steps or steps["bias-absorbed"]["absorbed_pairs"] > 0
    assert steps["ranges-mean"]["activation_ranges"]["method"] == "mean" and steps["ranges"]["activation_ranges"]["method"] == "mse"
    assert steps["adaround"]["on"] in {"none", "cle", "cle-activations", "bias"} | ranges and steps["adaround"]["layers"] >= 0

    def start_ranges(step: str) -> str:
        if step.startswith("ranges"):
            return steps[step]["activation_ranges"]["method"]
        return start_ranges(steps["adaround"]["on"]) if step == "adaround" else "minmax"

    assert steps["qat"]["epochs"] == 1 and steps["qat"]["start_ranges"] == start_ranges(steps["qat"]["on"])
    assert steps["cle"]["pairs"] > 0 and all(s["latency_ms"] > 0 for s in steps.values())
    assert steps["ranges"]["on"] in ("none", "cle", "cle-activations", "bias") and steps["ranges"]["activation_ranges"]["tensors"] > 0
    # a rung is kept only if it beats the best so far with 90 % confidence (paired bootstrap over the validation images)
    judged = {k: s for k, s in steps.items() if "sure_gain_points" in s}
    assert repair["confidence"] == 0.9 and judged and all(s["sure_gain_points"] <= s["gain_points"] for s in judged.values())
    if repair["kept"] == "none":
        assert not any(s["sure_gain_points"] > 0 and s["gain_points"] > 0 for s in judged.values())
    else:
        assert judged[repair["kept"]]["sure_gain_points"] > 0 and judged[repair["kept"]]["gain_points"] > 0
    assert "int8 repair (validation split)" in r.stdout and out.exists()
    for args, message in ((["--repair", "adaround9"], "unknown step"), (["--repair", "cle", "--format", "float16"], "--repair is for a plain int8")):
        bad = run("convert.py", "-c", str(config), *args, "--out", str(tmp_path / "x.tflite"))
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-1000:]
