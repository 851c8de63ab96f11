"""Sparse training for network slimming: an L1 penalty on BN scales, and a plot of their distribution per epoch.

Example::

    options = sparse_training_options(spec, strength=1e-3)
    train(config, RunOptions(model_path, True, **options))   # run_dir/bn_scales/epoch_001.png, ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo3.spec import Spec

from .pruning import bn_l1_penalty, prunable_bn_layers


def plot_bn_scales(model, names: list[str], epoch: int, out: Path) -> Path:
    """Histogram of |gamma| over the prunable BN layers (log scale), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from yolo3.fileio import atomic_write

    gammas = np.concatenate([np.abs(model.get_layer(n).gamma.numpy()) for n in names])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.logspace(np.log10(max(gammas.min(), 1e-6)), np.log10(max(gammas.max(), 1e-5)), 60)
    ax.hist(gammas, bins=bins, color="#3070b0")
    ax.set_xscale("log")
    ax.set_xlabel("|BN scale|")
    ax.set_ylabel("channels")
    ax.set_title(f"epoch {epoch}: {len(gammas)} channels, median {np.median(gammas):.3g}, {np.mean(gammas < 1e-2):.0%} below 0.01")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return out


def sparse_training_options(spec: Spec, strength: float) -> dict:
    """RunOptions fields for sparse training: the penalty and the per-epoch plot."""
    names = prunable_bn_layers(spec)

    def plot(model, epoch: int, run_dir: Path) -> None:
        plot_bn_scales(model, names, epoch + 1, Path(run_dir) / "bn_scales" / f"epoch_{epoch + 1:03d}.png")

    return {"extra_loss": bn_l1_penalty(names, strength), "epoch_callback": plot}
