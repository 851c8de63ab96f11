"""Successive halving over candidate plans: which plan survives, from validation scores after growing epochs.

The candidates stage trains every input size's plan a few epochs, keeps the
better half, trains it as many epochs again, and so on until one plan is left.
The ranking is one function (:func:`rank`) so that the stage and the benchmark
that replays it on full learning curves (``bench/candidate_curves.py``) decide
alike: higher validation mAP@0.5 first (to 4 decimals), then the faster plan.

Example::

    simulate_halving({"288": [0.5, 0.8, 0.85, 0.86], "416": [0.1, 0.6, 0.88, 0.9]}, rung=1, predicted_ms={"288": 2.5, "416": 3.0})
    # ("288", [...]): after 1 epoch 416 is dropped, though it leads from epoch 3 on
"""

from __future__ import annotations

import numpy as np


def rank(names: list[str], scores: dict[str, float], predicted_ms: dict[str, float]) -> list[str]:
    """``names`` best first: the higher score, then the lower predicted latency."""
    return sorted(names, key=lambda n: (-round(scores[n], 4), predicted_ms.get(n, 0.0)))


def survivors(ranked: list[str]) -> list[str]:
    """The better half (rounded up) of a ranked list."""
    return ranked[: (len(ranked) + 1) // 2]


def best_so_far(curve: list[float], epochs: int) -> float:
    """The best validation score within the first ``epochs`` epochs of a learning curve (the run keeps its best epoch)."""
    seen = [v for v in curve[:epochs] if v is not None]
    return max(seen) if seen else 0.0


def extrapolated(curve: list[float], epochs: int, horizon: int) -> float:
    """The score a learning curve points to after ``horizon`` epochs, from its first ``epochs``: ``a - b / t`` fitted by least squares.

    A two-parameter saturating curve: with fewer than two validated epochs it
    is the best score so far; the result stays between the best so far and 1.
    """
    points = [(t + 1, v) for t, v in enumerate(curve[:epochs]) if v is not None]
    seen = best_so_far(curve, epochs)
    if len(points) < 2:
        return seen
    x = np.array([1.0 / t for t, _ in points])
    y = np.array([v for _, v in points])
    slope, intercept = np.polyfit(x, y, 1)  # y = intercept + slope / t, slope = -b
    return float(min(1.0, max(seen, intercept + slope / horizon)))


def simulate_halving(curves: dict[str, list[float]], rung: int, predicted_ms: dict[str, float], horizon: int | None = None) -> tuple[str, list[dict]]:
    """The plan successive halving keeps when the first round trains ``rung`` epochs, replayed on learning curves.

    ``curves[name][e - 1]`` is the validation score after epoch ``e`` of one
    long run. A real round restarts the learning-rate schedule for its own
    length, so the replay is an approximation: the order of plans at epoch
    ``e`` of a long run, not of a run that ends at ``e``. Rounds that would
    train past the curves' length stop at their end. With ``horizon`` the plans
    are ranked by :func:`extrapolated` scores at that epoch instead of the best so far.
    """
    alive = list(curves)
    length = min(len(c) for c in curves.values())
    trained, rounds = 0, []
    while len(alive) > 1:
        trained = min(trained + rung, length)
        scores = {n: extrapolated(curves[n], trained, horizon) if horizon else best_so_far(curves[n], trained) for n in alive}
        ranked = rank(alive, scores, predicted_ms)
        rounds.append({"epochs": trained, "valid_mAP50": {n: scores[n] for n in ranked}})
        alive = survivors(ranked)
    return alive[0], rounds


def epochs_trained(rounds: list[dict]) -> int:
    """Candidate epochs a halving spent: each round's plans times the epochs that round added."""
    total, before = 0, 0
    for r in rounds:
        total += len(r["valid_mAP50"]) * (r["epochs"] - before)
        before = r["epochs"]
    return total
