"""The paired bootstrap of mAP@0.5: re-weighted AP equals AP of the resample written out image by image."""

from pathlib import Path

import numpy as np
import pytest

from yolo3.datasets import Record
from yolo3.metrics import evaluate_detections, match_detections
from yolo3.postprocess import Detections
from yolo3.resampling import keep_verdict, loss_bound, paired_map_loss, sure_gain, weighted_map50

CLASSES = 3


def random_set(seed: int, images: int = 12, noise: float = 6.0):
    """Ground truth with difficult boxes and an empty image, and detections that hit, miss, duplicate and mislabel."""
    rng = np.random.default_rng(seed)
    records, detections = [], []
    for k in range(images):
        n = 0 if k == 0 else int(rng.integers(1, 5))
        xy = rng.uniform(0, 150, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(15, 50, (n, 2))])
        classes = rng.integers(0, CLASSES, n)
        difficult = rng.random(n) < 0.15
        records.append(Record.make(Path(f"{k}.jpg"), 200, 200, boxes, classes, difficult))
        keep = rng.random(n) < 0.8
        det_boxes = boxes[keep] + rng.normal(0, noise, (int(keep.sum()), 4))
        det_classes = np.where(rng.random(int(keep.sum())) < 0.9, classes[keep], rng.integers(0, CLASSES, int(keep.sum())))
        extra = int(rng.integers(0, 4))
        exy = rng.uniform(0, 150, (extra, 2))
        det_boxes = np.vstack([det_boxes, np.hstack([exy, exy + 30])])
        det_classes = np.concatenate([det_classes, rng.integers(0, CLASSES, extra)])
        detections.append(Detections(det_boxes.astype(np.float32), rng.random(len(det_boxes)).astype(np.float32), det_classes.astype(int)))
    return records, detections


def test_unit_weights_give_the_voc_map():
    records, detections = random_set(1)
    matches = match_detections(records, detections, CLASSES)
    expected = evaluate_detections(records, detections, ["a", "b", "c"])["mAP50"]
    assert weighted_map50(matches, np.ones((1, len(records))))[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_weights_equal_the_resample_written_out(seed):
    records, detections = random_set(seed)
    matches = match_detections(records, detections, CLASSES)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(records), np.full(len(records), 1 / len(records)), size=5)
    got = weighted_map50(matches, weights)
    for row, value in zip(weights, got):
        picked = [k for k, count in enumerate(row) for _ in range(count)]
        expected = evaluate_detections([records[k] for k in picked], [detections[k] for k in picked], ["a", "b", "c"])["mAP50"]
        assert value == pytest.approx(expected, abs=1e-12)


def test_paired_loss_is_zero_against_itself_and_positive_against_a_worse_model():
    records, good = random_set(5, images=20, noise=2.0)
    _, bad = random_set(5, images=20, noise=12.0)  # same ground truth and picks, boxes much further off
    ref = match_detections(records, good, CLASSES)
    assert np.all(paired_map_loss(ref, ref, rounds=300) == 0)
    losses = paired_map_loss(ref, match_detections(records, bad, CLASSES), rounds=600, seed=1)
    observed = 100 * (weighted_map50(ref, np.ones((1, 20)))[0] - weighted_map50(match_detections(records, bad, CLASSES), np.ones((1, 20)))[0])
    assert observed > 0 and np.median(losses) == pytest.approx(observed, abs=0.5 * observed + 2)
    assert loss_bound(losses, 0.9) > loss_bound(losses, 0.5)
    assert np.array_equal(losses, paired_map_loss(ref, match_detections(records, bad, CLASSES), rounds=600, seed=1))


def test_unmatched_image_sets_are_refused():
    records, detections = random_set(6)
    ref = match_detections(records, detections, CLASSES)
    with pytest.raises(ValueError):
        paired_map_loss(ref, match_detections(records[:-1], detections[:-1], CLASSES))


def test_a_gain_is_sure_only_when_the_bootstrap_confirms_it():
    """sure_gain: nothing against itself, never above the measured gain, positive for a clearly better model, as measured at 0.5."""
    records, good = random_set(5, images=20, noise=2.0)
    _, bad = random_set(5, images=20, noise=12.0)
    better, worse = match_detections(records, good, CLASSES), match_detections(records, bad, CLASSES)
    m_good, m_bad = (weighted_map50(m, np.ones((1, 20)))[0] for m in (better, worse))
    assert sure_gain(worse, worse, m_bad, m_bad, 0.9) == (0.0, 0.0)
    measured, sure = sure_gain(worse, better, m_bad, m_good, 0.9)
    assert measured == pytest.approx(100 * (m_good - m_bad)) and 0 < sure < measured
    assert sure_gain(worse, better, m_bad, m_good, 0.5) == (measured, measured)
    assert sure_gain(better, worse, m_good, m_bad, 0.9)[1] < 0
    fields, wins = keep_verdict(worse, better, m_bad, m_good, 0.9, "plain")
    assert wins and fields == {"vs": "plain", "gain_points": measured, "sure_gain_points": sure}
    assert not keep_verdict(better, worse, m_good, m_bad, 0.9, "plain")[1] and not keep_verdict(worse, worse, m_bad, m_bad, 0.5, "plain")[1]
