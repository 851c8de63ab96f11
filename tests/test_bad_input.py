"""Bad input, as a hostile but realistic user gives it: every case ends in one line naming the file (or flag) and the reason,
exit status 2, no traceback, nothing written at the output path — or, for one bad item of a dataset, is reported for that
item while the rest is read. The commands run in-process (``yolo3_cli.main``), where TensorFlow is already imported."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import toy_config
from yolo3.errors import run_cli

NOT_UTF8 = b"\xff\xfe\x00bad \xe9\xe8 bytes\n"


@pytest.fixture(scope="module")
def toy(tmp_path_factory, synthetic_valid):
    folder = tmp_path_factory.mktemp("bad")
    return folder, toy_config(folder, synthetic_valid), synthetic_valid


def _edit(folder: Path, config: Path, name: str, change) -> Path:
    data = json.loads(config.read_text())
    change(data)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    from yolo3_cli.main import main

    code = run_cli(main, argv)
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    return code, err


def _check(code: int, err: list[str], needle: str, argv) -> None:
    assert code == 2, (argv, err)
    assert err and "Traceback" not in "\n".join(err), (argv, err)
    assert needle in err[-1], (argv, err[-1])
    assert len([ln for ln in err if ln.startswith("error:")]) == 1, (argv, err)


# --- the config file, its keys, and the files it points at ----------------------------------------------------------


def _config_cases(folder: Path, config: Path, data: Path) -> list[tuple[list[str], str]]:
    bad = folder / "not-utf8.json"
    bad.write_bytes(NOT_UTF8)
    (folder / "dir.json").mkdir(exist_ok=True)
    (folder / "split-not-utf8.txt").write_bytes(NOT_UTF8)
    (folder / "split-dir.txt").mkdir(exist_ok=True)
    (folder / "names-not-utf8.names").write_bytes(NOT_UTF8)
    (folder / "names-dir.names").mkdir(exist_ok=True)
    (folder / "twice.names").write_text("a\nb\na\n")
    (folder / "empty.names").write_text("\n\n")
    (folder / "broken.json").write_text('{"model": {"input_size": 416,}}')
    (folder / "list.json").write_text("[1, 2]")

    def keyed(name, section, key, value):
        return _edit(folder, config, name, lambda d: d.setdefault(section, {}).__setitem__(key, value))

    def labels_file(name, file):
        def change(d):
            d["model"].pop("labels")
            d["model"]["labels_file"] = str(folder / file)

        return _edit(folder, config, name, change)

    cases = [
        (["evaluate", "-c", str(bad)], "not UTF-8"),
        (["evaluate", "-c", str(folder / "dir.json")], "is a folder"),
        (["evaluate", "-c", str(folder / "nowhere.json")], "config file does not exist"),
        (["evaluate", "-c", str(folder / "broken.json")], "invalid JSON"),
        (["evaluate", "-c", str(folder / "list.json")], "must be a JSON object"),
        (["evaluate", "-c", str(keyed("k1", "model", "input_size", 10**30))], "model.input_size must be in [32, 4096]"),
        (["evaluate", "-c", str(keyed("k2", "model", "input_size", 0))], "model.input_size must be in"),
        (["evaluate", "-c", str(keyed("k3", "model", "input_size", 100))], "multiple of 32"),
        (["evaluate", "-c", str(keyed("k4", "clustering", "clusters", 10**30))], "clustering.clusters must be in"),
        (["evaluate", "-c", str(keyed("k5", "valid", "score_threshold", -1))], "valid.score_threshold must be in"),
        (["evaluate", "-c", str(keyed("k6", "valid", "nms_iou", 0))], "valid.nms_iou must be in"),
        (["evaluate", "-c", str(keyed("k7", "model", "labels", ["a", "a", "b"]))], "more than once"),
        (["evaluate", "-c", str(keyed("k8", "model", "labels", [",", ""]))], "non-empty list of class names"),
        (["evaluate", "-c", str(keyed("k9", "train", "batch_size", -4))], "train.batch_size must be in"),
        (["evaluate", "-c", str(keyed("k10", "train", "learning_rate", "fast"))], "must be of type float"),
        (["evaluate", "-c", str(keyed("k11", "model", "colour", "red"))], "unknown key model.colour"),
        (["anchors", "-c", str(keyed("k12", "train", "train_list", str(folder / "split-not-utf8.txt")))], "not UTF-8"),
        (["evaluate", "-c", str(keyed("k13", "valid", "valid_list", str(folder / "split-dir.txt")))], "is a folder, not a split file"),
        (["evaluate", "-c", str(labels_file("k14", "names-not-utf8.names"))], "not UTF-8"),
        (["evaluate", "-c", str(labels_file("k15", "names-dir.names"))], "is a folder, not a names file"),
        (["evaluate", "-c", str(labels_file("k16", "twice.names"))], "more than once"),
        (["evaluate", "-c", str(labels_file("k17", "empty.names"))], "lists no class"),
        (["evaluate", "-c", str(keyed("k18", "model", "anchors", [10, 14, 23]))], "model.anchors must be a flat list"),
        (["evaluate", "-c", str(keyed("k19", "model", "architecture", "yolov9"))], "neither a built-in name"),
        (["evaluate", "-c", str(keyed("k20", "pruning", "similarity_layer_ratios", {"conv_x": 0.5}))], "not a layer index"),
        (["evaluate", "-c", str(keyed("k21", "compress", "sizes", [300]))], "multiples of 32"),
        (["evaluate", "-c", str(keyed("k22", "train", "holdout_fraction", 1.5))], "train.holdout_fraction must be in"),
        (["evaluate", "-c", str(config), "--set", "train.nb_epoch=3"], "did you mean train.nb_epochs"),
        (["evaluate", "-c", str(config), "--set", "model.input_size=1e30"], "must be of type int"),
    ]
    return cases


def test_bad_config_files_and_keys(toy, capsys):
    folder, config, data = toy
    for argv, needle in _config_cases(folder, config, data):
        code, err = _run(argv, capsys)
        _check(code, err, needle, argv)


# --- flags -----------------------------------------------------------------------------------------------------------


def test_bad_flags(toy, capsys, tmp_path):
    folder, config, data = toy
    c = str(config)
    cases = [
        (["train", "-c", c, "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "-c", c, "--epochs", "-2"], "--epochs must be at least 1"),
        (["finetune", "-c", c, "--model", str(folder / "toy.h5"), "--learning-rate", "-1"], "--learning-rate must be positive"),
        (["finetune", "-c", c, "--model", str(folder / "toy.h5"), "--samples", "0"], "--samples must be at least 1"),
        (["finetune", "-c", c, "--model", str(folder / "toy.h5"), "--teacher", str(folder / "toy.h5"), "--feature-weight", "-1"], "must not be negative"),
        (["anchors", "-c", c, "-k", "0"], "-k must be at least 1"),
        (["anchors", "-c", c, "-k", "-3"], "-k must be at least 1"),
        (["cluster", "-c", c, "--clusters", "100000"], "--clusters must be in [2, 65536]"),
        (["cluster", "-c", c, "--clusters", "1"], "--clusters must be in [2, 65536]"),
        (["evaluate", "-c", c, "--threads", "0"], "--threads must be at least 1"),
        (["evaluate", "-c", c, "-p", "9"], "unknown mode"),
        (["convert", "-c", c, "--format", "int4"], "--format must be one of"),
        (["convert", "-c", c, "--samples", "0"], "--samples must be at least 1"),
        (["convert", "-c", c, "--qat", "--format", "float16"], "--qat makes an int8 model"),
        (["benchmark", "-c", c, "--formats", "keras,keras"], "named twice"),
        (["benchmark", "-c", c, "--formats", ","], "nothing given"),
        (["benchmark", "-c", c, "--min-map", "-0.1"], "--min-map"),
        (["compress", "-c", c, "--target-speedup", "0.5"], "below 1"),
        (["compress", "-c", c, "--target-latency", "-3"], "positive number"),
        (["compress", "-c", c, "--target-size", "nan"], "positive number"),
        (["compress", "-c", c, "--target-macs", "1.5"], "fraction of the original MACs"),
        (["compress", "-c", c, "--target-speedup", "2", "--target-latency", "1"], "both set the speed"),
        (["compress", "-c", c, "--target-speedup", "2", "--max-loss", "200"], "--max-loss is in mAP@0.5 points"),
        (["compress", "-c", c, "--target-speedup", "2", "--time-budget", "-1"], "--time-budget is in minutes"),
        (["compress", "-c", c, "--target-speedup", "2", "--sizes", "64,abc"], "--sizes must be"),
        (["compress", "-c", c, "--target-speedup", "2", "--threads", "0"], "--threads must be at least 1"),
        (["detect", "-c", c, "-i", str(data / "images"), "--score", "1.5"], "--score must be in"),
        (["synth", str(tmp_path / "s"), "--count", "-5"], "--count must be at least 1"),
        (["synth", str(tmp_path / "s"), "--labels", ",,"], "--labels"),
        (["synth", str(tmp_path / "s"), "--labels", "a,a"], "more than once"),
        (["info", "yolov3-tiny", "--size", "100"], "multiple of 32"),
        (["info", "yolov3-tiny", "--classes", "0"], "class count must be at least 1"),
        (["info", "nowhere.cfg"], "nowhere.cfg: no such file"),
    ]
    for argv, needle in cases:
        code, err = _run(argv, capsys)
        _check(code, err, needle, argv)
    assert not (tmp_path / "s").exists()


# --- model files the tool did not write ------------------------------------------------------------------------------


def test_model_files_the_tool_did_not_write(toy, capsys, tmp_path):
    from yolo3.kerasenv import keras

    folder, config, data = toy
    c = str(config)
    plain = tmp_path / "plain.h5"
    inp = keras.layers.Input((8,))
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(plain)
    (tmp_path / "dir.h5").mkdir()
    (tmp_path / "text.h5").write_text("not a model")
    truncated = tmp_path / "cut.weights"
    truncated.write_bytes(struct.pack("<3iQ", 0, 2, 0, 0) + b"\0" * 1000)
    (tmp_path / "fake.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\0" * 64)
    (tmp_path / "text.tflite").write_text("hello")
    cases = [
        (["evaluate", "-c", c, "--model", str(plain)], "carries no Darknet cfg"),
        (["evaluate", "-c", c, "--model", str(tmp_path / "dir.h5")], "is a folder"),
        (["evaluate", "-c", c, "--model", str(tmp_path / "text.h5")], "not a readable HDF5 file"),
        (["evaluate", "-c", c, "--model", str(tmp_path / "missing.h5")], "does not exist"),
        (["evaluate", "-c", c, "--model", str(truncated), "--cfg", str(folder / "toy.cfg")], "bytes"),
        (["evaluate", "-c", c, "--model", str(tmp_path / "fake.tflite")], str(tmp_path / "fake.tflite")),
        (["evaluate", "-c", c, "--model", str(tmp_path / "text.tflite")], str(tmp_path / "text.tflite")),
        (["prune", "-c", c, "--method", "similarity", "--model", str(plain), "--out", str(tmp_path / "p.h5")], "carries no Darknet cfg"),
        (["cluster", "-c", c, "--model", str(plain), "--out", str(tmp_path / "k.h5")], "carries no Darknet cfg"),
        (["convert", "-c", c, "--model", str(plain), "--out", str(tmp_path / "x.tflite")], "carries no Darknet cfg"),
        (["finetune", "-c", c, "--model", str(plain), "--epochs", "1"], "carries no cfg"),
        (["export", "--cfg", str(folder / "toy.cfg"), "--weights", str(plain), "--out", str(tmp_path / "e.weights")], "carries no Darknet cfg"),
    ]
    for argv, needle in cases:
        code, err = _run(argv, capsys)
        _check(code, err, needle, argv)
    for out in ("p.h5", "k.h5", "x.tflite", "e.weights"):
        assert not (tmp_path / out).exists(), out


# --- outputs: refused before any work --------------------------------------------------------------------------------


def test_outputs_are_checked_before_the_work(toy, capsys, tmp_path):
    folder, config, data = toy
    c = str(config)
    (tmp_path / "a-folder.h5").mkdir()
    (tmp_path / "a-folder.tflite").mkdir()
    (tmp_path / "file").write_text("mine")
    cases = [
        (["prune", "-c", c, "--method", "similarity", "--out", str(tmp_path / "a-folder.h5"), "--force"], "is a folder"),
        (["cluster", "-c", c, "--out", str(tmp_path / "a-folder.h5"), "--force"], "is a folder"),
        (["convert", "-c", c, "--out", str(tmp_path / "a-folder.tflite"), "--force"], "is a folder"),
        (["convert", "-c", c, "--out", str(tmp_path / "file" / "x.tflite")], "not a folder"),
        (["convert", "-c", c, "--out", str(tmp_path / "x.h5")], "must end in .tflite"),
        (["compress", "-c", c, "--target-speedup", "2", "--run-dir", str(tmp_path / "file")], "not a folder"),
        (["train", "-c", c, "--run-dir", str(tmp_path / "file")], "not a folder"),
        (["detect", "-c", c, "-i", str(data / "images"), "-o", str(tmp_path / "file")], "not a folder"),
        (["benchmark", "-c", c, "--out-dir", str(tmp_path / "file")], "not a folder"),
        (["convert", "-c", c, "--bundle", str(tmp_path / "file")], "not a folder"),
        (["export", "--cfg", str(folder / "toy.cfg"), "--weights", str(folder / "toy.h5"), "--out", str(tmp_path / "file")], "must end in"),
    ]
    for argv, needle in cases:
        code, err = _run(argv, capsys)
        _check(code, err, needle, argv)
    assert (tmp_path / "file").read_text() == "mine"


# --- one bad item of a dataset: reported for that item, the rest read ------------------------------------------------


def test_bad_dataset_items_are_reported_and_skipped(tmp_path):
    from PIL import Image

    from yolo3.datasets import read_coco, read_voc

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(images / "good.jpg")
    (images / "text.jpg").write_text("not an image")
    bomb = images / "bomb.png"
    Image.new("L", (1, 1)).save(bomb)
    raw = bytearray(bomb.read_bytes())
    raw[16:24] = struct.pack(">II", 60000, 60000)  # the IHDR claims 3.6 G pixels
    bomb.write_bytes(bytes(raw))
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    voc = "<annotation><filename>{}</filename><object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    (annotations / "good.xml").write_text(voc.format("good.jpg"))
    (annotations / "text.xml").write_text(voc.format("text.jpg"))
    (annotations / "bomb.xml").write_text(voc.format("bomb.png"))
    (annotations / "escape.xml").write_text(voc.format("../../../../etc/passwd"))
    (annotations / "broken.xml").write_text("<annotation><object>")
    ds = read_voc(images, annotations, ["a"])
    assert [r.image.name for r in ds.records] == ["good.jpg"]
    kinds = {(Path(p.file).name, p.kind) for p in ds.problems}
    assert ("text.jpg", "unreadable image") in kinds and ("bomb.png", "unreadable image") in kinds, kinds
    assert ("broken.xml", "unreadable annotation") in kinds and ("escape.xml", "annotation without image") in kinds, kinds

    coco = {
        "images": [{"id": 1, "file_name": "good.jpg", "width": 64, "height": 48}, {"file_name": "noid.jpg"}, {"id": 3},
                   {"id": 4, "file_name": "../../etc/passwd"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}, {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5]},
                        {"image_id": 1, "category_id": 1, "bbox": "1,1,5,5"}, {"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "a"}],
    }  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    ds = read_coco(images, tmp_path / "coco.json", ["a"])
    assert [r.image.name for r in ds.records] == ["good.jpg"] and len(ds.records[0].boxes) == 1
    assert len(ds.problems) >= 6, [str(p) for p in ds.problems]


def test_bad_coco_json_as_a_whole(tmp_path, capsys):
    from yolo3.datasets import read_coco
    from yolo3.errors import UserError

    (tmp_path / "images").mkdir()
    for content, needle in (('{"images": [], "annotations": []}', "needs 'images', 'annotations' and 'categories'"),
                            ('{"images": [], "annotations": [], "categories": "a,b"}', "categories"),
                            ("{", "invalid JSON")):  # fmt: skip
        (tmp_path / "c.json").write_text(content)
        with pytest.raises(UserError, match=needle):
            read_coco(tmp_path / "images", tmp_path / "c.json")


# --- Darknet cfg and weights -----------------------------------------------------------------------------------------


def test_bad_cfg_files(tmp_path, capsys):
    from conftest import TOY_CFG

    edits = [
        (lambda t: t.replace("channels=3", "channels=0"), "line 1: [net] channels=0 must be in [1, 64]"),
        (lambda t: t.replace("width=64", "width=abc"), "[net] width='abc' is not an integer"),
        (lambda t: t.replace("width=64", "width=100000"), "[net] width=100000 must be in [1, 8192]"),
        (lambda t: t.replace("filters=16", "filters=2000000000", 1), "filters must be at most 65,536"),
        (lambda t: t.replace("size=3", "size=0", 1), "must be positive"),
        (lambda t: t.replace("activation=leaky", "activation=gelu", 1), "activation=gelu is not supported"),
        (lambda t: t.replace("[maxpool]", "[crop]", 1), "unsupported section [crop]"),
        (lambda t: t.replace("[maxpool]", "[maxpool", 1), "is not closed"),
        (lambda t: t.replace("layers=-4", "layers=-40"), "not an earlier layer"),
        (lambda t: t.replace("classes=3", "classes=0", 1), "classes must be at least 1"),
        (lambda t: "width=64\n" + t, "appears before any [section]"),
        (lambda t: t.replace("[net]", "[convolutional]", 1), "the first section must be [net]"),
        (lambda t: "\n", "no [net] section"),
    ]
    for k, (edit, needle) in enumerate(edits):
        path = tmp_path / f"bad{k}.cfg"
        path.write_text(edit(TOY_CFG))
        code, err = _run(["info", str(path)], capsys)
        _check(code, err, needle, path.name)
        assert str(path) in err[-1]
    (tmp_path / "latin1.cfg").write_bytes(TOY_CFG.replace("[net]", "[net]\n# caf\xe9").encode("latin-1"))
    assert _run(["info", str(tmp_path / "latin1.cfg")], capsys)[0] == 0  # a stray byte in a comment is harmless


# --- a .tflite with damaged yolo3 metadata, outputs that cannot be written, reports with wrong figures -------------------


def _tflite_with_metadata(tmp_path: Path, name: str, payload: bytes) -> Path:
    from compression.quantize.tflite_worker import add_metadata
    from yolo3.kerasenv import keras, tf

    inp = keras.layers.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(24, 1)(inp))
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp_path / name
    path.write_bytes(add_metadata(data, "yolo3", payload))
    return path


def test_damaged_tflite_metadata_ends_in_one_line_in_evaluate_and_the_runner(toy, capsys, tmp_path):
    from yolo3.lite import main as runner

    _, config, data = toy
    image = str(next((data / "images").iterdir()))
    cases = [
        (_tflite_with_metadata(tmp_path, "notjson.tflite", b"{not json"), "metadata is not JSON"),
        (_tflite_with_metadata(tmp_path, "noheads.tflite", json.dumps({"names": ["a"]}).encode()), "'heads' is missing"),
        (_tflite_with_metadata(tmp_path, "badhead.tflite", json.dumps({"heads": [{"anchors": [[1, 2]]}]}).encode()), "lacks anchors or classes"),
        (_tflite_with_metadata(tmp_path, "list.tflite", b"[1, 2]"), "not a JSON object"),
    ]
    for path, needle in cases:
        code, err = _run(["evaluate", "-c", str(config), "--model", str(path)], capsys)
        _check(code, err, needle, ["evaluate", path.name])
        assert "not written by yolo3-compress" in err[-1]
        code = run_cli(runner, [str(path), image])
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
        _check(code, err, needle, ["python -m yolo3.lite", path.name])


def test_unwritable_outputs_and_report_paths_are_refused_before_the_work(toy, capsys, tmp_path):
    folder, config, data = toy
    c = str(config)
    (tmp_path / "reports").mkdir()
    cases = [
        (["evaluate", "-c", c, "-p", "3", "--out", "/proc/yolo3-out.h5"], "is not writable"),
        (["cluster", "-c", c, "--out", "/proc/yolo3-out.h5"], "is not writable"),
        (["evaluate", "-c", c, "--json", str(tmp_path / "reports")], "is a folder"),
        (["cluster", "-c", c, "--clusters", "0", "--out", str(tmp_path / "k.h5")], "--clusters must be in [2, 65536]"),
        (["cluster", "-c", c, "--clusters", "1", "--out", str(tmp_path / "k.h5")], "--clusters must be in [2, 65536]"),
    ]
    for argv, needle in cases:
        code, err = _run(argv, capsys)
        _check(code, err, needle, argv)
    assert not (tmp_path / "k.h5").exists()


def test_compare_refuses_a_report_whose_figures_are_not_numbers(capsys, tmp_path):
    good = {"mAP50": 0.5, "coco": {"AP": 0.3}, "params": 10, "latency": {"median_ms": 3.0}}
    (tmp_path / "a.json").write_text(json.dumps(good))
    (tmp_path / "b.json").write_text(json.dumps({**good, "mAP50": "0.6"}))
    (tmp_path / "c.json").write_text(json.dumps({**good, "latency": {"median_ms": [1]}}))
    (tmp_path / "d.json").write_text(json.dumps({"mAP50": 0.4}))
    for name, needle in (("b.json", "mAP50 is \"0.6\", not a number"), ("c.json", "latency.median_ms is [1], not a number"),
                         ("d.json", "no coco.AP")):  # fmt: skip
        code, err = _run(["compare", str(tmp_path / "a.json"), str(tmp_path / name)], capsys)
        _check(code, err, needle, ["compare", name])
    code, err = _run(["compare", str(tmp_path / "a.json"), str(tmp_path)], capsys)
    _check(code, err, "is a folder", ["compare", "folder"])
