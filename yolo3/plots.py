"""Where a model fails, as pictures: precision–recall curves per class and the confusion matrix of an evaluation report.

The report must come from an evaluation with ``curves=True`` (``yolo3 evaluate
--plots DIR``); the same code serves a Keras model and a ``.tflite``.

Example::

    report = evaluate_config(config, "best-int8.tflite", curves=True)
    write_plots(report, Path("plots/"))   # plots/pr_curves.png, plots/confusion_matrix.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fileio import atomic_write


def write_plots(report: dict, folder: Path) -> list[Path]:
    """``pr_curves.png`` and ``confusion_matrix.png`` in ``folder``; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    title = f"{Path(str(report.get('model', 'model'))).name}, {report.get('images', '?')} {report.get('split', '')} images"

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for name, row in report["per_class"].items():
        curve = row.get("curve")
        if curve:
            ax.plot(curve["recall"], curve["precision"], lw=1.4, label=f"{name} (AP {row['ap']:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"precision–recall at IoU 0.5: mAP {report['mAP50']:.3f}\n{title}")
    ax.grid(alpha=0.3)
    if len(report["per_class"]) <= 20:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = folder / "pr_curves.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    written.append(path)

    confusion = report["confusion"]
    m = np.asarray(confusion["matrix"], float)
    labels = confusion["labels"]
    # each true class (column) as fractions: where its boxes went; the background column counts false alarms
    shares = m / np.maximum(m.sum(axis=0, keepdims=True), 1)
    size = max(4.5, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, [*labels[:-1], "missed"], fontsize=7)
    ax.set(xlabel="true class (background: false alarms)", ylabel="predicted class",
           title=f"confusion at IoU 0.5, score ≥ {confusion['score_threshold']}\n{title}")  # fmt: skip
    if len(labels) <= 12:
        for i in ticks:
            for j in ticks:
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7, color="white" if shares[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = folder / "confusion_matrix.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    written.append(path)
    return written
