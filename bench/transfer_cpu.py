"""The lesson's regime on a CPU: what a frozen ImageNet base costs, and what augmentation adds to it.

    python bench/transfer_cpu.py --data ../shared/datasets/clothing-small
    python bench/transfer_cpu.py --data ../shared/datasets/clothing-small --limit-per-class 30   # quicker

Three figures for `experiment=cpu` (frozen EfficientNet-Lite0, 150x150, batch 32):

1. Images per second through the frozen base (its `features` part), as a plain tf.function
   and compiled with XLA, and what that is in multiply-adds per second
   against what these cores reach on a large float32 matrix product (their practical peak).
2. Seconds per training epoch with `augmentation=lesson` and with `augmentation=none`, both
   with the feature cache off, so that every epoch runs the base on every image: the ratio
   is the augmentation's own cost (goal <= 1.10). Through the training stage's own code.
3. augment_overhead_ratio=<lesson / none> on the last line: the median over `--rounds` pairs
   of back-to-back timings (a shared machine's speed drifts by 15-25% between minutes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from train_overhead import epoch_seconds

import pipeline  # noqa: F401 - first, so that TensorFlow starts quietly
from pipeline.config.compose import compose
from pipeline.model.classifier import build_model
from pipeline.split import run as run_split
from pipeline.training import devices


def multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one image through `model`'s convolutions and dense layers (nested models too)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += multiply_adds(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _, height, width, channels = layer.output.shape
            total += height * width * channels * int(np.prod(layer.kernel_size))
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, filters = layer.output.shape
            total += height * width * filters * int(np.prod(layer.kernel_size)) * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def images_per_second(features: keras.Model, batch: np.ndarray, jit: bool, batches: int) -> float:
    """Images per second of the base's forward pass as a tf.function (XLA-compiled when `jit`),
    `batches` times on one batch after a first call that traces (and compiles)."""
    forward = tf.function(lambda x: features(x, training=False), jit_compile=jit)
    batch = tf.constant(batch)
    forward(batch).numpy()
    start = time.perf_counter()
    for _ in range(batches):
        forward(batch).numpy()
    return batches * len(batch) / (time.perf_counter() - start)


def matmul_multiply_adds_per_second(size: int = 2048, repeats: int = 10) -> float:
    """Float32 multiply-adds per second of a large matrix product: what the cores can do."""
    a = tf.random.uniform((size, size))
    product = tf.function(lambda x: tf.linalg.matmul(x, x))
    product(a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        product(a).numpy()
    return repeats * size**3 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per preset, the first is warm-up (>= 2)")
    parser.add_argument("--limit-per-class", type=int, default=0, help="images per class and split (0 = all)")
    parser.add_argument("--rounds", type=int, default=3, help="none/lesson pairs of timings; the median ratio counts")
    parser.add_argument("--batches", type=int, default=20, help="timed batches through the base, plain")
    parser.add_argument("--xla-batches", type=int, default=3, help="timed batches through the base with XLA (slow)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of experiment=cpu")
    args = parser.parse_args()

    config = compose(["experiment=cpu", *args.overrides])
    height, width = config.data.image_size
    model = build_model(config.model, 10, (height, width))
    features = model.get_layer("features")
    per_image = multiply_adds(features)
    images = np.random.default_rng(0).uniform(0, 255, (32, height, width, 3)).astype(np.float32)
    plain = images_per_second(features, images, jit=False, batches=args.batches)
    xla = images_per_second(features, images, jit=True, batches=args.xla_batches) if args.xla_batches else None
    peak = matmul_multiply_adds_per_second()
    print(
        f"device {devices.describe_device()}; frozen {config.model.name} base at {height}x{width}, batch 32: "
        f"{per_image / 1e9:.3f} G multiply-adds per image"
    )
    print(
        f"base_images_per_second={plain:.1f} (plain tf.function; {plain * per_image / 1e9:.1f} G multiply-adds/s, "
        f"{100 * plain * per_image / peak:.0f}% of the {peak / 1e9:.0f} G/s of a 2048x2048 float32 matmul)"
    )
    if xla is not None:
        print(f"base_images_per_second_xla={xla:.1f} ({plain / xla:.1f}x slower than plain)")

    with tempfile.TemporaryDirectory() as scratch:
        limit = args.limit_per_class or "null"
        overrides = [
            "experiment=cpu",
            f"train.epochs={args.epochs}",
            "train.patience=1000",
            "train.cache_features=false",
            "tracking.log_model=false",
            f"data.source={args.data.resolve()}",
            f"data.limit_per_class={limit}",
            f"paths.split_dir={scratch}/split",
            f"paths.reports_dir={scratch}/reports",
            f"paths.models_dir={scratch}/models",
            *args.overrides,
        ]
        run_split(compose(overrides))
        ratios = []
        for round_number in range(1, args.rounds + 1):  # this machine's speed drifts: pair adjacent timings
            none, count = epoch_seconds(overrides, "none")
            lesson, _ = epoch_seconds(overrides, "lesson")
            ratios.append(lesson / none)
            print(
                f"round {round_number}: augmentation=none {none:6.2f} s/epoch ({count / none:6.1f} img/s, {count} "
                f"images, no feature cache), augmentation=lesson {lesson:6.2f} s/epoch ({count / lesson:6.1f} img/s): "
                f"ratio {lesson / none:.3f}"
            )
    print(f"augment_overhead_ratio={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
