"""Structured channel surgery on Spec + Darknet weights: remove output channels of convolutions for real.

Given keep-masks per *channel group*, :func:`prune_channels` returns a smaller
Spec and weights:

- **groups**: convolutions whose outputs meet in a ``[shortcut]`` must keep the
  same channels; :func:`channel_groups` finds them (union-find over the graph).
  The channels a ``[route]`` concatenates, ``[maxpool]`` and ``[upsample]`` pass
  through, are followed to every consuming convolution, which loses the
  matching input channels.
- **nothing lost silently**: a removed channel is treated as the constant it
  outputs when its BN scale is 0, ``act(beta)``. That constant is folded into
  each consumer. For a 1x1 consumer (no padding) it goes into the consumer's
  bias, or its BN moving mean. A consumer with spatial padding sees the constant
  only inside the image, not in the zero padding, so no bias reproduces it at
  the borders; there the group keeps one *carrier* channel (kernel 0, BN
  scale 0, offset 1: it outputs exactly 1 inside the image and 0 in the
  padding) and the consumer reads the removed constants through the carrier's
  input weights. This is exact: with removed channels of BN scale 0 the pruned
  model computes what the original did.
- **merges**: a removed channel may instead name a twin (similarity pruning):
  its consumers' weights are added to the twin's, as if its output were the
  twin's.
- at least one real channel of every group stays.
- **depthwise**: a depthwise convolution (``groups`` = input channels, one
  filter per channel) keeps its channels tied to its input's: it joins its
  input's group, loses the same channels, and its ``groups`` follows.
- **squeeze-and-excitation**: an ``[se]`` passes its input's channels on,
  each times its gate; pruning its input prunes the SE's weights with it
  (the first layer's columns, the second's rows). Its first layer has no
  bias, so a removed constant reaches it through the group's carrier (whose
  gate is made constant: its row of the second layer zeroed). The hidden
  units stay (:func:`yolo3.spec.se_resized`; added ones have zero weights).
  In AlexeyAB's form (``[avgpool]``, two 1x1 convolutions, ``[scale_channels]``)
  the excitation convolution's filters are tied to the channels it scales:
  it joins their group. A removed channel's value after the gate is its
  constant times a gate that depends on the image; the surgery takes the gate
  at zero input, so it is exact when the removed channels output 0 (BN scale
  and offset 0 under ReLU, ReLU6, h_swish, swish or leaky), close otherwise.
- **fixed**: channels read by a grouped (not depthwise) convolution, a
  depthwise one with a depth multiplier, or a ``[route]`` with ``groups``
  (YOLOv4-tiny's channel split) keep every channel, so the slices stay equal;
  so do the channels of a ``[scale_channels]`` whose inputs are not two single layers,
  and those a ``[reorg3d]`` reads (each is copied to ``stride^2`` output channels).

Example::

    from compression.prune.surgery import channel_groups, prune_channels
    groups = channel_groups(spec)
    masks = {g.id: keep_mask for g in groups if g.prunable}
    result = prune_channels(spec, weights, masks)
    result.spec, result.weights  # build_model(result.spec) + set_darknet_weights(...)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from yolo3.darknet import ConvWeights, DarknetWeights
from yolo3.errors import UserError
from yolo3.spec import (
    PASS_THROUGH,
    Spec,
    analyse,
    conv_params,
    reorg_params,
    resize_se,
    route_group,
    route_inputs,
    scale_channels_input,
    set_filters,
    shortcut_activation,
    shortcut_input,
)

IMAGE = -1  # the channel space of the network input
FIXED = -2  # the channel space of channels no pruning may touch (slices of a grouped [route])
LEAKY = 0.1


@dataclass
class Group:
    """Convolutions whose output channels must be pruned together, and who reads them."""

    id: int  # the smallest member's layer index
    members: list[int]
    channels: int
    consumers: set[int] = field(default_factory=set)  # convolution indices reading these channels
    padded_consumers: set[int] = field(default_factory=set)
    se_readers: set[int] = field(default_factory=set)  # [se] blocks reading these channels (no bias to fold a constant into)
    prunable: bool = True


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def tied_depthwise(spec: Spec, i: int, cin: int) -> bool:
    """Whether convolution ``i`` is depthwise with one filter per input channel (its channels tied to its input's)."""
    p = conv_params(spec.layers[i])
    return p.groups > 1 and p.groups == cin == p.filters


def _layout(spec: Spec) -> tuple[list[list[tuple[int, int]]], _UnionFind, set[int]]:
    """For every layer, its output channels as segments (space, count); spaces joined by shortcuts and depthwise ties.

    Also returns the spaces whose channels must all stay (see the module docstring).
    """
    uf = _UnionFind()
    segments: list[list[tuple[int, int]]] = []
    fixed: set[int] = set()
    image = [(IMAGE, spec.channels)]
    for i, block in enumerate(spec.layers):
        prev = segments[i - 1] if i else image
        if block.type == "convolutional":
            p = conv_params(block)
            cin = sum(n for _, n in prev)
            if tied_depthwise(spec, i, cin) and len(prev) == 1 and prev[0][0] not in (IMAGE, FIXED):
                uf.union(prev[0][0], i)
            elif p.groups != 1:
                fixed.update(space for space, _ in prev)
                fixed.add(i)
            segments.append([(i, p.filters)])
        elif block.type in (*PASS_THROUGH, "yolo"):
            segments.append(prev)
        elif block.type in ("se", "avgpool"):  # the same channels (an SE's weights are pruned with them)
            segments.append(prev)
        elif block.type == "scale_channels":  # the scaled layer's channels times the excitation's, one to one: tied
            scaled = segments[scale_channels_input(spec, i)]
            if len(scaled) == 1 and len(prev) == 1 and min(scaled[0][0], prev[0][0]) >= 0:
                uf.union(scaled[0][0], prev[0][0])
            else:
                fixed.update(space for space, _ in (*prev, *scaled))
            segments.append(scaled)
        elif block.type == "reorg3d":  # space-to-depth copies every channel to stride^2 places: they all stay
            stride, reverse = reorg_params(block)
            cin = sum(n for _, n in prev)
            fixed.update(space for space, _ in prev)
            segments.append([(FIXED, cin // (stride * stride) if reverse else cin * stride * stride)])
        elif block.type == "route":
            groups, _ = route_group(block)
            if groups == 1:
                segments.append([seg for j in route_inputs(spec, i) for seg in segments[j]])
            else:
                parts = [seg for j in route_inputs(spec, i) for seg in segments[j]]
                fixed.update(space for space, _ in parts)
                segments.append([(FIXED, sum(n for _, n in parts) // groups)])
        elif block.type == "shortcut":
            other = segments[shortcut_input(spec, i)]
            if sum(n for _, n in prev) != sum(n for _, n in other):  # different widths: channel k adds to channel k, both stay whole
                fixed.update(space for space, _ in (*prev, *other))
                segments.append(prev)
                continue
            if len(prev) != 1 or len(other) != 1:
                raise spec.error(i, "channel surgery needs both inputs of a [shortcut] to come from single layers")
            uf.union(prev[0][0], other[0][0])
            segments.append(prev)
        else:  # pragma: no cover
            raise spec.error(i, f"unsupported layer [{block.type}]")
    return segments, uf, fixed


def head_convs(spec: Spec) -> set[int]:
    return {i - 1 for i in spec.yolo_indices()}


def channel_groups(spec: Spec) -> list[Group]:
    """The channel groups of a network, with their consumers; head and input-tied groups are not prunable."""
    segments, uf, fixed = _layout(spec)
    groups: dict[int, Group] = {}
    for i in spec.conv_indices():
        root = uf.find(i)
        if root not in groups:
            groups[root] = Group(root, [], conv_params(spec.layers[i]).filters)
        groups[root].members.append(i)
    heads = head_convs(spec)
    for i in spec.conv_indices():
        p = conv_params(spec.layers[i])
        inputs = segments[i - 1] if i else [(IMAGE, spec.channels)]
        for space, _ in inputs:
            root = uf.find(space)
            if root == uf.find(i) and tied_depthwise(spec, i, sum(n for _, n in inputs)):
                continue  # a tied depthwise convolution reads only its own group's channels, channel by channel
            if root in groups:
                groups[root].consumers.add(i)
                if p.padding > 0 and p.size > 1:
                    groups[root].padded_consumers.add(i)
    for i, block in enumerate(spec.layers):
        if block.type == "se":
            for space, _ in segments[i - 1]:
                if uf.find(space) in groups:
                    groups[uf.find(space)].se_readers.add(i)
    for g in groups.values():
        g.id = min(g.members)
        g.prunable = (uf.find(IMAGE) != uf.find(g.members[0]) and not (set(g.members) & heads)
                      and not any(uf.find(space) == uf.find(g.members[0]) for space in fixed))  # fmt: skip
    return sorted(groups.values(), key=lambda g: g.id)


def _act(x: np.ndarray, activation: str) -> np.ndarray:
    """Darknet's activations in numpy (for the constants removed channels output)."""
    if activation == "leaky":
        return np.where(x > 0, x, LEAKY * x)
    if activation == "relu":
        return np.maximum(x, 0.0)
    if activation == "relu6":
        return np.clip(x, 0.0, 6.0)
    if activation == "logistic":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "swish":
        return x / (1.0 + np.exp(-x))
    if activation == "mish":
        return x * np.tanh(np.logaddexp(0.0, x))
    if activation == "h_swish":
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    return x


@dataclass
class PruneResult:
    spec: Spec
    weights: DarknetWeights
    kept: dict[int, np.ndarray]  # group id -> indices of the original channels kept (carrier included)
    carriers: dict[int, int]  # group id -> original channel index used as constant carrier


def prune_channels(
    spec: Spec,
    weights: DarknetWeights,
    masks: dict[int, np.ndarray],
    merges: dict[int, dict[int, int]] | None = None,
) -> PruneResult:
    """Remove the channels whose mask entry is False; see the module docstring.

    ``masks`` maps a group id (:func:`channel_groups`) to a boolean keep-mask of
    the group's channels; groups not named keep everything. ``merges`` maps a
    group id to ``{removed channel: twin channel}`` for channels whose
    consumers should read their twin instead of a constant.
    """
    merges = merges or {}
    groups = {g.id: g for g in channel_groups(spec)}
    segments, uf, _ = _layout(spec)
    keep = _checked_masks(spec, groups, masks, merges)
    surgery = _Surgery(spec, weights, segments, uf, {uf.find(g.members[0]): g.id for g in groups.values()}, keep, merges,
                       _carriers(groups, keep, merges), _removed_constants(spec, weights))  # fmt: skip
    new = spec.copy()
    # Walk the layers, propagating (value of removed channels, value of carriers) per output channel.
    values: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: (v, u) over the original channels
    image_vu = (np.zeros(spec.channels), np.zeros(spec.channels))
    for i, block in enumerate(spec.layers):
        prev = values[i - 1] if i else image_vu
        propagate = _PROPAGATE.get(block.type)
        values.append(prev if propagate is None else propagate(surgery, i, prev, values, new))
    analyse(new)  # the result must be consistent
    kept = {gid: np.flatnonzero(m) for gid, m in keep.items()}
    return PruneResult(new, DarknetWeights(surgery.new_convs, weights.header, surgery.new_se), kept, surgery.carriers)


def _checked_masks(spec: Spec, groups: dict[int, Group], masks: dict[int, np.ndarray], merges: dict[int, dict[int, int]]) -> dict[int, np.ndarray]:
    """The keep-masks as boolean arrays, checked against the groups (size, prunable, merges); at least one channel kept."""
    keep: dict[int, np.ndarray] = {}
    for gid, mask in masks.items():
        if gid not in groups:
            raise UserError(f"no channel group {gid} in {spec.source}")
        g = groups[gid]
        mask = np.asarray(mask, bool).copy()
        if mask.shape != (g.channels,):
            raise UserError(f"group {gid}: mask of {mask.shape[0]} entries for {g.channels} channels")
        if not g.prunable and not mask.all():
            raise UserError(f"group {gid} (layers {g.members}) cannot be pruned: it feeds a detection head, is the input, "
                            "or is read by a grouped convolution or a grouped [route]")  # fmt: skip
        if not mask.any():
            mask[0] = True  # at least one real channel stays
        for r, t in merges.get(gid, {}).items():
            if mask[r] or not mask[t]:
                raise UserError(f"group {gid}: merge {r} -> {t} needs {r} removed and {t} kept")
        keep[gid] = mask
    return keep


def _removed_constants(spec: Spec, weights: DarknetWeights) -> dict[int, np.ndarray]:
    """Per convolution, the constant each output channel gives when its BN scale is 0: the BN offset through the activation."""
    constants: dict[int, np.ndarray] = {}
    for i in spec.conv_indices():
        cw = weights.convs[i]
        offset = cw.bn[1] if cw.bn is not None else cw.bias
        constants[i] = _act(offset.astype(np.float64), conv_params(spec.layers[i]).activation)
    return constants


def _carriers(groups: dict[int, Group], keep: dict[int, np.ndarray], merges: dict[int, dict[int, int]]) -> dict[int, int]:
    """Groups with removed, non-merged channels read by a padded consumer or an [se] keep one of them as carrier (its mask entry set)."""
    carriers: dict[int, int] = {}
    for gid, mask in keep.items():
        merged = set(merges.get(gid, {}))
        removed = [c for c in np.flatnonzero(~mask) if c not in merged]
        if removed and (groups[gid].padded_consumers or groups[gid].se_readers):
            carriers[gid] = int(removed[0])
            mask[carriers[gid]] = True
    return carriers


@dataclass
class _Surgery:
    """What every layer's step reads: the layout, the masks, merges, carriers and constants; the new convolutions it writes."""

    spec: Spec
    weights: DarknetWeights
    segments: list[list[tuple[int, int]]]
    uf: _UnionFind
    root_to_id: dict[int, int]
    keep: dict[int, np.ndarray]
    merges: dict[int, dict[int, int]]
    carriers: dict[int, int]
    constants: dict[int, np.ndarray]
    new_convs: dict[int, ConvWeights] = field(default_factory=dict)
    new_se: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def group_of(self, space: int) -> int | None:
        return self.root_to_id.get(self.uf.find(space)) if space != IMAGE else None

    def mask_of(self, space: int, n: int) -> np.ndarray:
        gid = self.group_of(space)
        return self.keep[gid] if gid in self.keep else np.ones(n, bool)


def _fold_inputs(s: _Surgery, i: int, kernel: np.ndarray, v_in: np.ndarray, u_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold the removed input channels of conv ``i`` into ``kernel`` (merges, carriers) or a per-filter constant; (input keep-mask, constant).

    A grouped kernel holds in/groups inputs per filter: a depthwise one's input
    goes with its filter, any other grouped convolution reads fixed channels
    (see _layout), so no input is removed.
    """
    in_segments = s.segments[i - 1] if i else [(IMAGE, s.spec.channels)]
    fold = np.zeros(kernel.shape[-1])
    in_keep = []
    start = 0
    for space, n in ([] if conv_params(s.spec.layers[i]).groups > 1 else in_segments):
        gid = s.group_of(space)
        m = s.mask_of(space, n)
        in_keep.append(m)
        if gid in s.keep:
            twins = s.merges.get(gid, {})
            for r, t in twins.items():
                kernel[:, :, start + t, :] += kernel[:, :, start + r, :]
            removed = np.flatnonzero(~m)
            removed = removed[~np.isin(removed, list(twins))]
            carrier = s.carriers.get(gid)
            if carrier is not None:
                # the carrier holds u inside the image, 0 in the padding, like the removed constants
                c_abs = start + carrier
                own = kernel[:, :, c_abs, :] * v_in[c_abs]  # the carrier's original channel was a constant too
                extra = np.tensordot(v_in[start + removed], kernel[:, :, start + removed, :], axes=([0], [2]))
                kernel[:, :, c_abs, :] = (own + extra) / u_in[c_abs]
            elif len(removed):
                fold += np.einsum("c,hwco->o", v_in[start + removed], kernel[:, :, start + removed, :])
        start += n
    return (np.concatenate(in_keep) if in_keep else np.ones(kernel.shape[2], bool)), fold


def _conv_step(s: _Surgery, i: int, prev, values, new: Spec) -> tuple[np.ndarray, np.ndarray]:
    """Prune convolution ``i``: its removed inputs folded, its removed outputs dropped (a carrier set up); its (v, u)."""
    p = conv_params(s.spec.layers[i])
    cw = s.weights.convs[i]
    kernel = cw.kernel.astype(np.float64).copy()  # (kh, kw, cin, cout)
    in_mask, fold = _fold_inputs(s, i, kernel, *prev)
    gid_out = s.group_of(i)
    out_mask = s.keep[gid_out] if gid_out in s.keep else np.ones(p.filters, bool)
    if p.groups == 1:
        kernel = kernel[:, :, in_mask, :]
    if cw.bn is not None:
        gamma, beta, mean, var = (a.astype(np.float64).copy() for a in cw.bn)
        mean -= fold  # conv(x) + K - mean == conv(x) - (mean - K)
        bias = None
    else:
        bias = cw.bias.astype(np.float64) + fold
    carrier = s.carriers.get(gid_out)
    if carrier is not None:
        kernel[..., carrier] = 0.0
        if cw.bn is not None:
            gamma[carrier], beta[carrier], mean[carrier], var[carrier] = 0.0, 1.0, 0.0, 1.0
        else:
            bias[carrier] = 1.0
    kernel = np.ascontiguousarray(kernel[..., out_mask].astype(np.float32))
    if cw.bn is not None:
        s.new_convs[i] = ConvWeights(kernel, None, tuple(a[out_mask].astype(np.float32) for a in (gamma, beta, mean, var)))
    else:
        s.new_convs[i] = ConvWeights(kernel, bias[out_mask].astype(np.float32), None)
    set_filters(new.layers[i], int(out_mask.sum()))
    v = np.where(out_mask & (np.arange(p.filters) != (carrier if carrier is not None else -1)), 0.0, s.constants[i])
    u = np.zeros(p.filters)
    if carrier is not None:
        u[carrier] = _act(np.array(1.0), p.activation)  # the carrier's output: BN offset 1 through the activation
    return v, u


def _se_step(s: _Surgery, i: int, prev, values, new: Spec) -> tuple[np.ndarray, np.ndarray]:
    """Prune an [se] with its input: its weights sliced (removed constants folded through the carrier), hidden units kept; its (v, u)."""
    fc1, fc2 = (a.astype(np.float64).copy() for a in s.weights.se[i])  # (hidden, c), (c, hidden)
    v_in, u_in = prev
    in_keep, start = [], 0
    for space, n in s.segments[i - 1]:
        gid = s.group_of(space)
        m = s.mask_of(space, n)
        in_keep.append(m)
        if gid in s.keep:
            twins = s.merges.get(gid, {})
            for r, t in twins.items():
                fc1[:, start + t] += fc1[:, start + r]
            removed = np.flatnonzero(~m)
            removed = start + removed[~np.isin(removed, list(twins))]
            carrier = s.carriers.get(gid)
            if carrier is not None:  # the carrier's mean is u, the removed channels' means their constants
                c_abs = start + carrier
                fc1[:, c_abs] = (fc1[:, c_abs] * v_in[c_abs] + fc1[:, removed] @ v_in[removed]) / u_in[c_abs]
                fc2[c_abs, :] = 0.0  # its gate: hard sigmoid of 0, a constant
        start += n
    keep = np.concatenate(in_keep)
    hidden = fc1.shape[0]
    new_hidden = resize_se(new.layers[i], int(keep.sum()), hidden)
    fc1, fc2 = fc1[:, keep], fc2[keep, :]
    if new_hidden >= hidden:  # extra units with zero weights output 0 and change nothing
        fc1 = np.vstack([fc1, np.zeros((new_hidden - hidden, fc1.shape[1]))])
        fc2 = np.hstack([fc2, np.zeros((fc2.shape[0], new_hidden - hidden))])
    else:  # fewer channels than units: keep the units that carry the most
        units = np.sort(np.argsort(-np.linalg.norm(fc1, axis=1) * np.linalg.norm(fc2, axis=0), kind="stable")[:new_hidden])
        fc1, fc2 = fc1[units], fc2[:, units]
    s.new_se[i] = (np.ascontiguousarray(fc1, np.float32), np.ascontiguousarray(fc2, np.float32))
    gate = 0.5  # hard sigmoid at zero input: a removed channel's gate (exact when its constant is 0), the carrier's (exact)
    return v_in * gate, u_in * gate


def _route_step(s: _Surgery, i: int, prev, values, new: Spec) -> tuple[np.ndarray, np.ndarray]:
    """A [route] concatenates its inputs' (v, u), or the slice its ``groups`` / ``group_id`` take."""
    groups, group_id = route_group(s.spec.layers[i])
    parts = []
    for j in route_inputs(s.spec, i):
        a, b = values[j]
        n = len(a) // groups
        parts.append((a[n * group_id : n * (group_id + 1)], b[n * group_id : n * (group_id + 1)]))
    return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])


def _reorg_step(s: _Surgery, i: int, prev, values, new: Spec) -> tuple[np.ndarray, np.ndarray]:
    """A [reorg3d] moves its input's (v, u): each channel ``stride^2`` times (space-to-depth), or the first slice (reverse)."""
    stride, reverse = reorg_params(s.spec.layers[i])
    if reverse:
        n = len(prev[0]) // (stride * stride)
        return prev[0][:n], prev[1][:n]
    return np.tile(prev[0], stride * stride), np.tile(prev[1], stride * stride)


def _shortcut_step(s: _Surgery, i: int, prev, values, new: Spec) -> tuple[np.ndarray, np.ndarray]:
    """A [shortcut] adds its two inputs' constants, through its activation."""
    other = values[shortcut_input(s.spec, i)]
    act = shortcut_activation(s.spec.layers[i])
    c = len(prev[0])
    v, u = (np.pad(a[:c], (0, max(0, c - len(a)))) for a in other)  # a narrower or wider layer adds where it has channels
    return _act(prev[0] + v, act), _act(prev[1] + u, act)


def _scale_step(s: _Surgery, i: int, prev, values, new: Spec) -> tuple[np.ndarray, np.ndarray]:
    """A [scale_channels] multiplies the scaled layer's constants by the per-channel factors' constants."""
    scaled = values[scale_channels_input(s.spec, i)]
    return scaled[0] * prev[0], scaled[1] * prev[1]


# One step per block type that changes channels or their constants; every other block ([maxpool],
# [upsample], [avgpool], [yolo], ...) passes its input's (v, u) through.
_PROPAGATE = {"convolutional": _conv_step, "route": _route_step, "shortcut": _shortcut_step, "scale_channels": _scale_step, "se": _se_step,
              "reorg3d": _reorg_step}
