"""Weight clustering as a method of the job runner (:mod:`compression.job`): ``yolo3 cluster`` and ``clustering.py``.

Every convolution kernel (but those in ``clustering.exclude``) is clustered
into k shared values (:func:`~compression.cluster.clustering.cluster_model`); the
fine-tuning that may follow keeps every kernel on its centroids, and its result
is kept only if it scores at least as well on the validation split.

Example::

    report = run_clustering(config, "best.h5", out="clustered.h5", clusters=32, finetune_epochs=5)
"""

from __future__ import annotations

from pathlib import Path

from yolo3.config import SCHEMA
from yolo3.errors import UserError

from ..job import Job, run_job
from ..registry import Method, Transformed, register


@register
class Cluster(Method):
    """k-means of every kernel into ``clusters`` shared values (per output channel with ``per_channel``); zeros stay zero."""

    name, title = "cluster", "clustering"

    def __init__(self, config, clusters: int | None = None, per_channel: bool | None = None):
        super().__init__(config)
        c = config.clustering
        self.clusters = c.clusters if clusters is None else clusters
        self.per_channel = c.per_channel if per_channel is None else per_channel
        allowed = SCHEMA["clustering"]["clusters"].range
        if self.clusters not in allowed:
            raise UserError(f"--clusters must be in {allowed} (clustering.clusters), got {self.clusters}")

    def default_epochs(self) -> int:
        return self.config.clustering.finetune_epochs

    def default_output(self, source: Path) -> Path:
        return source.with_name(f"{source.stem}-clustered{self.clusters}.h5")

    def learning_rate(self) -> float:
        return self.config.clustering.finetune_learning_rate

    def transform(self, job: Job, loaded, run_dir, report) -> Transformed:
        from .clustering import cluster_model, conv_layer_names

        c = self.config.clustering
        self.names = conv_layer_names(loaded.spec, c.exclude)
        table = cluster_model(loaded.model, loaded.spec, self.clusters, self.per_channel, c.exclude, c.seed)
        record = {"clustering": {"clusters": self.clusters, "per_channel": self.per_channel, "layers": self.names}}
        return Transformed(loaded, record, {"clustering": table})

    def finetune_hooks(self, made: Transformed, epochs: int) -> tuple:
        from ..constraints import KeepClusters

        return (KeepClusters(self.names, self.per_channel),)

    def keep_finetuned(self, report: dict) -> bool:
        return report["finetuned"]["mAP50"] >= report["after"]["mAP50"]

    def finish(self, job: Job, made: Transformed, final, report: dict) -> None:
        from .clustering import distinct_values

        report["details"]["distinct_values"] = values = distinct_values(final.model, self.names, self.per_channel)
        if max(values.values(), default=0) > self.clusters:
            raise UserError("fine-tuning broke the clusters (a kernel has more than k values); this is a bug")

    @classmethod
    def format_details(cls, report: dict) -> list[str]:
        cl = report["details"]["clustering"]
        rows = [f"{'layer':<10s} {'weights':>10s} {'distinct':>8s} {'WCSS':>12s} {'codebook B':>11s} {'s':>6s}"]
        for e in cl["layers"]:
            rows.append(f"{e['layer']:<10s} {e['weights']:10,d} {e['max_distinct_per_channel']:8d} {e['wcss']:12.5g} "
                        f"{e['codebook_bytes']:11,d} {e['seconds']:6.2f}")  # fmt: skip
        rows.append(f"{cl['clustered_layers']} layers clustered into {cl['clusters']}{' per channel' if cl['per_channel'] else ''} "
                    f"in {cl['seconds']:.1f} s, total WCSS {cl['total_wcss']:.5g}; codebook encoding {cl['codebook_bytes']:,} B")  # fmt: skip
        return rows


def run_clustering(config, model_path: str | None, out: str | None = None, clusters: int | None = None, per_channel: bool | None = None,
                   finetune_epochs: int | None = None, force: bool = False, progress: bool = True) -> dict:  # fmt: skip
    """Cluster, score, save, optionally fine-tune keeping the clusters (see the module docstring); the report."""
    return run_job(config, "cluster", model_path, out, finetune_epochs, force, progress, clusters=clusters, per_channel=per_channel)
