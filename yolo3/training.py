"""The trainer: a custom loop over the tf.data pipeline, under a tf.distribute strategy.

What it guarantees:
- a checkpoint (model, optimizer, epoch, best mAP) at the end of every epoch in
  ``run_dir/checkpoints``; the same command after a crash or ``kill -9``
  resumes from it, losing at most the epoch in progress;
- ``run_dir/best.h5``: the model with the best validation mAP@0.5 so far, a
  normal ``.h5`` with its cfg embedded (written atomically); ``run_dir/last.h5``:
  the model after the last finished epoch;
- a NaN or infinite loss stops the run with a clear message, the last good
  checkpoint untouched;
- learning-rate warm-up then cosine/step decay, TensorBoard logs in
  ``run_dir/logs``, a progress bar.

Example::

    from yolo3.config import load_config
    from yolo3.training import train
    result = train(load_config("config.json"))
    print(result["best_mAP50"], result["best_model"])
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import AugmentSettings
from .errors import UserError
from .fileio import check_output_folder
from .hooks import TrainingContext, TrainingHook
from .kerasenv import keras, tf
from .loss import LossSettings, yolo_loss
from .names import conv_name, find_layer, layer_index
from .pipeline import PipelineSettings, make_dataset
from .spec import Spec, heads, route_inputs, scale_channels_input, shortcut_input
from .targets import head_layout


class TrainingStopped(UserError):
    """Training cannot go on (NaN loss); the message says what is intact."""


# ---------------------------------------------------------------------------
# Strategy and model preparation
# ---------------------------------------------------------------------------


def make_strategy(name: str, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The ``train.strategy`` of the config: default (one device), mirrored, or multi_worker (TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"unknown strategy {name!r} (use default, mirrored or multi_worker)")


def shared_layers(spec: Spec) -> set[int]:
    """Indices of the layers every head depends on: the backbone and the shared neck."""

    def ancestors(i: int, seen: set[int]) -> set[int]:
        stack = [i]
        while stack:
            j = stack.pop()
            if j < 0 or j in seen:
                continue
            seen.add(j)
            block = spec.layers[j]
            if block.type == "route":
                stack.extend(route_inputs(spec, j))
            elif block.type == "shortcut":
                stack.extend([j - 1, shortcut_input(spec, j)])
            elif block.type == "scale_channels":
                stack.extend([j - 1, scale_channels_input(spec, j)])
            else:
                stack.append(j - 1)
        return seen

    sets = [ancestors(h.conv, set()) for h in heads(spec)]
    common = set.intersection(*sets)
    return {i for i in common if spec.layers[i].type != "yolo"}


def init_heads(model: keras.Model, spec: Spec, seed: int = 0) -> None:
    """Fresh detection heads: small kernels, objectness biased towards 'no object' (p = 0.01)."""
    rng = np.random.default_rng(seed)
    for h in heads(spec):
        conv = model.get_layer(conv_name(h.conv))
        kernel, bias = conv.get_weights()
        kernel = rng.normal(0, 0.01, kernel.shape).astype(np.float32)
        bias = np.zeros_like(bias).reshape(len(h.anchors), 5 + h.classes)
        bias[:, 4] = math.log(0.01 / 0.99)
        conv.set_weights([kernel, bias.reshape(-1)])


def copy_weights(src: keras.Model, dst: keras.Model) -> list[str]:
    """Copy weights layer by layer (by name) where shapes agree; returns the layers not copied."""
    skipped = []
    for layer in dst.layers:
        if not layer.weights:
            continue
        try:
            other = src.get_layer(layer.name)
        except ValueError:
            skipped.append(layer.name)
            continue
        values = other.get_weights()
        if [v.shape for v in values] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(values)
        else:
            skipped.append(layer.name)
    return skipped


@dataclass
class StartingPoint:
    """The weights a run starts from and how they were obtained."""

    model: keras.Model | None
    spec: Spec
    note: str
    new_heads: bool
    compression: dict | None = None  # carried over from the starting .h5 (clusters, pruning) into best.h5


def starting_point(config, model_path: str | Path | None, keep_architecture: bool) -> StartingPoint:
    """Load the model to train: scratch, Darknet ``.weights`` (transfer), or an ``.h5``.

    For transfer learning the detection heads are re-created when the class
    count differs from the config's labels. ``keep_architecture`` (fine-tuning)
    takes the Spec from the ``.h5`` as it is, pruned layers included.
    """
    from .models import load_model, spec_from_h5
    from .spec import with_classes
    from .zoo import resolve_spec

    labels = config.labels
    path = Path(model_path) if model_path is not None else config.model.weights
    if path is None:
        spec = resolve_spec(config.model.architecture, classes=len(labels), size=config.model.input_size)
        spec = config.with_anchors(spec)
        return StartingPoint(None, spec, f"{config.model.architecture}, random initialisation", True)
    if not Path(path).exists():
        raise UserError("model file does not exist", path)
    if Path(path).suffix.lower() == ".h5" and keep_architecture:
        spec = spec_from_h5(Path(path))
        if spec is None:
            raise UserError("this .h5 carries no cfg; fine-tuning needs a model written by this tool", path)
        if spec.num_classes != len(labels):
            raise UserError(f"the model predicts {spec.num_classes} classes but the config has {len(labels)} labels", path)
    loaded = load_model(path, architecture=config.model.architecture if Path(path).suffix == ".weights" else None)
    spec = loaded.spec
    new_heads = spec.num_classes != len(labels)
    if new_heads:
        spec = with_classes(spec, len(labels))
    spec = config.with_anchors(spec)
    from .spec import with_size

    spec = with_size(spec, config.model.input_size)
    note = f"{path}" + (f" (heads re-created for {len(labels)} classes)" if new_heads else "")
    from .models import compression_info

    compression = compression_info(path) if keep_architecture and not new_heads else None
    return StartingPoint(loaded.model, spec, note, new_heads, compression or None)


# ---------------------------------------------------------------------------
# Learning rate
# ---------------------------------------------------------------------------


def learning_rate(step: int, steps_per_epoch: int, epochs: int, peak: float, warmup_epochs: float, schedule: str) -> float:
    """Linear warm-up from 0, then cosine decay to 1 % of the peak, steps (x0.1 at 80 %, 90 %) or constant."""
    total = max(1, steps_per_epoch * epochs)
    warm = int(round(warmup_epochs * steps_per_epoch))
    if warm and step < warm:
        return peak * (step + 1) / warm
    if schedule == "constant":
        return peak
    progress = (step - warm) / max(1, total - warm)
    if schedule == "steps":
        return peak * (0.01 if progress >= 0.9 else 0.1 if progress >= 0.8 else 1.0)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------


class Stepper:
    """Builds the (distributed) loss, gradient and training step for a model."""

    def __init__(self, model, layout, loss_settings, strategy, global_batch: int, hooks=()):
        self.model = model
        self.layout = layout
        self.loss_settings = loss_settings
        self.strategy = strategy
        self.global_batch = global_batch
        self.hooks = tuple(hooks)  # TrainingHook: extra loss terms, and what runs after every step
        self.tapped = None  # the model returning the heads and the tensors the hooks' feature_layers() ask for

    def _tap(self) -> None:
        """One model for the heads and the hooks' feature tensors (built once the hooks know what they need)."""
        names = [n for hook in self.hooks for n in hook.feature_layers()]
        if not names or self.tapped is not None:
            return
        outputs = self.model.outputs if isinstance(self.model.outputs, (list, tuple)) else [self.model.outputs]
        self.tapped = keras.Model(self.model.inputs, list(outputs) + [find_layer(self.model, n).input for n in names])

    def _forward(self, images, training):
        """The raw heads, and per hook the feature tensors it asked for."""
        if self.tapped is None:
            outputs = self.model(images, training=training)
            return (outputs if isinstance(outputs, (list, tuple)) else [outputs]), {}
        everything = list(self.tapped(images, training=training))
        n = len(everything) - sum(len(h.feature_layers()) for h in self.hooks)
        features, k = {}, n
        for hook in self.hooks:
            wanted = len(hook.feature_layers())
            if wanted:
                features[id(hook)] = everything[k : k + wanted]
                k += wanted
        return everything[:n], features

    def _loss(self, images, targets, gt, training=True):
        outputs, features = self._forward(images, training)
        per_image, parts = yolo_loss(outputs, targets, gt, self.layout, self.loss_settings, tf.shape(images)[1:3])
        loss = tf.reduce_sum(per_image) / self.global_batch
        replicas = self.strategy.num_replicas_in_sync
        reg = tf.add_n(self.model.losses) / replicas if self.model.losses else 0.0
        for hook in self.hooks:
            if id(hook) in features:
                extra = hook.loss(images, outputs, features=features[id(hook)], gt_boxes=gt)
            else:
                extra = hook.loss(images, outputs)
            if extra is not None:  # per image, summed like the detection loss
                reg += tf.reduce_sum(tf.cast(extra, loss.dtype)) / self.global_batch
        parts = {k: tf.reduce_sum(v) / self.global_batch for k, v in parts.items()}
        return loss + reg, loss, parts

    def loss_and_gradients(self, images, targets, gt, variables):
        """Loss (summed over replicas) and gradients of one batch, without applying them."""
        with tf.GradientTape() as tape:
            total, loss, _ = self._loss(images, targets, gt)
        return total, loss, tape.gradient(total, variables)

    def make_train_step(self, optimizer, variables):
        self._tap()
        own = [(hook, list(hook.trainable_variables())) for hook in self.hooks]
        everything = list(variables) + [v for _, vs in own for v in vs]

        def replica_step(images, targets, gt):
            total, loss, grads = self.loss_and_gradients(images, targets, gt, everything)
            # variables a wrapper computes rather than trains (TFMOT cluster-preserving QAT's kernels) have no gradient
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            k = len(variables)
            for hook, vs in own:
                hook.apply_gradients([(g, v) for g, v in zip(grads[k : k + len(vs)], vs) if g is not None])
                k += len(vs)
            return total

        @tf.function(reduce_retracing=True)
        def step(batch):
            images, targets, gt = batch
            per_replica = self.strategy.run(replica_step, args=(images, targets, gt))
            for hook in self.hooks:
                hook.after_step()  # cross-replica context: updates every replica's copy
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return step


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """What the command line and the compression methods may set for one run."""

    model_path: str | None = None
    keep_architecture: bool = False  # fine-tuning: the model's own architecture
    epochs: int | None = None
    run_dir: str | None = None
    progress: bool = True
    learning_rate: float | None = None  # override train.learning_rate (fine-tuning after compression)
    freeze_backbone_epochs: int | None = None  # override train.freeze_backbone_epochs (0 for fine-tuning after compression)
    max_steps_per_epoch: int | None = None  # for tests and benchmarks
    hooks: tuple[TrainingHook, ...] = ()  # training-time compression (yolo3.hooks): masks, clusters, QAT, sparse training, distillation
    deadline: float | None = None  # time.time() by which the run must have ended, its last evaluation included (epochs_before_deadline)


