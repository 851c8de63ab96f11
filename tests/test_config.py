import json

import pytest

from conftest import ROOT
from yolo3.config import load_config, schema_markdown
from yolo3.errors import UserError


def write(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def base(tmp_path):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    return {
        "model": {"architecture": "yolov3-tiny", "labels": ["a"], "input_size": 128},
        "train": {"train_image_folder": "imgs", "train_annot_folder": "imgs"},
        "valid": {"valid_image_folder": "imgs", "valid_annot_folder": "imgs"},
    }


def test_shipped_config_is_valid():
    config = load_config(ROOT / "config.json")
    assert config.labels == ["circle", "square", "triangle"]
    assert config.valid.annot_format == "synthetic"


def test_paths_resolve_against_the_config_folder(tmp_path):
    config = load_config(write(tmp_path, base(tmp_path)))
    assert config.train.train_image_folder == tmp_path / "imgs"


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("model", "colour", 1, "unknown key model.colour"),
        ("model", "input_size", "416", "model.input_size must be of type int"),
        ("model", "input_size", 100, "model.input_size must be a multiple of 32"),
        ("model", "input_size", 10**30, "model.input_size must be in [32, 4096]"),
        ("model", "input_size", -32, "model.input_size must be in [32, 4096]"),
        ("model", "labels", ["a", "b", "a"], "model.labels names 'a' more than once"),
        ("model", "labels", ["a", "  "], "model.labels must be a non-empty list of class names"),
        ("clustering", "clusters", 10**30, "clustering.clusters must be in [2, 65536]"),
        ("clustering", "clusters", 1, "clustering.clusters must be in [2, 65536]"),
        ("valid", "score_threshold", float("nan"), "valid.score_threshold must be in [0, 1)"),
        ("valid", "score_threshold", -0.1, "valid.score_threshold must be in [0, 1)"),
        ("train", "nb_epochs", 0, "train.nb_epochs must be in [1, 100000]"),
        ("train", "learning_rate", 0.0, "train.learning_rate must be in (0, 1]"),
        ("train", "holdout_fraction", 1.0, "train.holdout_fraction must be in [0, 1)"),
        ("pruning", "similarity_ratio", 1.5, "pruning.similarity_ratio must be in [0, 1)"),
        ("compress", "threads", 0, "compress.threads must be in [1, 256]"),
        ("compress", "holdout_fraction", 0.0, "compress.holdout_fraction must be in (0, 1)"),
        ("quantization", "qat_epochs", 0, "quantization.qat_epochs must be in [1, 100000]"),
        ("valid", "nms_iou", True, "valid.nms_iou must be of type float"),
        ("valid", "valid_list", "nowhere.txt", "valid.valid_list: nowhere.txt does not exist"),
        ("model", "architecture", "yolov9", "model.architecture: yolov9 is neither"),
        ("train", "annot_format", "xml", "train.annot_format must be one of"),
        ("model", "labels_file", "x.names", "model.labels_file: x.names does not exist"),
        ("pruning", "similarity_layer_ratios", {"conv12": 0.5}, "'conv12' is not a layer index"),
        ("pruning", "similarity_layer_ratios", {"12": 1.0}, "similarity_layer_ratios.12 must be a number in [0, 1)"),
    ],
)
def test_mistakes_name_the_key(tmp_path, section, key, value, message):
    data = base(tmp_path)
    data.setdefault(section, {})[key] = value
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, data))
    assert message in err.value.message
    assert "config.json" in err.value.message


def test_missing_required_key_and_unknown_section(tmp_path):
    data = base(tmp_path)
    del data["valid"]["valid_image_folder"]
    with pytest.raises(UserError, match="valid.valid_image_folder is required"):
        load_config(write(tmp_path, data))
    data = base(tmp_path)
    data["prune"] = {}
    with pytest.raises(UserError, match="unknown section 'prune'"):
        load_config(write(tmp_path, data))


def test_missing_data_folder_names_the_key(tmp_path):
    data = base(tmp_path)
    data["valid"]["valid_annot_folder"] = "nowhere"
    config = load_config(write(tmp_path, data))
    with pytest.raises(UserError, match="valid.valid_annot_folder"):
        config.dataset("valid")


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n "model": {,}\n}')
    with pytest.raises(UserError, match="line 2"):
        load_config(path)


def test_docs_document_every_key():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    assert schema_markdown() in reference, "docs/configuration.md: regenerate the table from yolo3.config.schema_markdown()"
