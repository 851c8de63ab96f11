"""The one command line: every verb, the shims with the same flags, --set overrides, the benchmark table."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, toy_config
from yolo3.errors import UserError, run_cli

SHIMS = {"train": "train", "finetune": "finetune", "evaluate": "evaluate", "clustering": "cluster", "convert": "convert",
         "detect": "detect", "compress": "compress", "gen_anchors": "anchors"}  # fmt: skip


def test_every_verb_is_listed_and_has_help(capsys):
    from yolo3_cli.main import VERBS, build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    listed = capsys.readouterr().out
    for verb in VERBS:
        assert f"    {verb}" in listed
        with pytest.raises(SystemExit) as done:
            parser.parse_args([verb, "--help"])
        assert done.value.code == 0
        assert "usage: yolo3 " + verb in capsys.readouterr().out


def _flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("script, verb", sorted(SHIMS.items()))
def test_scripts_are_shims_with_the_verbs_flags(script, verb):
    import argparse

    from yolo3_cli.main import build_parser

    module = importlib.import_module(f"yolo3_cli.{verb}")
    shim = argparse.ArgumentParser()
    module.configure(shim)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    assert _flags(shim) | {"--verbose"} == _flags(sub)
    source = (ROOT / f"{script}.py").read_text()
    tree = ast.parse(source)
    assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body), f"{script}.py holds code: it must be a shim"
    assert f'verb_main("{verb}"' in source


def test_set_overrides_are_json_checked_and_paths_relative_to_the_current_folder(tmp_path):
    from yolo3.config import parse_overrides

    got = parse_overrides(["train.nb_epochs=5", 'model.labels=["a", "b"]', "train.lr_schedule=steps", "train.run_dir=runs/x",
                           "pruning.similarity_ratio=null"], cwd=tmp_path)  # fmt: skip
    assert got == {"train.nb_epochs": 5, "model.labels": ["a", "b"], "train.lr_schedule": "steps",
                   "train.run_dir": str((tmp_path / "runs/x").resolve()), "pruning.similarity_ratio": None}  # fmt: skip
    with pytest.raises(UserError, match="did you mean train.nb_epochs"):
        parse_overrides(["train.nb_epoch=5"])
    with pytest.raises(UserError, match="section.key=value"):
        parse_overrides(["train.nb_epochs"])


def test_set_goes_through_the_same_validation_as_the_file(tmp_path, synthetic_valid):
    from yolo3.config import load_config, parse_overrides

    path = toy_config(tmp_path, synthetic_valid)
    config = load_config(path, parse_overrides(["train.nb_epochs=7", "compress.sizes=[64]"]))
    assert config.train.nb_epochs == 7 and config.compress.sizes == [64]
    for bad, message in (("train.nb_epochs=0", r"must be in \[1, 100000\]"), ("train.nb_epochs=abc", "must be of type int"),
                         ("compress.sizes=[50]", "multiples of 32"), ("valid.score_threshold=2", "score_threshold")):  # fmt: skip
        with pytest.raises(UserError, match=message) as err:
            load_config(path, parse_overrides([bad]))
        assert str(path) in err.value.message


def test_verbs_end_in_one_line_with_status_2(tmp_path, synthetic_valid, capsys):
    from yolo3_cli.main import main

    path = toy_config(tmp_path, synthetic_valid)
    for argv, message in (
        (["evaluate", "-c", str(tmp_path / "missing.json")], "config file does not exist"),
        (["evaluate", "-c", str(tmp_path)], "is a folder"),
        (["train", "-c", str(path), "--set", "train.nb_epoch=3"], "did you mean train.nb_epochs"),
        (["train", "-c", str(path), "--epochs", "0"], "--epochs must be at least 1"),
        (["benchmark", "-c", str(path), "--formats", "keras,int4"], "int4 is not a format"),
        (["benchmark", "-c", str(path), "--formats", "keras-nms"], "keras-nms is not a format"),
        (["benchmark", "-c", str(path), "--min-map", "1.5"], "--min-map"),
        (["anchors", "-c", str(path), "-k", "0"], "-k must be at least 1"),
        (["evaluate", "-c", str(path), "-p", "7"], "unknown mode"),
        (["evaluate", "-c", str(path), "--set", "model.anchors=[10, 14, 23, 27]"], "model.anchors: 2 anchors are too few for mask"),
    ):
        assert run_cli(main, argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], (argv, err)


def test_info_json_in_process(capsys):
    from yolo3_cli.main import main

    assert main(["info", "yolov3-tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 8_858_734


def test_yolo3_console_script_runs_without_importing_tensorflow_for_help():
    r = subprocess.run([sys.executable, "-c", "import sys; from yolo3_cli.main import build_parser; build_parser();"
                        "print('tensorflow' in sys.modules)"], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_console_stays_quiet_unless_verbose(tmp_path):
    code = "from yolo3.kerasenv import tf; print('ready')"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ready"
    assert "oneDNN" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr, quiet.stderr


def test_benchmark_every_format_in_one_table(tmp_path, synthetic_valid):
    from yolo3_cli.main import main

    path = toy_config(tmp_path, synthetic_valid)
    out = tmp_path / "bench"
    argv = ["benchmark", "-c", str(path), "--formats", "keras,float32,int8,int8-nms", "--out-dir", str(out), "--samples", "4", "--rounds", "2",
            "--runs", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert [r["format"] for r in report["rows"]] == ["keras", "float32", "int8", "int8-nms"]
    assert report["rows"][0]["speedup"] == pytest.approx(1.0)
    for row in report["rows"]:
        assert row["latency_ms"] > 0 and row["latency_with_postprocess_ms"] > 0 and 0 <= row["mAP50"] <= 1 and row["bytes"] > 0
    assert (out / "model-int8.tflite").is_file() and (out / "model-int8-nms.tflite").is_file()
    assert "peak_activation_bytes" not in report["rows"][0] and all(r["peak_activation_bytes"] > 0 for r in report["rows"][1:])
    # --min-map as a CI gate: an impossible floor fails with status 1 (the Keras row alone: nothing to convert again)
    gate = [a if a != "keras,float32,int8,int8-nms" else "keras" for a in argv]
    assert main([*gate, "--min-map", "1.0"]) == 1


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_imports_flow_one_way():
    """yolo3_cli -> compression -> yolo3: the detector imports neither; compression does not import the command line."""
    for path in (ROOT / "yolo3").glob("*.py"):
        if path.name == "__main__.py":  # `python -m yolo3` is the command line's door
            continue
        assert not any(n.split(".")[0] in ("compression", "yolo3_cli") for n in _imports(path)), path
    for path in (ROOT / "compression").rglob("*.py"):
        assert not any(n.split(".")[0] == "yolo3_cli" for n in _imports(path)), path


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports anywhere (also inside functions), relative imports resolved; type-checking blocks aside."""
    tree = ast.parse(path.read_text())
    here = _module_name(path).split(".")
    is_package = path.name == "__init__.py"
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}  # fmt: skip
    found = set()
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = here if is_package else here[:-1]
                anchor = anchor[: len(anchor) - (n.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in n.names]
        elif isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        else:
            continue
        found |= {m for m in names if m.split(".")[0] == package}
    return found


def test_no_import_cycle_in_compression():
    """No module of compression/ imports (directly or through others, deferred imports included) a module that imports it back."""
    modules = {_module_name(p): p for p in (ROOT / "compression").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = {m for m in _package_imports(path, "compression") if m in modules}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}  # a package's own __init__ runs first anyway
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_compare_puts_reports_side_by_side_against_the_first(tmp_path, capsys):
    from yolo3_cli.main import main

    base = {"model": "a.h5", "mAP50": 0.9, "coco": {"AP": 0.5}, "params": 1000, "macs": 2e9, "bytes": 4000, "latency": {"median_ms": 8.0}}
    small = {**base, "model": "b.tflite", "mAP50": 0.895, "bytes": 1000, "latency": {"median_ms": 4.0}}
    paths = []
    for name, report in (("a.json", base), ("b.json", small)):
        (tmp_path / name).write_text(json.dumps(report))
        paths.append(str(tmp_path / name))
    assert main(["compare", *paths]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("a.h5") and out[2].startswith("b.tflite") and "8.0ms" in out[1]
    assert out[-1] == "b.tflite vs a.h5: mAP@0.5 -0.50 points, 2.00x faster, 4.00x smaller"
