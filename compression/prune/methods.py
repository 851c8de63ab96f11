"""The pruning methods of the job runner (:mod:`compression.job`): magnitude, similarity, slimming, layers.

``yolo3 prune --method NAME`` and ``evaluate.py -p 2..5`` run them. Magnitude
pruning (TFMOT with a polynomial schedule during fine-tuning, or one-shot)
leaves zeros that fine-tuning keeps; the structured methods remove filters or
blocks for real, so parameters, MACs and latency fall, and their result is also
written as a Darknet ``.cfg`` + ``.weights`` that OpenCV and Darknet load.
Similarity pruning and slimming can prune in ``pruning.rounds`` steps with
fine-tuning between them.

Example::

    report = run_pruning(config, "similarity", "best.h5", out="pruned.h5", finetune_epochs=10)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from yolo3.errors import UserError
from yolo3.names import conv_name

from ..job import Job, run_job
from ..registry import Method, Transformed, register


def round_share(total: float, rounds: int) -> float:
    """The fraction each of ``rounds`` prunings removes so that together they remove ``total``.

    Fractions compound: after n rounds of share s the kept fraction is (1 - s)^n.
    """
    return 1.0 - (1.0 - total) ** (1.0 / rounds)


class Pruning(Method):
    """A pruning method: its output defaults to ``pruning.output`` or ``NAME-pN.h5`` beside the input (N as in ``evaluate.py -p N``)."""

    mode = 0

    def default_output(self, source: Path) -> Path:
        return self.config.pruning.output or source.with_name(f"{source.stem}-p{self.mode}.h5")


@register
class Magnitude(Pruning):
    """Zero the smallest kernel weights: TFMOT's schedule during fine-tuning, or one-shot by a per-layer percentile."""

    name, title, mode = "magnitude", "magnitude pruning", 2

    def check(self, job: Job, epochs: int) -> None:
        p = self.config.pruning
        if p.magnitude_mode == "tfmot" and epochs < 1:
            raise UserError("magnitude pruning with TFMOT prunes while fine-tuning: set pruning.finetune_epochs (or --finetune-epochs) "
                            "to at least 1, or pruning.magnitude_mode to oneshot")  # fmt: skip
        _no_rounds(self.config, self.name)

    def transform(self, job: Job, loaded, run_dir, report) -> Transformed:
        from .magnitude import oneshot_prune

        p = self.config.pruning
        self.names = [conv_name(i) for i in loaded.spec.conv_indices()]
        if p.magnitude_mode != "oneshot":
            return Transformed(loaded)  # TFMOT prunes during fine-tuning
        oneshot_prune(loaded.model, self.names, p.magnitude_sparsity)
        return Transformed(loaded, {"sparsity": {"target": p.magnitude_sparsity, "layers": self.names}})

    def scores_after_transform(self) -> bool:
        return self.config.pruning.magnitude_mode == "oneshot"

    def finetune_hooks(self, made: Transformed, epochs: int) -> tuple:
        from yolo3.datasets import read_dataset

        from ..constraints import KeepZeros
        from .magnitude import TfmotPruning

        p, config = self.config.pruning, self.config
        if p.magnitude_mode == "oneshot":
            return (KeepZeros(self.names),)
        steps = max(1, len(read_dataset(config.dataset("train"), config.labels).records) // config.train.batch_size)
        end = int(p.magnitude_end_fraction * epochs * steps)
        hook = TfmotPruning(p.magnitude_sparsity, end, frequency=max(1, steps // 4), layers=self.names,
                            best_from_epoch=min(epochs, math.ceil(end / steps) + 1))  # fmt: skip
        made.record = hook.compression  # the saved model records its zeros, so a later fine-tune keeps them
        return (hook,)

    def finish(self, job: Job, made: Transformed, final, report: dict) -> None:
        from .magnitude import sparsity_report

        report["details"]["sparsity"] = sparsity_report(final.model, final.spec)

    @classmethod
    def format_details(cls, report: dict) -> list[str]:
        sp = report["details"]["sparsity"]
        return [f"sparsity: {sp['overall']:.1%} of the kernel weights are zero; per layer: "
                + ", ".join(f"{k} {v:.0%}" for k, v in sp["per_layer"].items())]  # fmt: skip


def _no_rounds(config, name: str) -> None:
    if config.pruning.rounds > 1:
        raise UserError(f"pruning.rounds = {config.pruning.rounds}: pruning in rounds is for similarity pruning and slimming only, "
                        f"not {name}", config.path)  # fmt: skip


class Structured(Pruning):
    """Filters or blocks removed for real (channel surgery), in ``pruning.rounds`` steps where the method allows."""

    rounds_allowed = False

    def check(self, job: Job, epochs: int) -> None:
        if not self.rounds_allowed:
            _no_rounds(self.config, self.name)

    def rounds(self) -> int:
        return self.config.pruning.rounds if self.rounds_allowed else 1

    def needs_run_dir(self, epochs: int) -> bool:
        return epochs > 0 or self.rounds() > 1

    def step(self, spec, weights, share: float | None, keep: dict | None) -> tuple:
        """(new spec, new weights, details) of one pruning step."""
        raise NotImplementedError

    def schedule(self, spec, rounds: int) -> tuple[float | None, list]:
        """(the share each step removes, or None; the per-step keep counts, or Nones)."""
        return None, [None] * rounds

    def transform(self, job: Job, loaded, run_dir, report) -> Transformed:
        """Prune in ``rounds`` steps with fine-tuning between them; each step scored on the network the previous fine-tune left."""
        from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
        from yolo3.models import LoadedModel, save_model

        p = self.config.pruning
        rounds = self.rounds()
        share, schedule = self.schedule(loaded.spec, rounds)
        current, details, steps = loaded, {}, []
        for r in range(rounds):
            spec, new_weights, details = self.step(current.spec, get_darknet_weights(current.model, current.spec), share, schedule[r])
            model = build_model(spec)
            set_darknet_weights(model, spec, new_weights)
            current = LoadedModel(model, spec, f"{loaded.source} ({self.title})")
            if r == rounds - 1:
                break
            # a small step, then recovery, before the next step: the next scores see a network that has adapted
            folder = run_dir / f"round_{r + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            save_model(current.model, spec, folder / "pruned.h5")
            size = job.stats(spec)
            entry = {"round": r + 1, "removed_params": 1 - size["params"] / report["before"]["params"],
                     "pruned": {"mAP50": job.score(current), **size}}  # fmt: skip
            if p.round_epochs:
                t0 = time.perf_counter()
                current = job.finetune(folder / "pruned.h5", p.round_epochs, folder, self.learning_rate())
                entry["finetuned"] = {"mAP50": job.score(current), "epochs": p.round_epochs, "seconds": time.perf_counter() - t0}
            steps.append(entry)
        if steps:
            details = {**details, "rounds": steps}
        return Transformed(current, None, details, structural=True)

    @classmethod
    def format_details(cls, report: dict) -> list[str]:
        rows = []
        for r in report["details"].get("rounds", []):
            tuned = f", {r['finetuned']['mAP50']:.4f} after {r['finetuned']['epochs']} epochs" if "finetuned" in r else ""
            rows.append(f"round {r['round']}: {r['removed_params']:.1%} of the parameters removed -> mAP@0.5 {r['pruned']['mAP50']:.4f}{tuned}, "
                        f"{r['pruned']['macs'] / 1e9:.3f}G MACs")  # fmt: skip
        return rows


@register
class Similarity(Structured):
    """Remove one filter of each most similar pair (weighted Euclidean and cosine distance); its consumers read the twin."""

    name, title, mode, rounds_allowed = "similarity", "similarity pruning", 3, True

    def check(self, job: Job, epochs: int) -> None:
        from yolo3.models import spec_from_h5
        from yolo3.zoo import resolve_spec

        from .pruning import resolve_layer_ratios

        source = job.source
        spec = (spec_from_h5(source) if source.suffix.lower() == ".h5" else None) or resolve_spec(self.config.model.architecture)
        self.layer_ratios = resolve_layer_ratios(spec, self.config.pruning.similarity_layer_ratios, self.config.path)

    def schedule(self, spec, rounds: int) -> tuple[float | None, list]:
        from .pruning import similarity_keep_schedule

        p = self.config.pruning
        total = p.similarity_ratio
        if rounds > 1 and (total is not None or self.layer_ratios):  # per layer, from the original counts (rounding not compounded)
            return None, similarity_keep_schedule(spec, total, rounds, p.min_channels, p.round_to, self.layer_ratios)
        return (round_share(total, rounds) if rounds > 1 and total is not None else None), [None] * rounds

    def step(self, spec, weights, share, keep) -> tuple:
        from .pruning import group_masks, similarity_masks
        from .surgery import prune_channels

        p = self.config.pruning
        plan = similarity_masks(spec, weights, p.similarity_w1, p.similarity_w2, p.similarity_ratio if share is None else share,
                                p.similarity_threshold, tuple(p.similarity_kernels), p.min_channels, p.round_to, keep,
                                self.layer_ratios)  # fmt: skip
        masks = dict(plan.masks)
        if self.layer_ratios:  # shortcut groups named in the ratios: by |BN scale| (this round's count when in rounds)
            masks.update(group_masks(spec, weights, self.layer_ratios, p.min_channels, p.round_to, keep))
        result = prune_channels(spec, weights, masks, plan.merges)
        details = {
            "layers": {conv_name(g): len(v) for g, v in plan.removed.items()},
            "closest_pairs": {conv_name(g): [round(d, 6) for _, _, d in v[:3]] for g, v in plan.removed.items()},
        }
        return result.spec, result.weights, details


@register
class Slimming(Structured):
    """Network slimming: the channels with the smallest |BN scale| over the whole network, shortcut groups as one."""

    name, title, mode, rounds_allowed = "slimming", "network slimming", 4, True

    def schedule(self, spec, rounds: int) -> tuple[float | None, list]:
        p = self.config.pruning
        total = p.slimming_percent if p.slimming_threshold is None else None
        return (round_share(total, rounds) if rounds > 1 and total is not None else None), [None] * rounds  # a threshold applies every round

    def step(self, spec, weights, share, keep) -> tuple:
        from .pruning import slimming_masks
        from .surgery import prune_channels

        p = self.config.pruning
        percent = p.slimming_percent if share is None else share
        masks = slimming_masks(spec, weights, percent if p.slimming_threshold is None else None,
                               p.slimming_threshold, p.min_channels, p.min_channel_fraction, p.round_to)  # fmt: skip
        result = prune_channels(spec, weights, masks)
        return result.spec, result.weights, {"kept": {f"group_{g}": int(len(v)) for g, v in result.kept.items()}, "carriers": len(result.carriers)}


@register
class Layers(Structured):
    """Residual-layer pruning: whole blocks (two convolutions and the shortcut) with the lowest mean |BN scale|."""

    name, title, mode = "layers", "layer pruning", 5

    def step(self, spec, weights, share, keep) -> tuple:
        from .pruning import layer_prune

        new_spec, new_weights, blocks = layer_prune(spec, weights, self.config.pruning.layer_blocks)
        return new_spec, new_weights, {"removed_blocks": [{"layers": [b.start, b.start + 1, b.shortcut], "mean_bn_scale": b.score} for b in blocks]}


def run_pruning(config, method: str | int, model_path: str | None, out: str | None = None, finetune_epochs: int | None = None,
                force: bool = False, progress: bool = True) -> dict:  # fmt: skip
    """Prune with ``method`` (a name, or evaluate.py's -p number 2..5), report before/after, save, optionally fine-tune."""
    if isinstance(method, int):
        modes = {m.mode: m.name for m in (Magnitude, Similarity, Slimming, Layers)}
        if method not in modes:
            raise UserError(f"-p {method}: unknown mode (2 magnitude, 3 similarity, 4 slimming, 5 layer pruning)")
        method = modes[method]
    return run_job(config, method, model_path, out, finetune_epochs, force, progress)

