"""The planner: how many channels each unit keeps, and at which input size, to meet a budget with the least predicted loss.

Method: NetAdapt's greedy search (Yang et al., ECCV 2018) driven by
measured tables instead of a short fine-tune per step. From the unpruned
network at each candidate input size, every step considers taking one more
slice (1/16 of its channels, in multiples of ``round_to``) off every unit and
takes the one that loses the least predicted mAP per unit of cost saved:

    score(u) = (loss_u(next) - loss_u(now) + eps) / (cost(now) - cost(with u at next))

until the predicted cost meets the target. The loss of a unit at a channel
count comes from the sensitivity analysis (the unit pruned alone, no
fine-tuning; interpolated between the measured counts, never decreasing as
channels go; no unit goes below the fewest channels it was measured at), the loss of an input size from the unpruned model scored at that
size; losses add. The cost is the latency model's int8 milliseconds, the
gzipped ``.tflite`` bytes (:class:`SizeModel`) or the MACs. Why greedy: the
cost is far from additive over layers (a unit's input channels are its
producer's output channels, blocks have fixed costs), which the greedy step
handles exactly by re-predicting the whole network, while the loss is only
known per unit; a knapsack over additive costs would optimise the wrong
numbers exactly. Each input size gives one candidate; the caller chooses among
them (by predicted loss, or — better — by a short fine-tune of each, which is
what NetAdapt does with its proposals).

Example::

    cmap = ChannelMap(spec)
    cost = LatencyCost(latency_model, cmap)
    plan = plan_budget(cmap, sensitivity, cost, target=cost(cmap.full(), 416) / 3, sizes=[416, 320], pruning=config.pruning)
    plan.best.size, plan.best.kept
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from yolo3.fileio import gzip_size
from yolo3.names import conv_name
from yolo3.spec import Spec, analyse, conv_params, narrowed, route_group, route_inputs, scale_channels_input, shortcut_input

from ..prune.surgery import IMAGE, _layout, channel_groups, tied_depthwise
from .latency_model import timed_pixels

STEPS_PER_UNIT = 16


# ---------------------------------------------------------------------------
# Channels of every block as a function of the units' kept counts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockChannels:
    layer: int
    type: str
    inputs: tuple[tuple[int | None, int], ...]  # (unit id or None if fixed, channels) per input segment
    out_unit: int | None  # a convolution's unit (None: a head, or not a convolution)
    out_channels: int
    kernel: int = 1  # k * k of a convolution
    bn: bool = False
    groups: int = 1  # a convolution's groups; 0 for a depthwise one tied to its input (one input channel per filter)

    def weights_per_filter(self, cin: int) -> int:
        """Kernel weights of one output channel when the convolution reads ``cin`` channels."""
        return self.kernel * (1 if self.groups == 0 else cin // self.groups)


class ChannelMap:
    """For every block of the network: where its input and output channels come from (which unit, or fixed)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        segments, uf, _ = _layout(spec)
        groups = channel_groups(spec)
        self.units = {g.id: g.channels for g in groups if g.prunable}
        root = {uf.find(g.members[0]): g.id for g in groups if g.prunable}

        def unit_of(space: int) -> int | None:
            return None if space == IMAGE else root.get(uf.find(space))

        def segs(layer: int) -> tuple:
            src = segments[layer] if layer >= 0 else [(IMAGE, spec.channels)]
            return tuple((unit_of(space), n) for space, n in src)

        self.blocks: list[BlockChannels] = []
        for i, block in enumerate(spec.layers):
            if block.type == "convolutional":
                p = conv_params(block)
                inputs = segs(i - 1)
                groups = 0 if tied_depthwise(spec, i, sum(n for _, n in inputs)) else p.groups
                self.blocks.append(BlockChannels(i, block.type, inputs, unit_of(i), p.filters, p.size * p.size, p.batch_normalize, groups))
            elif block.type in ("maxpool", "upsample"):
                self.blocks.append(BlockChannels(i, block.type, segs(i - 1), None, 0))
            elif block.type == "reorg3d":  # its channels are fixed (see compression.prune.surgery); it moves them
                self.blocks.append(BlockChannels(i, block.type, segs(i - 1), None, sum(n for _, n in segs(i))))
            elif block.type == "route" and len(route_inputs(spec, i)) > 1:
                self.blocks.append(BlockChannels(i, block.type, tuple(s for j in route_inputs(spec, i) for s in segs(j)), None, 0,
                                                 groups=route_group(block)[0]))  # fmt: skip
            elif block.type == "shortcut":
                self.blocks.append(BlockChannels(i, block.type, segs(i - 1) + segs(shortcut_input(spec, i)), None, 0))
            elif block.type in ("se", "avgpool"):  # their channels follow the layer they read (SE weights pruned with it)
                self.blocks.append(BlockChannels(i, block.type, segs(i - 1), None, 0))
            elif block.type == "scale_channels":
                self.blocks.append(BlockChannels(i, block.type, segs(scale_channels_input(spec, i)) + segs(i - 1), None, 0))
        self._pixels: dict[int, dict[int, int]] = {}

    def full(self) -> dict[int, int]:
        """Every unit at its full channel count."""
        return dict(self.units)

    def pixels(self, size: int) -> dict[int, int]:
        """Output pixels of every layer at input ``size`` (input pixels for a global [avgpool]: its time follows them)."""
        if size not in self._pixels:
            self._pixels[size] = {info.index: timed_pixels(info.type, info.in_shape, info.out_shape) for info in analyse(self.spec, size, size)}
        return self._pixels[size]

    def channels(self, block: BlockChannels, kept: dict[int, int]) -> tuple[int, int]:
        """(input channels, output channels) of a block when the units keep ``kept``."""
        cin = sum(kept.get(u, n) if u is not None else n for u, n in block.inputs)
        if block.type == "convolutional":
            cout = kept.get(block.out_unit, block.out_channels) if block.out_unit is not None else block.out_channels
        elif block.type in ("shortcut", "scale_channels"):  # two inputs of one width
            cout = cin // 2
        elif block.type == "route":
            cout = cin // block.groups
        elif block.type == "reorg3d":
            cout = block.out_channels
        else:
            cout = cin
        return cin, cout

    def spec_with(self, kept: dict[int, int]) -> Spec:
        """The architecture the kept counts describe (every member of a unit at its count)."""
        return narrowed(self.spec, {m: int(kept[g.id]) for g in channel_groups(self.spec) if g.id in kept for m in g.members})


