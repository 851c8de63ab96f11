"""Latency levers as Spec + weights transforms: pool -> stride and ReLU keep shapes, copy kernels, and stay a cfg OpenCV reads like Keras."""

import numpy as np
import pytest

from conftest import random_weights


def _tiny(size: int = 64):
    from yolo3.zoo import build_spec

    return build_spec("yolov3-tiny", 3, size)


def test_pool_stride_pairs_are_the_convolutions_only_a_two_by_two_pool_reads():
    from compression.budget.levers import pool_stride_pairs
    from yolo3.zoo import build_spec

    assert pool_stride_pairs(_tiny()) == [0, 2, 4, 6]  # conv_8 is also read by the second head's [route]; pool 11 has stride 1
    assert pool_stride_pairs(build_spec("yolov3", 3, 64)) == []  # Darknet-53 downsamples with stride-2 convolutions already


def test_pool_stride_keeps_shapes_copies_kernels_and_fixes_references():
    from compression.budget.levers import Levers
    from yolo3.spec import analyse, route_inputs

    spec = _tiny()
    weights = random_weights(spec, seed=2)
    levers = Levers(pool_stride=(0, 2, 4), relu=True)
    new, new_weights = levers.apply(spec, weights)
    assert len(new.layers) == len(spec.layers) - 3
    before = [info.out_shape for info in analyse(spec) if info.type == "yolo"]
    assert [info.out_shape for info in analyse(new) if info.type == "yolo"] == before
    mapping = levers.conv_map(spec)
    for old, now in mapping.items():
        assert np.array_equal(new_weights.convs[now].kernel, weights.convs[old].kernel)
    assert {new.layers[mapping[i]].get_int("stride") for i in (0, 2, 4)} == {2}
    assert {new.layers[i].get_str("activation", "") for i in new.conv_indices()} <= {"relu", "linear"}
    second_route = [i for i, b in enumerate(new.layers) if b.type == "route"][-1]
    assert mapping[8] in route_inputs(new, second_route)  # the [route] still reads the layer it read
    with pytest.raises(ValueError, match="conv_8"):
        Levers(pool_stride=(8,)).apply(spec, weights)


def test_levered_cfg_reads_in_opencv_like_keras(tmp_path):
    from test_opencv import assert_keras_matches_opencv

    from compression.budget.levers import Levers

    spec = _tiny()
    spec, weights = Levers(pool_stride=(0, 2, 4, 6), relu=True).apply(spec, random_weights(spec, seed=5))
    assert_keras_matches_opencv(spec, weights, tmp_path, "levered")


