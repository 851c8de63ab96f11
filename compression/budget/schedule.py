"""The time budget of a compress run (``compress.time_budget`` minutes, ``--time-budget``): fine-tuning epochs from the time left.

The measuring stages take what they take; what follows is mostly training,
whose length the tool chooses. Two decisions read the clock:

- the **candidates** get a share (``CANDIDATE_SHARE``) of the time left after
  the reserve the later stages need at the config's epochs, split over the
  input sizes; the epoch time at each size is the levers stage's measured epoch
  time at the model's size scaled by pixels (a pruned plan trains faster, so
  this errs on the short side). The first round never gets fewer than the
  config's epochs: on BCCD a first round of 1 or 2 epochs dropped the plan that
  was best after 12 (a deep cut recovers later), 3 kept it
  (``docs/results.md``). When the time cannot give every plan that many, the
  plans with the lowest predicted mAP@0.5 are left out instead, down to one
  (chosen by prediction, no short fine-tune);
- the **fine-tune** takes the time left after the tail (clustering's and
  QAT's epochs and the fixed cost of conversions and evaluations), at the
  epoch time its own candidate measured at that size and architecture.

Both stay between 1 epoch and ``MAX_FACTOR`` times the config's epochs: a
budget larger than needed buys longer fine-tuning (and candidates judged after
more epochs, which favours shallow plans less), not an unbounded run; a
smaller one shortens them. ``0`` switches the budget off: the config's epochs
as given.

Example::

    finetune_epochs(time_left=1800, epoch_seconds=9.5, tail=240, configured=60)   # (164, "...")
"""

from __future__ import annotations

MAX_FACTOR = 3  # at most this many times the configured epochs
CANDIDATE_SHARE = 0.25  # of the time left after the reserve, what the candidates may use


def bounded(epochs: float, configured: int) -> int:
    return max(1, min(int(epochs), MAX_FACTOR * max(configured, 1)))


def finetune_epochs(time_left: float, epoch_seconds: float, tail: float, configured: int) -> tuple[int, str]:
    """Epochs of the fine-tune that fit ``time_left`` seconds minus the ``tail``; why, in words."""
    fit = (time_left - tail) / max(epoch_seconds, 1e-3)
    epochs = bounded(fit, configured)
    return epochs, (f"{time_left / 60:.1f} min left, {tail / 60:.1f} min kept for what follows, {epoch_seconds:.1f} s per epoch: "
                    f"{epochs} epochs (configured {configured}, at most {MAX_FACTOR}x)")  # fmt: skip


def candidate_schedule(time_left: float, epoch_seconds: dict[int, float], reserve: float, configured: int,
                       predicted_map: dict[int, float]) -> tuple[int, list[int], str]:
    """Epochs of every candidate's first round, the sizes that get one, and why, in words.

    A share of the time left after ``reserve`` is split over the plans; the
    round may grow up to ``MAX_FACTOR`` times ``configured`` but never shrinks
    below it: plans are left out, lowest ``predicted_map`` first, until the rest
    fit (one plan left: no round, it is the choice).
    """
    spare = max(0.0, time_left - reserve)
    ranked = sorted(epoch_seconds, key=lambda s: (-(predicted_map.get(s) or 0.0), s))
    head = f"{time_left / 60:.1f} min left, {reserve / 60:.1f} min reserved for the fine-tune and what follows"
    for count in range(len(ranked), 1, -1):
        sizes = sorted(ranked[:count])
        fit = CANDIDATE_SHARE * spare / max(sum(epoch_seconds[s] for s in sizes), 1e-3)
        if fit >= configured:
            epochs = bounded(fit, configured)
            left_out = sorted(set(ranked) - set(sizes))
            dropped = f"; left out for time, least predicted mAP@0.5 first: {', '.join(map(str, left_out))}" if left_out else ""
            return epochs, sizes, f"{head}: {epochs} epochs for each of {count} plans (configured {configured}){dropped}"
    return configured, ranked[:1], (f"{head}: not enough for {configured} epochs of two plans; "
                                    f"{ranked[0]} chosen by predicted mAP@0.5 without a short fine-tune")


def tail_seconds(epoch_seconds: float, cluster_epochs: int, qat_epochs: int, fixed: float) -> float:
    """What follows the fine-tune: clustering's fine-tune, QAT (about twice an epoch's time per epoch), and the fixed cost."""
    return epoch_seconds * (cluster_epochs + 2 * qat_epochs) + fixed
