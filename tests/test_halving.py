"""Successive halving replayed on learning curves: the ranking the candidates stage uses, and what a short first round drops."""

import pytest

from compression.budget.halving import best_so_far, epochs_trained, extrapolated, rank, simulate_halving, survivors


def test_rank_prefers_score_then_the_faster_plan():
    assert rank(["416", "288", "320"], {"416": 0.9, "288": 0.9, "320": 0.95}, {"416": 3.0, "288": 2.0, "320": 2.5}) == ["320", "288", "416"]
    assert survivors(["a", "b", "c"]) == ["a", "b"] and survivors(["a", "b"]) == ["a"]


def test_best_so_far_keeps_the_best_epoch_and_skips_unvalidated_ones():
    assert best_so_far([0.2, None, 0.5, 0.4], 4) == 0.5
    assert best_so_far([0.2, None, 0.5, 0.4], 2) == 0.2
    assert best_so_far([None], 1) == 0.0


def test_a_short_first_round_drops_the_slow_starter_a_longer_one_keeps_it():
    curves = {"288": [0.5, 0.8, 0.85, 0.86, 0.86, 0.86], "416": [0.1, 0.6, 0.88, 0.9, 0.91, 0.92], "352": [0.3, 0.5, 0.6, 0.7, 0.75, 0.8]}
    ms = {"288": 2.5, "416": 3.0, "352": 2.8}
    chosen, rounds = simulate_halving(curves, 1, ms)
    assert chosen == "288" and rounds[0]["epochs"] == 1 and list(rounds[0]["valid_mAP50"]) == ["288", "352", "416"]
    chosen, rounds = simulate_halving(curves, 3, ms)
    assert chosen == "416" and [r["epochs"] for r in rounds] == [3, 6]
    assert epochs_trained(rounds) == 3 * 3 + 2 * 3


def test_extrapolation_follows_a_saturating_curve_and_needs_two_points():
    curve = [0.9 - 0.6 / t for t in range(1, 7)]
    assert extrapolated(curve, 3, 60) == pytest.approx(0.9 - 0.6 / 60)
    assert extrapolated(curve, 1, 60) == curve[0]  # one point: the score as measured
    assert extrapolated([0.5, 0.4, 0.3], 3, 60) == 0.5  # a falling curve is not extrapolated below its best
