"""The plan of a compress run, as plain functions: the target in the planner's cost, the search, the latency check, a fixed plan.

:func:`search_plan` turns the measurements (cost models, sensitivity) into one
candidate per input size (:func:`~.planner.plan_budget`), checks each by timing
its architecture as int8 and corrects it (:func:`check_latency`);
:func:`fixed_plan` takes a named preset or the config's own ratios instead;
:func:`check_reachable` says before the slow sensitivity analysis whether the
cost models can reach the target at all. Out of reach ends in one message
(:func:`unreachable`).

Example::

    data = search_plan(Inputs(job, spec, latency, size_model, sensitivity))
    data["candidates"]["320"]["kept"]
"""

from __future__ import annotations

from dataclasses import dataclass

from yolo3.errors import UserError
from yolo3.names import conv_index, conv_name


def chosen(ctx) -> tuple[int, dict[int, int]]:
    """The input size the candidates stage chose and the plan's channel counts there (``ctx``: a stage's context)."""
    size = ctx.result("candidates")["chosen"]
    kept = {conv_index(k): v for k, v in ctx.result("plan")["kept"][str(size)].items()}
    return size, kept


def board_ms(ctx, what: str, plan_size: int) -> float:
    """With a latency table: the board's int8 milliseconds of ``what`` ("unpruned", "levers" or "plan").

    The unpruned and the levered networks are probes the board timed whole;
    the plan is pruned, so its figure is the latency model's prediction (fitted
    to the same table).
    """
    job = ctx.services
    if what == "plan":
        return float(ctx.result("plan")["predicted_ms"][str(plan_size)])
    return job.latency_table.network_ms(job.spec(ctx.input("levered.h5" if what == "levers" else "baseline.h5")), job.base_size)


SLACK = 0.07  # a plan timed this much faster than its speed target is searched again to prune less


@dataclass
class Inputs:
    """What planning reads: the job (options, sizes, config), the unpruned architecture and the measurements."""

    job: object  # CompressJob
    spec: object
    latency: object  # LatencyModel
    size_model: object | None = None
    sensitivity: dict | None = None
    lever_speedup: float = 1.0  # what the levers stage already gained, measured: the spec above is the levered network
    memory: object | None = None  # MemoryModel: RAM and flash of any variant (for --target-ram / --target-flash)


def predicted_ms(inputs: Inputs, kept: dict[int, int], size: int) -> float:
    from .planner import ChannelMap, LatencyCost

    return LatencyCost(inputs.latency, ChannelMap(inputs.spec))(kept, size)


def cluster_candidates(spec, config, sensitivity: dict) -> set[int]:
    """Layers the clustering stage is predicted to cluster (its rule, on the unpruned model's sensitivity)."""
    layers = sensitivity["clustering"]["layers"]
    budget = config.compress.cluster_budget
    excluded = {conv_index(e) for e in config.clustering.exclude}
    chosen = {i for i in spec.conv_indices() if i not in excluded}
    if not config.compress.cluster_first_layer:
        chosen.discard(spec.conv_indices()[0])
    return {i for i in chosen if layers.get(conv_name(i), {"loss": 0})["loss"] <= budget}


def cluster_exclusions(spec, config, sensitivity: dict | None) -> list[str]:
    """The layers the plan leaves unclustered (the config's exclusions when there is no sensitivity analysis)."""
    if sensitivity is None:
        return list(config.clustering.exclude)
    chosen = cluster_candidates(spec, config, sensitivity)
    return [conv_name(i) for i in spec.conv_indices() if i not in chosen]


def budget_cost(inputs: Inputs, cmap, reach_all_clusters: bool = False, targets=None):
    """(the cost the planner minimises, the value it must reach): the target's own, or with several targets their :class:`~.planner.CombinedCost` and 1.0."""
    from .planner import CombinedCost

    targets = targets or inputs.job.targets
    if len(targets) == 1:
        return target_cost(inputs, cmap, reach_all_clusters, targets[0])
    return CombinedCost([target_cost(inputs, cmap, reach_all_clusters, t) for t in targets]), 1.0