class _Predictor:
    """Evaluation view of the training model at a fixed input size."""

    in_model_nms = False

    def __init__(self, model, spec, size):
        from .evaluation import head_specs

        self.model = model
        self.heads = head_specs(spec)
        self.input_hw = (size, size)

    def __call__(self, batch):
        out = self.model(batch, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in out]


def _settings(config) -> tuple[PipelineSettings, LossSettings]:
    t = config.train
    augment = (
        AugmentSettings(t.jitter, tuple(t.scale_range), t.flip, t.hue, t.saturation, t.exposure) if t.augment else None
    )
    pipe = PipelineSettings(
        batch_size=t.batch_size,
        input_size=config.model.input_size,
        multi_scale=tuple(t.multi_scale) if t.multi_scale else None,
        augment=augment,
        seed=t.seed,
    )
    loss = LossSettings(t.ignore_thresh, tuple(float(v) for v in t.grid_scales), t.obj_scale, t.noobj_scale, t.xywh_scale, t.class_scale)
    return pipe, loss


RECENT_EPOCHS = 5  # the epochs whose median times the next one: the machine's speed now, not at the start


def recent_epoch_seconds(epoch_seconds: list[float]) -> float:
    """The median of the latest epochs' seconds, the first (which traces the graph) left out when there are others."""
    return float(np.median((epoch_seconds[1:] or epoch_seconds)[-RECENT_EPOCHS:]))


