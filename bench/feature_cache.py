"""Plain runs on cached backbone features: a frozen Xception trained with and without the cache.

    python bench/feature_cache.py --data ../shared/datasets/clothing-small

Without augmentation a frozen backbone maps each image to the same features every epoch,
so the training stage computes them once and trains only the head (`train.cache_features`).
This times a 10-epoch plain run of `xception` with `weights=null` at 150x150 on a few hundred
real images (30 per class and split), both ways, through the training stage's own code
(`fitting.prepare_fit` / `fitting.fit`), in one process. The cached run's time includes
computing the features. Prints the seconds of each, the median epoch after the first, and:

    feature_cache_speedup=<uncached seconds / cached seconds>     (goal >= 5)
    epoch_speedup=<uncached / cached median seconds of epochs 2..>  (goal >= 20)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras

from pipeline.config.compose import compose
from pipeline.data.manifests import Split
from pipeline.split import run as run_split
from pipeline.training import devices
from pipeline.training.fitting import fit, prepare_fit


class EpochTimer(keras.callbacks.Callback):
    """Seconds of every epoch, validation included."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def timed_run(overrides: list[str]) -> tuple[float, list[float]]:
    """(total seconds of fit, seconds per epoch) for one plain training."""
    config = compose(overrides)
    keras.utils.set_random_seed(config.seed)
    keras.backend.clear_session()
    strategy = devices.make_strategy(config.train)
    setup = prepare_fit(config, strategy, Split.read(config.paths.split_dir))
    timer = EpochTimer()
    start = time.perf_counter()
    fit(config, setup, [timer])
    return time.perf_counter() - start, timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit-per-class", type=int, default=30, help="images per class and split")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, default model=xception model.weights=null")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        overrides = [
            "model=xception",
            "model.weights=null",
            "augmentation=none",
            f"train.epochs={args.epochs}",
            "train.patience=1000",
            f"data.source={args.data.resolve()}",
            f"data.limit_per_class={args.limit_per_class}",
            f"paths.split_dir={scratch}/split",
            f"paths.reports_dir={scratch}/reports",
            f"paths.models_dir={scratch}/models",
            *args.overrides,
        ]
        config = compose(overrides)
        run_split(config)
        print(
            f"model {config.model.name} (frozen, weights={config.model.weights}), "
            f"{config.data.image_size[0]}x{config.data.image_size[1]}, {args.epochs} epochs, "
            f"device {devices.describe_device()}"
        )
        uncached, uncached_epochs = timed_run([*overrides, "train.cache_features=false"])
        print(f"without cache: {uncached:7.1f} s, epochs 2.. median {statistics.median(uncached_epochs[1:]):.3f} s")
        cached, cached_epochs = timed_run([*overrides, "train.cache_features=true"])
        print(
            f"with cache:    {cached:7.1f} s, epochs 2.. median {statistics.median(cached_epochs[1:]):.3f} s "
            "(features computed inside the first)"
        )
    print(f"epoch_speedup={statistics.median(uncached_epochs[1:]) / statistics.median(cached_epochs[1:]):.1f}")
    print(f"feature_cache_speedup={uncached / cached:.2f}")


if __name__ == "__main__":
    main()
