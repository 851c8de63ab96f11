"""Structured pruning methods: which channels (or residual blocks) to remove. Surgery does the removing.

- :func:`slimming_masks` — network slimming (Liu et al. 2017): rank channels by
  |BN scale| globally, remove those under a threshold or the lowest percent,
  shortcut groups scored together, a minimum kept per group, kept counts
  optionally rounded up to a multiple of 8.
- :func:`similarity_masks` — remove one filter of each most similar pair, as
  the next layer sees the filters (after BN): ``d = w1 * ||f1 - f2|| / (||f1|| + ||f2||)
  + w2 * (1 - cos(f1, f2))`` (small = similar), repeatedly, until a ratio or a
  distance threshold; the removed filter's consumers read its twin instead.
- :func:`layer_prune` — remove whole residual blocks (1x1 conv, 3x3 conv,
  shortcut) ranked by the mean |BN scale| of the block.
  (see :mod:`compression.prune.sparse_training` for the proximal form the tool uses).

Example::

    masks = slimming_masks(spec, weights, percent=0.5, min_keep=8)
    result = prune_channels(spec, weights, masks)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from yolo3.darknet import DarknetWeights
from yolo3.errors import UserError
from yolo3.names import bn_name, conv_index, conv_name
from yolo3.spec import Spec, analyse, conv_params, route_inputs, scale_channels_input, shortcut_activation, shortcut_input

from .surgery import Group, channel_groups


def bn_scales(weights: DarknetWeights, group: Group) -> np.ndarray:
    """Channel importance of a group: the mean |gamma| over its member convolutions."""
    scales = [np.abs(weights.convs[i].bn[0]) for i in group.members if weights.convs[i].bn is not None]
    if not scales:
        return np.ones(group.channels)
    return np.mean(scales, axis=0)


def _round_up(n: int, multiple: int, limit: int) -> int:
    return min(limit, int(math.ceil(n / multiple) * multiple)) if multiple > 1 else n


def slimming_masks(
    spec: Spec,
    weights: DarknetWeights,
    percent: float | None = None,
    threshold: float | None = None,
    min_keep: int = 1,
    min_keep_fraction: float = 0.0,
    round_to: int = 1,
) -> dict[int, np.ndarray]:
    """Keep-masks by a global |BN scale| threshold (given, or the ``percent`` quantile of all prunable channels)."""
    groups = [g for g in channel_groups(spec) if g.prunable]
    scores = {g.id: bn_scales(weights, g) for g in groups}
    if threshold is None:
        if percent is None or not 0 <= percent < 1:
            raise UserError("slimming needs a percent in [0, 1) or a threshold")
        allscores = np.concatenate(list(scores.values())) if scores else np.zeros(0)
        threshold = float(np.quantile(allscores, percent)) if len(allscores) else 0.0
    masks = {}
    for g in groups:
        s = scores[g.id]
        n = int((s > threshold).sum())
        n = max(n, min_keep, int(math.ceil(min_keep_fraction * g.channels)), 1)
        n = _round_up(min(n, g.channels), round_to, g.channels)
        order = np.argsort(-s, kind="stable")
        mask = np.zeros(g.channels, bool)
        mask[order[:n]] = True
        masks[g.id] = mask
    return masks


def _one_filter_set(spec: Spec, group: Group) -> bool:
    """A single convolution, or one followed by the depthwise convolutions tied to it: each channel is one filter (chain).

    Channels of a shortcut group are sums of several layers' filters instead;
    similarity is not defined for them.
    """
    return all(conv_params(spec.layers[m]).groups > 1 for m in group.members[1:])


def filters_after_bn(weights: DarknetWeights, i: int) -> np.ndarray:
    """Each output filter of conv ``i`` as the next layer sees it: BN-scaled kernel plus the folded offset, (out, d)."""
    cw = weights.convs[i]
    k = cw.kernel.reshape(-1, cw.kernel.shape[-1]).T.astype(np.float64)
    if cw.bn is None:
        return np.hstack([k, cw.bias.astype(np.float64)[:, None]])
    gamma, beta, mean, var = (a.astype(np.float64) for a in cw.bn)
    scale = gamma / np.sqrt(var + 1e-6)
    return np.hstack([k * scale[:, None], (beta - mean * scale)[:, None]])


def pair_distances(f: np.ndarray, w1: float, w2: float) -> np.ndarray:
    """d = w1 * ||a - b|| / (||a|| + ||b||) + w2 * (1 - cos(a, b)) for every pair of rows; inf on the diagonal."""
    norms = np.linalg.norm(f, axis=1)
    gram = f @ f.T
    sq = np.maximum(norms[:, None] ** 2 + norms[None, :] ** 2 - 2 * gram, 0.0)
    denom = norms[:, None] + norms[None, :]
    euclid = np.sqrt(sq) / np.where(denom > 0, denom, 1.0)
    cosine = gram / np.where(norms[:, None] * norms[None, :] > 0, norms[:, None] * norms[None, :], 1.0)
    d = w1 * euclid + w2 * (1.0 - np.clip(cosine, -1.0, 1.0))
    np.fill_diagonal(d, np.inf)
    return d


def resolve_layer_ratios(spec: Spec, given: dict | None, source=None) -> dict[int, float]:
    """``pruning.similarity_layer_ratios`` ({"12" or "conv_12": ratio}) as {channel group id: ratio}, checked against the model.

    A single convolution is its own group (its id is its index). Layers tied
    by a shortcut form one group, named by any member, and take one ratio.
    Heads and layers the model does not have cannot be named.
    """
    out: dict[int, float] = {}
    if not given:
        return out
    groups = [g for g in channel_groups(spec) if g.prunable]
    group_of = {m: g.id for g in groups for m in g.members}
    named: dict[int, str] = {}
    for key, ratio in given.items():
        index = conv_index(key)
        if index not in group_of:
            why = "is not a convolution of this model" if index >= len(spec.layers) or spec.layers[index].type != "convolutional" else (
                "is a head (its channels are the predictions)")  # fmt: skip
            raise UserError(f"pruning.similarity_layer_ratios: layer {key} {why}; prunable: {', '.join(conv_name(i) for i in sorted(group_of))}", source)
        gid = group_of[index]
        if gid in out and out[gid] != float(ratio):
            raise UserError(f"pruning.similarity_layer_ratios: layers {named[gid]} and {key} are tied by a shortcut (one channel group); give them one ratio", source)
        out[gid], named[gid] = float(ratio), str(key)
    return out


def group_masks(
    spec: Spec, weights: DarknetWeights, ratios: dict[int, float], min_keep: int = 1, round_to: int = 1, keep: dict[int, int] | None = None
) -> dict[int, np.ndarray]:
    """Keep-masks for channel groups of several convolutions (tied by shortcuts), by mean |BN scale|, at a ratio each.

    Similarity is defined for one layer's filters; the channels of a shortcut
    group are the sum of several layers', so they are ranked as network
    slimming ranks them. ``keep`` (group id -> count), for one of several
    rounds, overrides the count the ratio gives.
    """
    masks = {}
    for g in channel_groups(spec):
        if g.id not in ratios or not g.prunable or _one_filter_set(spec, g):
            continue
        count = keep[g.id] if keep and g.id in keep else _layer_budget(g.channels, ratios[g.id], min_keep, round_to)
        if count >= g.channels:
            continue
        mask = np.zeros(g.channels, bool)
        mask[np.argsort(-bn_scales(weights, g), kind="stable")[:count]] = True
        masks[g.id] = mask
    return masks


def _layer_budget(channels: int, ratio: float, min_keep: int, round_to: int) -> int:
    """Filters one layer keeps after removing ``ratio`` of them: at least ``min_keep``, rounded up to ``round_to``."""
    removable = channels - max(min_keep, 1)
    final = channels - min(removable, int(math.floor(ratio * channels)))
    return _round_up(final, round_to, channels)


def similarity_keep_schedule(
    spec: Spec, ratio: float, rounds: int, min_keep: int = 1, round_to: int = 1, layer_ratios: dict[int, float] | None = None
) -> list[dict[int, int]]:
    """Filters each layer keeps after each of ``rounds`` similarity prunings, ending where one pruning by ``ratio`` would.

    The removal is spread evenly over the rounds per layer, from the layer's
    original count, so that rounding (to ``round_to``) is applied to the
    targets rather than compounded round after round. ``layer_ratios``
    (layer index -> ratio) overrides ``ratio`` for the layers it names.
    """
    layer_ratios = layer_ratios or {}
    schedule: list[dict[int, int]] = [{} for _ in range(rounds)]
    for g in channel_groups(spec):
        if not g.prunable or (not _one_filter_set(spec, g) and g.id not in layer_ratios):  # shortcut groups only when named
            continue
        layer_ratio = layer_ratios.get(g.id, ratio)
        if layer_ratio is None:  # only a threshold for this layer: it is not scheduled
            continue
        final = _layer_budget(g.channels, layer_ratio, min_keep, round_to)
        for r in range(rounds):
            target = g.channels - int(round((g.channels - final) * (r + 1) / rounds))
            schedule[r][g.id] = max(final, _round_up(target, round_to, g.channels))
    return schedule


@dataclass
class SimilarityPlan:
    masks: dict[int, np.ndarray]
    merges: dict[int, dict[int, int]]
    removed: dict[int, list[tuple[int, int, float]]]  # group -> (removed, twin, distance) in removal order


def similarity_masks(
    spec: Spec,
    weights: DarknetWeights,
    w1: float = 0.5,
    w2: float = 0.5,
    ratio: float | None = 0.3,
    threshold: float | None = None,
    kernel_sizes: tuple[int, ...] = (1,),
    min_keep: int = 1,
    round_to: int = 1,
    keep: dict[int, int] | None = None,
    layer_ratios: dict[int, float] | None = None,
) -> SimilarityPlan:
    """Remove one filter of the most similar remaining pair, again and again, per layer.

    Layers considered: single convolutions (not shortcut groups, whose channels
    are tied across several layers) of the given kernel sizes, not the heads;
    a convolution and the depthwise one tied to it count as one, a channel's
    filter being both layers' filters for it.
    Stops at ``ratio`` of the layer's filters removed, or when the most similar
    pair's distance exceeds ``threshold`` (whichever is given; both: both).
    Of a pair, the filter with the smaller norm goes; its twin stays. With
    ``round_to`` the kept count stays a multiple of it (fast int8 kernels),
    which may remove a little less than ``ratio``. ``keep`` (group id -> count)
    sets the filters each layer keeps instead of the ratio (pruning in rounds).
    ``layer_ratios`` (layer index -> ratio) overrides ``ratio`` for the layers
    it names, whatever their kernel size; a ratio of 0 spares the layer.
    """
    layer_ratios = layer_ratios or {}
    if ratio is None and threshold is None and keep is None and not layer_ratios:
        raise UserError("similarity pruning needs a ratio or a threshold")
    masks, merges, removed_log = {}, {}, {}
    for g in channel_groups(spec):
        if not g.prunable or not _one_filter_set(spec, g):
            continue
        i = g.members[0]
        if conv_params(spec.layers[i]).size not in kernel_sizes and i not in layer_ratios:
            continue
        layer_ratio = layer_ratios.get(i, ratio)
        if layer_ratio is None and threshold is None and keep is None:
            continue
        f = np.concatenate([filters_after_bn(weights, m) for m in g.members], axis=1)  # a depthwise twin adds its filter
        d = pair_distances(f, w1, w2)
        norms = np.linalg.norm(f, axis=1)
        alive = np.ones(g.channels, bool)
        final = max(min_keep, 1)  # with only a threshold, the floor is all that limits the removal
        if keep is not None:
            if g.id in keep:
                final = max(final, keep[g.id])
            elif threshold is None:  # not scheduled this round
                final = g.channels
        elif layer_ratio is not None:
            final = _layer_budget(g.channels, layer_ratio, min_keep, round_to)
        budget = g.channels - _round_up(final, round_to, g.channels)
        twin_of: dict[int, int] = {}
        log = []
        while budget > 0:
            a, b = np.unravel_index(int(np.argmin(d)), d.shape)
            if not np.isfinite(d[a, b]) or (threshold is not None and d[a, b] > threshold):
                break
            r, t = (a, b) if norms[a] <= norms[b] else (b, a)
            log.append((int(r), int(t), float(d[a, b])))
            alive[r] = False
            d[r, :] = np.inf
            d[:, r] = np.inf
            # channels merged into r now go to t
            for k, v in twin_of.items():
                if v == r:
                    twin_of[k] = int(t)
            twin_of[int(r)] = int(t)
            budget -= 1
        if log:
            masks[g.id] = alive
            merges[g.id] = twin_of
            removed_log[g.id] = log
    return SimilarityPlan(masks, merges, removed_log)


# ---------------------------------------------------------------------------
# Layer pruning
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidualBlock:
    start: int  # the first layer of the branch (YOLOv3: the 1x1 conv; Yolo-Fastest: the 1x1 expand)
    shortcut: int  # the [shortcut] that closes it
    score: float


BRANCH_LAYERS = ("convolutional", "depthwise", "dropout", "se", "avgpool", "scale_channels")  # what a removable residual branch holds


def residual_blocks(spec: Spec, weights: DarknetWeights) -> list[ResidualBlock]:
    """Residual branches that can be removed, with their convolutions' mean |BN scale|.

    A branch is a chain of convolutions (and dropouts) from the [shortcut]'s
    other input to the [shortcut], which must be linear: without the branch
    the block passes its input on unchanged. YOLOv3's blocks are 1x1 -> 3x3;
    Yolo-Fastest's 1x1 expand -> 3x3 depthwise -> 1x1 project -> dropout; the
    multi-backbone suite's MobileNetV3 bottleneck has a [depthwise] and an [se]
    in it, EfficientNet's an [avgpool] / [scale_channels] excitation, whose
    reads stay inside the branch and go with it.
    """
    read_by = {}  # layer -> the layers that read it
    infos = analyse(spec)
    for info in infos:
        for src in info.inputs:
            read_by.setdefault(src, set()).add(info.index)
    out = []
    for i, block in enumerate(spec.layers):
        if block.type != "shortcut" or shortcut_activation(block) != "linear":
            continue
        j = shortcut_input(spec, i)
        if infos[j].out_shape != infos[i].out_shape:  # a shortcut between different widths is not the identity without its body
            continue
        body = range(j + 1, i)
        if not body or any(spec.layers[k].type not in BRANCH_LAYERS for k in body):
            continue
        if any(read_by.get(k, set()) - {*body, i} for k in body):  # a layer outside the branch reads inside it: it must stay
            continue
        if not any(spec.layers[k].type in ("convolutional", "depthwise") for k in body):
            continue
        scores = [np.abs(weights.convs[k].bn[0]).mean() for k in body if k in weights.convs and weights.convs[k].bn is not None]
        out.append(ResidualBlock(j + 1, i, float(np.mean(scores)) if scores else float("inf")))
    return out


def remove_layers(spec: Spec, weights: DarknetWeights, start: int, stop: int) -> tuple[Spec, DarknetWeights]:
    """Delete layers ``start..stop`` (inclusive) whose output equals the output of layer ``start - 1``.

    Every reference into the deleted range is redirected to ``start - 1``;
    references across it are renumbered (absolute and relative alike).
    """
    n = stop - start + 1
    new = spec.copy()

    def remap(target: int) -> int:
        if target < start:
            return target
        if target <= stop:
            return start - 1
        return target - n

    layers = []
    for i in range(len(spec.layers)):
        if start <= i <= stop:
            continue
        b = new.layers[i]
        ni = remap(i)
        if b.type == "route":
            refs = route_inputs(spec, i)
            rel = [int(v) < 0 for v in b.get_ints("layers")]
            b.set("layers", [remap(r) - ni if neg else remap(r) for r, neg in zip(refs, rel)])
        elif b.type in ("shortcut", "scale_channels"):
            ref = shortcut_input(spec, i) if b.type == "shortcut" else scale_channels_input(spec, i)
            b.set("from", remap(ref) - ni if b.get_ints("from")[0] < 0 else remap(ref))
        layers.append(b)
    new.layers = layers
    return new, weights.renumbered(lambda i: None if start <= i <= stop else remap(i))


def layer_prune(spec: Spec, weights: DarknetWeights, blocks: int) -> tuple[Spec, DarknetWeights, list[ResidualBlock]]:
    """Remove the ``blocks`` residual blocks with the lowest mean |BN scale| (YOLOv3, -spp, Yolo-Fastest)."""
    candidates = sorted(residual_blocks(spec, weights), key=lambda b: b.score)
    if blocks > len(candidates):
        raise UserError(f"asked to remove {blocks} residual blocks; the network has {len(candidates)}")
    chosen = sorted(candidates[:blocks], key=lambda b: -b.start)  # delete from the back: indices stay valid
    for b in chosen:
        spec, weights = remove_layers(spec, weights, b.start, b.shortcut)
    return spec, weights, sorted(chosen, key=lambda b: b.start)


# ---------------------------------------------------------------------------
# Sparse training
# ---------------------------------------------------------------------------


def prunable_bn_layers(spec: Spec) -> list[str]:
    """Names of the BN layers whose channels pruning may remove (not those feeding a head)."""
    names = []
    for g in channel_groups(spec):
        if g.prunable:
            names += [bn_name(i) for i in g.members if spec.layers[i].get_int("batch_normalize", 0)]
    return names
