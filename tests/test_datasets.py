import json

import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from yolo3.datasets import check_images, discover, read_coco, read_dataset, read_voc, read_yolo
from yolo3.errors import UserError
from yolo3.preprocess import load_image


def voc_xml(filename, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
        for n, (a, b, c, e), d in objects
    )
    return f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>"


def make_image(path, w=64, h=48, fmt="JPEG"):
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path, format=fmt)


@pytest.fixture
def voc_folder(tmp_path):
    img, ann = tmp_path / "images", tmp_path / "annotations"
    img.mkdir()
    ann.mkdir()
    make_image(img / "a.jpg")
    (ann / "a.xml").write_text(voc_xml("a.jpg", 64, 48, [("cat", (1, 2, 30, 40), False), ("dog", (10, 10, 10, 20), False)]))
    make_image(img / "b.jpg")  # a PNG would be fine too, see below
    (ann / "b.xml").write_text(voc_xml("b.jpg", 64, 48, [("dog", (-5, 3, 80, 40), False), ("cat", (5, 5, 9, 9), True)]))
    make_image(img / "c.jpg", fmt="PNG")  # a PNG named .jpg must load
    (ann / "c.xml").write_text(voc_xml("c.jpg", 64, 48, [("cat", (0, 0, 64, 48), False)]))
    make_image(img / "lonely.jpg")  # an image without annotation
    (ann / "ghost.xml").write_text(voc_xml("ghost.jpg", 64, 48, []))  # an annotation without image
    (ann / "broken.xml").write_text("<annotation><filename>")
    return tmp_path


def test_voc_reader_validates(voc_folder):
    ds = read_voc(voc_folder / "images", voc_folder / "annotations")
    assert ds.names == ["cat", "dog"]
    assert [r.image.name for r in ds.records] == ["a.jpg", "b.jpg", "c.jpg"]
    kinds = ds.problem_counts()
    assert kinds == {
        "zero-area box": 1,
        "box clipped": 1,
        "annotation without image": 1,
        "unreadable annotation": 1,
        "image without annotation": 1,
    }
    b = ds.records[1]
    np.testing.assert_allclose(b.boxes[0], [0, 3, 64, 40])
    assert b.difficult.tolist() == [False, True]
    assert ds.box_counts() == {"cat": 3, "dog": 1}
    assert any("a.jpg" in str(p) and "zero-area" in str(p) for p in ds.problems)


def test_fixed_names_report_unknown_classes(voc_folder):
    ds = read_voc(voc_folder / "images", voc_folder / "annotations", names=["dog"])
    assert ds.box_counts() == {"dog": 1}
    assert ds.problem_counts()["unknown class"] == 3


def test_truncated_jpeg_reported_by_name(voc_folder, tmp_path):
    path = voc_folder / "images" / "a.jpg"
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (200, 300, 3), np.uint8)).save(big)
    path.write_bytes(big.read_bytes()[:2000])
    assert load_image(voc_folder / "images" / "c.jpg").shape == (48, 64, 3)  # PNG content, .jpg name
    with pytest.raises(UserError) as err:
        load_image(path)
    assert "a.jpg" in err.value.message and "decode" in err.value.message
    ds = read_voc(voc_folder / "images", voc_folder / "annotations")
    problems = check_images(ds.records, progress=False)
    assert [p.kind for p in problems] == ["unreadable image"] and "a.jpg" in problems[0].file


def test_yolo_reader(tmp_path):
    img, lab = tmp_path / "images", tmp_path / "labels"
    img.mkdir()
    lab.mkdir()
    make_image(img / "x.jpg", 100, 50)
    (lab / "x.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.99 0.5 0.1 0.2\nbad line\n7 0.5 0.5 0.1 0.1\n0 0.5 0.5 0 0.1\n")
    make_image(img / "nolabel.jpg")
    (lab / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = read_yolo(img, lab, ["a", "b"])
    x = ds.records[1] if ds.records[0].image.name == "nolabel.jpg" else ds.records[0]
    np.testing.assert_allclose(x.boxes[0], [40, 15, 60, 35])
    np.testing.assert_allclose(x.boxes[1], [94, 20, 100, 30])
    counts = ds.problem_counts()
    assert counts["invalid label line"] == 1 and counts["unknown class"] == 1 and counts["zero-area box"] == 1
    assert counts["box clipped"] == 1
    assert counts["image without label file"] == 1 and counts["label file without image"] == 1
    assert len(ds.records) == 2


def test_coco_reader(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    make_image(img / "1.jpg", 100, 80)
    data = {
        "images": [{"id": 7, "file_name": "1.jpg", "width": 100, "height": 80}, {"id": 8, "file_name": "gone.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 10, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
    }
    js = tmp_path / "instances_val.json"
    js.write_text(json.dumps(data))
    ds = read_coco(img, js)
    assert ds.names == ["person", "dog"]
    r = ds.records[0]
    np.testing.assert_allclose(r.boxes, [[10, 10, 30, 40], [0, 0, 50, 50]])
    assert r.classes.tolist() == [1, 0] and r.difficult.tolist() == [False, True]
    assert ds.problem_counts() == {"annotation without image": 1}
    js.write_text("{not json")
    with pytest.raises(UserError, match="line 1"):
        read_coco(img, js)


def test_split_files(voc_folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a\nc\nmissing\n")
    ds = read_voc(voc_folder / "images", voc_folder / "annotations", split=listing)
    assert [r.image.stem for r in ds.records] == ["a", "c"]
    assert ds.problem_counts()["listed image not found"] == 1
    csv = tmp_path / "list.csv"
    csv.write_text("filename,width\nb.jpg,64\nb.jpg,64\n")
    assert [r.image.stem for r in read_voc(voc_folder / "images", voc_folder / "annotations", split=csv).records] == ["b"]


def test_shared_raccoon():
    root = require_shared("data", "raccoon")
    (source,) = discover(root)
    ds = read_dataset(source)
    assert (len(ds.records), ds.num_boxes, ds.problems) == (200, 217, [])
    train = read_voc(root / "images", root / "annotations", split=root / "splits" / "train_labels.csv")
    test = read_voc(root / "images", root / "annotations", split=root / "splits" / "test_labels.csv")
    assert (len(train.records), len(test.records)) == (160, 40)


def test_shared_bccd():
    root = require_shared("data", "bccd")
    ds = read_dataset(discover(root)[0])
    assert len(ds.records) == 364
    zero = [p for p in ds.problems if p.kind == "zero-area box"]
    assert sorted(p.file.split("/")[-1] for p in zero) == ["BloodImage_00338.jpg", "BloodImage_00343.jpg"]
    assert ds.box_counts() == {"Platelets": 361, "RBC": 4153, "WBC": 372}


def test_shared_coco128():
    root = require_shared("data", "coco128")
    sources = {s.label: s for s in discover(root)}
    val = read_dataset(sources["coco128/val2017"])
    assert (len(val.records), val.num_boxes) == (128, 898)
    train = read_dataset(sources["coco128/train2017"])
    assert train.problem_counts()["image without label file"] == 2
    assert train.problem_counts()["label file without image"] == 2
    coco = read_dataset(sources["coco128/train2017 (COCO json)"])
    assert len(coco.records) == 128 and len(coco.names) == 80
