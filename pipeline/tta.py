"""Test-time augmentation (TTA): a model's class probabilities averaged over views of each test image.

The cheapest augmentation a user can try: no training, one evaluation. `evaluate.tta=flip` averages
each image with its mirror (left-right); `evaluate.tta=<preset>` averages the image with
`evaluate.tta_views` draws of the preset's per-image operations (MixUp and CutMix mix two images,
so they are left out). A view is drawn from [evaluate.tta_seed, view, first image's index]: every
run sees the same views of the same images, so `compare` pairs a run's TTA result with its plain one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from pipeline.config.compose import preset_config
from pipeline.config.schema import EvaluateConfig


def averaged_probabilities(classifier, pixels: np.ndarray, settings: EvaluateConfig, batch: int) -> np.ndarray:
    """The classifier's probabilities (float32 [n, classes]) averaged over each uint8 image of `pixels`
    ([n, height, width, 3]) and its TTA views, `batch` images at a time."""
    views = [_plain(pixels, batch), *_views(pixels, settings, batch)]
    return np.mean([classifier.probabilities(view) for view in views], axis=0)


def _plain(pixels: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    return (pixels[i : i + batch].astype(np.float32) for i in range(0, len(pixels), batch))


def _views(pixels: np.ndarray, settings: EvaluateConfig, batch: int) -> list[Iterator[np.ndarray]]:
    if settings.tta == "flip":
        return [(pixels[i : i + batch, :, ::-1].astype(np.float32) for i in range(0, len(pixels), batch))]
    import tensorflow as tf

    from pipeline.augmentation import BatchAugmenter

    per_image = dataclasses.replace(preset_config(settings.tta), mixup_alpha=0.0, cutmix_alpha=0.0)
    augmenter = BatchAugmenter(per_image, pixels.shape[1:3])

    def view(v: int) -> Iterator[np.ndarray]:
        for i in range(0, len(pixels), batch):
            seed = tf.constant([settings.tta_seed, v * 2**32 + i], tf.int64)
            yield augmenter(tf.constant(pixels[i : i + batch]), seed).numpy()

    return [view(v) for v in range(1, settings.tta_views + 1)]
