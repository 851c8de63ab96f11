"""Flash and RAM of a ``.tflite``: model bytes, peak activation memory by liveness, and where LiteRT's arena put the tensors.

A small device has two budgets besides time: flash holds the model file, RAM
the tensor arena — every activation tensor that is alive while an operator
runs. The peak is a property of the graph and its execution order::

    a tensor is alive from the operator that writes it to the last operator that
    reads it; graph inputs and outputs for the whole invocation (LiteRT keeps them);
    peak = max over operators of the bytes of the tensors alive at that step

Weights and biases (tensors no operator writes) are constants: they live in
the model's flatbuffer, i.e. in flash, and count there. No arena can be smaller
than the peak (everything alive at one step must coexist); LiteRT's planner
(greedy, by size) does not always get close to it: on small graphs it was seen
to spread the same tensors over twice the peak. :func:`memory_report` gives both: the
liveness peak from the graph, and the span of addresses LiteRT's arena gave the
same tensors with its built-in kernels (no delegate: XNNPACK packs its own
copies). The arena also holds kernel scratch (im2col) that no tensor shows, so
a runtime needs a little more than either figure.

Example::

    memory_report("best-int8.tflite")
    # {"flash_bytes": 8_912_345, "peak_activation_bytes": 1_038_336, "peak_at": "CONV_2D #2", "arena_span_bytes": 1_107_968, ...}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Step:
    """One operator in execution order: its name and the tensor indices it reads and writes."""

    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def lifetimes(steps: list[Step], graph_inputs: tuple[int, ...], graph_outputs: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """First and last step at which each activation tensor (written by a step, or a graph input) is alive; constants are left out.

    Graph inputs and outputs stay alive to the end: LiteRT never frees them during an invocation.
    """
    end = len(steps) - 1
    first: dict[int, int] = {t: 0 for t in graph_inputs}
    for k, step in enumerate(steps):
        for t in step.outputs:
            first.setdefault(t, k)
    last = {t: k for t, k in first.items()}
    for k, step in enumerate(steps):
        for t in step.inputs:
            if t in first:
                last[t] = max(last[t], k)
    for t in (*graph_inputs, *graph_outputs):
        if t in first:
            last[t] = end
    return {t: (first[t], last[t]) for t in first}


def peak_activation(steps: list[Step], sizes: dict[int, int], graph_inputs: tuple[int, ...], graph_outputs: tuple[int, ...]) -> tuple[int, int]:
    """The largest sum of live activation bytes over the steps (see the module docstring), and the step where it occurs."""
    life = lifetimes(steps, graph_inputs, graph_outputs)
    best, where = 0, 0
    for k in range(len(steps)):
        alive = sum(sizes.get(t, 0) for t, (a, b) in life.items() if a <= k <= b)
        if alive > best:
            best, where = alive, k
    return best, where


def _load(path: Path):
    """LiteRT's interpreter for ``path`` with its built-in kernels (no delegate), tensors allocated; a bad file ends in one line."""
    from .lite import load_interpreter

    return load_interpreter(path, xnnpack=False)


def _steps(interpreter) -> list[Step]:
    return [Step(op["op_name"], tuple(int(i) for i in op["inputs"] if i >= 0), tuple(int(i) for i in op["outputs"])) for op in interpreter._get_ops_details()]


def memory_report(path: str | Path) -> dict:
    """Flash bytes, the liveness peak of activation memory, and the span LiteRT's arena gave the activation tensors."""
    path = Path(path)
    interpreter = _load(path)
    steps = _steps(interpreter)
    inputs = tuple(d["index"] for d in interpreter.get_input_details())
    outputs = tuple(d["index"] for d in interpreter.get_output_details())
    life = lifetimes(steps, inputs, outputs)
    sizes, spans = {}, []
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for t in life:
        try:
            view = interpreter.tensor(t)()
        except ValueError:  # no buffer of its own in the arena (LiteRT let it alias another): counted by its shape, no span
            d = details[t]
            sizes[t] = int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
            continue
        sizes[t] = int(view.nbytes)
        start = int(view.__array_interface__["data"][0])
        spans.append((start, start + int(view.nbytes)))
    peak, at = peak_activation(steps, sizes, inputs, outputs)
    return {
        "flash_bytes": path.stat().st_size,
        "peak_activation_bytes": peak,
        "peak_at": f"{steps[at].name} #{at}" if steps else None,
        "arena_span_bytes": (max(b for _, b in spans) - min(a for a, _ in spans)) if spans else 0,
        "activation_tensors": len(life),
        "operators": len(steps),
        "operator_counts": dict(sorted(Counter(s.name for s in steps).items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def ram_figures(path: str | Path) -> dict:
    """``peak_activation_bytes`` and ``arena_span_bytes`` of a ``.tflite`` (the RAM columns of every report); nothing for other files."""
    path = Path(path)
    if path.suffix.lower() != ".tflite" or not path.is_file():
        return {}
    r = memory_report(path)
    return {"peak_activation_bytes": r["peak_activation_bytes"], "arena_span_bytes": r["arena_span_bytes"]}


def format_memory(report: dict) -> str:
    """One line: flash and RAM of a .tflite."""
    kib = 1024
    return (f"flash {report['flash_bytes'] / kib:,.0f} KiB (the .tflite); RAM: peak activation memory {report['peak_activation_bytes'] / kib:,.0f} KiB "
            f"at {report['peak_at']} (liveness over {report['operators']} operators), LiteRT's arena spans "
            f"{report['arena_span_bytes'] / kib:,.0f} KiB for the same tensors (built-in kernels, plus kernel scratch)")  # fmt: skip