def target_cost(inputs: Inputs, cmap, reach_all_clusters: bool = False, target=None):
    """(the cost ``target`` (default: the primary one) is measured in, the target's value in it)."""
    from .planner import FlashCost, LatencyCost, MacsCost, RamCost, SizeCost

    job = inputs.job
    target = target or job.options.target
    full = cmap.full()
    if target.kind in ("ram", "flash"):
        if inputs.memory is None:
            raise UserError(f"{target.describe()}: this run folder's cost models were measured before RAM and flash planning "
                            "(no memory-model.json); run again with --force to measure them", job.run_dir)  # fmt: skip
        return (RamCost if target.kind == "ram" else FlashCost)(inputs.memory, cmap), target.value * 1024
    if target.kind in ("speedup", "latency"):
        cost = LatencyCost(inputs.latency, cmap)
        # the levered network is already lever_speedup times faster than the unpruned one: the plan needs the rest
        return cost, cost(full, job.base_size) * inputs.lever_speedup / target.value if target.kind == "speedup" else target.value
    if target.kind == "macs":
        cost = MacsCost(cmap)
        return cost, cost(full, job.base_size) * target.value
    if reach_all_clusters:
        clustered = set(cmap.spec.conv_indices()) if job.config.compress.cluster else set()
    else:
        clustered = cluster_candidates(cmap.spec, job.config, inputs.sensitivity) if job.config.compress.cluster else set()
    return SizeCost(inputs.size_model, cmap, clustered), target.value * 1e6


def resolve_extreme(inputs: Inputs):
    """``--target-speedup max`` / ``--target-size min`` as a plain target: the cheapest plan whose predicted loss holds the floor.

    The planner's greedy path is followed at every input size to the end of
    every unit's ladder; the loss it predicts along the path (the sensitivity
    analysis' one-shot losses, summed) only grows, so the last state within
    ``max_loss`` of each size is that size's best; the cheapest of them sets
    the value. The prediction is a guide, not a promise: the floor stage
    measures the fine-tuned int8 model and falls back when it breaks the floor.
    Returns (the plain target, what the choice was made from).
    """
    from .planner import ChannelMap, plan_budget

    job = inputs.job
    target = job.options.target
    cmap = ChannelMap(inputs.spec)
    points, size_loss = _losses(inputs.sensitivity)
    unit = target.resolved(1.0)  # a placeholder value: only the cost function is wanted
    cost, _ = target_cost(inputs, cmap, False, unit)
    path = plan_budget(cmap, points, size_loss, cost, 0.0, job.sizes, job.pruning()).trace
    within = [c for c in path if c.loss * 100 <= job.options.max_loss]
    if not within:  # not even the unpruned network at the base size: nothing to plan
        raise UserError(f"{target.describe()}: every input size loses more than --max-loss {job.options.max_loss:g} points by prediction; "
                        "raise --max-loss or give a number", job.run_dir)  # fmt: skip
    best = min(within, key=lambda c: (c.cost, c.loss))
    full = cmap.full()
    value = cost(full, job.base_size) * inputs.lever_speedup / best.cost if target.kind == "speedup" else best.cost / 1e6
    return target.resolved(value), {"size": best.size, "predicted_loss_points": 100 * best.loss, "steps_within_floor": len(within),
                                    "steps": len(path)}  # fmt: skip


def _losses(sensitivity: dict) -> tuple[dict, dict]:
    """(each unit's measured points, each input size's loss) from the sensitivity analysis."""
    base_map = sensitivity["pruning"]["base_mAP50"]
    points = {u["group"]: u["points"] for u in sensitivity["pruning"]["units"].values()}
    return points, {int(s): base_map - m for s, m in sensitivity["sizes"].items()}


