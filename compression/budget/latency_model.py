"""A latency model of int8 LiteRT on this machine: what each block of the network costs, for any channel counts and input size.

MACs do not predict int8 time: on YOLOv3-tiny the first convolution (3 input
channels) runs at a fraction of the others' MAC rate, and the widest 3x3 is
slowed by its weights. So the model is measured, not derived: every block
(convolution with its padding, batch norm and activation; max-pool; upsample;
concatenation; shortcut) is built alone from the very Keras layers the network
uses, converted to full-integer int8 and timed with LiteRT at the thread count
asked for — at a grid of input and output channel counts (fractions
``levels`` of the original, multiples of ``round_to``) at the network's input
size, and at full and half width at every other input size considered. This is
NetAdapt's layer-wise look-up table, made continuous by a fit per block::

    convolution:   t = a + P * (b * c_in + c * c_out + d * c_in * c_out)
    other blocks:  t = a + P * b * c_in

with P the block's output pixels: a fixed cost, reading the input, writing
the output, and the multiply-accumulates. Running blocks one by one is not
running them in one graph (per-invoke overhead, caches), so the sum is
mapped to whole-network time by ``T = alpha + beta * sum``, fitted on whole
networks (unpruned at every input size, half and quarter width) timed in the
same run. The planner predicts with this model; the report puts the
prediction for the final model beside its measured latency.

Example::

    model = measure_latency_model(spec, sizes=[416, 320], base_size=416, threads=2, folder=tmp)
    model.predict(pruned_spec, 320)          # milliseconds
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolo3.errors import UserError
from yolo3.spec import Block, Spec, analyse, format_cfg, narrowed, route_inputs, set_filters

from ..prune.surgery import channel_groups, tied_depthwise
from ..subprocesses import failure_reason, run_module


def timed_pixels(layer_type: str, in_shape, out_shape) -> int:
    """The pixels a block's time follows: its output's, but its input's for a global [avgpool] (its output is one pixel).

    One rule for the latency model's features and the planner's cost, which must agree.
    """
    h, w = in_shape[:2] if layer_type == "avgpool" else out_shape[:2]
    return int(h * w)


COSTLY = ("convolutional", "maxpool", "upsample", "route", "shortcut", "se", "avgpool", "scale_channels", "reorg3d")
LEVELS = (1.0, 0.5, 0.25, 0.125)


@dataclass(frozen=True)
class BlockShape:
    """What one costly block computes at one input size: its inputs' shapes and its output."""

    layer: int
    type: str
    in_shapes: tuple[tuple[int, int, int], ...]
    out_shape: tuple[int, int, int]

    @property
    def pixels(self) -> int:
        return timed_pixels(self.type, self.in_shapes[0], self.out_shape)

    @property
    def features(self) -> list[float]:
        return block_features(self.type, self.pixels, sum(s[2] for s in self.in_shapes), self.out_shape[2])


def block_features(kind: str, pixels: int, cin: int, cout: int) -> list[float]:
    """The regressors of a block's time (see the module docstring): output pixels, input and output channels."""
    if kind == "convolutional":
        return [1.0, pixels * cin, pixels * cout, pixels * cin * cout]
    return [1.0, pixels * cin]


def block_shapes(spec: Spec, size: int) -> list[BlockShape]:
    """The blocks of ``spec`` that cost time at input ``size`` (a [route] of one layer and [yolo] cost nothing)."""
    infos = analyse(spec, size, size)
    image = (size, size, spec.channels)
    out = []
    for info in infos:
        if info.type not in COSTLY:
            continue
        if info.type == "route":
            sources = route_inputs(spec, info.index)
            if len(sources) == 1:
                continue
            shapes = tuple(infos[j].out_shape for j in sources)
        elif info.type == "shortcut":
            shapes = (info.in_shape, infos[info.inputs[1]].out_shape)
        elif info.type == "scale_channels":  # the scaled layer first, then the factors (as the timed block reads them)
            shapes = (infos[info.inputs[1]].out_shape, info.in_shape)
        else:
            shapes = (infos[info.index - 1].out_shape if info.index else image,)
        out.append(BlockShape(info.index, info.type, shapes, info.out_shape))
    return out


