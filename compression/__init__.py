"""Model transforms: pruning, clustering, quantization and export, and the budget planner (built on :mod:`yolo3`).

Sub-packages by concern: :mod:`compression.prune` (channel surgery, similarity,
slimming, layer and magnitude pruning), :mod:`compression.cluster` (k-means of
weights), :mod:`compression.quantize` (TFLite export, QAT, in-model NMS, int8
debugging, Edge TPU) and :mod:`compression.budget` (targets, sensitivity,
latency model, planner, the ``compress`` stages and report). Beside them the
shared core: the method registry, the job runner, the stage pipeline, the shared
steps, trainer hooks and output checks.

Importing the package registers the methods of the job runner (as NNCF's
algorithm selector does), so the registry imports no method and no cycle forms.
"""

from .cluster import methods as _cluster_methods  # noqa: F401  (registers "cluster")
from .prune import methods as _prune_methods  # noqa: F401  (registers the pruning methods)