def search_plan(inputs: Inputs) -> dict:
    """One candidate per input size, searched, checked by timing where the target is a speed; the data of plan.json.

    An extreme target (``max`` / ``min``) is first turned into a plain one (:func:`resolve_extreme`).
    """
    from .planner import ChannelMap, CombinedCost, LatencyCost, plan_budget

    job = inputs.job
    cmap = ChannelMap(inputs.spec)
    full = cmap.full()
    target, resolution = job.options.target, None
    if target.extreme:
        target, resolution = resolve_extreme(inputs)
    sens = inputs.sensitivity
    base_map = sens["pruning"]["base_mAP50"]
    points, size_loss = _losses(sens)
    if resolution:
        cost, target_value = budget_cost(inputs, cmap, targets=[target])
        target_value *= 1 + 1e-9  # the chosen state's own cost, which a rounding below it would make the search step past
    else:
        cost, target_value = budget_cost(inputs, cmap)
    plan = plan_budget(cmap, points, size_loss, cost, target_value, job.sizes, job.pruning())
    checks = {}
    # an extreme target's value is an aim, not a promise; a board's plan cannot be timed here (its table's prediction stands)
    if target.kind in ("speedup", "latency") and plan.feasible and resolution is None and job.latency_table is None:
        # the speed target's own (cost, value): the first part of a combination (the primary target is first)
        latency_target = cost.parts[0] if isinstance(cost, CombinedCost) else (cost, target_value)
        plan, checks = check_latency(inputs, plan, cmap, points, size_loss, cost, target_value, latency_target)
    if not plan.feasible:
        unreachable(job, plan, cost, full, inputs.lever_speedup, target, checks)
    unit_ms = LatencyCost(inputs.latency, cmap)
    candidates = {}
    for size, cand in plan.per_size.items():
        if cand is None:
            continue
        candidates[str(size)] = {**cand.to_json(), "predicted_ms": unit_ms(cand.kept, size),
                                 "predicted_mAP50": base_map - cand.loss, "check": checks.get(size)}  # fmt: skip
    return {
        "target": target.to_json(), "asked": job.options.target.to_json(), "resolved_from_floor": resolution,
        "also": [t.to_json() for t in job.options.also], "cost": plan.cost_name, "cost_unit": plan.cost_unit, "target_cost": target_value,
        "unpruned_cost": cost(full, job.base_size), "reach": {str(k): v for k, v in plan.reach.items()},
        "candidates": candidates, "best_by_prediction": plan.best.size,
        "trace": [c.to_json() | {"predicted_ms": unit_ms(c.kept, c.size)} for c in plan.trace],
        "method": "greedy, NetAdapt-style, loss from the sensitivity analysis, cost from the measured models",
        "latency_checked": (f"not timed: planned for the board of {job.latency_table.path} ({job.latency_table.describe()}); its latency model's "
                            "prediction stands") if job.latency_table else "each size's plan timed as int8 on this machine" if checks else "not timed",
    }  # fmt: skip


