"""Darknet ``.weights`` files: read them into numpy arrays per convolution and write them back.

Pure numpy, so it serves the Keras model, the structured-pruning surgery and
the tests alike. The layout (see ``shared/darknet/WEIGHTS_FORMAT.md``): a
header of int32 major, minor, revision and ``seen`` (uint64 when
``major*10+minor >= 2``, else int32), then per [convolutional] layer in cfg
order: biases (the BN beta when batch-normalised), then if BN: scales, rolling
mean, rolling variance; then the kernel as (out, in/groups, kh, kw). An [se]
(the multi-backbone suite's squeeze-and-excitation) holds, in its place in that
order, its two fully connected weights as the suite's ``save_weights`` writes
them: (hidden, channels), then (channels, hidden), no biases.

Example::

    from yolo3.zoo import resolve_spec
    from yolo3.darknet import read_weights, write_weights
    spec = resolve_spec("yolov3-tiny.cfg")
    weights = read_weights("yolov3-tiny.weights", spec)
    write_weights("copy.weights", spec, weights)   # byte-identical
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .fileio import atomic_write_bytes
from .spec import Spec, analyse, conv_params


@dataclass
class ConvWeights:
    """The weights of one convolution in Keras layout.

    ``kernel`` is (kh, kw, in/groups, out); ``bias`` is set when the layer has
    no batch norm; ``bn`` is (gamma, beta, moving_mean, moving_variance), the
    order Keras' ``BatchNormalization.set_weights`` takes.
    """

    kernel: np.ndarray
    bias: np.ndarray | None = None
    bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def filters(self) -> int:
        return int(self.kernel.shape[-1])


@dataclass
class Header:
    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def wide_seen(self) -> bool:
        return self.major * 10 + self.minor >= 2

    @property
    def nbytes(self) -> int:
        return 20 if self.wide_seen else 16


@dataclass
class DarknetWeights:
    """Every convolution's weights (and every [se]'s: (fc1 (hidden, c), fc2 (c, hidden))), keyed by layer index, plus the header."""

    convs: dict[int, ConvWeights]
    header: Header = field(default_factory=Header)
    se: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def with_convs(self, convs: dict[int, ConvWeights]) -> DarknetWeights:
        """The same file with other convolution weights (the [se] weights and header kept)."""
        return DarknetWeights(convs, self.header, dict(self.se))

    def renumbered(self, where) -> DarknetWeights:
        """Every layer's weights moved to ``where(index)`` (None: the layer is gone), for edits that remove layers."""
        convs = {where(i): w for i, w in self.convs.items() if where(i) is not None}
        return DarknetWeights(convs, self.header, {where(i): w for i, w in self.se.items() if where(i) is not None})


def se_shapes(spec: Spec) -> dict[int, tuple[int, int]]:
    """Per [se]: (channels, hidden units)."""
    from .spec import se_params

    infos = analyse(spec, spec.height, spec.width)
    return {i: se_params(b, infos[i].in_shape[2]) for i, b in enumerate(spec.layers) if b.type == "se"}


def _layout(spec: Spec) -> list[tuple[str, int, object]]:
    """The layers that hold weights, in file order: ("conv", i, (shape, bn)) and ("se", i, (channels, hidden))."""
    items = [("conv", i, v) for i, v in conv_shapes(spec).items()] + [("se", i, v) for i, v in se_shapes(spec).items()]
    return sorted(items, key=lambda t: t[1])


