"""RAM and flash of an int8 architecture before it exists: the planner's cost for ``--target-ram`` and ``--target-flash``.

RAM is the peak activation memory (:mod:`yolo3.tflite_memory`): the largest
sum of int8 tensors alive while one operator runs. The int8 graph of a cfg is
known layer by layer — a convolution writes its output (after a padded copy
of its input where the padding is not the kernel's own "same"), and a LeakyReLU (or
any activation LiteRT does not fuse into the convolution: all but ReLU,
ReLU6 and linear) writes a second tensor of the same shape; a max-pool,
upsample, concatenation or addition writes one; a one-layer [route] is the
tensor it names — so the same liveness count as for a ``.tflite`` runs on
that graph, in the cfg's order (:func:`activation_graph`). The converter may
order branches differently; the run's own baseline int8 file measures the
difference once (``ram_scale`` of :class:`MemoryModel`), and the report
measures the final file.

Flash is the ``.tflite`` itself: an int8 byte per kernel weight, per output
channel an int32 bias, a float scale and an int64 zero point (16 bytes), and
the graph (``flash_overhead``: what the baseline int8 file holds beyond those).

Example::

    model = MemoryModel.measure(baseline_spec, 416, baseline_int8_path)
    model.ram(pruned_spec, 320), model.flash(pruned_spec)      # bytes
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yolo3.spec import Spec, analyse, conv_params, explicit_padding, reorg_params, route_inputs, se_params
from yolo3.tflite_memory import Step, peak_activation

FUSED = ("linear", "relu", "relu6")  # activations LiteRT folds into the convolution: no tensor of their own
PER_CHANNEL_BYTES = 16  # int32 bias + float32 scale + int64 zero point per output channel


def activation_graph(spec: Spec, size: int) -> tuple[list[Step], dict[int, int], tuple[int, ...], tuple[int, ...]]:
    """The int8 operators of ``spec`` at ``size`` in cfg order: (steps, tensor bytes, graph inputs, graph outputs)."""
    infos = analyse(spec, size, size)
    sizes = {0: size * size * spec.channels}  # tensor 0: the image
    steps: list[Step] = []
    out_of: dict[int, int] = {}  # layer -> the tensor holding its output
    outputs = []

    def new(nbytes: int) -> int:
        t = len(sizes)
        sizes[t] = nbytes
        return t

    for info in infos:
        i, block = info.index, spec.layers[info.index]
        h, w, c = info.out_shape
        prev = out_of[i - 1] if i else 0
        if block.type == "convolutional":
            p = conv_params(block)
            if explicit_padding(p):  # a padded copy of the input, as the Keras model makes
                ih, iw, ic = info.in_shape
                padded = new((ih + 2 * p.padding) * (iw + 2 * p.padding) * ic)
                steps.append(Step("PAD", (prev,), (padded,)))
                prev = padded
            t = new(h * w * c)
            steps.append(Step("CONV_2D", (prev,), (t,)))
            if p.activation == "swish":  # LOGISTIC, then MUL with the convolution's output: three tensors live at once
                gate, a = new(h * w * c), new(h * w * c)
                steps += [Step("LOGISTIC", (t,), (gate,)), Step("MUL", (t, gate), (a,))]
                t = a
            elif p.activation not in FUSED:
                a = new(h * w * c)
                steps.append(Step("ACTIVATION", (t,), (a,)))
                t = a
            out_of[i] = t
        elif block.type == "route":
            sources = route_inputs(spec, i)
            if len(sources) == 1 and info.out_shape == infos[sources[0]].out_shape:
                out_of[i] = out_of[sources[0]]
            else:
                out_of[i] = new(h * w * c)
                steps.append(Step("CONCATENATION" if len(sources) > 1 else "SPLIT", tuple(out_of[j] for j in sources), (out_of[i],)))
        elif block.type == "shortcut":
            other = out_of[info.inputs[1]]
            if infos[info.inputs[1]].out_shape[2] != c:  # a wider or narrower layer is sliced or padded to these channels first
                fitted = new(h * w * c)
                steps.append(Step("SLICE", (other,), (fitted,)))
                other = fitted
            out_of[i] = new(h * w * c)
            steps.append(Step("ADD", (prev, other), (out_of[i],)))
        elif block.type == "yolo":
            out_of[i] = prev
            outputs.append(prev)
        elif block.type == "dropout":
            out_of[i] = prev
        elif block.type == "se":  # pool, two small fully connected layers, the gate, then the scaled copy: the input lives until then
            _, hidden = se_params(block, c)
            pooled, fc1, fc2, gate = new(c), new(hidden), new(c), new(c)
            out_of[i] = new(h * w * c)
            steps += [Step("MEAN", (prev,), (pooled,)), Step("FULLY_CONNECTED", (pooled,), (fc1,)), Step("FULLY_CONNECTED", (fc1,), (fc2,)),
                      Step("HARD_SIGMOID", (fc2,), (gate,)), Step("MUL", (prev, gate), (out_of[i],))]  # fmt: skip
        elif block.type == "avgpool":
            out_of[i] = new(c)
            steps.append(Step("MEAN", (prev,), (out_of[i],)))
        elif block.type == "scale_channels":
            out_of[i] = new(h * w * c)
            steps.append(Step("MUL", (out_of[info.inputs[1]], prev), (out_of[i],)))
        else:  # maxpool, upsample, reorg3d
            out_of[i] = new(h * w * c)
            kind = {"reorg3d": "DEPTH_TO_SPACE" if reorg_params(block)[1] else "SPACE_TO_DEPTH"}.get(block.type, block.type.upper())
            steps.append(Step(kind, (prev,), (out_of[i],)))
    return steps, sizes, (0,), tuple(outputs)


def estimated_peak(spec: Spec, size: int) -> int:
    """Peak activation bytes of the int8 graph of ``spec`` at ``size``, by liveness in cfg order."""
    steps, sizes, inputs, outputs = activation_graph(spec, size)
    return peak_activation(steps, sizes, inputs, outputs)[0]


def weight_bytes(spec: Spec) -> int:
    """int8 kernel bytes and per-channel quantization data of every convolution (what flash holds beside the graph)."""
    total = 0
    for info in analyse(spec):
        if info.type == "convolutional":
            p = conv_params(spec.layers[info.index])
            total += p.size * p.size * (info.in_shape[2] // p.groups) * p.filters + PER_CHANNEL_BYTES * p.filters
    return total


@dataclass
class MemoryModel:
    """RAM (peak activation bytes) and flash (.tflite bytes) of any variant of one network, calibrated on its int8 file."""

    ram_scale: float = 1.0  # measured peak of the baseline int8 file / the estimate of its cfg
    flash_overhead: float = 0.0  # the baseline int8 file's bytes beyond its weights (graph, metadata)
    baseline_ram: int = 0
    baseline_flash: int = 0

    def ram(self, spec: Spec, size: int) -> float:
        return self.ram_scale * estimated_peak(spec, size)

    def flash(self, spec: Spec) -> float:
        return self.flash_overhead + weight_bytes(spec)

    @classmethod
    def measure(cls, spec: Spec, size: int, int8_file: Path) -> MemoryModel:
        """Calibrate on ``int8_file``, the int8 model of ``spec`` at ``size`` (its measured peak and bytes)."""
        from yolo3.tflite_memory import memory_report

        report = memory_report(int8_file)
        estimate = estimated_peak(spec, size)
        return cls(report["peak_activation_bytes"] / estimate if estimate else 1.0, max(0.0, report["flash_bytes"] - weight_bytes(spec)),
                   report["peak_activation_bytes"], report["flash_bytes"])  # fmt: skip

    def to_json(self) -> dict:
        return {"ram_scale": self.ram_scale, "flash_overhead": self.flash_overhead, "baseline_ram": self.baseline_ram, "baseline_flash": self.baseline_flash}

    @classmethod
    def from_json(cls, data: dict) -> MemoryModel:
        return cls(float(data["ram_scale"]), float(data["flash_overhead"]), int(data.get("baseline_ram", 0)), int(data.get("baseline_flash", 0)))