def epochs_before_deadline(seconds_left: float, done: int, planned: int, epoch_seconds: list[float], evaluation_seconds: float) -> int:
    """How many epochs a run with a deadline ``seconds_left`` away should have in all, ``done`` of them trained.

    A schedule fixed when training starts does not survive a machine that slows
    down during it (BCCD: 62 of 96 epochs took twice the time the first ones
    did, and a 45-minute compress run headed 13 minutes past its budget).
    Before every epoch the run counts again: the median of its recent epochs
    (the first of a run traces the graph and is left out when there are
    others) times the epochs still planned, plus one evaluation for the last
    epoch. The count only shrinks — never below ``done``, never above
    ``planned`` — so the learning-rate schedule ends at the new last epoch
    instead of stopping half-way down.
    """
    if not epoch_seconds:
        return planned
    fit = int((seconds_left - evaluation_seconds) // max(recent_epoch_seconds(epoch_seconds), 1e-6))
    return max(done, min(planned, done + fit))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trainer:
    """One training run, in named steps: :meth:`set_up`, :meth:`restore`, :meth:`run_epoch`, :meth:`evaluate_and_save`.

    :func:`train` runs them in order; the hooks of ``options.hooks`` are called
    at the points :mod:`yolo3.hooks` describes.
    """

    def __init__(self, config, options: RunOptions | None = None):
        self.config = config
        self.options = options or RunOptions()
        self.hooks = tuple(self.options.hooks)
        t = config.train
        self.run_dir = check_output_folder(Path(self.options.run_dir) if self.options.run_dir else Path(t.run_dir), "run folder")
        self.epochs = self.planned_epochs = self.options.epochs or t.nb_epochs
        self.deadline_note = None  # why the run ended before its planned epochs, when the deadline shortened it
        self.best_path = self.run_dir / "best.h5"
        self.history_path = self.run_dir / "history.json"

    # -- set-up -----------------------------------------------------------------------------------

    def set_up(self) -> None:
        """Read the data, build the model (from the starting point), wrap it, build the optimizer, call the hooks."""
        from .datasets import read_dataset
        from .keras_model import build_model

        config, t = self.config, self.config.train
        self.train_set = read_dataset(config.dataset("train"), config.labels)
        self.valid_set = read_dataset(config.dataset("valid"), config.labels)
        for ds, name in ((self.train_set, "training"), (self.valid_set, "validation")):
            if ds.problems:
                _log(f"{name} set: {len(ds.problems)} problem(s) found while reading, e.g. {ds.problems[0]}")
        self.pipe, loss_settings = _settings(config)
        self.start = starting_point(config, self.options.model_path, self.options.keep_architecture)
        spec = self.spec = self.start.spec
        self.layout = head_layout(spec)
        strategy = self.strategy = make_strategy(t.strategy, t.devices)
        replicas = strategy.num_replicas_in_sync
        if t.batch_size % replicas:
            raise UserError(f"train.batch_size {t.batch_size} must be divisible by the {replicas} devices of the strategy")
        size = 0 if self.pipe.multi_scale else config.model.input_size
        with strategy.scope():
            keras.utils.set_random_seed(t.seed)
            model = build_model(spec, size=size, sync_bn=replicas > 1)
            if self.start.model is not None:
                skipped = copy_weights(self.start.model, model)
                if self.start.new_heads:
                    init_heads(model, spec, t.seed)
                elif skipped:
                    raise UserError(f"layers {skipped[:5]} of the starting model do not fit the architecture")
            else:
                init_heads(model, spec, t.seed)
            for hook in self.hooks:
                model = hook.wrap(model)
            self.model = model
            self.optimizer = (
                keras.optimizers.AdamW(learning_rate=t.learning_rate, weight_decay=t.weight_decay)
                if t.weight_decay
                else keras.optimizers.Adam(learning_rate=t.learning_rate)
            )
            self.optimizer.build(model.trainable_variables)  # every variable, also those frozen at first
            self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.best_var = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_map")
            self.ckpt = tf.train.Checkpoint(model=model, optimizer=self.optimizer, epoch=self.epoch_var, best=self.best_var)
        self.manager = tf.train.CheckpointManager(self.ckpt, str(self.run_dir / "checkpoints"), max_to_keep=2)
        self.context = TrainingContext(model, self.optimizer, spec, strategy, config, size, self.run_dir)
        self.stepper = Stepper(model, self.layout, loss_settings, strategy, t.batch_size, self.hooks)
        self.best_from = max((h.best_from_epoch for h in self.hooks), default=1)
        self.compression = next((h.compression for h in reversed(self.hooks) if h.compression is not None), self.start.compression)
        self.steps_per_epoch = len(self.train_set.records) // t.batch_size
        if self.options.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, self.options.max_steps_per_epoch)
        self.frozen = shared_layers(spec)
        self.phase = None
        self.step_fn = None

    # -- restore ----------------------------------------------------------------------------------

    def restore(self) -> int:
        """Resume from the run folder's last checkpoint, if any; the first epoch still to run."""
        from .reporting import write_json

        run_dir = self.run_dir
        if self.manager.latest_checkpoint:
            try:
                self.ckpt.restore(self.manager.latest_checkpoint).expect_partial()
            except (ValueError, tf.errors.InvalidArgumentError) as err:
                raise UserError(
                    f"the checkpoint in this run folder belongs to another model ({str(err).splitlines()[0][:160]}); "
                    "delete the folder or choose another run_dir",
                    run_dir,
                ) from None
            _log(f"resuming {run_dir} after epoch {int(self.epoch_var.numpy())} (best mAP@0.5 so far {self.best_var.numpy():.4f})")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            _log(f"training from {self.start.note}")
        write_json(run_dir / "config.json", self.config.raw)
        first = int(self.epoch_var.numpy())
        if first >= self.epochs:
            _log(f"{run_dir} has finished all {self.epochs} epochs; nothing to do (delete the folder or raise nb_epochs to train more)")
        history = json.loads(self.history_path.read_text()) if self.history_path.exists() and first else []
        # a kill between writing the history and the checkpoint leaves one epoch too many in the history
        self.history = [h for h in history if h["epoch"] <= first]
        self.writer = tf.summary.create_file_writer(str(run_dir / "logs"))
        with self.strategy.scope():  # after the restore: hooks read the weights as the run resumes them (masks, centroids)
            for hook in self.hooks:
                hook.on_train_begin(self.context)
        return first

    # -- one epoch --------------------------------------------------------------------------------

    def _set_phase(self, epoch: int) -> None:
        """Freeze or unfreeze the shared layers for this epoch; a new compiled step when that changes."""
        t = self.config.train
        freeze_epochs = t.freeze_backbone_epochs if self.options.freeze_backbone_epochs is None else self.options.freeze_backbone_epochs
        freeze = epoch < freeze_epochs
        if self.phase == freeze:
            return
        for layer in self.model.layers:
            idx = layer_index(layer.name)
            if idx is not None and idx in self.frozen:
                layer.trainable = not freeze
        self.step_fn = self.stepper.make_train_step(self.optimizer, self.model.trainable_variables)
        self.phase = freeze
        if freeze:
            _log(f"epochs {epoch + 1}-{freeze_epochs}: the {len(self.frozen)} shared layers are frozen")

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch; its record (mean loss, seconds, last learning rate). A NaN loss stops the run."""
        config, t = self.config, self.config.train
        self._set_phase(epoch)
        steps = self.steps_per_epoch
        dataset = make_dataset(self.train_set.records, self.layout, len(config.labels), self.pipe, epoch)
        if self.options.max_steps_per_epoch:
            dataset = dataset.take(steps)
        dist = self.strategy.experimental_distribute_dataset(dataset)
        bar = keras.utils.Progbar(steps, stateful_metrics=["lr"], verbose=1 if self.options.progress else 0)
        peak = self.options.learning_rate or t.learning_rate
        losses, lr = [], peak
        started = time.perf_counter()
        for k, batch in enumerate(dist):
            lr = learning_rate(epoch * steps + k, steps, self.epochs, peak, t.warmup_epochs, t.lr_schedule)
            self.optimizer.learning_rate.assign(lr)
            for hook in self.hooks:
                hook.on_batch_begin(k)
            loss = float(self.step_fn(batch))
            if not math.isfinite(loss):
                last = self.manager.latest_checkpoint or "none (no epoch finished)"
                raise TrainingStopped(
                    f"the loss became {loss} at epoch {epoch + 1}, step {k + 1}; stopped. The last good checkpoint is "
                    f"intact: {last}. Lower train.learning_rate or check the data."
                )
            losses.append(loss)
            bar.update(k + 1, [("loss", loss), ("lr", lr)])
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started, "lr": lr}
        with self.writer.as_default(step=epoch + 1):
            tf.summary.scalar("loss", record["loss"])
            tf.summary.scalar("learning_rate", lr)
        return record

    # -- evaluate and save ------------------------------------------------------------------------

    def plain_model(self):
        """The model without wrappers, at the config's fixed input size: what is saved."""
        plain = self.model
        for hook in reversed(self.hooks):
            plain = hook.unwrap(plain)
        return _fixed_size(plain, self.spec, self.config.model.input_size)

    def validate(self, epoch: int, record: dict) -> None:
        """Validation mAP@0.5 into ``record``; best.h5 when better than every earlier epoch."""
        from .evaluation import evaluate
        from .models import save_model

        v = self.config.valid
        started = time.perf_counter()
        report = evaluate(_Predictor(self.model, self.spec, self.config.model.input_size), self.valid_set, self.config.labels,
                          v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, progress=False)  # fmt: skip
        record["mAP50"] = report["mAP50"]
        with self.writer.as_default(step=epoch + 1):
            tf.summary.scalar("val_mAP50", report["mAP50"])
        if report["mAP50"] > self.best_var.numpy() and epoch + 1 >= self.best_from:
            self.best_var.assign(report["mAP50"])
            save_model(self.plain_model(), self.spec, self.best_path, self.compression)
            record["best"] = True
        record["eval_seconds"] = time.perf_counter() - started

    def evaluate_and_save(self, epoch: int, record: dict) -> None:
        """Validation mAP@0.5 when due (best.h5 when better), last.h5, the history and the checkpoint."""
        from .models import save_model
        from .reporting import write_json

        if (epoch + 1) % self.config.train.eval_every == 0 or epoch + 1 == self.epochs:
            self.validate(epoch, record)
        _log(
            f"epoch {epoch + 1}/{self.epochs}: loss {record['loss']:.3f}"
            + (f", val mAP@0.5 {record['mAP50']:.4f}" if "mAP50" in record else "")
            + f" ({record['seconds']:.0f} s)"
        )
        for hook in self.hooks:
            hook.on_epoch_end(self.model, epoch, self.run_dir)
        save_model(self.plain_model(), self.spec, self.run_dir / "last.h5", self.compression)
        self.epoch_var.assign(epoch + 1)
        self.history.append(record)
        write_json(self.history_path, self.history)
        self.manager.save(checkpoint_number=epoch + 1)

    # -- the deadline -----------------------------------------------------------------------------

    def fit_deadline(self, done: int, epoch_seconds: list[float]) -> None:
        """Shorten the run to the epochs that end before ``options.deadline`` (:func:`epochs_before_deadline`)."""
        evaluations = [h["eval_seconds"] for h in self.history if h.get("eval_seconds")]
        evaluation = max(evaluations) if evaluations else float(np.median(epoch_seconds))  # none timed yet: as long as an epoch
        left = self.options.deadline - time.time()
        epochs = epochs_before_deadline(left, done, self.epochs, epoch_seconds, evaluation)
        if epochs < self.epochs:
            self.deadline_note = (f"the deadline: {epochs} of {self.planned_epochs} epochs ({left / 60:.1f} min left after epoch {done}, "
                                  f"{recent_epoch_seconds(epoch_seconds):.1f} s per epoch lately)")  # fmt: skip
            _log(f"shortened by {self.deadline_note}")
            self.epochs = epochs

    def validate_last(self) -> None:
        """The last trained epoch validated when the deadline ended the run before it was (best.h5 from it when better)."""
        from .reporting import write_json

        last = self.history[-1] if self.history else None
        if last is None or "mAP50" in last:
            return
        self.validate(last["epoch"] - 1, last)
        _log(f"epoch {last['epoch']}: val mAP@0.5 {last['mAP50']:.4f} (the last epoch before the deadline)")
        write_json(self.history_path, self.history)
        self.manager.save(checkpoint_number=last["epoch"])  # with the best mAP@0.5 it may have raised, for a resumed run


