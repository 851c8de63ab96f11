"""Latency levers beside channels: architecture changes of Spec + weights that stay a Darknet cfg OpenCV loads.

int8 latency on a CPU runtime follows the pixels the early layers compute far
more than it follows channels. Two levers change that at the source:

- **pool → stride**: a ``[convolutional]`` with stride 1 followed by a
  ``[maxpool]`` of size 2 and stride 2 that is its only reader becomes the same
  convolution with stride 2, and the max-pool goes. The kernel is copied; the
  output has the same size, computed from a quarter of the pixels. The
  convolution's output sampled at every other pixel is not its 2x2 maximum, so
  the model needs fine-tuning after it.
- **ReLU**: LeakyReLU replaced by ReLU, which the int8 kernels fuse into the
  convolution.

Both are pure functions: :func:`pool_stride_pairs` says which convolutions may
take the first, :class:`Levers` applies a choice (``apply(spec, weights)``).

Example::

    pairs = pool_stride_pairs(spec)               # YOLOv3-tiny: [0, 2, 4, 6]
    spec2, weights2 = Levers(pool_stride=tuple(pairs[:3]), relu=True).apply(spec, weights)
"""

from __future__ import annotations

from dataclasses import dataclass

from yolo3.darknet import DarknetWeights
from yolo3.spec import Spec, analyse, conv_params, maxpool_params

REFERENCES = {"route": "layers", "shortcut": "from", "sam": "from", "scale_channels": "from"}


def _readers(spec: Spec, index: int) -> list[int]:
    """The layers that read layer ``index``'s output: the next layer (unless it is a [route]) and every reference to it."""
    readers = []
    for j in range(index + 1, len(spec.layers)):
        block = spec.layers[j]
        key = REFERENCES.get(block.type)
        if key is None:
            if j == index + 1:
                readers.append(j)
            continue
        refs = [j + r if r < 0 else r for r in block.get_ints(key)]
        if index in refs or (block.type != "route" and j == index + 1):
            readers.append(j)
    return readers


def pool_stride_pairs(spec: Spec) -> list[int]:
    """Convolutions (stride 1, odd kernel, same padding) whose only reader is the next layer, a 2x2 stride-2 [maxpool].

    The convolution with stride 2 gives the max-pool's output size exactly
    (Darknet's padding rules: (h + 2p - k) / 2 + 1 against (h + 1 - 2) / 2 + 1).
    """
    pairs = []
    for i, block in enumerate(spec.layers[:-1]):
        nxt = spec.layers[i + 1]
        if block.type != "convolutional" or nxt.type != "maxpool":
            continue
        p = conv_params(block)
        size, strides, padding = maxpool_params(nxt)
        if p.strides != (1, 1) or p.size % 2 == 0 or p.padding != p.size // 2 or (size, strides, padding) != (2, (2, 2), 1):
            continue
        if _readers(spec, i) == [i + 1]:
            pairs.append(i)
    return pairs


def _without_layer(spec: Spec, weights: DarknetWeights, removed: int) -> tuple[Spec, DarknetWeights]:
    """``spec`` with layer ``removed`` gone: later references fixed (absolute ones moved, relative ones that span it shortened)."""
    new = spec.copy()
    del new.layers[removed]
    for j in range(removed, len(new.layers)):
        block = new.layers[j]
        key = REFERENCES.get(block.type)
        if key is None:
            continue
        old_j = j + 1
        refs = []
        for r in block.get_ints(key):
            target = old_j + r if r < 0 else r
            if target == removed:
                raise ValueError(f"layer {old_j} reads layer {removed}, which is being removed")
            new_target = target - 1 if target > removed else target
            refs.append(new_target - j if r < 0 else new_target)
        block.set(key, refs)
    return new, weights.renumbered(lambda i: i - 1 if i > removed else i)


@dataclass(frozen=True)
class Levers:
    """A choice of levers: the convolutions (original indices) that take the max-pool's stride, and ReLU for LeakyReLU."""

    pool_stride: tuple[int, ...] = ()
    relu: bool = False

    @property
    def empty(self) -> bool:
        return not self.pool_stride and not self.relu

    def names(self) -> list[str]:
        """What the choice does, for the report."""
        out = [f"stride 2 instead of max-pool after conv_{i}" for i in self.pool_stride]
        return out + (["ReLU instead of LeakyReLU"] if self.relu else [])

    def to_json(self) -> dict:
        return {"pool_stride": list(self.pool_stride), "relu": self.relu}

    @classmethod
    def from_json(cls, data: dict | None) -> Levers:
        data = data or {}
        return cls(tuple(int(i) for i in data.get("pool_stride", ())), bool(data.get("relu", False)))

    def apply(self, spec: Spec, weights: DarknetWeights) -> tuple[Spec, DarknetWeights]:
        """The levered architecture and weights (kernels copied; nothing else changes)."""
        eligible = set(pool_stride_pairs(spec))
        unknown = [i for i in self.pool_stride if i not in eligible]
        if unknown:
            raise ValueError(f"conv_{unknown[0]} is not followed by a 2x2 stride-2 max-pool it alone feeds")
        for i in sorted(self.pool_stride, reverse=True):  # from the back: earlier indices stay valid
            spec = spec.copy()
            spec.layers[i].set("stride", 2)
            for key in ("stride_x", "stride_y"):  # an explicit stride_x=1 would override it
                spec.layers[i].options.pop(key, None)
            spec, weights = _without_layer(spec, weights, i + 1)
        if self.relu:
            spec = spec.copy()
            for i in spec.conv_indices():
                if conv_params(spec.layers[i]).activation == "leaky":
                    spec.layers[i].set("activation", "relu")
        analyse(spec)  # the result must be consistent
        return spec, weights

    def apply_spec(self, spec: Spec) -> Spec:
        """The levered architecture alone (for timing with random weights)."""
        return self.apply(spec, DarknetWeights({}))[0] if not self.empty else spec

    def conv_map(self, spec: Spec) -> dict[int, int]:
        """Original convolution index -> its index in the levered architecture."""
        removed = sorted(i + 1 for i in self.pool_stride)
        return {i: i - sum(r < i for r in removed) for i in spec.conv_indices()}


def lever_variants(spec: Spec, allowed) -> list[Levers]:
    """The lever variants compress tries, simplest first: the first 1, 2, ... pool->stride pairs, then all of them with ReLU.

    ``allowed`` is ``compress.levers`` (a subset of ``pool_stride``, ``relu``).
    """
    pairs = pool_stride_pairs(spec) if "pool_stride" in allowed else []
    variants = [Levers(tuple(pairs[:k])) for k in range(1, len(pairs) + 1)]
    if "relu" in allowed and any(conv_params(spec.layers[i]).activation == "leaky" for i in spec.conv_indices()):
        variants.append(Levers(tuple(pairs), relu=True))
    return variants