def _round_up(n: float, multiple: int, limit: int) -> int:
    return int(min(limit, max(multiple, math.ceil(n / multiple) * multiple)))


def _scaled(shape: tuple[int, int, int], level: float, round_to: int) -> tuple[int, int, int]:
    return shape[0], shape[1], _round_up(shape[2] * level, round_to, shape[2])


@dataclass(frozen=True)
class Item:
    """One thing to convert and time: a block with given channels, or a whole network with given filters."""

    kind: str  # "block" or "network"
    size: int
    layer: int | None = None
    in_shapes: tuple = ()
    filters: int | dict | None = None

    def job(self, out: Path) -> dict:
        if self.kind == "block":
            return {"layer": self.layer, "in_shapes": [list(s) for s in self.in_shapes], "filters": self.filters, "out": str(out)}
        return {"filters": {str(k): v for k, v in (self.filters or {}).items()}, "size": self.size, "out": str(out)}


def block_items(spec: Spec, sizes: list[int], base_size: int, levels=LEVELS, round_to: int = 8) -> list[Item]:
    """The grid of block variants to time (see the module docstring)."""
    prunable = {m for g in channel_groups(spec) if g.prunable for m in g.members}
    items = []
    for size in sizes:
        full = size == base_size
        in_levels_all = levels if full else (1.0, 0.5)
        for b in block_shapes(spec, size):
            reads_image = b.type == "convolutional" and b.layer == 0
            in_levels = (1.0,) if reads_image else in_levels_all
            if b.type == "convolutional":
                out_levels = in_levels_all if b.layer in prunable else (1.0,)
                pairs = [(li, lo) for li in in_levels for lo in out_levels] if full else [(lv, lv if b.layer in prunable else 1.0) for lv in in_levels]
                if tied_depthwise(spec, b.layer, sum(s[2] for s in b.in_shapes)):  # one filter per input channel
                    pairs = [(lv, lv) for lv in in_levels]
                for li, lo in dict.fromkeys(pairs):
                    shapes = tuple(_scaled(s, li, round_to) for s in b.in_shapes)
                    items.append(Item("block", size, b.layer, shapes, _round_up(b.out_shape[2] * lo, round_to, b.out_shape[2])))
            else:  # an [se] is timed at its own width (its cfg names it); the fit's pixels x channels term carries it to a narrower one
                for li in (1.0,) if b.type == "se" else in_levels:
                    items.append(Item("block", size, b.layer, tuple(_scaled(s, li, round_to) for s in b.in_shapes)))
    return list(dict.fromkeys(items))


def scaled_filters(spec: Spec, level: float, round_to: int = 8) -> dict[int, int]:
    """Filter counts of every prunable convolution at ``level`` of its width (a uniformly pruned architecture)."""
    out = {}
    for g in channel_groups(spec):
        if g.prunable:
            for m in g.members:
                out[m] = _round_up(g.channels * level, round_to, g.channels)
    return out


def with_filters(spec: Spec, filters: dict[int, int]) -> Spec:
    """A copy of ``spec`` with the given convolutions' filter counts (the architecture a pruning would leave)."""
    return narrowed(spec, filters)


def network_items(spec: Spec, sizes: list[int], base_size: int, round_to: int = 8) -> list[Item]:
    """Whole networks that map the sum of block times to network time: unpruned at every size, narrower at two."""
    items = [Item("network", s, filters={}) for s in sizes]
    for level in (0.5, 0.25):
        for s in sorted({base_size, min(sizes)}):
            items.append(Item("network", s, filters=scaled_filters(spec, level, round_to)))
    return items