def train(config, options: RunOptions | None = None) -> dict:
    """Train or fine-tune the config's model; returns a summary (best mAP, paths, timings)."""
    trainer = Trainer(config, options)
    trainer.set_up()
    first = trainer.restore()
    started = time.perf_counter()
    epoch, walls = first, []  # walls: each epoch's seconds in this process, training and saving, without its evaluation
    while epoch < trainer.epochs:
        began = time.perf_counter()
        record = trainer.run_epoch(epoch)
        trainer.evaluate_and_save(epoch, record)
        walls.append(time.perf_counter() - began - record.get("eval_seconds", 0.0))
        epoch += 1
        if trainer.options.deadline is not None and epoch < trainer.epochs:
            trainer.fit_deadline(epoch, walls)
    if trainer.deadline_note:
        trainer.validate_last()
    trainer.writer.flush()
    t = config.train
    if t.saved_weights_name and trainer.best_path.exists():
        shutil.copyfile(trainer.best_path, t.saved_weights_name)
    return {
        "run_dir": str(trainer.run_dir),
        "best_model": str(trainer.best_path) if trainer.best_path.exists() else None,
        "best_mAP50": float(trainer.best_var.numpy()),
        "epochs": trainer.epochs,
        "planned_epochs": trainer.planned_epochs,
        "deadline": trainer.deadline_note,
        "replicas": trainer.strategy.num_replicas_in_sync,
        "history": trainer.history,
        "seconds": time.perf_counter() - started,
    }


def _fixed_size(model, spec: Spec, size: int):
    """A plain copy at a fixed input size (for saving): no synchronised BN, no dynamic shape."""
    from .keras_model import build_model

    fixed = build_model(spec, size=size)
    fixed.set_weights(model.get_weights())
    return fixed
