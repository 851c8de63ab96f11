"""Prune a model: report before and after, save it (Keras .h5, and Darknet .cfg + .weights for the structured methods).

    yolo3 prune -c config.json --method similarity [--model IN] [--out OUT.h5] [--finetune-epochs N]

Methods: magnitude (TFMOT, or one-shot: zeros, no speed-up), similarity (remove one filter of each
most similar pair, its consumers read the twin), slimming (channels with the smallest |BN scale|,
globally), layers (residual blocks with the lowest mean |BN scale|). The settings are the config's
``pruning`` section (``--set pruning.similarity_ratio=0.4``). The same as ``evaluate.py -p 2..5``.
"""

from __future__ import annotations

from .common import add_config
from .evaluate import add_pruning_flags, prune

HELP = "prune: magnitude (TFMOT), similarity filters, network slimming, residual layers"
METHODS = {"magnitude": 2, "similarity": 3, "slimming": 4, "layers": 5}


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("--method", required=True, choices=tuple(METHODS), help="the pruning method (settings: the config's pruning section)")
    add_pruning_flags(parser)


def run(args) -> int:
    return prune(args, METHODS[args.method])
