"""The Spec: a Darknet network as a list of blocks, read from and written to ``.cfg`` text.

Everything structural in this tool works on the Spec: the Keras builder reads it,
structured pruning rewrites it, the ``.weights`` reader walks it. It is pure
Python (no TensorFlow) so the edge runner and the CLI can use it cheaply.

Example::

    from yolo3.spec import parse_cfg, format_cfg, analyse
    spec = parse_cfg(open("yolov3-tiny.cfg").read(), source="yolov3-tiny.cfg")
    layers = analyse(spec, 416, 416)          # shapes, parameters, MACs per layer
    print(sum(info.macs for info in layers))  # 2.79 G multiply-accumulates
    open("copy.cfg", "w").write(format_cfg(spec))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

BLOCK_TYPES = ("net", "convolutional", "depthwise", "se", "avgpool", "scale_channels", "shortcut", "route", "upsample", "maxpool", "reorg3d",
               "dropout", "yolo")
ACTIVATIONS = ("leaky", "linear", "relu", "relu6", "mish", "swish", "logistic", "h_swish")
PASS_THROUGH = ("upsample", "maxpool", "dropout")  # one input, same channels (order kept)


@dataclass
class Block:
    """One ``[section]`` of a cfg: its type, its options as raw strings, and where it came from."""

    type: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0
    origin: str = ""  # the section it was written as, where that is not its type: "depthwise" (a [convolutional] with a group per channel)

    def _raw(self, key: str) -> str | None:
        return self.options.get(key)

    def _parsed(self, key: str, default, parse, what: str):
        """The option ``key`` through ``parse``; absent -> ``default`` (None: required); unparsable -> a message naming block and key."""
        raw = self._raw(key)
        if raw is None:
            if default is None:
                raise ValueError(f"[{self.type}] needs '{key}'")
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ValueError(f"[{self.type}] {key}={raw!r} is not {what}") from None

    def get_int(self, key: str, default: int | None = None) -> int:
        return self._parsed(key, default, lambda raw: int(raw.strip()), "an integer")

    def get_float(self, key: str, default: float | None = None) -> float:
        return self._parsed(key, default, lambda raw: float(raw.strip()), "a number")

    def get_ints(self, key: str, default: list[int] | None = None) -> list[int]:
        values = self._parsed(key, default, lambda raw: [int(v) for v in raw.replace(" ", "").split(",") if v != ""], "a list of integers")
        return list(values)

    def get_floats(self, key: str) -> list[float]:
        return self._parsed(key, None, lambda raw: [float(v) for v in raw.replace(" ", "").split(",") if v != ""], "a list of numbers")

    def get_str(self, key: str, default: str) -> str:
        raw = self._raw(key)
        return default if raw is None else raw.strip()

    def set(self, key: str, value) -> None:
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        self.options[key] = str(value)


@dataclass
class Spec:
    """A whole network: the ``[net]`` options and the layers in cfg order.

    ``source`` names the file the Spec came from (or a built-in name) so that
    errors found later, during shape inference, can still name file and line.
    """

    net: Block
    layers: list[Block]
    source: str = "<spec>"

    def copy(self) -> Spec:
        return copy.deepcopy(self)

    @property
    def width(self) -> int:
        return self.net.get_int("width", 416)

    @property
    def height(self) -> int:
        return self.net.get_int("height", 416)

    @property
    def channels(self) -> int:
        return self.net.get_int("channels", 3)

    def conv_indices(self) -> list[int]:
        return [i for i, b in enumerate(self.layers) if b.type == "convolutional"]

    def yolo_indices(self) -> list[int]:
        return [i for i, b in enumerate(self.layers) if b.type == "yolo"]

    @property
    def num_classes(self) -> int:
        heads = self.yolo_indices()
        if not heads:
            raise UserError("the network has no [yolo] layer", self.source)
        return self.layers[heads[0]].get_int("classes", 20)

    def error(self, index: int, reason: str) -> UserError:
        """A :class:`UserError` that points at layer ``index`` of this Spec."""
        block = self.layers[index]
        place = block.line if block.line else f"layer {index} [{block.type}]"
        return UserError(reason, self.source, place)


# ---------------------------------------------------------------------------
# Parsing and writing
# ---------------------------------------------------------------------------


def parse_cfg(text: str, source: str = "<cfg>") -> Spec:
    """Parse Darknet cfg text into a :class:`Spec`.

    Comments (``#`` or ``;``) and blank lines are ignored; ``[network]`` is read
    as ``[net]``. Unknown block types, text outside a section and lines without
    ``=`` raise :class:`UserError` with the line number. Values are checked when
    the network is analysed (:func:`analyse`), which also names the line.
    """
    blocks: list[Block] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UserError(f"section header {line!r} is not closed with ']'", source, lineno)
            name = line[1:-1].strip().lower()
            if name == "network":
                name = "net"
            if name not in BLOCK_TYPES:
                raise UserError(f"unsupported section [{name}] (supported: {', '.join(BLOCK_TYPES)})", source, lineno)
            if name == "depthwise":  # the multi-backbone suite's depthwise convolution: one group per channel
                blocks.append(Block("convolutional", {}, lineno, origin="depthwise"))
            else:
                blocks.append(Block(name, {}, lineno))
            continue
        if not blocks:
            raise UserError(f"{line!r} appears before any [section]", source, lineno)
        if "=" not in line:
            raise UserError(f"expected key=value, found {line!r}", source, lineno)
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise UserError(f"missing key before '=' in {line!r}", source, lineno)
        blocks[-1].options[key] = value
    if not blocks:
        raise UserError("no [net] section found (is this a Darknet .cfg?)", source)
    if blocks[0].type != "net":
        raise UserError(f"the first section must be [net], found [{blocks[0].type}]", source, blocks[0].line)
    for block in blocks[1:]:
        if block.type == "net":
            raise UserError("a second [net] section", source, block.line)
    if len(blocks) == 1:
        raise UserError("the cfg has a [net] section but no layers", source)
    for block in blocks:
        if block.origin == "depthwise":
            if "groups" in block.options:
                raise UserError("[depthwise] takes no 'groups' (it has one group per channel)", source, block.line)
            block.options["groups"] = block.options.get("filters", "1")
    spec = Spec(blocks[0], blocks[1:], source)
    try:
        height, width, channels = spec.height, spec.width, spec.channels
    except ValueError as err:
        raise UserError(str(err), source, blocks[0].line) from None
    for key, value, top in (("height", height, MAX_SIDE), ("width", width, MAX_SIDE), ("channels", channels, 64)):
        if not 1 <= value <= top:
            raise UserError(f"[net] {key}={value} must be in [1, {top}]", source, blocks[0].line)
    analyse(spec, height, width)  # validate now, while line numbers are fresh
    return spec


def read_cfg(path: str | Path) -> Spec:
    """Read and validate a Darknet ``.cfg`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError("no such file", path) from None
    except OSError as err:
        raise UserError(f"cannot read: {err.strerror}", path) from None
    return parse_cfg(text, source=str(path))


def format_cfg(spec: Spec) -> str:
    """Write a Spec as Darknet cfg text (options in their original order)."""
    out: list[str] = []
    for block in [spec.net, *spec.layers]:
        out.append(f"[{block.origin or block.type}]")
        out.extend(f"{k}={v}" for k, v in block.options.items() if not (block.origin == "depthwise" and k == "groups"))
        out.append("")
    return "\n".join(out)


def write_cfg(spec: Spec, path: str | Path) -> None:
    """Write a Spec to ``path`` atomically."""
    from .fileio import atomic_write_bytes

    atomic_write_bytes(path, format_cfg(spec).encode("utf-8"))


# ---------------------------------------------------------------------------
# Shape inference, parameters and multiply-accumulates
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    """What one layer does at a given input size."""

    index: int
    type: str
    inputs: tuple[int, ...]  # absolute indices of the layers read (-1 = the image)
    in_shape: tuple[int, int, int]  # (h, w, c) of the (first) input
    out_shape: tuple[int, int, int]
    params: int = 0  # Keras parameters, BN moving statistics included
    trainable: int = 0
    macs: int = 0
    size: int = 0
    stride: int = 0  # vertical where the two differ
    stride_x: int = 0  # horizontal, where it differs from ``stride``

    @property
    def stride_text(self) -> str:
        return f"{self.stride}" if self.stride_x in (0, self.stride) else f"{self.stride}x{self.stride_x}"


@dataclass(frozen=True)
class ConvParams:
    """The options of a [convolutional] block, checked."""

    filters: int
    size: int
    stride_y: int  # AlexeyAB's stride_y / stride_x, each ``stride`` unless given
    stride_x: int
    padding: int
    groups: int
    batch_normalize: bool
    activation: str

    @property
    def strides(self) -> tuple[int, int]:
        """(vertical, horizontal) stride, the order Keras takes them in."""
        return self.stride_y, self.stride_x


MAX_SIDE = 8192  # [net] width / height
MAX_FILTERS = 65536  # a convolution's filters (YOLOv3's widest has 1024)
MAX_KERNEL = 64  # size, stride and padding of a convolution


def axis_strides(block: Block) -> tuple[int, int]:
    """(stride_y, stride_x) of a [convolutional] or [maxpool]: AlexeyAB's ``stride_y`` / ``stride_x``, each ``stride`` unless given."""
    stride = block.get_int("stride", 1)
    return block.get_int("stride_y", stride), block.get_int("stride_x", stride)


def conv_params(block: Block) -> ConvParams:
    filters = block.get_int("filters", 1)
    size = block.get_int("size", 1)
    stride_y, stride_x = axis_strides(block)
    padding = block.get_int("padding", 0)
    if block.get_int("pad", 0):
        padding = size // 2
    groups = block.get_int("groups", 1)
    activation = block.get_str("activation", "logistic")
    if activation == "none":  # the multi-backbone suite's cfgs write it for no activation
        activation = "linear"
    if filters < 1 or size < 1 or min(stride_y, stride_x) < 1 or groups < 1 or padding < 0:
        raise ValueError("filters, size, stride and groups must be positive and padding not negative")
    if filters > MAX_FILTERS or size > MAX_KERNEL or max(stride_y, stride_x) > MAX_KERNEL or padding > MAX_KERNEL:
        raise ValueError(f"filters must be at most {MAX_FILTERS:,}, size, stride and padding at most {MAX_KERNEL}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation} is not supported (use one of {', '.join(ACTIVATIONS)})")
    for key in ("binary", "xnor", "flipped", "antialiasing"):
        if block.get_int(key, 0):
            raise ValueError(f"[convolutional] {key} is not supported")
    if block.get_str("share_index", ""):
        raise ValueError("[convolutional] share_index (weights shared with another layer) is not supported")
    if block.get_int("dilation", 1) != 1:
        raise ValueError("[convolutional] dilation other than 1 is not supported")
    return ConvParams(filters, size, stride_y, stride_x, padding, groups, bool(block.get_int("batch_normalize", 0)), activation)


def set_filters(block: Block, count: int) -> None:
    """Give a [convolutional] ``count`` filters; a depthwise one (a group per filter) keeps a group per filter.

    Every architecture edit that narrows a layer (pruning, latency probes)
    goes through here, so a depthwise convolution stays depthwise.
    """
    p = conv_params(block)
    if p.groups > 1 and p.groups == p.filters:
        block.set("groups", int(count))
    block.set("filters", int(count))


def explicit_padding(p: ConvParams) -> bool:
    """Whether a convolution pads other than TensorFlow's ``same`` does (stride 1, odd kernel, half-kernel padding): then the
    Keras model pads explicitly (``ZeroPadding2D``, a ``PAD`` operator in TFLite) and convolves ``valid``."""
    return bool(p.padding) and not (p.strides == (1, 1) and p.size % 2 == 1 and p.padding == p.size // 2)


def maxpool_params(block: Block) -> tuple[int, tuple[int, int], int]:
    """(size, (stride_y, stride_x), padding) of a [maxpool] with Darknet's defaults (``size`` defaults to the larger stride)."""
    stride_y, stride_x = axis_strides(block)
    size = block.get_int("size", max(stride_y, stride_x))
    padding = block.get_int("padding", size - 1)
    if size < 1 or min(stride_y, stride_x) < 1 or padding < 0:
        raise ValueError("size and stride must be positive")
    if padding >= size:
        raise ValueError(f"[maxpool] padding={padding} must be below size={size}")
    for key in ("maxpool_depth", "antialiasing"):
        if block.get_int(key, 0):
            raise ValueError(f"[maxpool] {key} is not supported")
    return size, (stride_y, stride_x), padding


def reorg_params(block: Block) -> tuple[int, bool]:
    """(stride, reverse) of AlexeyAB's [reorg3d]: space-to-depth by ``stride``, or depth-to-space with ``reverse=1``.

    Darknet's ``reorg_cpu`` puts input channel ``c`` of the pixel at offset
    ``(dy, dx)`` inside each ``stride x stride`` cell on output channel
    ``(dy * stride + dx) * C + c``: exactly TensorFlow's ``space_to_depth``
    (NHWC), so the Keras model uses it. (The older [reorg] of YOLOv2 orders
    the values differently and is not read.)
    """
    stride = block.get_int("stride", 1)
    if stride < 1 or stride > MAX_KERNEL:
        raise ValueError(f"[reorg3d] stride must be in [1, {MAX_KERNEL}]")
    for key in ("flatten", "extra"):
        if block.get_int(key, 0):
            raise ValueError(f"[reorg3d] {key} is not supported")
    return stride, bool(block.get_int("reverse", 0))


def _resolve(index: int, ref: int, what: str) -> int:
    target = index + ref if ref < 0 else ref
    if not 0 <= target < index:
        raise ValueError(f"{what}={ref} points at layer {target}, which is not an earlier layer (this is layer {index})")
    return target


def route_inputs(spec: Spec, index: int) -> list[int]:
    block = spec.layers[index]
    refs = block.get_ints("layers")
    if not refs:
        raise ValueError("[route] needs at least one layer in 'layers'")
    return [_resolve(index, r, "layers") for r in refs]


def route_group(block: Block) -> tuple[int, int]:
    """``(groups, group_id)`` of a [route]: it passes on the ``group_id``-th of ``groups`` equal channel slices of each input.

    YOLOv4-tiny's CSP blocks read the second half of a convolution this way
    (``groups=2 group_id=1``); the default ``(1, 0)`` passes whole inputs.
    """
    groups = block.get_int("groups", 1)
    group_id = block.get_int("group_id", 0)
    if groups < 1:
        raise ValueError(f"[route] groups={groups} must be at least 1")
    if not 0 <= group_id < groups:
        raise ValueError(f"[route] group_id={group_id} must be in [0, groups-1 = {groups - 1}]")
    return groups, group_id


def shortcut_input(spec: Spec, index: int) -> int:
    block = spec.layers[index]
    refs = block.get_ints("from")
    if len(refs) != 1:
        raise ValueError("[shortcut] needs exactly one layer in 'from'")
    shortcut_activation(block)
    if block.get_str("weights_type", "none") != "none":
        raise ValueError("[shortcut] weights_type (weighted shortcut) is not supported")
    return _resolve(index, refs[0], "from")


def scale_channels_input(spec: Spec, index: int) -> int:
    """The layer a [scale_channels] scales (its ``from``); the layer before it gives one factor per channel.

    AlexeyAB's form of squeeze-and-excitation (EfficientNet cfgs): ``[avgpool]``,
    two 1x1 convolutions, then ``[scale_channels] from=-4``. Only the plain
    per-channel product is supported (no ``scale_wh``, linear activation), as OpenCV reads it.
    """
    block = spec.layers[index]
    refs = block.get_ints("from")
    if len(refs) != 1:
        raise ValueError("[scale_channels] needs exactly one layer in 'from'")
    if block.get_int("scale_wh", 0):
        raise ValueError("[scale_channels] scale_wh=1 (scaling by a spatial map) is not supported")
    if block.get_str("activation", "linear") not in ("linear", "none"):
        raise ValueError("[scale_channels] activation other than linear is not supported")
    return _resolve(index, refs[0], "from")


def shortcut_activation(block: Block) -> str:
    activation = block.get_str("activation", "linear")
    if activation == "none":  # as in conv_params
        activation = "linear"
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation} is not supported (use one of {', '.join(ACTIVATIONS)})")
    return activation


def se_params(block: Block, channels: int) -> tuple[int, int]:
    """(channels, hidden units) of an [se] on ``channels`` input channels, as the multi-backbone suite builds it.

    Squeeze-and-excitation (the suite's ``SE``): global average pool, a fully
    connected layer to ``channels // reduction`` units (ReLU), one back to
    ``channels`` (hard sigmoid, ``relu6(x + 3) / 6``), the input scaled by
    the result; neither layer has a bias. ``reduction`` defaults to 4; the
    suite reads ``filters`` as the channel count, which must be the input's.
    """
    reduction = block.get_int("reduction", 4)
    if reduction < 1:
        raise ValueError(f"[se] reduction={reduction} must be at least 1")
    if "reduction" not in block.options and block.get_int("filters", channels) != channels:
        raise ValueError(f"[se] filters={block.get_int('filters')} differ from its {channels} input channels")
    hidden = channels // reduction
    if hidden < 1:
        raise ValueError(f"[se] {channels} channels / reduction {reduction} leaves no hidden unit")
    return channels, hidden


def se_resized(channels: int, hidden: int) -> tuple[int, int]:
    """(reduction, hidden units) for an [se] narrowed to ``channels`` that had ``hidden`` units.

    The suite computes the hidden units as ``channels // reduction``, so a
    narrowed SE cannot always keep its count: the largest reduction that keeps
    at least ``hidden`` units is chosen (pruning gives the extra units zero
    weights, which changes nothing); under ``hidden`` channels, reduction 1
    (pruning drops the least important units).
    """
    if channels >= hidden:
        reduction = channels // hidden
        return reduction, channels // reduction
    return 1, channels


def resize_se(block: Block, channels: int, hidden: int) -> int:
    """Make an [se] read ``channels`` channels with ``hidden`` units where it can (:func:`se_resized`); the units it then has.

    A block that already reads them with that many units is left as written.
    """
    try:
        if se_params(block, channels)[1] == hidden:
            return hidden
    except ValueError:
        pass
    reduction, units = se_resized(channels, hidden)
    block.set("filters", channels)
    block.set("reduction", reduction)
    return units


def fit_se_blocks(spec: Spec, hidden: dict[int, int]) -> None:
    """Make every [se] of a narrowed ``spec`` read its new input width, keeping ``hidden[i]`` units where it can (see :func:`se_resized`).

    Channel pruning narrows the layer an SE scales; the SE's ``filters`` must
    follow (the suite reads it as the channel count) and its ``reduction`` is
    chosen so the hidden units stay.
    """
    infos: list[LayerInfo] = []
    shape = (spec.height, spec.width, spec.channels)
    for i, block in enumerate(spec.layers):
        prev = infos[-1].out_shape if infos else shape
        if block.type == "se" and i in hidden:
            resize_se(block, prev[2], hidden[i])
        try:
            infos.append(_analyse_block(spec, i, block, prev, infos))
        except ValueError as err:
            raise spec.error(i, str(err)) from None


def se_hidden(spec: Spec) -> dict[int, int]:
    """Hidden units of every [se] of ``spec`` (what :func:`fit_se_blocks` keeps)."""
    infos = analyse(spec)
    return {i: se_params(b, infos[i].in_shape[2])[1] for i, b in enumerate(spec.layers) if b.type == "se"}


def narrowed(spec: Spec, filters: dict[int, int]) -> Spec:
    """A copy of ``spec`` with the given convolutions' filter counts, its [se] blocks following (the architecture a pruning leaves)."""
    hidden = se_hidden(spec) if any(b.type == "se" for b in spec.layers) else {}
    new = spec.copy()
    for index, count in filters.items():
        set_filters(new.layers[int(index)], int(count))
    if hidden:
        fit_se_blocks(new, hidden)
    return new


def dropout_probability(block: Block) -> float:
    """A [dropout]'s probability (Darknet's default .5): identity at inference, dropout in training."""
    p = block.get_float("probability", 0.5)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"[dropout] probability={p:g} must be in [0, 1)")
    return p


def yolo_scale_xy(block: Block) -> float:
    """``scale_x_y`` of a [yolo]: centres are ``sigmoid(t) * s - (s - 1) / 2`` cells from the cell corner (YOLOv4)."""
    s = block.get_float("scale_x_y", 1.0)
    if not 1.0 <= s <= 4.0:
        raise ValueError(f"[yolo] scale_x_y={s:g} must be in [1, 4]")
    if block.get_int("new_coords", 0):
        raise ValueError("[yolo] new_coords=1 (Scaled-YOLOv4 decoding) is not supported")
    return s


def yolo_anchors(block: Block) -> tuple[list[tuple[float, float]], list[int]]:
    """All anchors of a [yolo] block (pixels at the cfg's input size) and its mask."""
    values = block.get_floats("anchors")
    if len(values) % 2:
        raise ValueError("[yolo] anchors must come in width,height pairs")
    anchors = [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    mask = block.get_ints("mask", list(range(len(anchors))))
    for m in mask:
        if not 0 <= m < len(anchors):
            raise ValueError(f"[yolo] mask index {m} is outside the {len(anchors)} anchors")
    return anchors, mask


def analyse(spec: Spec, height: int | None = None, width: int | None = None) -> list[LayerInfo]:
    """Infer every layer's output shape, parameters and MACs at an input size.

    Raises :class:`UserError` naming the cfg line when a block is inconsistent
    (a route to a later layer, a shortcut between different shapes, a [yolo]
    whose preceding convolution has the wrong number of filters, ...).
    """
    height = spec.height if height is None else height
    width = spec.width if width is None else width
    if height <= 0 or width <= 0:
        raise UserError(f"input size {width}x{height} must be positive", spec.source)
    shape = (height, width, spec.channels)
    infos: list[LayerInfo] = []
    for i, block in enumerate(spec.layers):
        prev = infos[-1].out_shape if infos else shape
        try:
            info = _analyse_block(spec, i, block, prev, infos)
        except ValueError as err:
            raise spec.error(i, str(err)) from None
        if min(info.out_shape) <= 0:
            raise spec.error(i, f"output shape {info.out_shape} is empty at input {width}x{height}")
        infos.append(info)
    return infos


def _analyse_block(spec: Spec, i: int, block: Block, prev: tuple[int, int, int], infos: list[LayerInfo]) -> LayerInfo:
    h, w, c = prev
    src = (i - 1,)
    if block.type == "convolutional":
        p = conv_params(block)
        if block.origin == "depthwise" and p.filters != c:
            raise ValueError(f"[depthwise] filters={p.filters} differ from its {c} input channels (a depth multiplier is not supported)")
        if c % p.groups or p.filters % p.groups:
            raise ValueError(f"groups={p.groups} must divide the input channels ({c}) and filters ({p.filters})")
        oh = (h + 2 * p.padding - p.size) // p.stride_y + 1
        ow = (w + 2 * p.padding - p.size) // p.stride_x + 1
        kernel = p.size * p.size * (c // p.groups) * p.filters
        if p.batch_normalize:
            params, trainable = kernel + 4 * p.filters, kernel + 2 * p.filters
        else:
            params = trainable = kernel + p.filters
        macs = oh * ow * kernel
        return LayerInfo(i, block.type, src, prev, (oh, ow, p.filters), params, trainable, macs, p.size, p.stride_y, p.stride_x)
    if block.type == "maxpool":
        size, (stride_y, stride_x), padding = maxpool_params(block)
        oh = (h + padding - size) // stride_y + 1
        ow = (w + padding - size) // stride_x + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"[maxpool] size={size} does not fit its {h} x {w} input")
        return LayerInfo(i, block.type, src, prev, (oh, ow, c), size=size, stride=stride_y, stride_x=stride_x)
    if block.type == "reorg3d":
        stride, reverse = reorg_params(block)
        if reverse:
            if c % (stride * stride):
                raise ValueError(f"[reorg3d] reverse=1 with stride={stride} needs channels divisible by {stride * stride}, the input has {c}")
            return LayerInfo(i, block.type, src, prev, (h * stride, w * stride, c // (stride * stride)), stride=stride)
        if h % stride or w % stride:
            raise ValueError(f"[reorg3d] stride={stride} does not divide its {h} x {w} input")
        return LayerInfo(i, block.type, src, prev, (h // stride, w // stride, c * stride * stride), stride=stride)
    if block.type == "upsample":
        stride = block.get_int("stride", 2)
        if stride < 1:
            raise ValueError("[upsample] stride must be a positive integer")
        if block.get_float("scale", 1.0) != 1.0:
            raise ValueError("[upsample] scale other than 1 is not supported")
        return LayerInfo(i, block.type, src, prev, (h * stride, w * stride, c), stride=stride)
    if block.type == "dropout":
        dropout_probability(block)
        return LayerInfo(i, block.type, src, prev, prev)
    if block.type == "se":
        _, hidden = se_params(block, c)
        weights = 2 * c * hidden
        return LayerInfo(i, block.type, src, prev, prev, weights, weights, weights + h * w * c)
    if block.type == "avgpool":  # Darknet's [avgpool] is global: one value per channel
        return LayerInfo(i, block.type, src, prev, (1, 1, c))
    if block.type == "scale_channels":
        j = scale_channels_input(spec, i)
        scaled = infos[j].out_shape
        if prev != (1, 1, scaled[2]):
            raise ValueError(f"[scale_channels] scales layer {j} {scaled} by layer {i - 1} {prev}: that needs one value per channel (1, 1, {scaled[2]})")
        return LayerInfo(i, block.type, (i - 1, j), prev, scaled, macs=scaled[0] * scaled[1] * scaled[2])
    if block.type == "route":
        inputs = route_inputs(spec, i)
        groups, _ = route_group(block)
        shapes = [infos[j].out_shape for j in inputs]
        if len({s[:2] for s in shapes}) != 1:
            raise ValueError(f"[route] joins layers {inputs} of different sizes {[s[:2] for s in shapes]}")
        for j, s in zip(inputs, shapes):
            if s[2] % groups:
                raise ValueError(f"[route] groups={groups} does not divide the {s[2]} channels of layer {j}")
        out = (shapes[0][0], shapes[0][1], sum(s[2] // groups for s in shapes))
        return LayerInfo(i, block.type, tuple(inputs), shapes[0], out)
    if block.type == "shortcut":  # AlexeyAB's: the output has the previous layer's channels, the other added where it has them
        j = shortcut_input(spec, i)
        if infos[j].out_shape[:2] != prev[:2]:
            raise ValueError(f"[shortcut] adds layer {j} {infos[j].out_shape} to layer {i - 1} {prev}: sizes differ")
        return LayerInfo(i, block.type, (i - 1, j), prev, prev)
    if block.type == "yolo":
        if block.get_str("from", ""):  # yolov3-asff.cfg; the suite's YOLOLayer fuses the levels only with ASFF = True set in its code
            raise ValueError("[yolo] from= (an ASFF head: each level fuses the predictions of the layers named, with weights from "
                             "extra filters of its convolution) is not supported")  # fmt: skip
        anchors, mask = yolo_anchors(block)
        classes = block.get_int("classes", 20)
        if classes < 1:
            raise ValueError("[yolo] classes must be at least 1")
        yolo_scale_xy(block)
        need = len(mask) * (classes + 5)
        if c != need:
            raise ValueError(
                f"[yolo] with {len(mask)} anchors and {classes} classes needs {need} input channels, the layer before gives {c}"
            )
        return LayerInfo(i, block.type, src, prev, prev)
    raise ValueError(f"unsupported layer type [{block.type}]")


@dataclass(frozen=True)
class Totals:
    params: int
    trainable_params: int
    macs: int


def totals(infos: list[LayerInfo]) -> Totals:
    return Totals(sum(i.params for i in infos), sum(i.trainable for i in infos), sum(i.macs for i in infos))


def layer_table(spec: Spec, infos: list[LayerInfo]) -> str:
    """A Darknet-style table: index, type, filters, size/stride, input -> output, BFLOPs."""
    rows = ["   layer     filters  size/strd      input                 output          BFLOPs"]
    for info in infos:
        block = spec.layers[info.index]
        ih, iw, ic = info.in_shape
        oh, ow, oc = info.out_shape
        io = f"{iw:4d} x{ih:4d} x{ic:5d} -> {ow:4d} x{oh:4d} x{oc:5d}"
        if info.type == "convolutional":
            p = conv_params(block)
            grp = f" g{p.groups}" if p.groups > 1 else ""
            rows.append(
                f"{info.index:5d} conv      {p.filters:5d}   {p.size} x{p.size:2d}/{info.stride_text:>2s}{grp}  {io}  {2 * info.macs / 1e9:7.3f}"
            )
        elif info.type == "maxpool":
            rows.append(f"{info.index:5d} max              {info.size} x{info.size:2d}/{info.stride_text:>2s}  {io}")
        elif info.type == "reorg3d":
            rev = " reverse" if reorg_params(block)[1] else ""
            rows.append(f"{info.index:5d} reorg3d{rev:<8s}      /{info.stride:2d}  {io}")
        elif info.type == "upsample":
            rows.append(f"{info.index:5d} upsample                 {info.stride}x  {io}")
        elif info.type == "dropout":
            rows.append(f"{info.index:5d} dropout       p = {dropout_probability(block):.3f}  {io}")
        elif info.type == "se":
            rows.append(f"{info.index:5d} se        {ic:5d}->{se_params(block, ic)[1]}->{ic:<5d}  {io}  {2 * info.macs / 1e9:7.3f}")
        elif info.type == "avgpool":
            rows.append(f"{info.index:5d} avg                         {io}")
        elif info.type == "scale_channels":
            rows.append(f"{info.index:5d} scale Layer: {info.inputs[1]:<3d}          {io}  {2 * info.macs / 1e9:7.3f}")
        elif info.type == "route":
            groups, group_id = route_group(block)
            part = f" {group_id}/{groups}" if groups > 1 else ""
            rows.append(f"{info.index:5d} route  {' '.join(str(j) for j in info.inputs) + part:<38s} -> {ow:4d} x{oh:4d} x{oc:5d}")
        elif info.type == "shortcut":
            rows.append(f"{info.index:5d} shortcut  from {info.inputs[1]:<3d}            {io}")
        elif info.type == "yolo":
            rows.append(f"{info.index:5d} yolo")
    t = totals(infos)
    rows.append(
        f"Total BFLOPs {2 * t.macs / 1e9:.3f}  (MACs {t.macs:,})   parameters {t.params:,} (trainable {t.trainable_params:,})"
    )
    return "\n".join(rows)


# ---------------------------------------------------------------------------
# Edits a user asks for often
# ---------------------------------------------------------------------------


def with_classes(spec: Spec, classes: int) -> Spec:
    """A copy whose [yolo] layers predict ``classes`` classes (heads resized to match)."""
    if classes < 1:
        raise UserError(f"the class count must be at least 1, got {classes}")
    spec = spec.copy()
    for i in spec.yolo_indices():
        block = spec.layers[i]
        _, mask = yolo_anchors(block)
        block.set("classes", classes)
        head = i - 1
        if spec.layers[head].type != "convolutional":
            raise spec.error(i, "[yolo] must follow a [convolutional] layer to change the class count")
        spec.layers[head].set("filters", len(mask) * (classes + 5))
    return spec


def with_size(spec: Spec, size: int) -> Spec:
    """A copy whose [net] width and height are ``size`` (a multiple of 32)."""
    if size <= 0 or size % 32:
        raise UserError(f"the input size must be a positive multiple of 32, got {size}")
    spec = spec.copy()
    spec.net.set("width", size)
    spec.net.set("height", size)
    return spec


def anchor_pairs(flat: list[float]) -> list[tuple[float, float]]:
    """``[w1, h1, w2, h2, ...]`` (the config's ``model.anchors``) as ``[(w1, h1), (w2, h2), ...]``."""
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]


def with_anchors(spec: Spec, anchors: list[tuple[float, float]]) -> Spec:
    """A copy with new anchors (pixels at the input size) in every [yolo] layer."""
    spec = spec.copy()
    flat = ", ".join(
        f"{round(w):d},{round(h):d}" if float(w).is_integer() and float(h).is_integer() else f"{w:g},{h:g}" for w, h in anchors
    )
    for i in spec.yolo_indices():
        block = spec.layers[i]
        _, mask = yolo_anchors(block)
        if max(mask) >= len(anchors):
            raise UserError(f"{len(anchors)} anchors are too few for mask {mask} of [yolo] layer {i}: give at least {max(mask) + 1} "
                            "(w, h pairs), or null for the architecture's own")
        block.options["anchors"] = flat
        block.set("num", len(anchors))
    return spec


@dataclass(frozen=True)
class Head:
    """One detection head: the output it reads, its anchors (pixels), the class count."""

    layer: int  # index of the [yolo] block
    conv: int  # index of the layer whose output it decodes
    anchors: tuple[tuple[float, float], ...]
    classes: int
    scale_xy: float = 1.0  # [yolo] scale_x_y


def heads(spec: Spec) -> list[Head]:
    out = []
    for i in spec.yolo_indices():
        block = spec.layers[i]
        anchors, mask = yolo_anchors(block)
        out.append(Head(i, i - 1, tuple(anchors[m] for m in mask), block.get_int("classes", 20), yolo_scale_xy(block)))
    if not out:
        raise UserError("the network has no [yolo] layer", spec.source)
    return out