def check_latency(inputs: Inputs, plan, cmap, points, size_loss, cost, target_value, latency_target):
    """Time each size's plan as int8 (random weights) against the unpruned network, and correct the plan by what was measured.

    ``cost`` and ``target_value`` are what the plan was searched with (with
    several targets, their combination); ``latency_target`` is the speed
    target's own (cost, value), from which the milliseconds wanted follow.

    A plan measured short of the target is searched again aiming lower by
    the model's error there; a plan measured well inside the target
    (more than ``SLACK``) is searched again aiming higher, so that it
    prunes no more than the target needs, and kept only if it still meets
    the target when timed. At most three timings per size.
    """
    from .latency_model import measure_networks
    from .planner import plan_budget

    job = inputs.job
    full = cmap.full()
    checks: dict[int, dict] = {}
    met_before: dict[int, tuple] = {}  # the last plan of each size that met the target when timed, with its timing
    history: dict[int, list] = {s: [] for s in plan.per_size}
    factors = {s: 1.0 for s in plan.per_size}  # how much lower (or higher) than the speed target each size aims
    for attempt in range(3):
        pending = [s for s, c in plan.per_size.items() if c is not None and s not in checks]
        if not pending:
            break
        specs = [(cmap.spec, job.base_size)] + [(cmap.spec_with(plan.per_size[s].kept), s) for s in pending]
        measured = measure_networks(specs, job.threads, job.options.progress, xnnpack=job.xnnpack)
        for s, ms in zip(pending, measured[1:]):
            cand = plan.per_size[s]
            # the target in measured milliseconds: the same speed-up against the unpruned network timed in this run
            lat_cost, lat_value = latency_target
            wanted = measured[0] * lat_value / lat_cost(full, job.base_size) if job.options.target.kind == "speedup" else lat_value
            entry = {"attempt": attempt + 1, "measured_ms": ms, "unpruned_measured_ms": measured[0], "predicted_ms": cand.cost,
                     "wanted_ms": wanted, "met": ms <= wanted * 1.02}  # fmt: skip
            history[s].append(entry)
            if entry["met"]:
                met_before[s] = (cand, entry)
                if ms >= wanted * (1 - SLACK) or attempt == 2:
                    checks[s] = entry
                    continue
            elif s in met_before or attempt == 2:  # a relaxed plan fell short: back to the one that met (or none met)
                if s in met_before:
                    plan.per_size[s], checks[s] = met_before[s]
                else:
                    checks[s] = entry
                continue
            # the model was off here by ms / predicted: aim by as much lower (too slow) or higher (faster than needed)
            factors[s] *= wanted / ms * 0.99
            again = plan_budget(cmap, points, size_loss, *aimed(cost, target_value, latency_target[0], factors[s]), [s], job.pruning())
            plan.per_size[s] = again.per_size[s]
            plan.reach[s] = again.reach[s]
            plan.trace += again.trace
            if plan.per_size[s] is None and s in met_before:
                plan.per_size[s], checks[s] = met_before[s]
    for s, timings in history.items():  # timed, then searched again aiming lower and found out of reach: its last timing stands
        if timings and s not in checks and plan.per_size.get(s) is None:
            checks[s] = {**timings[-1], "met": False}
    checks = {s: {**entry, "timings": [dict(t) for t in history[s]]} for s, entry in checks.items()}
    for s, entry in checks.items():
        if not entry["met"]:
            plan.per_size[s] = None  # measured too slow after three tries: not a candidate
    return plan, checks


def aimed(cost, target_value: float, latency_cost, factor: float):
    """(cost, target) with the speed target moved by ``factor``; with several targets only the speed budget moves, the others hold."""
    from .planner import CombinedCost

    if isinstance(cost, CombinedCost):
        return CombinedCost([(c, v * factor if c is latency_cost else v) for c, v in cost.parts]), target_value
    return cost, target_value * factor


def unreachable(job, plan, cost, full, lever_speedup: float = 1.0, target=None, checks: dict | None = None) -> None:
    """The target is out of reach: one message naming the most the planner can reach.

    When the latency model predicted plans that reach it but each measured
    too slow as int8 (``checks``, from :func:`check_latency`), the message says
    that, with the milliseconds: quoting the predicted reach alone (above the
    target) read as a contradiction.
    """
    size, reach = min(plan.reach.items(), key=lambda kv: kv[1])
    target = target or job.options.target
    unpruned = cost(full, job.base_size)
    slow = {s: c for s, c in (checks or {}).items() if not c["met"]}
    if slow and target.kind in ("speedup", "latency"):
        timed = "; ".join(f"at {s} px {c['measured_ms']:.2f} ms against {c['wanted_ms']:.2f} ms wanted ({len(c.get('timings', [c]))} timing(s))"
                          for s, c in sorted(slow.items()))  # fmt: skip
        raise UserError(f"{target.describe()} cannot be reached on this machine: the latency model predicted plans that reach it, but "
                        f"each measured too slow as int8 ({timed}); nothing written so far was removed", job.run_dir)  # fmt: skip
    if job.options.also:
        raise UserError(f"{job.describe_targets()} cannot be met together: the closest the planner gets is {reach:.2f} times the "
                        f"tighter budget (predicted), with every unit at the fewest channels it may keep at input size {size}; "
                        "nothing written so far was removed", job.run_dir)  # fmt: skip
    if target.kind == "speedup":
        best = f"{lever_speedup * unpruned / reach:.2f}x (predicted" + (f", with the levers' measured {lever_speedup:.2f}x)" if lever_speedup != 1 else ")")
    elif target.kind == "latency":
        best = f"{reach:.2f} ms (predicted)"
    elif target.kind == "size":
        best = f"{reach / 1e6:.3f} MB (predicted)"
    elif target.kind in ("ram", "flash"):
        best = f"{reach / 1024:,.0f} KiB (predicted; the unpruned model: {unpruned / 1024:,.0f} KiB)"
    else:
        best = f"{reach / unpruned:.1%} of the MACs"
    raise UserError(f"{target.describe()} cannot be reached: the most the planner can reach is {best}, with every unit at "
                    f"the fewest channels it may keep (pruning.min_channels; after the sensitivity analysis, the fewest it was measured at) "
                    f"at input size {size}; nothing written so far was removed", job.run_dir)  # fmt: skip


