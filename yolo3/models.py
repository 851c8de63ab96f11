"""One way to load any model file: Darknet ``.weights`` (+ cfg), a Keras ``.h5`` written by this tool, or nothing.

An ``.h5`` this tool writes carries its Darknet cfg text as an HDF5 attribute,
so the Spec (anchors, class count, layer graph for pruning) travels with the
weights and no separate cfg is needed to load it again. A model read from
``.weights`` also keeps the file's header (version and the ``seen`` image
counter) in the ``.h5``, so ``.weights -> .h5 -> .weights`` is byte-identical.

Example::

    from yolo3.models import load_model, save_model
    loaded = load_model("yolov3-tiny.weights", architecture="yolov3-tiny.cfg")
    save_model(loaded.model, loaded.spec, "tiny.h5")
    again = load_model("tiny.h5")          # no cfg needed
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .spec import Spec, analyse, anchor_pairs, parse_cfg, totals, with_anchors, with_classes, with_size
from .zoo import resolve_spec

CFG_ATTRIBUTE = "darknet_cfg"
HEADER_ATTRIBUTE = "darknet_header"  # JSON: major, minor, revision, seen of the .weights the model came from
COMPRESSION_ATTRIBUTE = "yolo3_compression"  # JSON: what was done to the model (clustering, pruning) that training must keep
MODEL_SUFFIXES = (".weights", ".h5", ".keras", ".tflite")


@dataclass
class LoadedModel:
    """A Keras model with the Spec it was built from."""

    model: object  # keras.Model; typed loosely so importing this module stays cheap
    spec: Spec
    source: str
    header: object | None = None  # the Darknet header when read from .weights

    @property
    def input_hw(self) -> tuple[int, int]:
        shape = self.model.input_shape
        return int(shape[1] or self.spec.height), int(shape[2] or self.spec.width)

    def summary(self) -> dict:
        h, w = self.input_hw
        t = totals(analyse(self.spec, h, w))
        return {"params": t.params, "trainable_params": t.trainable_params, "macs": t.macs}


def spec_from_h5(path: Path) -> Spec | None:
    import h5py

    if Path(path).is_dir():
        raise UserError("is a folder, not a model file", path)
    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get(CFG_ATTRIBUTE)
    except OSError:
        raise UserError("not a readable HDF5 file: a Keras .h5 written by this tool was expected", path) from None
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return parse_cfg(str(text), source=f"{path} (embedded cfg)")


def header_from_h5(path: Path):
    """The Darknet header an ``.h5`` carries (None if it carries none; a damaged record is a UserError)."""
    import json

    import h5py

    from .darknet import Header

    with h5py.File(path, "r") as f:
        text = f.attrs.get(HEADER_ATTRIBUTE)
    if text is None:
        return None
    try:
        values = json.loads(text.decode("utf-8") if isinstance(text, bytes) else str(text))
        return Header(int(values["major"]), int(values["minor"]), int(values["revision"]), int(values["seen"]))
    except (ValueError, KeyError, TypeError):
        raise UserError(f"the {HEADER_ATTRIBUTE} attribute is not a Darknet header record: the file was changed", path) from None


def compression_info(path: str | Path) -> dict:
    """The compression record of an ``.h5`` written by this tool ({} if none)."""
    import json

    import h5py

    path = Path(path)
    if path.suffix.lower() != ".h5" or not path.exists():
        return {}
    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get(COMPRESSION_ATTRIBUTE)
    except OSError:
        return {}
    if text is None:
        return {}
    try:
        record = json.loads(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError("the compression record in this .h5 is not JSON: the file was not written by this tool, or was changed", path) from None
    if not isinstance(record, dict):
        raise UserError("the compression record in this .h5 is not a JSON object", path)
    return record


def _adjust(spec: Spec, classes: int | None, size: int | None, anchors: list[float] | None) -> Spec:
    if classes is not None and classes != spec.num_classes:
        spec = with_classes(spec, classes)
    if size is not None:
        spec = with_size(spec, size)
    if anchors:
        spec = with_anchors(spec, anchor_pairs(anchors))
    return spec


def load_model(
    path: str | Path | None,
    architecture: str | Path | None = None,
    classes: int | None = None,
    size: int | None = None,
    anchors: list[float] | None = None,
) -> LoadedModel:
    """Load ``path`` (``.weights``, ``.h5``) or, when ``path`` is None, build ``architecture`` with random weights.

    For ``.weights`` the architecture (a built-in name or a cfg) is required and
    must be the one the file was trained with (same class count); ``size``
    sets the input size. For an ``.h5`` written by this tool the embedded cfg is
    used; ``architecture`` is needed only for an ``.h5`` from elsewhere.
    """
    from .darknet import read_weights
    from .keras_model import build_model, set_darknet_weights

    if path is None:
        if architecture is None:
            raise UserError("no model file and no architecture given")
        spec = _adjust(resolve_spec(architecture), classes, size, anchors)
        return LoadedModel(build_model(spec), spec, f"{architecture} (random initialisation)")
    path = Path(path)
    if not path.exists():
        raise UserError("model file does not exist", path)
    if path.is_dir():
        raise UserError("is a folder, not a model file", path)
    suffix = path.suffix.lower()
    if suffix == ".weights":
        if architecture is None:
            raise UserError("a .weights file needs its architecture (a built-in name or the .cfg it was trained with)", path)
        spec = resolve_spec(architecture)
        if classes is not None and classes != spec.num_classes:
            raise UserError(
                f"the cfg {spec.source} has {spec.num_classes} classes but {classes} labels are configured; "
                "use the cfg the weights were trained with and labels to match",
                path,
            )
        weights = read_weights(path, spec)
        spec = _adjust(spec, None, size, anchors)
        model = build_model(spec)
        set_darknet_weights(model, spec, weights)
        return LoadedModel(model, spec, str(path), weights.header)
    if suffix in (".h5", ".keras"):
        from .kerasenv import keras

        spec = spec_from_h5(path) if suffix == ".h5" else None
        foreign = spec is None
        if foreign:
            if architecture is None:
                raise UserError("this .h5 carries no Darknet cfg (it was not written by this tool); give the architecture it was built from", path)
            spec = resolve_spec(architecture)
        try:
            model = keras.models.load_model(path, compile=False)
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"cannot load the Keras model: {str(err).splitlines()[0][:200]}", path) from None
        if foreign:
            _check_foreign(model, spec, architecture, path)
        if size is not None and (model.input_shape[1] or size) != size:
            rebuilt = build_model(with_size(spec, size))
            rebuilt.set_weights(model.get_weights())
            model = rebuilt
        spec = _adjust(spec, None, size, anchors)
        if classes is not None and classes != spec.num_classes:
            raise UserError(f"the model predicts {spec.num_classes} classes but {classes} labels are configured", path)
        return LoadedModel(model, spec, str(path), None if foreign else header_from_h5(path))
    if suffix == ".tflite":
        raise UserError("a .tflite model cannot be loaded as a Keras model; use the TFLite predictor", path)
    raise UserError(f"unknown model file type {suffix!r} (expected one of {', '.join(MODEL_SUFFIXES)})", path)


def _check_foreign(model, spec: Spec, architecture, path: Path) -> None:
    """An .h5 without an embedded cfg must hold exactly the layers and weight shapes ``architecture`` builds."""
    from .keras_model import build_model

    reference = build_model(spec)
    mine = [(w.name.split("/")[0], tuple(w.shape)) for w in reference.weights]
    theirs = [(w.name.split("/")[0], tuple(w.shape)) for w in model.weights]
    if mine != theirs:
        raise UserError(f"this .h5 carries no Darknet cfg (it was not written by this tool) and its layers are not those of "
                        f"{architecture}: give a .h5 this tool wrote, or the .weights with its cfg", path)  # fmt: skip


def save_model(model, spec: Spec, path: str | Path, compression: dict | None = None, header=None) -> None:
    """Save a Keras model as ``.h5`` (with its cfg embedded) or as Darknet ``.weights``, atomically.

    ``compression`` (JSON-able) records what was done to the model, so that
    fine-tuning can keep it (clusters, pruning masks). ``header`` (a
    :class:`~yolo3.darknet.Header`) is the Darknet header to write or keep.
    """
    from .fileio import atomic_write

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".weights":
        from .darknet import write_weights
        from .keras_model import get_darknet_weights

        write_weights(path, spec, get_darknet_weights(model, spec, header))
        return
    if suffix != ".h5":
        raise UserError("the output must end in .h5 or .weights", path)
    from .spec import format_cfg

    def write(tmp: Path) -> None:
        import warnings

        import h5py

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy")
            model.save(tmp, save_format="h5", include_optimizer=False)
        with h5py.File(tmp, "a") as f:
            f.attrs[CFG_ATTRIBUTE] = format_cfg(spec)
            if header is not None:
                import json
                from dataclasses import asdict

                f.attrs[HEADER_ATTRIBUTE] = json.dumps(asdict(header))
            if compression:
                import json

                f.attrs[COMPRESSION_ATTRIBUTE] = json.dumps(compression)

    atomic_write(path, write)
