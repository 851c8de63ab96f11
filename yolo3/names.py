"""Layer names in one place: block ``i`` of a Spec becomes Keras layers named ``KIND_i`` (``conv_12``, ``bn_12``, ``leaky_12``).

The names are stable (derived from the Spec index), so a saved ``.h5`` loads by
name, configs can name layers (``"conv_12"`` or ``"12"``), and reports use the
same names as Darknet's layer table.
"""

from __future__ import annotations


def layer_name(kind: str, index: int | str) -> str:
    """The Keras layer of ``kind`` (conv, bn, leaky, pad, maxpool, upsample, route, shortcut, ...) for block ``index``."""
    return f"{kind}_{index}"


def conv_name(index: int | str) -> str:
    return layer_name("conv", index)


def bn_name(index: int | str) -> str:
    return layer_name("bn", index)


def is_conv(name: str) -> bool:
    return name.startswith("conv_")


def layer_index(name: str) -> int | None:
    """The Spec index in a layer name (``"bn_12"`` -> 12), or None for a name without one."""
    try:
        return int(name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return None


def conv_index(key: int | str) -> int:
    """A convolution named by index or name (``12``, ``"12"``, ``"conv_12"``) as its index; ValueError otherwise."""
    return int(str(key).removeprefix("conv_"))


# Every kind of Keras layer the builder names (see yolo3.keras_model.apply_block); activations are named after themselves.
LAYER_KINDS = ("conv", "bn", "pad", "maxpool", "upsample", "dropout", "route", "group", "shortcut", "se", "se_pool", "se_fc1", "se_fc2", "avgpool", "scale_channels", "reorg",
               "h_sigmoid", "leaky", "relu", "relu6", "mish", "swish", "logistic", "h_swish")  # fmt: skip
LAYER_IN_TENSOR = r"(?:" + "|".join(sorted(LAYER_KINDS, key=len, reverse=True)) + r")_(\d+)"
"""A regular expression finding ``KIND_index`` in a TFLite tensor name (its group 1 is the Spec index)."""


def find_layer(model, name: str):
    """The layer ``name`` of ``model``, or the one a TFMOT wrapper made of it (``prune_low_magnitude_conv_9``, ``quant_conv_9``)."""
    for layer in model.layers:
        if layer.name == name or layer.name.endswith("_" + name):
            return layer
    raise ValueError(f"the model has no layer {name}")