# ---------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------


class MacsCost:
    """Multiply-accumulates of the convolutions."""

    name, unit = "MACs", "MACs"

    def __init__(self, cmap: ChannelMap):
        self.cmap = cmap

    def __call__(self, kept: dict[int, int], size: int) -> float:
        px = self.cmap.pixels(size)
        total = 0
        for b in self.cmap.blocks:
            if b.type == "convolutional":
                cin, cout = self.cmap.channels(b, kept)
                total += px[b.layer] * b.weights_per_filter(cin) * cout
        return float(total)


class LatencyCost:
    """int8 milliseconds predicted by a :class:`~compression.budget.latency_model.LatencyModel`."""

    name, unit = "int8 latency", "ms"

    def __init__(self, model, cmap: ChannelMap):
        self.model = model
        self.cmap = cmap

    def blocks(self, kept: dict[int, int], size: int) -> dict[int, float]:
        px = self.cmap.pixels(size)
        out = {}
        for b in self.cmap.blocks:
            cin, cout = self.cmap.channels(b, kept)
            out[b.layer] = self.model.block_time(b.layer, b.type, px[b.layer], cin, cout)
        return out

    def __call__(self, kept: dict[int, int], size: int) -> float:
        return self.model.alpha + self.model.beta * sum(self.blocks(kept, size).values())


@dataclass
class SizeModel:
    """Gzipped int8 ``.tflite`` bytes from the weights: per convolution, measured bytes per weight (clustered or not).

    Each kernel is folded with its batch norm and quantized per output channel
    to int8 as the converter does, then gzipped; clustered into k values
    first where it will be clustered. Pruning keeps a layer's kind of values,
    so the rate carries over to fewer channels. ``overhead`` (the flatbuffer,
    biases, scales, metadata) is what the unpruned int8 file holds beyond that.
    """

    rates: dict[int, float]  # layer -> gzip bytes per kernel weight, unclustered
    clustered_rates: dict[int, float]
    per_channel: float = 12.0  # int32 bias + per-channel scale, roughly, after gzip
    overhead: float = 0.0

    def bytes(self, cmap: ChannelMap, kept: dict[int, int], clustered: set[int]) -> float:
        total = self.overhead
        for b in cmap.blocks:
            if b.type != "convolutional":
                continue
            cin, cout = cmap.channels(b, kept)
            rate = self.clustered_rates[b.layer] if b.layer in clustered else self.rates[b.layer]
            total += rate * b.weights_per_filter(cin) * cout + self.per_channel * cout
        return total

    def to_json(self) -> dict:
        return {"rates": {str(k): v for k, v in self.rates.items()}, "clustered_rates": {str(k): v for k, v in self.clustered_rates.items()},
                "per_channel": self.per_channel, "overhead": self.overhead}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> SizeModel:
        return cls({int(k): v for k, v in data["rates"].items()}, {int(k): v for k, v in data["clustered_rates"].items()},
                   data["per_channel"], data["overhead"])  # fmt: skip