def check_reachable(inputs: Inputs) -> None:
    """Before the slow sensitivity analysis: can the cost models reach the target at all?"""
    from .planner import ChannelMap, Plan, unit_floor

    job = inputs.job
    if job.options.target is None or job.options.target.extreme:  # "max" / "min" is whatever the floor allows
        return
    cmap = ChannelMap(inputs.spec)
    floor = {u: unit_floor(c, job.pruning()) for u, c in cmap.units.items()}
    cost, value = budget_cost(inputs, cmap, reach_all_clusters=True)
    reach = {s: cost(floor, s) for s in job.sizes}
    if min(reach.values()) > value:
        unreachable(job, Plan(value, cost.name, cost.unit, {}, reach), cost, cmap.full(), inputs.lever_speedup)


def fixed_plan(inputs: Inputs) -> tuple[dict, list[str]]:
    """A plan that was not searched: a named preset, or the config's own ratios, input size and exclusions; (plan.json data, exclusions)."""
    from ..prune.presets import preset_ratios
    from ..prune.pruning import resolve_layer_ratios
    from .planner import ChannelMap
    from .sensitivity import kept_count

    job = inputs.job
    cmap = ChannelMap(inputs.spec)
    if job.options.preset:
        given = preset_ratios(job.options.preset, cmap.spec)
        size = job.base_size
        exclude = [conv_name(cmap.spec.conv_indices()[0])] if not job.config.compress.cluster_first_layer else []
        origin = f"preset {job.options.preset}"
    else:
        given = job.config.pruning.similarity_layer_ratios
        size = job.plan_size
        exclude = list(job.config.clustering.exclude)
        origin = f"the config's pruning.similarity_layer_ratios, model.input_size and clustering.exclude ({job.config.path})"
    ratios = resolve_layer_ratios(cmap.spec, given, job.config.path)
    kept = {u: kept_count(c, ratios.get(u, 0.0), job.pruning()) for u, c in cmap.units.items()}
    data = {"origin": origin, "candidates": {str(size): {"size": size, "kept": {conv_name(k): v for k, v in kept.items()},
                                                         "predicted_ms": predicted_ms(inputs, kept, size)}},  # fmt: skip
            "best_by_prediction": size, "target": job.options.target.to_json() if job.options.target else None}
    return data, exclude


def check_fixed_plan(job) -> None:
    """A preset or the config's ratios must fit the model: say so before any work is done."""
    if not (job.options.preset or job.options.from_config):
        return
    from yolo3.models import spec_from_h5
    from yolo3.zoo import resolve_spec

    from ..prune.presets import preset_ratios
    from ..prune.pruning import resolve_layer_ratios

    spec = (spec_from_h5(job.source) if job.source.suffix.lower() == ".h5" else None) or resolve_spec(job.config.model.architecture)
    if job.options.preset:
        preset_ratios(job.options.preset, spec)
    else:
        resolve_layer_ratios(spec, job.config.pruning.similarity_layer_ratios, job.config.path)
