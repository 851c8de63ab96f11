"""How sure a difference in mAP@0.5 is: a paired bootstrap over the evaluation images.

A validation split of 30 images measures mAP@0.5 to a few points; a loss of
"0.8 points" read off it may be a loss of 5 on the next 30 images. Resampling
the images with replacement (the same resample for both models, so what they
share cancels) gives the spread of the difference, and an accuracy floor can
then be checked as "the loss is at most X points with confidence q" rather than
on a single noisy figure (Efron & Tibshirani, *An Introduction to the
Bootstrap*, ch. 13; the paired form is the standard for comparing two systems on
one test set).

The matching of each detection (hit, false alarm, or neither) depends only on
its own image, so a resample only re-weights the already matched detections:
AP is recomputed from weighted cumulative sums, all resamples at once.

Example::

    from yolo3.metrics import match_detections
    from yolo3.resampling import paired_map_loss
    losses = paired_map_loss(match_detections(records, ref_dets, C), match_detections(records, new_dets, C))
    np.quantile(losses, 0.9)   # the loss in points is at most this with 90 % confidence
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import ClassMatches

CHUNK = 250  # resamples evaluated together (memory: CHUNK x detections of a class)


def weighted_map50(matches: Sequence[ClassMatches], weights: np.ndarray) -> np.ndarray:
    """mAP@0.5 (VOC all-point AP, mean over classes with ground truth) under each row of image weights.

    ``weights`` is (R, images): how often each image is drawn in each of R
    resamples; a row of ones gives exactly :func:`yolo3.metrics.voc_evaluation`'s mAP.
    """
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    eps = np.finfo(np.float64).eps
    aps = []
    for m in matches:
        n_gt = weights @ m.ground_truth
        if len(m.scores) == 0:
            ap = np.zeros(len(weights))
        else:
            w = weights[:, m.image]
            ctp = np.cumsum(w * m.hit, axis=1)
            cfp = np.cumsum(w * m.false_alarm, axis=1)
            recall = ctp / np.maximum(n_gt, eps)[:, None]
            precision = ctp / np.maximum(ctp + cfp, eps)
            ones = np.ones((len(weights), 1))
            r = np.hstack([0 * ones, recall, ones])
            p = np.hstack([0 * ones, precision, 0 * ones])
            envelope = np.maximum.accumulate(p[:, ::-1], axis=1)[:, ::-1]
            ap = np.sum((r[:, 1:] - r[:, :-1]) * envelope[:, 1:], axis=1)  # zero where recall does not move: the VOC steps
        aps.append(np.where(n_gt > 0, ap, np.nan))
    if not aps:
        return np.zeros(len(weights))
    stacked = np.vstack(aps)
    counted = np.sum(~np.isnan(stacked), axis=0)
    return np.where(counted > 0, np.nansum(stacked, axis=0) / np.maximum(counted, 1), 0.0)


def paired_map_loss(
    reference: Sequence[ClassMatches], model: Sequence[ClassMatches], rounds: int = 1000, seed: int = 0
) -> np.ndarray:
    """``rounds`` bootstrap values of (mAP@0.5 of ``reference`` − mAP@0.5 of ``model``) in points, both on the same resamples.

    Both match lists must come from the same images in the same order.
    """
    images = len(reference[0].ground_truth) if reference else 0
    if not reference or len(model) != len(reference) or any(len(m.ground_truth) != images for m in model):
        raise ValueError("both models must be matched on the same images and classes")
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, rounds, CHUNK):
        weights = rng.multinomial(images, np.full(images, 1.0 / images), size=min(CHUNK, rounds - start))
        out.append(100.0 * (weighted_map50(reference, weights) - weighted_map50(model, weights)))
    return np.concatenate(out)


def loss_bound(samples: np.ndarray, confidence: float) -> float:
    """The loss (points) not exceeded with ``confidence``: the bootstrap quantile."""
    return float(np.quantile(samples, confidence))


def sure_gain(best: Sequence[ClassMatches], tried: Sequence[ClassMatches], best_map50: float, tried_map50: float,
              confidence: float) -> tuple[float, float]:  # fmt: skip
    """(measured gain, gain reached with ``confidence``) in mAP@0.5 points of ``tried`` over ``best`` on the same images.

    The second is the lower bootstrap quantile of the gain (never above the
    measured one); a model is better with that confidence when both are above 0.
    ``confidence`` 0.5 takes the measured gain as it is. One rule for every
    "keep the better model" choice (the repair ladder, compress's int8 stage):
    on BCCD's 87 validation images a +0.1-point QAT "gain" was 0.8 points worse on test.
    """
    measured = 100.0 * (tried_map50 - best_map50)
    if confidence <= 0.5:
        return measured, measured
    return measured, min(measured, -loss_bound(paired_map_loss(best, tried), confidence))


def keep_verdict(best: Sequence[ClassMatches], tried: Sequence[ClassMatches], best_map50: float, tried_map50: float, confidence: float,
                 vs: str) -> tuple[dict, bool]:  # fmt: skip
    """The report fields of a "keep the better model" choice (``vs``, ``gain_points``, ``sure_gain_points``) and whether ``tried`` wins.

    :func:`sure_gain`'s rule, written once for every step that may replace the best model so far.
    """
    measured, sure = sure_gain(best, tried, best_map50, tried_map50, confidence)
    return {"vs": vs, "gain_points": measured, "sure_gain_points": sure}, measured > 0 and sure > 0