def _int8_gzip_rate(kernel: np.ndarray, scale: np.ndarray | None) -> float:
    folded = kernel * (scale if scale is not None else 1.0)
    per_out = np.moveaxis(folded, -1, 0).reshape(folded.shape[-1], -1)  # TFLite's (out, h, w, in)
    step = np.maximum(np.abs(per_out).max(axis=1, keepdims=True), 1e-12) / 127.0
    q = np.clip(np.round(per_out / step), -127, 127).astype(np.int8)
    return gzip_size(q.tobytes()) / q.size


def measure_size_model(model, spec: Spec, clusters: int, baseline_gzip_bytes: int | None = None, seed: int = 0) -> SizeModel:
    """Rates of every convolution of ``model`` (clustered into ``clusters`` and not), and the overhead of the int8 file."""
    from yolo3.keras_model import conv_kernel

    from ..cluster.clustering import cluster_kernel, output_scales

    rates, clustered = {}, {}
    for i in spec.conv_indices():
        kernel = conv_kernel(model.get_layer(conv_name(i)))
        scale = output_scales(model, spec, conv_name(i))
        rates[i] = _int8_gzip_rate(kernel, scale)
        clustered[i] = _int8_gzip_rate(cluster_kernel(kernel, clusters, False, seed)[0], scale)
    size = SizeModel(rates, clustered)
    if baseline_gzip_bytes is not None:
        cmap = ChannelMap(spec)
        size.overhead = max(0.0, baseline_gzip_bytes - size.bytes(cmap, cmap.full(), set()))
    return size


class CombinedCost:
    """Several budgets at once: the largest share of its budget any cost uses (the planner's target is then 1.0).

    The greedy step saves on whichever budget binds; once it is met the other
    one binds, until all are within theirs.
    """

    name, unit = "largest share of its budget", "x budget"

    def __init__(self, parts: list[tuple[object, float]]):
        self.parts = parts

    def __call__(self, kept: dict[int, int], size: int) -> float:
        return max(cost(kept, size) / value for cost, value in self.parts)


class _MemoryCost:
    """A cost a :class:`~.memory_model.MemoryModel` counts on the architecture the kept channels describe."""

    name, unit = "", "bytes"

    def __init__(self, model, cmap: ChannelMap):
        self.model = model
        self.cmap = cmap

    def __call__(self, kept: dict[int, int], size: int) -> float:
        return self.count(self.cmap.spec_with(kept), size)


class RamCost(_MemoryCost):
    """Peak activation bytes of the int8 graph (calibrated on the baseline int8 file)."""

    name = "peak activation memory"

    def count(self, spec, size: int) -> float:
        return self.model.ram(spec, size)


class FlashCost(_MemoryCost):
    """Bytes of the int8 .tflite: weights, per-channel quantization data and the graph."""

    name = "int8 .tflite size (flash)"

    def count(self, spec, size: int) -> float:
        return self.model.flash(spec)


class SizeCost:
    name, unit = "gzipped int8 size", "bytes"

    def __init__(self, size_model: SizeModel, cmap: ChannelMap, clustered: set[int]):
        self.size_model, self.cmap, self.clustered = size_model, cmap, clustered

    def __call__(self, kept: dict[int, int], size: int) -> float:
        return self.size_model.bytes(self.cmap, kept, self.clustered)


# ---------------------------------------------------------------------------
# Predicted loss
# ---------------------------------------------------------------------------


def loss_curve(channels: int, points: list[dict]):
    """Predicted mAP loss of a unit at any kept count: interpolated between the measured counts, never decreasing as channels go.

    Below the smallest count measured the last slope is continued.
    """
    pts = sorted({(channels, 0.0), *((int(p["kept"]), float(p["loss"])) for p in points)}, key=lambda t: -t[0])
    kept = np.array([k for k, _ in pts], float)
    loss = np.maximum.accumulate(np.maximum(np.array([v for _, v in pts], float), 0.0))  # noise below 0, and monotone

    def curve(k: int) -> float:
        if k >= kept[0]:
            return 0.0
        if k <= kept[-1]:
            if len(kept) < 2:
                return float(loss[-1])
            slope = (loss[-1] - loss[-2]) / max(kept[-2] - kept[-1], 1e-9)
            return float(loss[-1] + slope * (kept[-1] - k))
        return float(np.interp(-k, -kept, loss))

    return curve


# ---------------------------------------------------------------------------
# The greedy search
# ---------------------------------------------------------------------------


