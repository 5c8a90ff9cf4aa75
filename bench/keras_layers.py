"""Our colour and mixing operations against Keras's own preprocessing layers, in tf.data.

    python bench/keras_layers.py --data ../shared/datasets/clothing-small/train

For each operation, on the same decoded images (150x150, batches of 32, float pixels 0..255),
our operation (`pipeline/augmentation.py`, as the training pipeline maps it: draws from the
stateless seed [seed, batch], then the jit-compiled op) and the Keras layer with the same
ranges (`keras.layers.RandomBrightness`, ..., `MixUp`, `CutMix`, `RandAugment`), each mapped
over a tf.data pipeline (parallel, deterministic order). Per operation it prints:

- varies: the same images get other draws when they come round again (not stuck on one draw);
- repeats: two fresh pipelines with the same seed give the same batches 0-3;
- resumes: a pipeline started at batch 4 (as a training run resumed from a checkpoint is)
  gives batch 4 of the uninterrupted run;
- the median over paired rounds of Keras's images/s divided by ours (> 1: Keras is faster).

What each pair's units mean, and where they differ, is the `semantics` column, written from
both sources; `docs/guide.md`'s dependency table draws its conclusions from this output.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import tensorflow as tf
from frozen_runtime import cpu_model

from pipeline.augmentation import BatchAugmenter, apply_colours, mix_batch
from pipeline.config.compose import compose

SIZE, BATCH, SEED = (150, 150), 32, 7
CLASSES = 10

# name: (our overrides, Keras layer constructor, what differs)
PAIRS = {
    "brightness": (
        ["augmentation.brightness_range=[0.8,1.2]"],
        lambda k: k.layers.RandomBrightness(factor=0.2, seed=SEED),
        "ours multiplies by [0.8, 1.2] (ImageDataGenerator's brightness_range); Keras adds up to "
        "+-0.2 x 255, so black stays black only in ours",
    ),
    "contrast": (
        ["augmentation.contrast_range=0.2"],
        lambda k: k.layers.RandomContrast(factor=0.2, seed=SEED),
        "both scale by [0.8, 1.2] about a mean: ours the image's grey mean, Keras each channel's mean "
        "(which also pulls colours together)",
    ),
    "saturation": (
        ["augmentation.saturation_range=0.2"],
        lambda k: k.layers.RandomSaturation(factor=(0.8 / 1.8, 1.2 / 2.2), seed=SEED),
        "both scale saturation by [0.8, 1.2]: ours blends with the grey image (PIL's ImageEnhance.Color, "
        "as RandAugment defines it), Keras scales S in HSV",
    ),
    "hue": (
        ["augmentation.hue_range=0.05"],
        lambda k: k.layers.RandomHue(factor=0.1, seed=SEED),
        "the same: a hue rotation uniform in +-0.05 turns (Keras's factor is twice the range)",
    ),
    "random_erasing": (
        ["augmentation.random_erasing.probability=0.5", "augmentation.random_erasing.area=[0.02,0.33]"],
        lambda k: k.layers.RandomErasing(factor=(0.5, 0.5), scale=(0.02, 0.33), seed=SEED),
        "both erase one rectangle in half the images (Keras's factor=0.5 alone would mean a probability "
        "drawn in [0, 0.5]); ours draws the area in 2-33% and the aspect in [0.3, 3.3] and fills one "
        "random colour, Keras draws each side as sqrt of [0.02, 0.33] and fills normal noise",
    ),
    "mixup": (
        ["augmentation.mixup_alpha=0.2"],
        lambda k: k.layers.MixUp(alpha=0.2, seed=SEED),
        "the same Beta(0.2, 0.2) weight per image; ours mixes with the reversed batch, Keras with a random permutation",
    ),
    "cutmix": (
        ["augmentation.cutmix_alpha=1.0"],
        lambda k: k.layers.CutMix(factor=1.0, seed=SEED),
        "the same box from Beta(1, 1); ours weights the labels by the pixels actually kept after "
        "clipping the box, Keras too",
    ),
    "randaugment": (
        ["augmentation=randaugment", "augmentation.horizontal_flip=false"],
        lambda k: k.layers.RandAugment(num_ops=2, factor=0.3, seed=SEED),
        "2 operations at magnitude 9/30; ours composes the geometric ones into the one warp, Keras "
        "resamples per operation and has a different operation list",
    ),
}
MIXING = {"mixup", "cutmix"}


def decode(folder: Path, count: int) -> tf.Tensor:
    files = sorted(folder.rglob("*.jpg"))[:count]
    images = [tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(str(f)), channels=3), SIZE) for f in files]
    return tf.stack(images)


def batches(images: tf.Tensor, start: int = 0) -> tf.data.Dataset:
    """The same endless sequence of labelled batches for every pipeline, from batch `start`."""
    labels = tf.one_hot(tf.range(images.shape[0]) % CLASSES, CLASSES)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH, drop_remainder=True).repeat()
    return ds.enumerate().skip(start)


def ours(name: str, overrides: list[str], images: tf.Tensor, start: int = 0) -> tf.data.Dataset:
    config = compose(["augmentation=none", *overrides]).augmentation
    augmenter = BatchAugmenter(config, SIZE)
    colours = tf.function(lambda x, params: apply_colours(x, params, config), jit_compile=True)

    def step(index, batch):
        x, y = batch
        seed = tf.stack([tf.constant(SEED, tf.int64), index])
        if name in MIXING:
            return mix_batch(x, y, config, seed)
        params = augmenter.sample(tf.shape(x)[0], seed)
        return (augmenter.apply(x, params) if name == "randaugment" else colours(x, params)), y

    return batches(images, start).map(step, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def theirs(make_layer, name: str, images: tf.Tensor, start: int = 0) -> tf.data.Dataset:
    import keras

    layer = make_layer(keras)

    def step(index, batch):
        x, y = batch
        if name in MIXING:
            mixed = layer({"images": x, "labels": y}, training=True)
            return mixed["images"], mixed["labels"]
        return layer(x, training=True), y

    return batches(images, start).map(step, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def keras_version() -> str:
    import keras

    return keras.__version__


def first(ds: tf.data.Dataset, n: int) -> list[np.ndarray]:
    return [x.numpy() for x, _ in ds.take(n)]


def properties(build, cycle: int) -> dict[str, bool]:
    """`cycle`: batches before the images come round again (batch `cycle` holds batch 0's images)."""
    run = first(build(0), max(5, cycle + 1))
    again = first(build(0), 4)
    resumed = first(build(4), 1)[0]
    return {
        "varies": not np.allclose(run[0], run[cycle]),  # the same images, drawn again
        "repeats": all(np.array_equal(a, b) for a, b in zip(run[:4], again)),
        "resumes": bool(np.allclose(run[4], resumed, atol=1e-3)),
    }


def rate(stream, batches_timed: int) -> float:
    start = time.perf_counter()
    for _ in range(batches_timed):
        next(stream)
    return batches_timed * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of class folders of JPEGs")
    parser.add_argument("--images", type=int, default=256, help="images decoded once and cycled")
    parser.add_argument("--rounds", type=int, default=5, help="paired timing rounds per operation")
    parser.add_argument("--batches", type=int, default=12, help="batches timed per round and pipeline")
    parser.add_argument("--only", default="", help="comma-separated operations (default: all)")
    args = parser.parse_args()

    images = decode(args.data, args.images)
    print(
        f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores; keras {keras_version()}; "
        f"{images.shape[0]} images at {SIZE[0]}x{SIZE[1]}, batch {BATCH}"
    )
    print(
        "| operation | ours: varies / repeats / resumes | Keras: varies / repeats / resumes | Keras/ours speed | semantics |"
    )
    print("|---|---|---|---|---|")
    chosen = [n for n in PAIRS if not args.only or n in args.only.split(",")]
    for name in chosen:
        overrides, make_layer, semantics = PAIRS[name]
        cycle = images.shape[0] // BATCH
        ours_props = properties(partial(ours, name, overrides, images), cycle)
        keras_props = properties(partial(theirs, make_layer, name, images), cycle)
        ours_stream, keras_stream = iter(ours(name, overrides, images)), iter(theirs(make_layer, name, images))
        for _ in range(3):  # warm-up: tracing and XLA compilation
            next(ours_stream), next(keras_stream)
        ratios = []
        for round_index in range(args.rounds):
            if round_index % 2:  # alternate which runs first
                keras_rate, ours_rate = rate(keras_stream, args.batches), rate(ours_stream, args.batches)
            else:
                ours_rate, keras_rate = rate(ours_stream, args.batches), rate(keras_stream, args.batches)
            ratios.append(keras_rate / ours_rate)

        def marks(p):
            return " / ".join("yes" if p[k] else "**no**" for k in ("varies", "repeats", "resumes"))

        print(
            f"| {name} | {marks(ours_props)} | {marks(keras_props)} | {statistics.median(ratios):.2f} | {semantics} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
