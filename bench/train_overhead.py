"""Training overhead of augmentation: epoch time with `augmentation=lesson` over `augmentation=none`.

    python bench/train_overhead.py --data ../shared/datasets/clothing-small
    python bench/train_overhead.py --data ../shared/datasets/clothing-small --limit-per-class 0 \
        model=xception model.weights=null train.mixed_precision=true      # on a GPU

Same model, same images, same process, through the training stage's own code
(`fitting.prepare_fit` / `fitting.fit`, so augmentation sits where `augmentation.placement`
puts it: tf.data on a CPU, inside the model on a GPU). The first epoch (decode, cache,
graph tracing, XLA) is warm-up and not counted; an epoch's time is its training steps,
without the validation pass. Trailing arguments are Hydra overrides. Last line:
augment_overhead_ratio=<lesson seconds per epoch / none seconds per epoch>  (goal <= 1.10).
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


class TrainStepTimer(keras.callbacks.Callback):
    """Seconds of each epoch's training steps (epoch start to the start of validation)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def epoch_seconds(overrides: list[str], preset: str, skip: int = 1) -> tuple[float, int]:
    """(median seconds of an epoch's training steps past the first `skip` epochs (warm-up, or views
    being computed), training images)."""
    config = compose([*overrides, f"augmentation={preset}"])
    keras.utils.set_random_seed(config.seed)
    keras.backend.clear_session()
    strategy = devices.make_strategy(config.train)
    setup = prepare_fit(config, strategy, Split.read(config.paths.split_dir))
    timer = TrainStepTimer()
    fit(config, setup, [timer])
    measured = timer.seconds[skip:]
    return statistics.median(measured), len(setup.train_set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per preset, the first is warm-up (>= 2)")
    parser.add_argument(
        "--limit-per-class",
        type=int,
        default=30,
        help="images per class and split (0 = all; the default keeps a CPU run to minutes)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, default model=xception model.weights=null")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        limit = args.limit_per_class or "null"
        overrides = [
            "model=xception",
            "model.weights=null",
            f"train.epochs={args.epochs}",
            "train.patience=1000",
            "train.cache_features=false",  # the same input pipeline for both: only augmentation differs
            "tracking.log_model=false",
            f"data.source={args.data.resolve()}",
            f"data.limit_per_class={limit}",
            f"paths.split_dir={workdir}/split",
            f"paths.reports_dir={workdir}/reports",
            f"paths.models_dir={workdir}/models",
            *args.overrides,
        ]
        config = compose(overrides)
        run_split(config)
        print(
            f"model {config.model.name}, {config.data.image_size[0]}x{config.data.image_size[1]}, "
            f"batch {config.train.batch_size}, device {devices.describe_device()}, "
            f"augmentation placement {devices.augmentation_placement(config.augmentation)}"
        )
        plain, images = epoch_seconds(overrides, "none")
        print(f"augmentation=none:   {plain:7.2f} s/epoch ({images / plain:7.1f} img/s, {images} images)")
        augmented, _ = epoch_seconds(overrides, "lesson")
        print(f"augmentation=lesson: {augmented:7.2f} s/epoch ({images / augmented:7.1f} img/s)")
    print(f"augment_overhead_ratio={augmented / plain:.3f}")


if __name__ == "__main__":
    main()