@dataclass
class Candidate:
    """One state the planner looked at."""

    size: int
    kept: dict[int, int]
    cost: float
    loss: float
    step: int

    def to_json(self) -> dict:
        return {"size": self.size, "kept": {conv_name(k): v for k, v in self.kept.items()}, "cost": self.cost, "loss": self.loss, "step": self.step}


@dataclass
class Plan:
    target: float
    cost_name: str
    cost_unit: str
    per_size: dict[int, Candidate | None]  # the final state of each size's search (None: the target is out of its reach)
    reach: dict[int, float]  # the lowest cost each size can reach
    trace: list[Candidate] = field(default_factory=list)

    @property
    def feasible(self) -> list[Candidate]:
        return [c for c in self.per_size.values() if c is not None]

    @property
    def best(self) -> Candidate | None:
        """The candidate with the least predicted loss (ties: the cheaper one)."""
        return min(self.feasible, key=lambda c: (round(c.loss, 6), c.cost), default=None)


def ladder(channels: int, floor: int, round_to: int) -> list[int]:
    """The kept counts the search steps through for a unit, from all its channels down to ``floor``."""
    step = max(round_to, int(math.ceil(channels / STEPS_PER_UNIT / round_to)) * round_to)
    counts = [channels]
    k = (channels // round_to) * round_to if channels % round_to else channels - step
    while k >= floor:
        counts.append(k)
        k -= step
    if counts[-1] > floor and floor < channels:
        counts.append(floor)
    return counts


def unit_floor(channels: int, pruning) -> int:
    """The fewest channels a unit may keep (``min_channels``, rounded to ``round_to``)."""
    from ..prune.pruning import _layer_budget

    return min(channels, _layer_budget(channels, 1.0, pruning.min_channels, pruning.round_to))


def measured_floor(channels: int, points: list[dict], pruning) -> int:
    """The fewest channels the search may give a unit: no fewer than the sensitivity analysis measured it at.

    Below the smallest count measured the loss would be extrapolated, and an
    extrapolated loss is a guess: on BCCD a size plan that took a 512-channel
    layer to 8 (measured down to 64) looked cheap and was not. A unit never
    measured keeps the floor of ``pruning.min_channels``.
    """
    floor = unit_floor(channels, pruning)
    measured = [int(p["kept"]) for p in points]
    return max(floor, min(measured)) if measured else floor


def plan_budget(
    cmap: ChannelMap, unit_points: dict[int, list[dict]], size_loss: dict[int, float], cost, target: float, sizes: list[int], pruning,
    eps: float = 1e-4,
) -> Plan:
    """Greedy search at every input size (see the module docstring); ``unit_points`` maps a unit to its sensitivity points."""
    curves = {u: loss_curve(c, unit_points.get(u, [])) for u, c in cmap.units.items()}
    ladders = {u: ladder(c, measured_floor(c, unit_points.get(u, []), pruning), pruning.round_to) for u, c in cmap.units.items()}
    plan = Plan(target, cost.name, cost.unit, {}, {})
    for size in sorted(sizes, reverse=True):
        position = {u: 0 for u in cmap.units}
        kept = cmap.full()
        now = cost(kept, size)
        loss = max(0.0, size_loss.get(size, 0.0))
        step = 0
        plan.trace.append(Candidate(size, dict(kept), now, loss, step))
        while now > target:
            best = None
            for u in cmap.units:
                if position[u] + 1 >= len(ladders[u]):
                    continue
                k_next = ladders[u][position[u] + 1]
                trial = dict(kept)
                trial[u] = k_next
                saved = now - cost(trial, size)
                if saved <= 0:
                    continue
                extra = curves[u](k_next) - curves[u](kept[u])
                score = (max(extra, 0.0) + eps) / saved
                if best is None or score < best[0]:
                    best = (score, u, k_next, saved, extra)
            if best is None:
                break
            _, u, k_next, saved, extra = best
            position[u] += 1
            kept[u] = k_next
            now -= saved
            loss += max(extra, 0.0)
            step += 1
            plan.trace.append(Candidate(size, dict(kept), now, loss, step))
        plan.reach[size] = now
        plan.per_size[size] = Candidate(size, dict(kept), now, loss, step) if now <= target else None
    return plan


def ratios_for(kept: dict[int, int], cmap: ChannelMap) -> dict[str, float]:
    """``pruning.similarity_layer_ratios`` that make pruning keep exactly ``kept`` (rounded up by at most 1e-6)."""
    out = {}
    for u, channels in cmap.units.items():
        removed = channels - kept.get(u, channels)
        out[conv_name(u)] = math.ceil(removed / channels * 1e6) / 1e6
    return out
