"""Pictures: the augmentation preview grid and training curves (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.augmentation import BatchAugmenter  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.data import load_image, read_classes, read_manifest  # noqa: E402


def augmentation_grid(config: Config, target: Path, rows: int = 6, variants: int = 5) -> Path:
    """Rows of train images (one per class where possible): original, then augmented variants."""
    paths, labels = read_manifest(config.paths.split_dir, "train")
    classes = read_classes(config.paths.split_dir)
    picked = []
    for name in classes:  # one image per class, deterministic
        picked += [(p, n) for p, n in zip(paths, labels) if n == name][:1]
    picked = picked[:rows]
    size = tuple(config.data.image_size)
    originals = np.stack([load_image(p, size) for p, _ in picked])
    augmenter = BatchAugmenter(config.augmentation, size)
    columns = [originals.astype(np.float32)]
    for v in range(variants):
        seed = tf.constant([config.seed, 1_000_000 + v], tf.int64)
        columns.append(augmenter(tf.constant(originals), seed).numpy())

    figure, axes = plt.subplots(len(picked), variants + 1, figsize=(1.9 * (variants + 1), 2.0 * len(picked)),
                                squeeze=False)
    for r, (_, label) in enumerate(picked):
        for c in range(variants + 1):
            ax = axes[r][c]
            ax.imshow(np.clip(columns[c][r], 0, 255).astype(np.uint8))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=10)
    figure.suptitle(f"augmentation={config.augmentation.name}  (train split only; seed {config.seed})", fontsize=11)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=80)
    plt.close(figure)
    return target


def training_curves(history: dict[str, list[float]], target: Path, title: str) -> Path:
    """Accuracy and loss per epoch, train and validation, side by side."""
    figure, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                ax.plot(epochs, history[key], style, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=90)
    plt.close(figure)
    return target


def confusion_matrix_figure(actual: np.ndarray, predicted: np.ndarray, classes: list[str], target: Path) -> Path:
    """Counts of (actual row, predicted column), annotated."""
    n = len(classes)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (actual, predicted), 1)
    figure, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, counts[i, j], ha="center", va="center",
                        color="white" if counts[i, j] > counts.max() / 2 else "black", fontsize=8)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=90)
    plt.close(figure)
    return target