@dataclass
class LatencyModel:
    """Per-block fits and the whole-network mapping; predicts int8 milliseconds (see the module docstring)."""

    threads: int
    coefficients: dict[int, list[float]]
    alpha: float = 0.0
    beta: float = 1.0
    blocks: list[dict] = field(default_factory=list)  # every block variant measured: layer, size, channels, ms
    networks: list[dict] = field(default_factory=list)  # every whole network measured: size, filters, ms, sum of blocks
    seconds: float = 0.0
    xnnpack: bool = True  # the runtime it was measured on: LiteRT with its XNNPACK delegate, or its built-in kernels
    device: dict | None = None  # the board it was measured on (its latency table's description); None: this machine

    def block_time(self, layer: int, kind: str, pixels: int, cin: int, cout: int) -> float:
        """Predicted milliseconds of one block with these channel counts (before the whole-network mapping)."""
        coef = self.coefficients.get(layer)
        if coef is None:
            raise UserError(f"the latency model has no entry for layer {layer}; it was measured on another network")
        return max(0.0, float(np.dot(coef, block_features(kind, pixels, cin, cout))))

    def block_ms(self, spec: Spec, size: int) -> dict[int, float]:
        """Predicted time of every costly block of ``spec`` at ``size`` (before the whole-network mapping)."""
        return {b.layer: self.block_time(b.layer, b.type, b.pixels, sum(s[2] for s in b.in_shapes), b.out_shape[2])
                for b in block_shapes(spec, size)}  # fmt: skip

    def predict(self, spec: Spec, size: int) -> float:
        """Predicted int8 latency of ``spec`` at ``size`` in milliseconds."""
        return self.alpha + self.beta * sum(self.block_ms(spec, size).values())

    def to_json(self) -> dict:
        return {
            "threads": self.threads, "xnnpack": self.xnnpack, "device": self.device, "alpha": self.alpha, "beta": self.beta, "seconds": self.seconds,
            "coefficients": {str(k): v for k, v in self.coefficients.items()}, "blocks": self.blocks, "networks": self.networks,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> LatencyModel:
        return cls(int(data["threads"]), {int(k): list(v) for k, v in data["coefficients"].items()}, float(data["alpha"]),
                   float(data["beta"]), data.get("blocks", []), data.get("networks", []), float(data.get("seconds", 0.0)),
                   bool(data.get("xnnpack", True)), data.get("device"))  # fmt: skip


def fit_blocks(spec: Spec, measured: list[tuple[Item, float]]) -> dict[int, list[float]]:
    """Least-squares coefficients per block from (variant, milliseconds) pairs."""
    by_layer: dict[int, list[tuple[list[float], float]]] = {}
    types = {i: b.type for i, b in enumerate(spec.layers)}
    out_shapes: dict[int, dict[int, tuple]] = {}  # size -> layer -> output shape; filter counts do not change h, w
    for item, ms in measured:
        in_shapes = tuple(tuple(s) for s in item.in_shapes)
        if item.size not in out_shapes:
            out_shapes[item.size] = {b.layer: b.out_shape for b in block_shapes(spec, item.size)}
        out_hw = out_shapes[item.size][item.layer]
        if item.filters is not None:
            out_c = item.filters
        elif types[item.layer] == "route":
            out_c = sum(s[2] for s in in_shapes)
        else:
            out_c = in_shapes[0][2]
        shape = BlockShape(item.layer, types[item.layer], in_shapes, (out_hw[0], out_hw[1], out_c))
        by_layer.setdefault(item.layer, []).append((shape.features, ms))
    coefficients = {}
    for layer, rows in by_layer.items():
        x = np.array([r[0] for r in rows], np.float64)
        y = np.array([r[1] for r in rows], np.float64)
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # columns span 1 .. 1e9: scale them for a stable solve
        coef, *_ = np.linalg.lstsq(x / scale, y, rcond=None)
        coefficients[layer] = (coef / scale).tolist()
    return coefficients


def time_models(paths: list[Path], threads: int, rounds: int = 5, runs: int = 5, progress: bool = True, xnnpack: bool = True) -> list[float]:
    """Median milliseconds of one invoke of every model, timed in interleaved rounds (this machine's load drifts); ``xnnpack=False``: built-in kernels."""
    from yolo3.board import ready_interpreter
    from yolo3.lite import interleaved_latency

    interpreters = [ready_interpreter(p, threads, xnnpack) for p in paths]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rounds * len(paths), desc="timing int8 models", unit="model", leave=False)
    timed = interleaved_latency([lambda _, it=it: it.invoke() for it in interpreters], [None] * len(paths), rounds, runs,
                                bar.update if bar is not None else None)  # fmt: skip
    if bar is not None:
        bar.close()
    return [t["median_ms"] for t in timed]


