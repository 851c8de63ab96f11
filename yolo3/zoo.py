"""Built-in YOLOv3 definitions, written here as code rather than copied cfg files.

``build_spec(name, classes=80, size=416)`` returns a :class:`~yolo3.spec.Spec`
with the same layer sequence as the reference Darknet cfgs, so weights trained
with Darknet load into it: ``yolov3``, ``yolov3-spp``, ``yolov3-tiny``, the
light ``yolov4-tiny`` (CSP route groups, ``scale_x_y=1.05``) and
``yolo-fastest`` (Yolo-Fastest 1.0: depthwise blocks, dropout; 320 px in its
authors' cfg), ``yolov3-tiny-relu`` (YOLOv3-tiny with ReLU, for
accelerators without LeakyReLU such as the Edge TPU), and
``yolov3-tiny-mobilenetv3-small`` (the multi-backbone suite's
YOLOv3tiny-MobileNetV3-small: MobileNetV3-small bottlenecks with [depthwise],
[se] and h_swish under YOLOv3-tiny's heads, layer for layer its cfg) and
``yolov3-mobilenetv3`` (the suite's YOLOv3-MobileNetV3: MobileNetV3-large under
YOLOv3's three heads, layer for layer its ``yolov3-mobilenet-coco.cfg``).

Example::

    from yolo3.zoo import build_spec, resolve_spec
    spec = build_spec("yolov3-tiny", classes=3, size=320)
    spec = resolve_spec("path/to/custom.cfg")   # a cfg file works the same way
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .spec import Block, Spec, read_cfg, with_classes, with_size

YOLOV3_ANCHORS = "10,13, 16,30, 33,23, 30,61, 62,45, 59,119, 116,90, 156,198, 373,326"
TINY_ANCHORS = "10,14, 23,27, 37,58, 81,82, 135,169, 344,319"
FASTEST_ANCHORS = "12,18, 37,49, 52,132, 115,73, 119,199, 242,238"

NET_OPTIONS = {
    "batch": "64",
    "subdivisions": "16",
    "width": "416",
    "height": "416",
    "channels": "3",
    "momentum": "0.9",
    "decay": "0.0005",
    "angle": "0",
    "saturation": "1.5",
    "exposure": "1.5",
    "hue": ".1",
    "learning_rate": "0.001",
    "burn_in": "1000",
    "max_batches": "500200",
    "policy": "steps",
    "steps": "400000,450000",
    "scales": ".1,.1",
}


class _Builder:
    def __init__(self, anchors: str, num: int):
        self.layers: list[Block] = []
        self.anchors = anchors
        self.num = num

    @property
    def last(self) -> int:
        return len(self.layers) - 1

    def conv(self, filters: int, size: int, stride: int = 1, bn: bool = True, activation: str = "leaky", groups: int = 1) -> int:
        opts = {"batch_normalize": "1"} if bn else {}
        if groups != 1:
            opts["groups"] = str(groups)
        opts.update(filters=str(filters), size=str(size), stride=str(stride), pad="1", activation=activation)
        self.layers.append(Block("convolutional", opts))
        return self.last

    def depthwise(self, channels: int, size: int = 3, stride: int = 1) -> int:
        return self.conv(channels, size, stride, groups=channels)

    def suite_depthwise(self, channels: int, size: int, stride: int, activation: str) -> int:
        """The multi-backbone suite's [depthwise] section (written back as such)."""
        opts = {"batch_normalize": "1", "filters": str(channels), "size": str(size), "stride": str(stride), "pad": "1",
                "activation": activation, "groups": str(channels)}  # fmt: skip
        self.layers.append(Block("convolutional", opts, origin="depthwise"))
        return self.last

    def se(self, channels: int) -> int:
        self.layers.append(Block("se", {"filters": str(channels)}))
        return self.last

    def dropout(self, probability: str) -> int:
        self.layers.append(Block("dropout", {"probability": probability}))
        return self.last

    def shortcut(self, frm: int = -3) -> int:
        self.layers.append(Block("shortcut", {"from": str(frm), "activation": "linear"}))
        return self.last

    def route(self, *layers: int, groups: int = 1, group_id: int = 0) -> int:
        opts = {"layers": ",".join(str(v) for v in layers)}
        if groups != 1:
            opts.update(groups=str(groups), group_id=str(group_id))
        self.layers.append(Block("route", opts))
        return self.last

    def upsample(self, stride: int = 2) -> int:
        self.layers.append(Block("upsample", {"stride": str(stride)}))
        return self.last

    def maxpool(self, size: int, stride: int) -> int:
        self.layers.append(Block("maxpool", {"size": str(size), "stride": str(stride)}))
        return self.last

    def residual(self, filters: int) -> int:
        self.conv(filters // 2, 1)
        self.conv(filters, 3)
        return self.shortcut(-3)

    def yolo(self, mask: str, classes: int, scale_xy: str | None = None) -> int:
        # The head convolution: linear, with bias, no batch norm.
        n = len(mask.split(","))
        self.conv(n * (classes + 5), 1, bn=False, activation="linear")
        opts = {"mask": mask, "anchors": self.anchors, "classes": str(classes), "num": str(self.num), "jitter": ".3",
                "ignore_thresh": ".7", "truth_thresh": "1", "random": "1"}  # fmt: skip
        if scale_xy is not None:
            opts["scale_x_y"] = scale_xy
        self.layers.append(Block("yolo", opts))
        return self.last


def _darknet53(b: _Builder) -> tuple[int, int]:
    """The Darknet-53 backbone; returns the indices of the stride-8 and stride-16 outputs."""
    b.conv(32, 3)
    taps = []
    for filters, repeats in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        b.conv(filters, 3, 2)
        for _ in range(repeats):
            b.residual(filters)
        taps.append(b.last)
    return taps[2], taps[3]


def _yolov3_layers(classes: int, spp: bool) -> list[Block]:
    b = _Builder(YOLOV3_ANCHORS, 9)
    s8, s16 = _darknet53(b)
    _yolov3_heads(b, s8, s16, classes, spp)
    return b.layers


def _yolov3_heads(b: _Builder, s8: int, s16: int, classes: int, spp: bool = False) -> None:
    """YOLOv3's three heads (strides 32, 16, 8) on a backbone whose stride-8 and stride-16 outputs are layers ``s8``, ``s16``."""
    # Large-object head (stride 32)
    b.conv(512, 1)
    b.conv(1024, 3)
    b.conv(512, 1)
    if spp:
        b.maxpool(5, 1)
        b.route(-2)
        b.maxpool(9, 1)
        b.route(-4)
        b.maxpool(13, 1)
        b.route(-1, -3, -5, -6)
        b.conv(512, 1)
    b.conv(1024, 3)
    b.conv(512, 1)
    b.conv(1024, 3)
    b.yolo("6,7,8", classes)
    # Medium (stride 16) and small (stride 8) heads
    for filters, tap, mask in ((256, s16, "3,4,5"), (128, s8, "0,1,2")):
        b.route(-4)
        b.conv(filters, 1)
        b.upsample(2)
        b.route(-1, tap)
        for _ in range(3):
            b.conv(filters, 1)
            b.conv(filters * 2, 3)
        b.yolo(mask, classes)


def _tiny_layers(classes: int, activation: str = "leaky") -> list[Block]:
    b = _Builder(TINY_ANCHORS, 6)
    for i, filters in enumerate((16, 32, 64, 128, 256, 512)):
        b.conv(filters, 3, activation=activation)
        if filters == 256:
            tap = b.last
        b.maxpool(2, 1 if i == 5 else 2)
    b.conv(1024, 3, activation=activation)
    b.conv(256, 1, activation=activation)
    b.conv(512, 3, activation=activation)
    b.yolo("3,4,5", classes)
    b.route(-4)
    b.conv(128, 1, activation=activation)
    b.upsample(2)
    b.route(-1, tap)
    b.conv(256, 3, activation=activation)
    b.yolo("0,1,2", classes)
    return b.layers


def _yolov4_tiny_layers(classes: int) -> list[Block]:
    """AlexeyAB's yolov4-tiny.cfg: three CSP blocks (a [route] passes the second half of a convolution on)."""
    b = _Builder(TINY_ANCHORS, 6)
    b.conv(32, 3, 2)
    b.conv(64, 3, 2)
    for filters in (64, 128, 256):
        b.conv(filters, 3)
        b.route(-1, groups=2, group_id=1)
        b.conv(filters // 2, 3)
        b.conv(filters // 2, 3)
        b.route(-1, -2)
        b.conv(filters, 1)
        tap = b.last
        b.route(-6, -1)
        b.maxpool(2, 2)
    b.conv(512, 3)
    b.conv(256, 1)
    b.conv(512, 3)
    b.yolo("3,4,5", classes, "1.05")
    b.route(-4)
    b.conv(128, 1)
    b.upsample(2)
    b.route(-1, tap)
    b.conv(256, 3)
    b.yolo("1,2,3", classes, "1.05")  # sic: the reference cfg's second head uses anchors 1, 2, 3
    return b.layers


def _fastest_layers(classes: int) -> list[Block]:
    """Yolo-Fastest 1.0 (dog-qiuqiu): inverted-residual blocks of 1x1 expand, 3x3 depthwise, 1x1 linear project, dropout .15."""
    b = _Builder(FASTEST_ANCHORS, 6)

    def stage(expand: int, out: int, stride: int, repeats: int, first_expand: int | None = None) -> None:
        b.conv(first_expand or expand, 1)
        b.depthwise(first_expand or expand, 3, stride)
        b.conv(out, 1, activation="linear")
        for _ in range(repeats):
            b.conv(expand, 1)
            b.depthwise(expand, 3)
            b.conv(out, 1, activation="linear")
            b.dropout(".15")
            b.shortcut(-5)

    b.conv(8, 3, 2)
    stage(8, 4, 1, 1)
    stage(32, 8, 2, 2, first_expand=24)
    stage(48, 8, 2, 2, first_expand=32)
    stage(96, 16, 1, 4, first_expand=48)
    stage(136, 24, 2, 4, first_expand=96)
    tap = b.last + 1  # the next stage's first 1x1 expand (stride 16), which the small-object head reads
    stage(224, 48, 2, 5, first_expand=136)
    b.conv(96, 1)
    b.depthwise(96, 5)
    b.conv(128, 1, activation="linear")
    b.depthwise(128, 5)
    b.conv(128, 1, activation="linear")
    b.yolo("3,4,5", classes, "1.0")
    b.route(-7)
    b.upsample(2)
    b.route(-1, tap)
    b.conv(96, 1)
    for _ in range(2):
        b.depthwise(96, 5)
        b.conv(96, 1, activation="linear")
    b.yolo("0,1,2", classes, "1.0")
    return b.layers


# MobileNetV3's bottlenecks (Howard et al., 2019, tables 1 and 2) as the suite writes them: expansion, output, kernel, stride,
# activation, squeeze-and-excitation
MOBILENETV3_SMALL = (
    (16, 16, 3, 2, "relu6", True), (72, 24, 3, 2, "relu6", False), (88, 24, 3, 1, "relu6", False),
    (96, 40, 5, 2, "h_swish", True), (240, 40, 5, 1, "h_swish", True), (240, 40, 5, 1, "h_swish", True),
    (120, 48, 5, 1, "h_swish", True), (144, 48, 5, 1, "h_swish", True),
    (288, 96, 5, 2, "h_swish", True), (576, 96, 5, 1, "h_swish", True), (576, 96, 5, 1, "h_swish", True),
)  # fmt: skip
MOBILENETV3_LARGE = (
    (16, 16, 3, 1, "relu6", False), (64, 24, 3, 2, "relu6", False), (72, 24, 3, 1, "relu6", False),
    (72, 40, 5, 2, "relu6", True), (120, 40, 5, 1, "relu6", True), (120, 40, 5, 1, "relu6", True),
    (240, 80, 3, 2, "h_swish", False), (200, 80, 3, 1, "h_swish", False), (184, 80, 3, 1, "h_swish", False),
    (184, 80, 3, 1, "h_swish", False), (480, 112, 3, 1, "h_swish", True), (672, 112, 3, 1, "h_swish", True),
    (672, 160, 5, 2, "h_swish", True), (960, 160, 5, 1, "h_swish", True), (960, 160, 5, 1, "h_swish", True),
)  # fmt: skip


def _mobilenetv3(b: _Builder, bottlenecks) -> dict[int, int]:
    """The suite's MobileNetV3 backbone: a h_swish stem, then each bottleneck as 1x1 expand, depthwise, [se], 1x1 linear
    project, with a residual where stride and width allow; returns the last layer at each stride (the heads' taps)."""
    b.conv(16, 3, 2, activation="h_swish")
    channels, stride, taps = 16, 2, {}
    for expand, out, size, step, activation, se in bottlenecks:
        start = b.last
        b.conv(expand, 1, activation=activation)
        b.suite_depthwise(expand, size, step, activation)
        if se:
            b.se(expand)
        b.conv(out, 1, activation="linear")
        if step == 1 and out == channels:
            b.shortcut(start - b.last - 1)
        channels, stride = out, stride * step
        taps[stride] = b.last
    return taps


def _tiny_mobilenetv3_small_layers(classes: int) -> list[Block]:
    """The suite's yolov3tiny-mobilenet-small cfg: MobileNetV3-small, a 1x1 h_swish conv, tiny's heads."""
    b = _Builder(TINY_ANCHORS, 6)
    taps = _mobilenetv3(b, MOBILENETV3_SMALL)
    b.conv(1024, 1, activation="h_swish")
    b.conv(256, 1)
    b.conv(512, 3)
    b.yolo("3,4,5", classes)
    b.route(-4)
    b.conv(128, 1)
    b.upsample(2)
    b.route(-1, taps[16])
    b.conv(256, 3)
    b.yolo("0,1,2", classes)
    return b.layers


def _yolov3_mobilenetv3_layers(classes: int) -> list[Block]:
    """The suite's yolov3-mobilenet cfg: MobileNetV3-large, a 1x1 h_swish conv, YOLOv3's three heads."""
    b = _Builder(YOLOV3_ANCHORS, 9)
    taps = _mobilenetv3(b, MOBILENETV3_LARGE)
    b.conv(1024, 1, activation="h_swish")
    _yolov3_heads(b, taps[8], taps[16], classes)
    return b.layers


BUILTIN = {
    "yolov3": lambda classes: _yolov3_layers(classes, spp=False),
    "yolov3-spp": lambda classes: _yolov3_layers(classes, spp=True),
    "yolov3-tiny": _tiny_layers,
    "yolov3-tiny-relu": lambda classes: _tiny_layers(classes, "relu"),
    "yolov4-tiny": _yolov4_tiny_layers,
    "yolo-fastest": _fastest_layers,
    "yolov3-tiny-mobilenetv3-small": _tiny_mobilenetv3_small_layers,
    "yolov3-mobilenetv3": _yolov3_mobilenetv3_layers,
}


def build_spec(name: str, classes: int = 80, size: int = 416) -> Spec:
    """The built-in definition ``name`` for ``classes`` classes at ``size`` x ``size`` input."""
    if name not in BUILTIN:
        raise UserError(f"unknown architecture {name!r} (built in: {', '.join(BUILTIN)}; or give a .cfg path)")
    if classes < 1:
        raise UserError(f"the class count must be at least 1, got {classes}")
    net = Block("net", dict(NET_OPTIONS))
    spec = Spec(net, BUILTIN[name](classes), source=f"<built-in {name}>")
    return with_size(spec, size)


def resolve_spec(name_or_cfg: str | Path, classes: int | None = None, size: int | None = None) -> Spec:
    """A Spec from a built-in name or a ``.cfg`` path, optionally with another class count or size."""
    text = str(name_or_cfg)
    if text in BUILTIN:
        spec = build_spec(text, classes if classes is not None else 80, size if size is not None else 416)
        return spec
    path = Path(text)
    if path.suffix != ".cfg" and not path.exists():
        raise UserError(f"unknown architecture {text!r} (built in: {', '.join(BUILTIN)}; or give a .cfg path)")
    spec = read_cfg(path)
    if classes is not None and classes != spec.num_classes:
        spec = with_classes(spec, classes)
    if size is not None:
        spec = with_size(spec, size)
    return spec
