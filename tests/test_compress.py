"""compress.py: targets, the planner, the latency model, the chain end to end with a kill and a resume, failures that keep earlier stages."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TOY_CFG, toy_config


def compress_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "compress.py", "-c", str(config), "--quiet", *args]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_valid):
    """One compress run on the toy model (channels and input size only), killed after its prune stage and run again to the end."""
    folder = tmp_path_factory.mktemp("compress")
    config = toy_config(folder, synthetic_valid, levers=[])
    run_dir = folder / "out"
    cmd = compress_cmd(config, "--target-speedup", "1.3", "--run-dir", str(run_dir))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    marker = run_dir / "stages" / "prune.json"
    deadline = time.time() + 900
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.5)
    assert marker.exists(), proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "prune stage not reached in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return config, run_dir, second


def test_chain_resumes_after_kill_and_reports(finished_run):
    _, run_dir, second = finished_run
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("baseline", "levers", "cost-models", "sensitivity", "plan", "candidates", "prune"):
        assert f"{stage}: done before, skipped" in second.stderr
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("target", "speedup_vs_unpruned_int8", "size_ratio_vs_float_weights", "map50_float_unpruned", "map50_final_int8",
                "latency_ms_final_int8", "latency_ms_unpruned_int8", "predicted_latency_ms_final_int8", "seconds", "max_loss",
                "map50_loss_validation", "levers", "delivered"):  # fmt: skip
        assert key in report, key
    assert (run_dir / "final-int8.tflite").stat().st_size > 0
    assert (run_dir / "report.png").exists() and (run_dir / "sensitivity.png").exists()
    assert "faster than the unpruned int8 model" in second.stdout
    # the final model keeps the planned channels, and the planner's latency check timed it at the target
    plan = json.loads((run_dir / "plan.json").read_text())
    chosen = plan["candidates"][str(report["input_size"])]
    assert report["kept_channels"] == chosen["kept"]
    assert chosen["check"]["met"] and chosen["check"]["measured_ms"] <= chosen["check"]["wanted_ms"] * 1.02
    # predicted and measured latency of the final model side by side, in the same range
    assert 0.33 < report["predicted_latency_ms_final_int8"] / report["latency_ms_final_int8"] < 3


def test_plan_config_is_an_ordinary_config(finished_run, tmp_path):
    """The plan runs again: evaluate.py -p 3 prunes to the same channels; --from-config plans exactly them."""
    from compression.budget.context import CompressJob, CompressOptions
    from compression.budget.latency_model import LatencyModel
    from compression.budget.plan import Inputs, fixed_plan
    from yolo3.config import load_config
    from yolo3.models import spec_from_h5

    _, run_dir, _ = finished_run
    plan_config = load_config(run_dir / "plan-config.json")
    report = json.loads((run_dir / "report.json").read_text())
    assert plan_config.model.input_size == report["input_size"]
    assert plan_config.model.weights.resolve() == (run_dir / "levered.h5").resolve()
    r = subprocess.run([sys.executable, "evaluate.py", "-c", str(run_dir / "plan-config.json"), "-p", "3", "--finetune-epochs", "0",
                        "--quiet", "--out", str(tmp_path / "again.h5")], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    spec = spec_from_h5(tmp_path / "again.h5")
    assert {k: spec.layers[int(k[5:])].get_int("filters") for k in report["kept_channels"]} == report["kept_channels"]
    job = CompressJob(plan_config, None, CompressOptions(from_config=True, run_dir=tmp_path / "fixed", progress=False))
    assert job.base_size == 64  # the unpruned reference stays at the model's own size
    latency = LatencyModel.from_json(json.loads((run_dir / "latency-model.json").read_text()))
    fixed, _ = fixed_plan(Inputs(job, spec_from_h5(run_dir / "baseline.h5"), latency))
    assert list(fixed["candidates"]) == [str(report["input_size"])]
    assert fixed["candidates"][str(report["input_size"])]["kept"] == report["kept_channels"]


def test_sensitivity_covers_every_unit_size_layer(finished_run):
    _, run_dir, _ = finished_run
    sens = json.loads((run_dir / "sensitivity.json").read_text())
    assert set(sens["pruning"]["units"]) == {"conv_0", "conv_2", "conv_4", "conv_6", "conv_7", "conv_11", "conv_14"}
    for unit in sens["pruning"]["units"].values():
        assert all(p["kept"] < unit["channels"] and p["kept"] % 8 == 0 for p in unit["points"])
    assert set(sens["sizes"]) == {"64", "32"}
    assert set(sens["clustering"]["layers"]) == {f"conv_{i}" for i in (0, 2, 4, 6, 7, 8, 11, 14, 15)}
    assert "conv_0" in sens["int8"]["layers"] and all(v["rmse_over_scale"] >= 0 for v in sens["int8"]["layers"].values())


def test_unreachable_target_names_the_best_reach(finished_run, tmp_path):
    config, run_dir, _ = finished_run
    fresh = tmp_path / "run"
    (fresh / "stages").mkdir(parents=True)
    for name in ("baseline.h5", "baseline-int8.tflite", "latency-model.json", "size-model.json", "memory-model.json", "stages/baseline.json",
                 "stages/cost-models.json"):
        shutil.copyfile(run_dir / name, fresh / name)
    r = subprocess.run(compress_cmd(config, "--target-speedup", "1000", "--run-dir", str(fresh)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "1000x faster than the unpruned int8 model cannot be reached: the most the planner can reach is" in last and "Traceback" not in r.stderr
    assert "done before, skipped" in r.stderr  # the cost models were reused, not measured again
    assert (fresh / "baseline.h5").exists() and (fresh / "stages" / "cost-models.json").exists()


def test_max_speedup_runs_to_the_end_and_reports_what_it_planned(finished_run, tmp_path):
    """--target-speedup max end to end (the measurements reused): the plan's aim comes from the floor, the report says it and
    whether the delivered model holds the floor."""
    config, run_dir, _ = finished_run
    fresh = tmp_path / "run"
    cmd = compress_cmd(config, "--target-speedup", "max", "--measurements-from", str(run_dir), "--run-dir", str(fresh))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = json.loads((fresh / "plan.json").read_text())
    assert plan["asked"]["value"] == "max" and plan["target"]["value"] > 1 and plan["resolved_from_floor"]["predicted_loss_points"] <= 1.0
    report = json.loads((fresh / "report.json").read_text())
    (met,) = report["targets"]
    assert met["extreme"] and met["planned"] == plan["target"]["value"] and met["met"] == (report["map50_loss_bound"] <= 1.0)
    assert "within the accuracy floor" in report["target"]["text"] and "planned from the sensitivity" in (fresh / "report.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-speedup", "0"], "must be a positive number"),
        (["--target-speedup", "-2"], "must be a positive number"),
        (["--target-speedup", "0.5"], "is below 1"),
        (["--target-macs", "1.5"], "fraction of the original MACs"),
        (["--target-size", "nan"], "must be a positive number"),
        (["--target-speedup", "2", "--target-latency", "5"], "both set the speed"),
        (["--target-speedup", "2", "--max-loss", "-0.5"], "--max-loss is in mAP@0.5 points"),
        (["--target-speedup", "2", "--max-loss", "nan"], "--max-loss is in mAP@0.5 points"),
        (["--target-speedup", "2", "--time-budget", "-5"], "--time-budget is in minutes"),
        (["--target-speedup", "2", "--time-budget", "1e9"], "--time-budget is in minutes"),
        (["--target-speedup", "2", "--target-size", "-1"], "must be a positive number"),
        (["--target-speedup", "fast"], "must be a positive number or max"),
        (["--target-size", "max"], "must be a positive number or min"),
        (["--target-ram", "0"], "--target-ram must be a positive number"),
        (["--target-flash", "-100"], "--target-flash must be a positive number"),
        (["--target-speedup", "max", "--target-size", "1"], "goes alone"),
        ([], "give a target"),
        (["--preset", "late-heavy", "--target-speedup", "2"], "one of a target"),
        (["--target-speedup", "2", "--sizes", "100"], "not a positive multiple of 32"),
        (["--preset", "late-heavy"], "is made for an unpruned yolov3-tiny"),
    ],
)
def test_invalid_targets_end_in_one_line(tmp_path, synthetic_valid, capsys, args, message):
    from yolo3.errors import run_cli
    from yolo3_cli.main import main

    config = toy_config(tmp_path, synthetic_valid)
    code = run_cli(main, ["compress", "-c", str(config), "--quiet", "--run-dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err


def test_failing_stage_keeps_earlier_outputs_and_resumes(finished_run, tmp_path, monkeypatch):
    from compression.budget.compress import CompressOptions, Target, run_compress
    from compression.budget.stages import Finetune
    from yolo3.config import load_config
    from yolo3.errors import UserError

    config, run_dir, _ = finished_run
    fresh = tmp_path / "run"
    shutil.copytree(run_dir, fresh)
    for stage in ("prune", "finetune", "cluster", "cluster-finetune", "int8", "floor", "plan-config", "report"):
        (fresh / "stages" / f"{stage}.json").unlink()
    for name in ("pruned.h5", "finetuned.h5", "final-int8.tflite", "report.json"):
        (fresh / name).unlink()
    options = CompressOptions(target=Target("speedup", 1.3), run_dir=fresh, progress=False)

    def broken(self, ctx):
        raise UserError("the fine-tuning broke (planted)")

    monkeypatch.setattr(Finetune, "run", broken)
    with pytest.raises(UserError, match="planted"):
        run_compress(load_config(config), None, options)
    for name in ("baseline.h5", "latency-model.json", "sensitivity.json", "plan.json", "pruned.h5", "stages/prune.json"):
        assert (fresh / name).exists(), name
    assert not (fresh / "stages" / "finetune.json").exists()


def test_changed_target_needs_force(finished_run, tmp_path):
    config, run_dir, _ = finished_run
    fresh = tmp_path / "run"
    shutil.copytree(run_dir / "stages", fresh / "stages")
    r = subprocess.run(compress_cmd(config, "--target-speedup", "1.2", "--run-dir", str(fresh)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "made from other inputs" in r.stderr and "--force" in r.stderr
    # another runtime (built-in kernels instead of XNNPACK) changes what every timing stage measured
    r = subprocess.run(compress_cmd(config, "--target-speedup", "1.3", "--no-xnnpack", "--run-dir", str(fresh)), cwd=ROOT, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 2 and "compress.xnnpack" in r.stderr and "--force" in r.stderr, r.stderr[-2000:]


def test_planner_meets_a_macs_target_exactly_as_predicted():
    from compression.budget.planner import ChannelMap, MacsCost, plan_budget, ratios_for
    from compression.budget.sensitivity import prune_to_ratios
    from compression.prune.pruning import resolve_layer_ratios
    from conftest import random_weights
    from yolo3.config import Section
    from yolo3.spec import analyse, parse_cfg, totals

    spec = parse_cfg(TOY_CFG, "toy.cfg")
    cmap = ChannelMap(spec)
    cost = MacsCost(cmap)
    full = cost(cmap.full(), 64)
    assert full == totals(analyse(spec)).macs
    pruning = Section({"min_channels": 8, "round_to": 8, "similarity_w1": 0.5, "similarity_w2": 0.5})
    # every unit loses little but the first, which loses a lot: the planner meets the target without touching it
    points = {u: [{"kept": c // 2, "loss": 0.5 if u == 0 else 0.01}] for u, c in cmap.units.items()}
    plan = plan_budget(cmap, points, {64: 0.0}, cost, 0.5 * full, [64], pruning)
    best = plan.best
    assert best.cost <= 0.5 * full and best.kept[0] == 16 and best.loss < 0.1
    ratios = resolve_layer_ratios(spec, ratios_for(best.kept, cmap))
    pruned, _ = prune_to_ratios(spec, random_weights(spec, seed=2), ratios, pruning)
    assert totals(analyse(pruned)).macs == best.cost
    # a target below what the smallest channel counts reach is reported as out of reach
    assert plan_budget(cmap, points, {64: 0.0}, cost, 0.001 * full, [64], pruning).best is None


def fake_board_table(spec, expensive: int | None = None, factor: float = 50.0):
    """A latency table as a board's profile would give it, made up: every block costs its MACs, ``expensive`` ``factor`` times more."""
    from compression.budget.latency_model import block_items, block_shapes, network_items, with_filters
    from compression.budget.latency_table import LatencyTable

    table = LatencyTable(Path("board.json"), {"cpu": "a made-up board", "machine": "aarch64", "threads": 1, "delegate": "none (built-in kernels)"},
                         {"format": 1, "tensorflow": "2.0 on another machine", "sizes": [64]}, {})  # fmt: skip

    def block_ms(layer, pixels, cin, cout):
        t = 0.01 + 1e-7 * pixels * (cin + cout + cin * cout)
        return t * factor if layer == expensive else t

    types = {i: b.type for i, b in enumerate(spec.layers)}
    out_hw = {b.layer: b.out_shape for b in block_shapes(spec, 64)}
    for it in block_items(spec, [64], 64, (1.0, 0.5, 0.25), 8) + network_items(spec, [64], 64, 8):
        if it.kind == "block":
            cin = sum(s[2] for s in it.in_shapes)
            cout = it.filters if it.filters is not None else cin if types[it.layer] == "route" else it.in_shapes[0][2]
            ms = block_ms(it.layer, out_hw[it.layer][0] * out_hw[it.layer][1], cin, cout)
        else:
            net = with_filters(spec, it.filters)
            ms = 0.05 + sum(block_ms(b.layer, b.out_shape[0] * b.out_shape[1], sum(s[2] for s in b.in_shapes), b.out_shape[2])
                            for b in block_shapes(net, it.size))  # fmt: skip
        table.ms[table.key(spec, it)] = ms
    return table


