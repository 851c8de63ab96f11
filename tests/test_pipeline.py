"""The stage pipeline (fingerprints, resume, stale stages, declared files) and compress built on it: what a change re-runs,
plan-config.json after a change, and the toy chain against the numbers recorded before the pipeline existed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, toy_config

# -- the pipeline alone (no TensorFlow) --------------------------------------------------------------


def _stages(calls: list[str]):
    from compression.pipeline import Stage

    class Data(Stage):
        name, reads, writes = "data", ("a",), ("data.txt",)

        def run(self, ctx):
            calls.append(self.name)
            ctx.output("data.txt").write_text(str(ctx.setting("a")))
            return {"a": ctx.setting("a")}

    class Train(Stage):
        name, reads, needs, writes = "train", ("b.*",), ("data",), ("model.txt",)

        def run(self, ctx):
            calls.append(self.name)
            ctx.output("model.txt").write_text(ctx.input("data.txt").read_text() + str(ctx.setting("b.epochs")))
            return {"from": ctx.result("data")["a"]}

    class Side(Stage):
        name, reads, needs, writes = "side", ("c",), ("data",), ("side.txt",)

        def run(self, ctx):
            calls.append(self.name)
            ctx.output("side.txt").write_text("x")
            return {}

    class Report(Stage):
        name, reads, needs, writes = "report", ("d",), ("train", "side"), ("report.txt",)
        rewritable = True  # a document of the others' results

        def run(self, ctx):
            calls.append(self.name)
            ctx.output("report.txt").write_text(ctx.input("model.txt").read_text())
            return {"model": ctx.result("train")["from"]}

    return [Data(), Train(), Side(), Report()]


def test_pipeline_skips_done_stages_and_redoes_only_what_a_change_reaches(tmp_path):
    from compression.pipeline import Pipeline
    from yolo3.errors import UserError

    settings = {"a": 1, "b.epochs": 3, "b.lr": 0.1, "c": "x", "d": 0}
    calls: list[str] = []
    Pipeline(_stages(calls), settings, tmp_path, log=lambda m: None).run_all()
    assert calls == ["data", "train", "side", "report"]
    calls.clear()
    Pipeline(_stages(calls), settings, tmp_path, log=lambda m: None).run_all()
    assert calls == []  # everything done: read back from the records
    changed = {**settings, "b.lr": 0.2}  # read by train (through the prefix), not by data or side
    with pytest.raises(UserError, match=r"stage 'train' made from other inputs \(changed: b.lr\).*train, report.*--force"):
        Pipeline(_stages(calls), changed, tmp_path, log=lambda m: None)
    Pipeline(_stages(calls), changed, tmp_path, force=True, log=lambda m: None).run_all()
    assert calls == ["train", "report"]
    calls.clear()
    Pipeline(_stages(calls), {**changed, "c": "y"}, tmp_path, force=True, log=lambda m: None).run_all()
    assert calls == ["side", "report"]
    calls.clear()
    Pipeline(_stages(calls), {**changed, "c": "y", "d": 1}, tmp_path, log=lambda m: None).run_all()
    assert calls == ["report"]  # a rewritable stage alone is redone without --force
    record = json.loads((tmp_path / "stages" / "train.json").read_text())
    assert record["settings"] == {"b.epochs": 3, "b.lr": 0.2} and record["needs"] == ["data"] and record["seconds"] >= 0


def test_a_stage_that_writes_or_reads_what_it_did_not_declare_fails(tmp_path):
    from compression.pipeline import Pipeline, Stage, StageContractError

    class Sneaky(Stage):
        name, writes = "sneaky", ("mine.txt",)

        def run(self, ctx):
            (ctx.run_dir / "other.txt").write_text("not declared")
            return {}

    with pytest.raises(StageContractError, match="stage 'sneaky' wrote other.txt, which it does not declare"):
        Pipeline([Sneaky()], {}, tmp_path / "a", log=lambda m: None).run_all()
    assert not (tmp_path / "a" / "stages" / "sneaky.json").exists()

    class Rewrites(Stage):  # changes a file another stage owns: as bad as a new one
        name, needs = "rewrites", ("owner",)

        def run(self, ctx):
            (ctx.run_dir / "plan.json").write_text("{}")
            return {}

    class Owner(Stage):
        name, writes = "owner", ("plan.json",)

        def run(self, ctx):
            ctx.output("plan.json").write_text("[]")
            return {}

    with pytest.raises(StageContractError, match="stage 'rewrites' wrote plan.json"):
        Pipeline([Owner(), Rewrites()], {}, tmp_path / "b", log=lambda m: None).run_all()

    class Reader(Stage):
        name = "reader"

        def run(self, ctx):
            return {"x": ctx.setting("undeclared")}

    with pytest.raises(StageContractError, match="reads setting 'undeclared'"):
        Pipeline([Reader()], {"undeclared": 1}, tmp_path / "c", log=lambda m: None).run_all()


def test_an_interrupted_stage_started_from_other_inputs_loses_its_half_made_files(tmp_path):
    from compression.pipeline import Pipeline, Stage

    class Long(Stage):
        name, reads, writes = "long", ("epochs",), ("run",)

        def run(self, ctx):
            folder = ctx.output("run")
            folder.mkdir(exist_ok=True)
            seen = sorted(p.name for p in folder.iterdir())
            (folder / f"epoch-{ctx.setting('epochs')}").write_text("")
            if ctx.setting("epochs") == 1:
                raise KeyboardInterrupt  # killed half-way
            return {"found": seen}

    with pytest.raises(KeyboardInterrupt):
        Pipeline([Long()], {"epochs": 1}, tmp_path, log=lambda m: None).run_all()
    results = Pipeline([Long()], {"epochs": 2}, tmp_path, log=lambda m: None).run_all()
    assert results["long"]["found"] == []  # the checkpoints of the other settings were not resumed from


# -- compress on the pipeline ------------------------------------------------------------------------

def _measuring_stages(calls: list[str]):
    """A search that reads a budget only to stop early (as the levers stage), and a measurement that needs it."""
    from compression.pipeline import Stage

    class Search(Stage):
        name, reads, writes, measuring = "search", ("data", "budget"), ("search.txt",), True
        lend_ignores = ("budget",)

        def run(self, ctx):
            calls.append(self.name)
            complete = ctx.setting("budget") >= 10  # a small budget cuts the search short
            ctx.output("search.txt").write_text(str(complete))
            return {"complete": complete}

        def lendable(self, result):
            return result.get("complete") is True

    class Measure(Stage):
        name, reads, needs, writes, measuring = "measure", ("data",), ("search",), ("measure.txt",), True

        def run(self, ctx):
            calls.append(self.name)
            ctx.output("measure.txt").write_text(ctx.input("search.txt").read_text())
            return {}

    return [Search(), Measure()]


def test_a_search_that_ran_to_its_end_is_lent_to_a_run_with_another_budget(tmp_path):
    from compression.pipeline import Pipeline

    calls: list[str] = []
    Pipeline(_measuring_stages(calls), {"data": 1, "budget": 20}, tmp_path / "long", log=lambda m: None).run_all()
    calls.clear()
    other = Pipeline(_measuring_stages(calls), {"data": 1, "budget": 15}, tmp_path / "other", log=lambda m: None)
    notes = other.reuse(tmp_path / "long")
    other.run_all()
    assert calls == [] and notes == ["--measurements-from: search reused though budget differs (its result did not depend on it)"]
    assert (tmp_path / "other" / "measure.txt").read_text() == "True"
    calls.clear()
    Pipeline(_measuring_stages(calls), {"data": 1, "budget": 15}, tmp_path / "other", log=lambda m: None).run_all()
    assert calls == []  # the lent records carry this run's fingerprints: a rerun of it finds them done

    # a search the budget cut short is not lent; nor is one made from other data
    Pipeline(_measuring_stages(calls), {"data": 1, "budget": 5}, tmp_path / "short", log=lambda m: None).run_all()
    for source, settings in ((tmp_path / "short", {"data": 1, "budget": 20}), (tmp_path / "long", {"data": 2, "budget": 20})):
        calls.clear()
        run = Pipeline(_measuring_stages(calls), settings, tmp_path / f"new-{len(list(tmp_path.iterdir()))}", log=lambda m: None)
        assert run.reuse(source) == ["--measurements-from: search there was made from other inputs; measured again"]
        run.run_all()
        assert calls == ["search", "measure"]



def _fixed_config(folder: Path, data: Path) -> Path:
    """The toy model with a fixed plan (the config's ratios at 32 px): no timing decides anything, so the figures are repeatable."""
    config = toy_config(folder, data)
    raw = json.loads(config.read_text())
    raw["model"]["input_size"] = 32
    raw["pruning"] = {"similarity_layer_ratios": {"conv_4": 0.5, "conv_7": 0.5, "conv_11": 0.5}}
    raw["compress"]["feature_distillation"] = 0.0  # the reference was recorded with output distillation alone
    raw["compress"]["int8_ranges"] = False  # and with min/max activation ranges only
    raw["compress"]["int8_adaround"] = False  # and round-to-nearest weights
    raw["compress"]["int8_bias_correction"] = False  # and the converter's own int8 biases
    config.write_text(json.dumps(raw))
    return config


def _compress(config: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "compress.py", "-c", str(config), "--quiet", "--from-config", "--run-dir", str(run_dir), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def _redone(stderr: str) -> list[str]:
    return [line.split("] ")[1].split(" ...")[0] for line in stderr.splitlines() if line.startswith("[") and line.endswith("...")]


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory, synthetic_valid):
    folder = tmp_path_factory.mktemp("fixed")
    config = _fixed_config(folder, synthetic_valid)
    r = _compress(config, folder / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    return config, folder / "out"


def test_toy_chain_gives_the_numbers_recorded_before_the_pipeline(fixed_run):
    """The same stages, models and figures as the compressor the pipeline replaced (tests/data/compress-toy-reference.json)."""
    _, run_dir = fixed_run
    reference = json.loads((ROOT / "tests" / "data" / "compress-toy-reference.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    assert report["input_size"] == reference["input_size"] and report["kept_channels"] == reference["kept_channels"]
    assert [e["stage"] for e in report["stages"]] == [e["stage"] for e in reference["stages"]]
    for got, want in zip(report["stages"], reference["stages"]):
        for key in ("params", "macs"):
            assert got.get(key) == want[key], (got["stage"], key)
        # an int8 file's bytes follow calibration's float rounding, which may move a few values between library builds
        want_gzip = want["gzip_bytes"]
        assert got.get("gzip_bytes") == (None if want_gzip is None else pytest.approx(want_gzip, rel=1e-3)), got["stage"]
        assert got["mAP50"] == pytest.approx(want["mAP50"], abs=2e-3), got["stage"]


def test_a_qat_setting_redoes_only_int8_and_what_follows(fixed_run, tmp_path):
    config, run_dir = fixed_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    r = _compress(config, copy, "--set", "quantization.qat_epochs=3")
    assert r.returncode == 2 and "changed: quantization.qat_epochs" in r.stderr and "--force" in r.stderr
    r = _compress(config, copy, "--set", "quantization.qat_epochs=3", "--force")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _redone(r.stderr) == ["int8", "floor", "plan-config", "report"]
    assert json.loads((copy / "plan-config.json").read_text())["quantization"]["qat_epochs"] == 3


def test_plan_config_describes_the_plan_that_ran_after_a_change(fixed_run, tmp_path):
    """After other fine-tune epochs and clustering off, plan-config.json is the config of the chain that ran."""
    from compression.budget.context import CompressJob, CompressOptions
    from compression.budget.latency_model import LatencyModel
    from compression.budget.plan import Inputs, fixed_plan
    from yolo3.config import load_config
    from yolo3.models import spec_from_h5

    config, run_dir = fixed_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    r = _compress(config, copy, "--epochs", "1", "--set", "compress.cluster=false", "--force")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _redone(r.stderr) == ["finetune", "cluster", "cluster-finetune", "int8", "floor", "plan-config", "report"]
    report = json.loads((copy / "report.json").read_text())
    assert "clustered" not in [e["stage"] for e in report["stages"]]
    again = load_config(copy / "plan-config.json")
    assert again.compress.finetune_epochs == 1 and again.compress.cluster is False and again.pruning.finetune_epochs == 1
    assert again.model.input_size == report["input_size"]
    job = CompressJob(again, None, CompressOptions(from_config=True, run_dir=tmp_path / "again", progress=False))
    latency = LatencyModel.from_json(json.loads((copy / "latency-model.json").read_text()))
    plan, _ = fixed_plan(Inputs(job, spec_from_h5(copy / "baseline.h5"), latency))
    assert plan["candidates"][str(report["input_size"])]["kept"] == report["kept_channels"]


def test_stages_table_in_the_docs_is_the_code():
    from compression.budget.compress import stages_markdown

    assert stages_markdown() in (ROOT / "docs" / "compress.md").read_text(), "docs/compress.md: regenerate the stages table from stages_markdown()"


TWO_CPUS = r"""
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from yolo3_cli.main import verb_main
sys.exit(verb_main("compress")(sys.argv[1:]))
"""


def test_compress_fine_tunes_under_the_config_strategy(fixed_run, tmp_path):
    """train.strategy reaches compress's fine-tunes: MirroredStrategy over two logical CPUs trains with two replicas.

    A copy of the fixed run with the strategy changed: the stages that train are redone, the others are reused.
    """
    config, run_dir = fixed_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    raw = json.loads(config.read_text())
    raw["train"].update({"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"]})
    raw["compress"].update({"finetune_epochs": 1, "cluster": False, "qat": False})
    mirrored = config.with_name("mirrored.json")  # beside the original: its paths are relative to its folder
    mirrored.write_text(json.dumps(raw))
    cmd = [sys.executable, "-c", TWO_CPUS, "-c", str(mirrored), "--quiet", "--from-config", "--run-dir", str(copy), "--force"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "baseline: done before, skipped" in r.stderr
    record = json.loads((copy / "stages" / "finetune.json").read_text())
    assert record["result"]["replicas"] == 2 and record["settings"]["train.strategy"] == "mirrored"
    assert json.loads((copy / "report.json").read_text())["stages"][-1]["mAP50"] >= 0


def _matches(misses: int, images: int = 20) -> list:
    """One class, one box per image, one detection each; the ``misses`` lowest-scored detections are false alarms (AP 1 - misses/images)."""
    import numpy as np

    from yolo3.metrics import ClassMatches

    hit = np.ones(images)
    hit[images - misses :] = 0
    return [ClassMatches(np.linspace(0.9, 0.1, images), np.arange(images), hit, 1 - hit, np.ones(images))]


def test_a_plan_below_the_floor_is_not_delivered(fixed_run, tmp_path, monkeypatch):
    """The plan's int8 model scored 10 points below the float model on validation (the toy's random models score 0, so the
    detections the floor judges are replaced by hand-made ones): --strict stops with the message; without it the unpruned
    int8 model is delivered; a lever's own int8 model is a fallback too."""
    from compression.budget.compress import CompressOptions, run_compress
    from compression.budget.context import CompressJob
    from yolo3.config import load_config
    from yolo3.errors import UserError

    def judged(self, path, split, config=None):
        return _matches(2 if split == "valid" and Path(path).name == "plan-int8.tflite" else 0)

    monkeypatch.setattr(CompressJob, "matches", judged)
    config, run_dir = fixed_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)

    def compress(**options):
        return run_compress(load_config(config), None, CompressOptions(from_config=True, run_dir=copy, force=True, progress=False, **options))

    for stage in ("floor", "report"):
        (copy / "stages" / f"{stage}.json").unlink()
    with pytest.raises(UserError) as err:
        compress(strict=True)
    assert "costs 10.00 mAP@0.5 points (at most" in str(err.value) and "more than the floor of 1" in str(err.value) and "--strict" in str(err.value)
    report = compress()
    assert report["delivered"] == "unpruned" and report["floor_message"] and report["input_size"] == 64
    assert report["map50_loss_validation"] == 0 and report["map50_loss_bound"] == 0 and report["kept_channels"] is None
    assert report["floor_confidence"] == 0.9 and report["validation_images"] == 20
    # with a lever chosen, the levers' own int8 model is a fallback too: made, timed and possibly delivered by the floor stage
    levers_path = copy / "stages" / "levers.json"
    levers = json.loads(levers_path.read_text())
    levers["result"].update(names=["a lever"], measured_speedup=1.0)  # levered.h5 is the baseline's copy: a lever that changes nothing
    levers_path.write_text(json.dumps(levers))
    for stage in ("floor", "report"):
        (copy / "stages" / f"{stage}.json").unlink()
    compress()
    floor = json.loads((copy / "stages" / "floor.json").read_text())["result"]
    assert [o["name"] for o in floor["options"]] == ["plan", "levers", "unpruned"] and (copy / "levered-int8.tflite").is_file()
    assert floor["delivered"] in ("levers", "unpruned") and all("speedup" in o for o in floor["options"])
