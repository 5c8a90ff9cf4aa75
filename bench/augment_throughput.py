"""Augmentation throughput: Keras ImageDataGenerator vs this project's tf.data pipeline.

    python bench/augment_throughput.py --data ../shared/datasets/clothing-small/train

In one process, on the same images, with the lesson's arguments at 150x150, batch 32:
(a) ImageDataGenerator.flow_from_directory, (b) our pipeline with `lesson`, (c) with
`none`. Both include Xception's preprocess_input. Warm-up (first batches; for ours the
first epoch, which decodes and fills the cache) is excluded. Last line:
ratio_vs_imagedatagenerator=<b/a>.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tensorflow as tf

from pipeline.config.compose import compose
from pipeline.data.manifests import ImageSet
from pipeline.data.partition import scan
from pipeline.training.pipelines import build_train_dataset, steps_per_epoch

SIZE, BATCH = (150, 150), 32
LESSON = dict(
    rotation_range=30,
    width_shift_range=10.0,
    height_shift_range=10.0,
    shear_range=10,
    zoom_range=0.1,
    vertical_flip=True,
)


def imagedatagenerator_rate(folder: Path, images: int) -> float:
    from tensorflow.keras.applications.xception import preprocess_input
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(**LESSON, preprocessing_function=preprocess_input)
    flow = generator.flow_from_directory(str(folder), target_size=SIZE, batch_size=BATCH, seed=1)
    for _ in range(3):
        next(flow)
    batches = -(-images // BATCH)
    start = time.perf_counter()
    seen = sum(len(next(flow)[0]) for _ in range(batches))
    return seen / (time.perf_counter() - start)


def pipeline_rate(images: ImageSet, preset: str, epochs: int) -> float:
    config = compose([f"augmentation={preset}"])
    ds = build_train_dataset(images, SIZE, BATCH, config.augmentation, seed=1)
    ds = ds.map(lambda x, y: (x / 127.5 - 1.0, y))  # Xception's preprocess_input, as in (a)
    steps = steps_per_epoch(images, BATCH)
    stream = iter(ds)
    for _ in range(steps):  # warm-up: decode + cache + XLA compile
        next(stream)
    start = time.perf_counter()
    seen = sum(int(tf.shape(next(stream)[0])[0]) for _ in range(steps * epochs))
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with one subfolder per class")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs of our pipeline")
    args = parser.parse_args()

    candidates, _ = scan(args.data.resolve(), respect_existing=False)
    classes = sorted({c.label for c in candidates})
    images = ImageSet.from_manifest([str(c.path) for c in candidates], [c.label for c in candidates], classes)
    print(f"{len(images)} images, {len(classes)} classes, {SIZE[0]}x{SIZE[1]}, batch {BATCH}")

    idg = imagedatagenerator_rate(args.data, len(images))
    print(f"(a) ImageDataGenerator.flow_from_directory (lesson): {idg:8.1f} img/s")
    ours = pipeline_rate(images, "lesson", args.epochs)
    print(f"(b) pipeline augmentation=lesson:                   {ours:8.1f} img/s")
    plain = pipeline_rate(images, "none", args.epochs)
    print(f"(c) pipeline augmentation=none:                     {plain:8.1f} img/s")
    print(f"ratio_vs_imagedatagenerator={ours / idg:.2f}")


if __name__ == "__main__":
    main()