def conv_shapes(spec: Spec) -> dict[int, tuple[tuple[int, int, int, int], bool]]:
    """Per convolution: the Keras kernel shape and whether it has batch norm."""
    infos = analyse(spec, spec.height, spec.width)
    out = {}
    for i in spec.conv_indices():
        p = conv_params(spec.layers[i])
        cin = infos[i].in_shape[2]
        out[i] = ((p.size, p.size, cin // p.groups, p.filters), p.batch_normalize)
    return out


def expected_floats(spec: Spec) -> int:
    """How many float32 values the body of a ``.weights`` file for ``spec`` holds."""
    total = sum(2 * c * hidden for c, hidden in se_shapes(spec).values())
    for (kh, kw, cin, cout), bn in conv_shapes(spec).values():
        total += cout * (4 if bn else 1) + kh * kw * cin * cout
    return total


def _parse_header(data: bytes, path: Path) -> Header:
    if len(data) < 16:
        raise UserError(f"only {len(data)} bytes, too short for a Darknet header", path)
    major, minor, revision = np.frombuffer(data[:12], "<i4").tolist()
    header = Header(major, minor, revision)
    if header.wide_seen:
        if len(data) < 20:
            raise UserError(f"only {len(data)} bytes, too short for a version {major}.{minor} header", path)
        header.seen = int(np.frombuffer(data[12:20], "<u8")[0])
    else:
        header.seen = int(np.frombuffer(data[12:16], "<i4")[0])
    return header


def read_weights(path: str | Path, spec: Spec) -> DarknetWeights:
    """Read a ``.weights`` file laid out for ``spec``.

    The file must hold exactly the values the cfg calls for; otherwise the
    error names the expected and the actual byte count (the usual cause is a
    cfg with another class count or another architecture).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError("no such file", path) from None
    except OSError as err:
        raise UserError(f"cannot read: {err.strerror}", path) from None
    header = _parse_header(data, path)
    expected = header.nbytes + 4 * expected_floats(spec)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise UserError(
            f"{what}: {spec.source} needs {expected:,} bytes ({header.nbytes}-byte header + "
            f"{expected_floats(spec):,} float32 values), the file has {len(data):,} bytes",
            path,
        )
    body = np.frombuffer(data, "<f4", offset=header.nbytes)
    pos = 0

    def take(n: int) -> np.ndarray:
        nonlocal pos
        arr = body[pos : pos + n].astype(np.float32)
        pos += n
        return arr

    convs: dict[int, ConvWeights] = {}
    se: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for kind, i, shape in _layout(spec):
        if kind == "se":
            c, hidden = shape
            se[i] = (take(hidden * c).reshape(hidden, c), take(c * hidden).reshape(c, hidden))
            continue
        (kh, kw, cin, cout), bn = shape
        biases = take(cout)
        if bn:
            gamma, mean, var = take(cout), take(cout), take(cout)
        kernel = take(cout * cin * kh * kw).reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)
        if bn:
            convs[i] = ConvWeights(np.ascontiguousarray(kernel), None, (gamma, biases, mean, var))
        else:
            convs[i] = ConvWeights(np.ascontiguousarray(kernel), biases, None)
    return DarknetWeights(convs, header, se)


def weights_to_bytes(spec: Spec, weights: DarknetWeights) -> bytes:
    """Serialise weights for ``spec`` in Darknet's layout (the inverse of :func:`read_weights`)."""
    h = weights.header
    parts = [np.array([h.major, h.minor, h.revision], "<i4").tobytes()]
    parts.append(np.array([h.seen], "<u8" if h.wide_seen else "<i4").tobytes())
    for kind, i, layout in _layout(spec):
        if kind == "se":
            c, hidden = layout
            if i not in weights.se or tuple(weights.se[i][0].shape) != (hidden, c) or tuple(weights.se[i][1].shape) != (c, hidden):
                raise UserError(f"no [se] weights of shapes ({hidden}, {c}) and ({c}, {hidden}) for layer {i}", spec.source)
            parts.extend(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in weights.se[i])
            continue
        shape, bn = layout
        if i not in weights.convs:
            raise UserError(f"no weights for convolution {i}", spec.source)
        cw = weights.convs[i]
        if tuple(cw.kernel.shape) != shape:
            raise UserError(f"convolution {i}: kernel {cw.kernel.shape} does not fit the cfg's {shape}", spec.source)
        if bn:
            if cw.bn is None:
                raise UserError(f"convolution {i} has batch_normalize=1 but no BN weights", spec.source)
            gamma, beta, mean, var = cw.bn
            arrays = [beta, gamma, mean, var]
        else:
            if cw.bias is None:
                raise UserError(f"convolution {i} has no bias", spec.source)
            arrays = [cw.bias]
        arrays.append(np.asarray(cw.kernel).transpose(3, 2, 0, 1))
        parts.extend(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays)
    return b"".join(parts)


def write_weights(path: str | Path, spec: Spec, weights: DarknetWeights) -> None:
    """Write a ``.weights`` file atomically."""
    atomic_write_bytes(path, weights_to_bytes(spec, weights))


def random_weights(spec: Spec, seed: int = 0, header: Header | None = None) -> DarknetWeights:
    """Plausible random Darknet weights for ``spec`` (positive BN variances, kernels scaled by fan-in, SE blocks too).

    For tests and reference comparisons that need every weight non-trivial, which a fresh Keras model (BN at identity) is not.
    """
    rng = np.random.RandomState(seed)
    convs = {}
    for i, (shape, bn) in conv_shapes(spec).items():
        fan_in = shape[0] * shape[1] * shape[2]
        kernel = (rng.randn(*shape) / np.sqrt(fan_in)).astype(np.float32)
        cout = shape[-1]
        if bn:
            stats = (
                rng.uniform(0.5, 1.5, cout).astype(np.float32),
                rng.uniform(-0.2, 0.2, cout).astype(np.float32),
                rng.uniform(-0.2, 0.2, cout).astype(np.float32),
                rng.uniform(0.5, 2.0, cout).astype(np.float32),
            )
            convs[i] = ConvWeights(kernel, None, stats)
        else:
            convs[i] = ConvWeights(kernel, rng.uniform(-0.1, 0.1, cout).astype(np.float32), None)
    se = {i: ((rng.randn(hidden, c) / np.sqrt(c)).astype(np.float32), (rng.randn(c, hidden) / np.sqrt(hidden)).astype(np.float32))
          for i, (c, hidden) in se_shapes(spec).items()}  # fmt: skip
    return DarknetWeights(convs, header or Header(), se)