def test_a_plan_from_a_board_table_cuts_the_layer_that_board_makes_expensive():
    """--latency-table: the latency model is fitted to the board's timings (nothing converted or timed here) and the plan follows them."""
    from compression.budget.latency_model import Item, measure_latency_model
    from compression.budget.planner import ChannelMap, LatencyCost, plan_budget
    from yolo3.config import Section
    from yolo3.errors import UserError
    from yolo3.spec import parse_cfg

    spec = parse_cfg(TOY_CFG, "toy.cfg")
    cmap = ChannelMap(spec)
    pruning = Section({"min_channels": 8, "round_to": 8, "similarity_w1": 0.5, "similarity_w2": 0.5})
    points = {u: [{"kept": c // 2, "loss": 0.01}, {"kept": c // 4, "loss": 0.02}] for u, c in cmap.units.items()}
    kept = {}
    for expensive in (None, 6):
        model = measure_latency_model(spec, [64], 64, levels=(1.0, 0.5, 0.25), progress=False, table=fake_board_table(spec, expensive))
        assert model.device["cpu"] == "a made-up board" and model.threads == 1 and not model.xnnpack
        whole = next(n for n in model.networks if not n["filters"])
        assert abs(whole["predicted_ms"] - whole["ms"]) < 0.05 * whole["ms"]
        cost = LatencyCost(model, cmap)
        kept[expensive] = plan_budget(cmap, points, {64: 0.0}, cost, cost(cmap.full(), 64) / 1.5, [64], pruning).best.kept
    assert kept[None][6] == 64 and kept[None][4] < 64  # on a board where time follows MACs, the 3x3 of layer 4 is cut, the 1x1 after it kept
    assert kept[6][6] < 64 and kept[6][4] == 64  # where that 1x1 costs 50 times its MACs, it is cut instead
    # a probe the table lacks (another model, other sizes) is one line that says how to export the right ones
    with pytest.raises(UserError, match="holds no timing for 1 of the 1 probes needed here, e.g. the whole network at 32 px.*--export-probes"):
        fake_board_table(spec).lookup(spec, [Item("network", 32, filters={})])


def test_two_targets_at_once_are_both_met_by_the_plan():
    """A MACs budget and a parameter budget together: the greedy search stops only when both hold."""
    from compression.budget.planner import ChannelMap, CombinedCost, MacsCost, plan_budget
    from yolo3.config import Section
    from yolo3.spec import analyse, parse_cfg, totals

    spec = parse_cfg(TOY_CFG, "toy.cfg")
    cmap = ChannelMap(spec)
    macs = MacsCost(cmap)

    def params(kept, size):
        return totals(analyse(cmap.spec_with(kept), size, size)).params

    full_macs, full_params = macs(cmap.full(), 64), params(cmap.full(), 64)
    pruning = Section({"min_channels": 8, "round_to": 8, "similarity_w1": 0.5, "similarity_w2": 0.5})
    points = {u: [{"kept": c // 2, "loss": 0.01}] for u, c in cmap.units.items()}
    alone = plan_budget(cmap, points, {64: 0.0}, macs, 0.8 * full_macs, [64], pruning).best
    assert params(alone.kept, 64) > 0.5 * full_params  # the MACs target alone leaves the parameters above the second budget
    both = plan_budget(cmap, points, {64: 0.0}, CombinedCost([(macs, 0.8 * full_macs), (params, 0.5 * full_params)]), 1.0, [64], pruning).best
    assert macs(both.kept, 64) <= 0.8 * full_macs and params(both.kept, 64) <= 0.5 * full_params


def test_max_speedup_is_the_cheapest_plan_the_floor_allows():
    """--target-speedup max: the greedy path is followed to its end and the cheapest state whose predicted loss holds the floor
    sets the target; a unit that would break the floor alone is never cut, an input size that breaks it is never chosen."""
    import math
    from types import SimpleNamespace

    from compression.budget.plan import Inputs, resolve_extreme
    from compression.budget.planner import ChannelMap, LatencyCost, plan_budget
    from compression.budget.targets import Target
    from yolo3.config import Section
    from yolo3.names import conv_name
    from yolo3.spec import parse_cfg

    spec = parse_cfg(TOY_CFG, "toy.cfg")
    cmap = ChannelMap(spec)
    latency = SimpleNamespace(alpha=0.0, beta=1.0, block_time=lambda layer, kind, px, cin, cout: px * (cin or 1) * (cout or 1) * 1e-6)
    pruning = Section({"min_channels": 8, "round_to": 8, "similarity_w1": 0.5, "similarity_w2": 0.5})
    first = min(cmap.units)
    units = {conv_name(u): {"group": u, "points": [{"kept": c // 2, "loss": 0.02 if u == first else 0.001}]} for u, c in cmap.units.items()}
    sensitivity = {"pruning": {"base_mAP50": 0.9, "units": units}, "sizes": {"64": 0.9, "32": 0.85}}

    def resolve(max_loss):
        target = Target("speedup", math.nan, extreme=True)
        job = SimpleNamespace(options=SimpleNamespace(target=target, max_loss=max_loss, also=()), targets=[target], sizes=[64, 32],
                              base_size=64, pruning=lambda: pruning, run_dir="run")  # fmt: skip
        return resolve_extreme(Inputs(job, spec, latency, sensitivity=sensitivity))

    target, why = resolve(1.0)
    assert not target.extreme and target.value > 1.2 and why["size"] == 64 and why["predicted_loss_points"] <= 1.0
    cost = LatencyCost(latency, cmap)
    plan = plan_budget(cmap, {u["group"]: u["points"] for u in units.values()}, {64: 0.0, 32: 0.05}, cost,
                       cost(cmap.full(), 64) / target.value, [64], pruning)  # fmt: skip
    assert plan.best.kept[first] == cmap.units[first] and plan.best.loss <= 0.01  # the planned target is met within the floor
    assert resolve(0.0)[0].value == 1.0  # no loss allowed: the unpruned network
    from compression.budget.targets import parse_targets
    from yolo3.errors import UserError

    with pytest.raises(UserError, match="goes alone"):
        parse_targets(speedup="max", size=1.0)
    assert parse_targets(size="MIN")[0].to_json()["value"] == "min"


def test_the_time_budget_fills_the_time_left_within_bounds():
    from compression.budget.schedule import MAX_FACTOR, finetune_epochs, tail_seconds

    epochs, why = finetune_epochs(time_left=1800, epoch_seconds=10, tail=300, configured=60)
    assert epochs == 150 and "150 epochs" in why  # (1800 - 300) / 10
    assert finetune_epochs(1e6, 10, 300, 60)[0] == MAX_FACTOR * 60  # more time buys at most MAX_FACTOR times the epochs
    assert finetune_epochs(100, 10, 300, 60)[0] == 1  # no time left: one epoch, not none
    assert tail_seconds(10, 5, 2, 60) == 10 * 9 + 60


def test_a_short_fine_tune_times_a_long_one_by_its_steady_epochs():
    """The first epoch traces the graph (twice as long on BCCD) and set-up is paid once: a long run's epoch is the median of the
    others with the evaluation share, not the short run's mean."""
    from compression.budget.stages import EPOCH_OVERHEAD, steady_epoch_seconds

    tuned = {"seconds": 60.0, "history": [{"epoch": 1, "seconds": 21.0}, {"epoch": 2, "seconds": 10.0}, {"epoch": 3, "seconds": 12.0},
                                          {"epoch": 4, "seconds": 9.0}]}  # fmt: skip
    assert steady_epoch_seconds(tuned, 4) == pytest.approx(EPOCH_OVERHEAD * 10.0)
    stalled = {"seconds": 60.0, "history": [{"epoch": 1, "seconds": 20.5}, {"epoch": 2, "seconds": 20.5}, {"epoch": 3, "seconds": 10.2}]}
    assert steady_epoch_seconds(stalled, 3) == pytest.approx(EPOCH_OVERHEAD * 10.2)  # an epoch that stalled is not the rule
    assert steady_epoch_seconds({"seconds": 30.0, "history": [{"epoch": 1, "seconds": 21.0}]}, 1) == 30.0  # one epoch: its mean


def test_the_time_budget_leaves_plans_out_rather_than_shorten_their_first_round():
    from compression.budget.schedule import candidate_schedule

    seconds, predicted = {416: 10, 352: 8, 320: 6, 288: 5}, {416: 0.80, 352: 0.85, 320: 0.84, 288: 0.70}
    epochs, sizes, _ = candidate_schedule(6000, seconds, reserve=1200, configured=3, predicted_map=predicted)
    assert (epochs, sizes) == (9, [288, 320, 352, 416])  # 0.25 * 4800 / 29 = 41: more time lengthens the round, at most 3x
    epochs, sizes, why = candidate_schedule(1500, seconds, reserve=1200, configured=3, predicted_map=predicted)
    # 0.25 * 300 = 75 s: all four need 87 s for 3 epochs; without 288 (least predicted) 72 s fit
    assert (epochs, sizes) == (3, [320, 352, 416]) and "left out" in why and "288" in why
    epochs, sizes, why = candidate_schedule(1300, seconds, reserve=1200, configured=3, predicted_map=predicted)
    assert (epochs, sizes) == (3, [352]) and "without a short fine-tune" in why  # not even two plans: the best predicted


def test_loss_curve_is_monotone_and_interpolates():
    from compression.budget.planner import loss_curve

    curve = loss_curve(64, [{"kept": 48, "loss": 0.1}, {"kept": 32, "loss": 0.05}, {"kept": 16, "loss": 0.4}])
    assert curve(64) == 0 and curve(56) == pytest.approx(0.05)
    assert curve(32) == pytest.approx(0.1)  # noise (less loss for fewer channels) does not make pruning look free
    assert curve(8) > curve(16) == pytest.approx(0.4)


def test_shortcut_groups_prune_as_one_unit():
    from compression.budget.sensitivity import prune_to_ratios, pruning_units
    from compression.prune.pruning import resolve_layer_ratios
    from conftest import random_weights
    from yolo3.config import Section
    from yolo3.zoo import build_spec

    spec = build_spec("yolov3", 3, 128)
    units = {u.name: u for u in pruning_units(spec)}
    tied = next(u for u in units.values() if len(u.members) > 2)
    ratios = resolve_layer_ratios(spec, {f"conv_{tied.members[-1]}": 0.5})
    assert ratios == {tied.id: 0.5}
    pruning = Section({"min_channels": 8, "round_to": 8, "similarity_w1": 0.5, "similarity_w2": 0.5})
    new, _ = prune_to_ratios(spec, random_weights(spec, seed=0), ratios, pruning)
    counts = {new.layers[m].get_int("filters") for m in tied.members}
    assert len(counts) == 1 and counts.pop() in (tied.channels // 2, tied.channels // 2 + 1)  # + a carrier channel
    from yolo3.errors import UserError

    with pytest.raises(UserError, match="tied by a shortcut"):
        resolve_layer_ratios(spec, {f"conv_{tied.members[0]}": 0.5, f"conv_{tied.members[1]}": 0.25})


def test_holdout_and_test_splits(tmp_path, synthetic_valid):
    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.errors import UserError

    path = toy_config(tmp_path, synthetic_valid)
    raw = json.loads(path.read_text())
    raw["train"]["holdout_fraction"] = 0.25
    path.write_text(json.dumps(raw))
    config = load_config(path)
    sets = {s: [r.image.name for r in read_dataset(config.dataset(s), config.labels).records] for s in ("train", "valid", "test")}
    assert len(sets["valid"]) == 6 and len(sets["train"]) == 18 and not set(sets["valid"]) & set(sets["train"])
    assert sorted(sets["test"]) == sorted(sets["train"] + sets["valid"])  # the valid section (here the same folder) is the test split
    again = load_config(path)
    assert [r.image.name for r in read_dataset(again.dataset("valid"), again.labels).records] == sets["valid"]
    raw["test"] = dict(annot_format="voc", test_image_folder=raw["valid"]["valid_image_folder"], test_annot_folder=raw["valid"]["valid_annot_folder"])
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="either a test section or train.holdout_fraction"):
        load_config(path)


def test_latency_model_fits_blocks(finished_run):
    """Every costly block has a fit; the network mapping lands near the whole networks timed in the same run."""
    from compression.budget.latency_model import LatencyModel, block_shapes
    from yolo3.spec import parse_cfg

    _, run_dir, _ = finished_run
    model = LatencyModel.from_json(json.loads((run_dir / "latency-model.json").read_text()))
    assert model.xnnpack and LatencyModel.from_json(model.to_json()) == model
    spec = parse_cfg(TOY_CFG, "toy.cfg")
    assert set(model.coefficients) == {b.layer for b in block_shapes(spec, 64)}
    assert {n["size"] for n in model.networks} == {64, 32} and len(model.networks) >= 4
    errors = [abs(n["predicted_ms"] - n["ms"]) / n["ms"] for n in model.networks]
    assert np.median(errors) < 0.5, model.networks


def test_export_probes_writes_what_the_latency_model_times_and_the_board_profile_reads_it(finished_run, tmp_path):
    """--export-probes: one file per distinct probe of the model and its lever variants, a manifest, nothing trained; profile times them all."""
    from compression.budget.latency_model import block_items, network_items, probe_key
    from compression.budget.levers import Levers
    from compression.budget.probes import probe_set
    from yolo3.spec import parse_cfg

    config, _, _ = finished_run  # the same toy and sizes: its probes are in the session's cache, nothing is converted again
    folder = tmp_path / "probes"
    r = subprocess.run(compress_cmd(config, "--export-probes", str(folder)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "python -m yolo3.lite profile probes" in r.stdout
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {p.name for p in folder.glob("*.tflite")}
    assert files == set(manifest["probes"]) and manifest["sizes"] == [64, 32] and len(manifest["variants"]) == 1  # levers = [] here
    spec = parse_cfg((Path(config).parent / "toy.cfg").read_text())
    needed = {f"{probe_key(spec, it)}.tflite" for it in block_items(spec, [64, 32], 64, (1.0, 0.5), 8) + network_items(spec, [64, 32], 64, 8)}
    assert needed == files  # exactly what the cost-models stage of this run times
    # with levers, every variant's blocks and whole network are there once, shared blocks written once
    variants, probes = probe_set(spec, [64, 32], 64, (1.0, 0.5), 8, ["pool_stride", "relu"])
    assert variants[0] == Levers() and [v.pool_stride for v in variants[1:]] == [(0,), (0, 2), (0, 2)] and variants[-1].relu
    keys = [p.key for p in probes]
    assert len(keys) == len(set(keys)) and any(len(p.variants) > 1 for p in probes)
    for v in variants:
        levered = v.apply_spec(spec)
        assert {probe_key(levered, it) for it in block_items(levered, [64, 32], 64, (1.0, 0.5), 8)} <= set(keys)
    # on the board: the runner times every probe into a table that carries the manifest
    table = tmp_path / "table.json"
    r = subprocess.run([sys.executable, "-m", "yolo3.lite", "profile", str(folder), "--out", str(table), "--threads", "1", "--rounds", "1",
                        "--runs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(table.read_text())
    assert set(data["probes"]) == files and data["manifest"]["probes"] == manifest["probes"]
    assert all(t["median_ms"] > 0 for t in data["probes"].values())
    # what a user can get wrong ends in one line
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for args, message in ((["--export-probes", str(tmp_path / "mine")], "not probes of this tool"),
                          (["--export-probes", str(folder), "--target-speedup", "2"], "give --target-speedup in a run of its own")):  # fmt: skip
        r = subprocess.run(compress_cmd(config, *args), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_a_run_planned_from_a_board_table_reports_the_board_and_takes_its_measurement(finished_run, tmp_path):
    """--latency-table: the probes profiled on a "board" (this machine, built-in kernels, one thread) plan the run; the report gives
    the board's predicted figures and the command that times them there; --board-measured puts that measurement in, redoing the
    report alone; a table or measurement that is not this run's ends in one line."""
    config, run_dir, _ = finished_run
    folder, table = tmp_path / "probes", tmp_path / "table.json"
    r = subprocess.run(compress_cmd(config, "--export-probes", str(folder)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "yolo3.lite", "profile", str(folder), "--out", str(table), "--threads", "1", "--no-xnnpack",
                        "--rounds", "2", "--runs", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    fresh = tmp_path / "run"
    base = compress_cmd(config, "--target-speedup", "1.3", "--run-dir", str(fresh), "--latency-table", str(table))
    r = subprocess.run([*base, "--measurements-from", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "baseline: done before, skipped" in r.stderr  # lent by the host run; every stage that times (and those after) is the board's
    report = json.loads((fresh / "report.json").read_text())
    assert report["latency_basis"] == "the board, predicted from its latency table" and report["threads"] == 1 and not report["xnnpack"]
    board = report["board"]
    assert board["device"]["delegate"] == "none (built-in kernels)" and board["predicted"]["final_ms"] == report["latency_ms_final_int8"]
    assert board["command"] == "python -m yolo3.lite benchmark baseline-int8.tflite final-int8.tflite --threads 1 --no-xnnpack --json > board.json"
    assert report["latency_host"]["threads"] == 1 and report["latency_host"]["xnnpack"]  # this machine's timing, beside
    assert json.loads((fresh / "latency-model.json").read_text())["device"] == board["device"]
    assert json.loads((fresh / "plan.json").read_text())["latency_checked"].startswith("not timed: planned for the board")
    assert "Time it on the board" in r.stdout and "--board-measured board.json" in r.stdout
    # on the board: the command the report gives, then the measurement back into the report (the report stage alone is redone)
    r = subprocess.run([sys.executable, "-m", "yolo3.lite", *board["command"].split(" > ")[0].split()[3:], "--rounds", "2", "--runs", "2"],
                       cwd=fresh, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (fresh / "board.json").write_text(r.stdout)
    r = subprocess.run([*base, "--board-measured", str(fresh / "board.json")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "floor: done before, skipped" in r.stderr and "] report ..." in r.stderr
    measured = json.loads((fresh / "report.json").read_text())
    assert measured["latency_basis"] == "the board, measured (--board-measured)"
    m = measured["board"]["measured"]
    assert measured["speedup_vs_unpruned_int8"] == pytest.approx(m["unpruned_ms"] / m["final_ms"]) and "Measured on the board" in r.stdout
    # what a user can get wrong: a measurement of other files, a table that is not JSON, a table of other probes
    other = json.loads((fresh / "board.json").read_text())
    next(v for k, v in other["models"].items() if k.endswith("final-int8.tflite"))["sha1"] = "0" * 40
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "broken.json").write_text("{not json")
    foreign = json.loads(table.read_text())
    foreign["probes"] = dict(list(foreign["probes"].items())[:3])
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    for args, message in (([*base, "--board-measured", str(tmp_path / "other.json")], "is not this run's"),
                          ([*base[:-1], str(tmp_path / "broken.json")], "not a JSON latency table"),
                          ([*base[:-1], str(tmp_path / "foreign.json")], "probes this run needs"),
                          ([*base, "--threads", "2"], "give one or the other")):  # fmt: skip
        r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (message, r.stderr[-2000:])
    assert json.loads((fresh / "report.json").read_text())["latency_basis"] == "the board, measured (--board-measured)"  # nothing was cleared


def test_ram_and_flash_of_the_int8_graph_are_counted_from_the_cfg_and_a_ram_target_is_met(finished_run, tmp_path):
    """The int8 graph's peak activation memory and flash, counted from the cfg, are the toy's .tflite's own; a plan for a RAM budget
    meets it by that count; out of reach names the least the planner gets; a RAM target runs to the end and is measured on the file."""
    from compression.budget.memory_model import MemoryModel, estimated_peak
    from compression.budget.planner import ChannelMap, FlashCost, RamCost, plan_budget
    from yolo3.config import Section
    from yolo3.spec import parse_cfg
    from yolo3.tflite_memory import memory_report

    config, run_dir, _ = finished_run
    spec = parse_cfg(TOY_CFG, "toy.cfg")
    measured = memory_report(run_dir / "baseline-int8.tflite")
    # 64x64x16 from the first convolution and as much again from its LeakyReLU, alive together: 131072 bytes, + the 12288-byte image
    assert estimated_peak(spec, 64) == measured["peak_activation_bytes"] == 2 * 64 * 64 * 16 + 64 * 64 * 3
    model = MemoryModel.measure(spec, 64, run_dir / "baseline-int8.tflite")
    assert model.ram_scale == 1.0 and model.flash(spec) == measured["flash_bytes"]
    cmap = ChannelMap(spec)
    pruning = Section({"min_channels": 8, "round_to": 8, "similarity_w1": 0.5, "similarity_w2": 0.5})
    points = {u: [{"kept": c // 2, "loss": 0.01}] for u, c in cmap.units.items()}
    ram = RamCost(model, cmap)
    plan = plan_budget(cmap, points, {64: 0.0}, ram, 0.6 * ram(cmap.full(), 64), [64], pruning).best
    assert plan.kept[0] < 16 and ram(plan.kept, 64) <= 0.6 * ram(cmap.full(), 64)  # the first layer's channels hold the peak
    flash = FlashCost(model, cmap)
    assert flash(plan.kept, 64) < flash(cmap.full(), 64)
    # end to end, the measurements lent: out of reach in one line; within reach, measured on the delivered file
    r = subprocess.run(compress_cmd(config, "--target-ram", "1", "--run-dir", str(tmp_path / "none"), "--measurements-from", str(run_dir)), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 2 and "peak activation memory (RAM) of at most 1 KiB cannot be reached" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    budget = 0.5 * measured["peak_activation_bytes"] / 1024
    r = subprocess.run(compress_cmd(config, "--target-ram", f"{budget:g}", "--run-dir", str(tmp_path / "ram"), "--measurements-from", str(run_dir),
                                    "--max-loss", "100"), cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "ram" / "report.json").read_text())
    final = next(e for e in report["stages"] if e["file"] == "final-int8.tflite")
    (met,) = report["targets"]
    assert met["kind"] == "ram" and met["measured"] == final["peak_activation_bytes"] / 1024 and met["met"], report["targets"]


def test_other_finetune_epochs_redo_finetune_and_after_not_the_measurements(finished_run, tmp_path):
    config, run_dir, _ = finished_run
    fresh = tmp_path / "run"
    shutil.copytree(run_dir, fresh)
    r = subprocess.run(compress_cmd(config, "--target-speedup", "1.3", "--run-dir", str(fresh), "--epochs", "1", "--force"), cwd=ROOT,
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("baseline", "cost-models", "reach", "sensitivity", "plan", "candidates", "prune"):
        assert f"{stage}: done before, skipped" in r.stderr, stage
    for stage in ("finetune", "cluster", "cluster-finetune", "int8", "floor", "plan-config", "report"):
        assert f"] {stage} ..." in r.stderr, stage
    rows = json.loads((fresh / "report.json").read_text())["stages"]
    assert next(e for e in rows if e["stage"] == "pruned + fine-tuned")["note"].startswith("1 epochs")


def test_levers_fold_max_pools_into_strides_and_the_plan_prunes_the_levered_model(tmp_path, synthetic_valid):
    """With levers allowed, the toy's two conv + max-pool pairs become stride-2 convolutions when the target asks for speed.

    The same run holds a 12-minute time budget: it ends within it, and the time left buys fine-tuning epochs (up to 3x the configured one).
    The stages before the fine-tune take 4 minutes on a fast machine and about twice that on an AVX2-only one under load; a tighter
    budget leaves the epochs to the machine's speed that day.
    """
    from yolo3.spec import read_cfg

    # one size: no candidates. One thread: the toy's int8 invoke takes half a millisecond, where waking a second thread costs as much
    # as a max-pool saves and 2-thread timings swung 0.7x-1.4x between runs; with one they repeat (1.2x for the first pair, 1.4x for two)
    config = toy_config(tmp_path, synthetic_valid, finetune_epochs=1, cluster=False, time_budget=12.0, sizes=[64], threads=1)
    run_dir = tmp_path / "out"
    r = subprocess.run(compress_cmd(config, "--target-speedup", "1.5", "--run-dir", str(run_dir)), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    levers = json.loads((run_dir / "levers.json").read_text())
    assert [t["levers"]["pool_stride"] for t in levers["timed"]] == [[0], [0, 2], [0, 2]]  # then with ReLU
    assert max(t["speedup"] for t in levers["timed"]) > 1.0  # a quarter of the pixels in the first layers is faster as int8
    # searched by bisection from the fastest (the random toy loses nothing, so every variant tried passes): the fastest is kept
    from compression.budget.stages import worth_training

    worth = worth_training([t["ms"] for t in levers["timed"]], levers["unpruned_ms"])  # a variant within noise of a simpler one is not trained
    fastest = min(worth, key=lambda k: levers["timed"][k]["ms"])
    assert 1 <= len(levers["tried"]) <= len(worth).bit_length() and levers["chosen"] == levers["timed"][fastest]["levers"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["levers"] == json.loads((run_dir / "stages" / "levers.json").read_text())["result"]["names"]
    assert report["levers"], "the toy meets 1.5x only with a lever"
    pruned = read_cfg(run_dir / "pruned.cfg")
    assert pruned.layers[0].get_int("stride") == 2 and pruned.layers[1].type == "convolutional"
    assert report["max_loss"] == 1.0 and report["delivered"] in ("plan", "levers", "unpruned")
    assert report["time_budget_min"] == 12.0 and report["seconds"] <= 1.1 * 12 * 60
    finetune = json.loads((run_dir / "stages" / "finetune.json").read_text())["result"]
    # the epochs are what the time left buys: the configured 1 tripled on a machine that leaves room (4 of the 12 minutes used before
    # the fine-tune on a fast one), fewer on one that does not; the schedule's own figures (rounded to 0.1 min) must give its choice
    from compression.budget.schedule import bounded

    left, kept, per_epoch = map(float, re.match(r"([\d.]+) min left, ([\d.]+) min kept for what follows, ([\d.]+) s per epoch", finetune["schedule"]).groups())
    possible = {bounded((left + d1 - kept - d2) * 60 / per_epoch, 1) for d1 in (-0.05, 0.05) for d2 in (-0.05, 0.05)}
    # no candidate round timed the plan: three epochs did, and the fine-tune went on from them
    assert finetune["probe_epochs"] == 3 and (run_dir / "finetune" / "probe" / "last.h5").exists()
    scheduled = finetune["planned_epochs"] - finetune["probe_epochs"]
    assert scheduled in possible, finetune["schedule"]
    # the trainer counted again before every epoch: it trains what was scheduled unless the machine slowed down past the deadline
    assert finetune["epochs"] == finetune["planned_epochs"] or "epochs" in finetune["deadline"]
    if left - kept > 4 * per_epoch / 60:
        assert scheduled == 3, finetune["schedule"]  # time was left: it bought epochs


def test_a_target_predicted_within_reach_but_measured_too_slow_says_so_with_the_milliseconds():
    """The planner's prediction reaches 1.5x but every timed plan was too slow: the message gives the timings, not the predicted reach."""
    from types import SimpleNamespace

    from compression.budget.plan import unreachable
    from compression.budget.targets import parse_target
    from yolo3.errors import UserError

    target = parse_target(speedup=1.5)
    job = SimpleNamespace(options=SimpleNamespace(target=target, also=()), base_size=320, run_dir=Path("run"))
    plan = SimpleNamespace(reach={288: 1.0})
    cost = lambda kept, size: 1.56  # noqa: E731 - the unpruned cost: 1.56x predicted at the reach
    slow = {288: {"met": False, "measured_ms": 2.1, "wanted_ms": 1.8, "timings": [{}, {}, {}]}}
    with pytest.raises(UserError) as err:
        unreachable(job, plan, cost, {}, 1.0, target, slow)
    text = str(err.value)
    assert "cannot be reached on this machine" in text and "at 288 px 2.10 ms against 1.80 ms wanted (3 timing(s))" in text
    assert "1.56x" not in text
    with pytest.raises(UserError) as err:  # not timed: the prediction is what there is
        unreachable(job, plan, cost, {}, 1.0, target, {})
    assert "the most the planner can reach is 1.56x (predicted)" in str(err.value)
