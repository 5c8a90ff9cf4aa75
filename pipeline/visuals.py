"""Pictures of training: the augmentation preview grid, training curves and the confusion matrix
(matplotlib, no display). The comparison's figures are the study wing's (pipeline/study/figures.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.config.augmentation import AugmentationConfig  # noqa: E402
from pipeline.config.compose import preset_overrides  # noqa: E402
from pipeline.data.images import load_checked_image  # noqa: E402
from pipeline.data.manifests import ImageSet  # noqa: E402


def wrapped(text: str, width: int = 30) -> str:
    """`text` on lines of at most `width` characters (where it has spaces): a group label such as
    "lesson, train.lr_schedule=constant vs none, ..." would otherwise squeeze the plots beside it."""
    return "\n".join(textwrap.fill(line, width, break_long_words=False) for line in text.split("\n"))


def save(figure, target: Path, dpi: int = 90) -> Path:
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=dpi)
    plt.close(figure)
    return target


def augmentation_grid(
    augmentation: AugmentationConfig,
    image_size: tuple[int, int],
    seed: int,
    images: ImageSet,
    target: Path,
    rows: int = 6,
    variants: int = 5,
) -> Path:
    """Rows of `images` (the train split; one per class where possible) at `image_size` (height, width in
    pixels): the original, then `variants` augmented views, drawn from `seed` as a run with that seed draws."""
    from pipeline.augmentation import BatchAugmenter
    from pipeline.backend import tf  # here, so that drawing a comparison never loads TensorFlow

    picked = []  # indices into `images`: one per class, the first of each, deterministic
    for label in range(len(images.classes)):
        picked += [i for i, of in enumerate(images.labels) if of == label][:1]
    picked = picked[:rows]
    size = tuple(image_size)
    hashes = images.sha256 or [None] * len(images)
    originals = np.stack([load_checked_image(images.paths[i], size, hashes[i]) for i in picked])
    augmenter = BatchAugmenter(augmentation, size, jit_compile=False)  # a few images: compiling costs more
    columns = [originals.astype(np.float32)]
    for v in range(variants):
        view_seed = tf.constant([seed, 1_000_000 + v], tf.int64)
        columns.append(augmenter(tf.constant(originals), view_seed).numpy())

    figure, axes = plt.subplots(
        len(picked), variants + 1, figsize=(1.9 * (variants + 1), 2.0 * len(picked)), squeeze=False
    )
    for r, label in enumerate(images.classes[images.labels[i]] for i in picked):
        for c in range(variants + 1):
            ax = axes[r][c]
            ax.imshow(np.clip(columns[c][r], 0, 255).astype(np.uint8))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=10)
    setting = " ".join([f"augmentation={augmentation.name}", *preset_overrides(augmentation)])
    figure.suptitle(
        textwrap.fill(f"{setting}  (train split only; seed {seed})", width=22 * (variants + 1)), fontsize=11
    )
    return save(figure, target, dpi=80)


def training_curves(history: list[dict[str, float]], best_epoch: int, target: Path, title: str) -> Path:
    """Accuracy and loss per epoch, train and validation, side by side; the kept (best) epoch marked."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label, style in ((metric, f"train {metric}", "-"), (f"val_{metric}", f"val {metric}", "--")):
            if history and all(key in row for row in history):
                ax.plot(epochs, [row[key] for row in history], style, marker="o", markersize=3, label=label)
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", alpha=0.6, label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric + (" (fraction)" if metric == "accuracy" else " (cross-entropy)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    return save(figure, target)


def confusion_matrix_figure(
    actual: np.ndarray, predicted: np.ndarray, classes: list[str], target: Path, title: str
) -> Path:
    """Counts of (actual row, predicted column), annotated, under `title` (the run, the split)."""
    n = len(classes)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (actual, predicted), 1)
    figure, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("actual class")
    ax.set_title(f"{title}\naccuracy {np.mean(actual == predicted):.1%} on {len(actual)} images", fontsize=10)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    counts[i, j],
                    ha="center",
                    va="center",
                    color="white" if counts[i, j] > counts.max() / 2 else "black",
                    fontsize=8,
                )
    return save(figure, target)