def _records(sides: list[float], image: int = 640):
    from yolo3.datasets import Record

    return [Record.make("x.jpg", image, image // 2, [[10, 10, 10 + s, 10 + 2 * s]], [0]) for s in sides]


def test_the_input_size_floor_follows_the_boxes():
    from compression.budget.sizes import candidate_sizes, finest_stride, size_floor

    spec = _tiny(416)
    assert finest_stride(spec) == 16
    # small boxes (32 px of a 640 px side): one 16 px cell of the finest head needs 16 / 0.05 = 320 px of input
    floor, why = size_floor(_records([32.0] * 20), spec)
    assert floor == 320 and "320" in why
    # boxes eight times larger allow an input eight times smaller
    assert size_floor(_records([256.0] * 20), spec)[0] == 64
    # the floor reads the small end of the boxes (10th percentile), not their mean
    assert size_floor(_records([32.0] * 3 + [400.0] * 17), spec)[0] == 320
    assert candidate_sizes(320, 416, 4) == [416, 384, 352, 320]
    assert candidate_sizes(128, 416, 4) == [416, 320, 224, 128]
    assert candidate_sizes(512, 416, 4) == [416]


def test_floor_choice_delivers_the_plan_or_the_fastest_model_within_the_floor():
    from compression.budget.stages import floor_choice

    plan = {"name": "plan", "what": "the plan", "loss_points": 0.4, "speedup": 3.1}
    levers = {"name": "levers", "what": "the levers alone", "loss_points": 0.6, "speedup": 2.4}
    unpruned = {"name": "unpruned", "what": "the unpruned int8 model", "loss_points": 0.2, "speedup": 1.0}
    assert floor_choice([plan, levers, unpruned], 1.0, "3x") == (plan, None)
    pick, message = floor_choice([{**plan, "loss_points": 4.0}, levers, unpruned], 1.0, "3x faster")
    assert pick is levers
    assert "3x faster costs 4.00 mAP@0.5 points" in message and "the levers alone: 2.40x faster" in message
    pick, message = floor_choice([{**plan, "loss_points": 4.0}, {**levers, "loss_points": 2.0}, {**unpruned, "loss_points": 1.5}], 1.0, "3x")
    assert pick["name"] == "unpruned" and "no model holds the floor" in message
    # judged at the bound: a measured loss of 0.4 that may be 1.6 does not hold a floor of 1
    pick, message = floor_choice([{**plan, "loss_bound": 1.6}, {**levers, "loss_bound": 0.9}, unpruned], 1.0, "3x", confidence=0.9)
    assert pick["name"] == "levers" and "0.40 mAP@0.5 points (at most 1.60 with 90 % confidence) on validation" in message


def test_floor_repairs_a_fallback_that_breaks_it_as_plain_int8_and_delivers_the_repaired_file(tmp_path, monkeypatch):
    """When the plan breaks the floor, a fallback whose post-training int8 breaks it too goes through the int8 repair ladder
    (the int8 stage's, here replaced by a stand-in) and is judged again as repaired; a fallback the ladder cannot mend stays."""
    from pathlib import Path
    from types import SimpleNamespace

    from test_resampling import CLASSES, random_set

    from compression.budget import latency_model, stages
    from yolo3.metrics import match_detections

    records, clean = random_set(5, images=40, noise=0.0)
    matched = {name: match_detections(records, random_set(5, images=40, noise=noise)[1] if noise else clean, CLASSES)
               for name, noise in (("baseline.h5", 0), ("plan-int8.tflite", 25.0), ("baseline-int8.tflite", 25.0), ("levered-int8.tflite", 25.0),
                                   ("unpruned-final-int8.tflite", 0))}  # fmt: skip
    for name in ("baseline.h5", "levered.h5", "plan-int8.tflite", "baseline-int8.tflite"):
        (tmp_path / name).write_bytes(name.encode())
    laddered = []

    def ladder(ctx, model_h5, size, files):  # mends the unpruned model only: the levered one keeps its plain int8
        laddered.append(model_h5.name)
        chosen = "qat" if model_h5.name == "baseline.h5" else "ptq"
        files.final.write_bytes(b"repaired " + model_h5.name.encode())
        return {"chosen": chosen, "results": {"ptq": {"valid": 0.5}, **({"qat": {"valid": 0.9}} if chosen == "qat" else {})}}

    monkeypatch.setattr(stages, "int8_ladder", ladder)
    monkeypatch.setattr("compression.quantize.tflite_export.export_tflite",
                        lambda h5, out, *a, **k: Path(out).write_bytes(b"plain levered"))  # fmt: skip
    monkeypatch.setattr(latency_model, "time_models", lambda paths, *a, **k: [10.0, 4.0, 8.0, 10.0][: len(paths)])
    job = SimpleNamespace(config=SimpleNamespace(labels=["a", "b", "c"]), base_size=64, threads=1, xnnpack=True, latency_table=None, options=SimpleNamespace(progress=False, target=None),
                          matches=lambda path, split, config=None: matched[Path(path).name], at_size=lambda size: None,
                          spec=lambda h5: None, calibration=lambda: [], describe_targets=lambda: "3x faster than the unpruned int8 model")  # fmt: skip
    settings = {"run.max_loss": 1.0, "run.strict": False, "compress.floor_confidence": 0.9, "compress.calibration_samples": 8}
    results = {"int8": {"chosen": "ptq"}, "candidates": {"chosen": 64}, "plan": {"kept": {"64": {}}}, "levers": {"names": ["2 max-pools -> stride"]}}
    ctx = SimpleNamespace(services=job, run_dir=tmp_path, setting=settings.__getitem__, result=results.__getitem__,
                          input=lambda name: tmp_path / name, output=lambda name: tmp_path / name)  # fmt: skip
    out = stages.Floor().run(ctx)
    assert laddered == ["levered.h5", "baseline.h5"]  # both fallbacks broke the floor as plain int8
    levers, unpruned = out["options"][1:]
    assert levers["file"] == "levered-int8.tflite" and levers["repair"]["chosen"] == "ptq"
    assert unpruned["file"] == "fallback-repair/unpruned-final-int8.tflite" and unpruned["repair"]["chosen"] == "qat"
    assert unpruned["loss_bound"] <= 1.0 < levers["loss_bound"]  # judged again as repaired: it now holds the floor
    assert out["delivered"] == "unpruned" and "int8 repaired: qat" in out["message"]
    assert (tmp_path / "final-int8.tflite").read_bytes() == b"repaired baseline.h5"
    assert "fallback-repair" in stages.Floor.writes and set(stages.INT8_LADDER_READS) <= set(stages.Floor.reads)


def test_judge_losses_bounds_a_small_noisy_split_above_the_measured_loss():
    """Paired bootstrap over the validation images: the bound is at least the measured loss, and a model equal to the reference loses 0."""
    import numpy as np
    from test_resampling import CLASSES, random_set

    from compression.budget.stages import judge_losses
    from yolo3.metrics import match_detections

    records, good = random_set(7, images=16, noise=2.0)
    _, worse = random_set(7, images=16, noise=9.0)
    ref = match_detections(records, good, CLASSES)
    options = [{"name": "plan"}, {"name": "unpruned"}]
    images, ref_map = judge_losses(ref, options, [match_detections(records, worse, CLASSES), ref], 0.9, rounds=400)
    assert images == 16
    plan, same = options
    assert same["valid"] == ref_map and plan["valid"] == pytest.approx(ref_map - plan["loss_points"] / 100)
    assert plan["loss_points"] > 0 and plan["loss_bound"] > plan["loss_points"] and plan["loss_spread"] > 0
    assert same["loss_points"] == 0 and same["loss_bound"] == 0
    measured_only = [{"name": "plan"}]
    judge_losses(ref, measured_only, [match_detections(records, worse, CLASSES)], 0.5)
    assert measured_only[0]["loss_bound"] == measured_only[0]["loss_points"] == plan["loss_points"]
    assert np.isfinite(plan["valid"])


def test_a_lever_variant_is_trained_only_if_it_beats_every_simpler_one():
    """Nested variants (1 pair, 2 pairs, ..., all + ReLU): one timed within 3 % of a simpler one adds changes for nothing measurable."""
    from compression.budget.stages import worth_training

    # BCCD's timings: 1 pair 9.22 ms, 2 pairs 7.42, 3 pairs 7.63, 4 pairs 7.42, 4 pairs + ReLU 7.19, unlevered 11.07
    assert worth_training([9.22, 7.42, 7.63, 7.42, 7.19], 11.07) == [0, 1, 4]
    assert worth_training([10.9, 10.8], 11.0) == []  # nothing faster than the unlevered network by 3 %


def test_the_lever_search_finds_the_fastest_variant_within_the_floor_by_bisection():
    """Variants from fastest to slowest, each with the changes of the slower ones: bisection tries about log2 of them."""
    from compression.budget.stages import fastest_passing

    # BCCD's 30-minute run: 4 pairs + ReLU, 4, 3 pairs broke half the floor, 2 pairs held it; fastest first needed 4 fine-tunes
    losses = [2.38, 2.12, 0.99, 0.33, 0.1]
    tried: list[int] = []

    def passes(n: int) -> bool:
        tried.append(n)
        return losses[n] <= 0.5

    assert fastest_passing(len(losses), passes) == 3 and len(tried) <= 3 and 3 in tried
    assert fastest_passing(4, lambda n: True) == 0  # all pass: the fastest
    assert fastest_passing(4, lambda n: False) is None
    assert fastest_passing(0, lambda n: True) is None
    calls: list[int] = []
    budget = iter([True, None])  # the budget's share runs out after one fine-tune: the best so far stands
    assert fastest_passing(5, lambda n: calls.append(n) or next(budget)) == 2 and calls == [2, 0]