PROBE_FORMAT = 1  # bump when the worker converts probes differently: cached probes of another format are not reused


def probe_key(spec: Spec, item: Item, tensorflow: str | None = None) -> str:
    """What a probe is, as a hash: the same block (its section, input shapes, filters) or network (its cfg, filters, size) gives the same key.

    A block's key holds only the block and the shapes it reads, so that the
    blocks two networks share (a levered and an unlevered tiny, the same
    backbone with other heads) are converted once; the converter's version is
    part of it (``tensorflow``: the version another machine exported with,
    to find its probes in a board's table).
    """
    if item.kind == "block":
        block = spec.layers[item.layer]
        if item.filters is not None:
            block = Block(block.type, dict(block.options))
            set_filters(block, int(item.filters))
        what = {"block": [block.type, sorted(block.options.items())], "in": [list(s) for s in item.in_shapes], "size": item.size}
    else:
        what = {"cfg": format_cfg(with_filters(spec, item.filters or {})), "size": item.size}
    text = json.dumps({**what, "kind": item.kind, "format": PROBE_FORMAT, "tensorflow": tensorflow or _converter_version()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.cache
def _converter_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tensorflow")
    except PackageNotFoundError:
        return "unknown"


def probe_cache() -> Path | None:
    """Where converted probes are kept between runs (``YOLO3_CACHE``, else ``$XDG_CACHE_HOME/yolo3``, else ``~/.cache/yolo3``); None: off.

    Converting is most of what the cost models take (TensorFlow's int8
    converter, seconds per probe), and the probes of one architecture are the
    same in every run on it: a second ``compress`` of the same model, for
    another target or dataset, converts nothing again. ``YOLO3_CACHE=off``
    turns the cache off.
    """
    value = os.environ.get("YOLO3_CACHE")
    if value is not None and value.strip().lower() in ("", "off", "0", "none"):
        return None
    root = Path(value) if value else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yolo3"
    folder = root / "probes"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def convert_items(spec: Spec, items: list[Item], folder: Path, progress: bool = True, workers: int = 2, chunk: int = 25) -> list[Path]:
    """Every item as an int8 ``.tflite``: from the probe cache where it holds it, else converted in ``folder`` by worker processes.

    Returns the paths in the items' order (cached probes are read in place).
    """
    cache = probe_cache()
    keys = [probe_key(spec, it) for it in items]
    paths = [cache / f"{key}.tflite" if cache and (cache / f"{key}.tflite").is_file() else folder / f"item-{k:04d}.tflite"
             for k, key in enumerate(keys)]  # fmt: skip
    todo = [k for k, p in enumerate(paths) if p.parent == folder]
    converted = _convert(spec, items, paths, todo, folder, progress, workers, chunk)
    if cache:
        for k in converted:
            try:  # whole or not at all: another run may read the cache at the same time
                tmp = cache / f".{keys[k]}.{os.getpid()}.tmp"
                shutil.copyfile(paths[k], tmp)
                os.replace(tmp, cache / f"{keys[k]}.tflite")
            except OSError:
                break  # a full or read-only disk: the run goes on without caching
    return paths


def _convert(spec: Spec, items: list[Item], paths: list[Path], todo: list[int], folder: Path, progress: bool, workers: int,
             chunk: int) -> list[int]:  # fmt: skip
    """Convert the items ``todo`` to their ``paths`` with worker processes; the indices converted."""
    if not todo:
        return []
    cfg = format_cfg(spec)
    chunks = [todo[s : s + chunk] for s in range(0, len(todo), chunk)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="converting int8 blocks", unit="model", leave=False)

    def run(indices: list[int]) -> str | None:
        job = folder / f"job-{indices[0]:04d}.json"
        job.write_text(json.dumps({"cfg": cfg, "items": [items[k].job(paths[k]) for k in indices]}))
        proc = run_module("compression.budget.latency_worker", str(job))
        if bar is not None:
            bar.update(len(indices))
        return None if proc.returncode == 0 else failure_reason(proc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = [e for e in pool.map(run, chunks) if e]
    if bar is not None:
        bar.close()
    if errors:
        raise UserError(f"converting the latency model's blocks failed: {errors[0]}")
    return todo


def measure_latency_model(
    spec: Spec, sizes: list[int], base_size: int, threads: int = 2, levels=LEVELS, round_to: int = 8, progress: bool = True,
    rounds: int = 5, runs: int = 5, xnnpack: bool = True, table=None,
) -> LatencyModel:
    """Convert, time and fit (see the module docstring); a few minutes for YOLOv3-tiny.

    ``table`` (a :class:`~.latency_table.LatencyTable`): the timings are the
    board's, looked up by probe key, and nothing is converted or timed here.
    """
    start = time.perf_counter()
    sizes = sorted(set(sizes) | {base_size}, reverse=True)
    blocks = block_items(spec, sizes, base_size, levels, round_to)
    networks = network_items(spec, sizes, base_size, round_to)
    if table is not None:
        ms = table.lookup(spec, blocks + networks)
        threads, xnnpack = table.threads, table.xnnpack
    else:
        with tempfile.TemporaryDirectory(prefix="yolo3-latency-") as tmp:
            paths = convert_items(spec, blocks + networks, Path(tmp), progress)
            ms = time_models(paths, threads, rounds, runs, progress, xnnpack)
    block_ms, network_ms = ms[: len(blocks)], ms[len(blocks) :]
    model = LatencyModel(threads, fit_blocks(spec, list(zip(blocks, block_ms))), xnnpack=xnnpack,
                         device=table.device if table is not None else None)  # fmt: skip
    model.blocks = [{"layer": it.layer, "size": it.size, "in_channels": [s[2] for s in it.in_shapes], "filters": it.filters, "ms": t}
                    for it, t in zip(blocks, block_ms)]  # fmt: skip
    sums = [sum(model.block_ms(with_filters(spec, it.filters), it.size).values()) for it in networks]
    x = np.array([[1.0, s] for s in sums])
    (alpha, beta), *_ = np.linalg.lstsq(x, np.array(network_ms), rcond=None)
    model.alpha, model.beta = float(alpha), float(beta)
    model.networks = [{"size": it.size, "filters": {str(k): v for k, v in it.filters.items()}, "ms": t, "sum_of_blocks_ms": s,
                       "predicted_ms": model.alpha + model.beta * s} for it, t, s in zip(networks, network_ms, sums)]  # fmt: skip
    model.seconds = time.perf_counter() - start
    return model


def measure_networks(specs: list[tuple[Spec, int]], threads: int, progress: bool = True, rounds: int = 5, runs: int = 5,
                     xnnpack: bool = True, table=None) -> list[float]:  # fmt: skip
    """int8 latency of whole architectures (random weights), timed interleaved: to check a plan or a lever before training it.

    The architectures may differ in channels (one network, pruned) or in layers
    (levers: a max-pool folded into a stride); each distinct layer structure
    is converted on its own, and all are timed in the same interleaved rounds.
    ``table``: the board's timings of these networks instead (each must be one
    the probes hold: an unpruned network or lever variant at a probed size).
    """
    if not specs:
        return []
    if table is not None:
        return [table.network_ms(spec, size) for spec, size in specs]
    with tempfile.TemporaryDirectory(prefix="yolo3-latency-") as tmp:
        paths: list[Path | None] = [None] * len(specs)
        by_structure: dict[str, list[int]] = {}
        for k, (spec, _) in enumerate(specs):
            structure = format_cfg(with_filters(spec, {i: 1 for i in spec.conv_indices()}))
            by_structure.setdefault(structure, []).append(k)
        for n, indices in enumerate(by_structure.values()):
            base = specs[indices[0]][0]
            items = [Item("network", specs[k][1], filters={i: specs[k][0].layers[i].get_int("filters", 1) for i in specs[k][0].conv_indices()})
                     for k in indices]  # fmt: skip
            folder = Path(tmp) / f"structure-{n}"
            folder.mkdir()
            for k, path in zip(indices, convert_items(base, items, folder, progress)):
                paths[k] = path
        return time_models(paths, threads, rounds, runs, progress, xnnpack)
