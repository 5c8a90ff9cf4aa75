"""Fine-tuning with the frozen bottom in OpenVINO against the whole model in Keras: seconds per epoch.

    python bench/fine_tune_runtime.py --data ../shared/datasets/clothing-small
    python bench/fine_tune_runtime.py --data ../shared/datasets/clothing-small --rounds 3 model.fine_tune_from=block10

`experiment=cpu` fine-tuned from `model.fine_tune_from` (default block12), `augmentation=lesson`, through
the training stage's own code (`fitting.prepare_fit` / `fitting.fit`): with `train.cache_features=
true` the frozen bottom runs in the frozen runtime on each epoch's augmented images and only the top and
the head train in Keras; with `false` every step runs the whole model in Keras. Each round trains both,
back to back, for `--epochs` epochs (the first is warm-up and not counted); an epoch's time is its
training steps. Last line: fine_tune_speedup=<whole model / split, median over the rounds>.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from frozen_runtime import cpu_model
from train_overhead import epoch_seconds

from pipeline.config.compose import compose
from pipeline.split import run as run_split


def fine_tuned_overrides(args: argparse.Namespace, scratch: str) -> list[str]:
    """A fine-tuned training of `args.epochs` epochs with no early stop, its outputs under `scratch`."""
    return [
        "experiment=cpu",
        "model.fine_tune_from=block12",
        f"train.epochs={args.epochs}",
        "train.patience=1000",
        "tracking.log_model=false",
        f"data.source={args.data.resolve()}",
        f"paths.split_dir={scratch}/split",
        f"paths.cache_dir={scratch}/cache",
        f"paths.models_dir={scratch}/models",
        f"paths.reports_dir={scratch}/reports",
        *args.overrides,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training, the first is warm-up (>= 2)")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of trainings (median)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.fine_tune_from=block10")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        overrides = fine_tuned_overrides(args, scratch)
        run_split(compose(overrides))
        ratios, split, whole = [], [], []
        for _ in range(args.rounds):
            split.append(epoch_seconds([*overrides, "train.cache_features=true"], "lesson")[0])
            whole.append(epoch_seconds([*overrides, "train.cache_features=false"], "lesson")[0])
            ratios.append(whole[-1] / split[-1])
    print(f"machine: {cpu_model()}; {compose(overrides).model.fine_tune_from}, augmentation=lesson")
    print(
        f"bottom in the frozen runtime: {statistics.median(split):.2f} s/epoch ({', '.join(f'{s:.2f}' for s in split)})"
    )
    print(
        f"whole model in Keras:         {statistics.median(whole):.2f} s/epoch ({', '.join(f'{s:.2f}' for s in whole)})"
    )
    print(f"fine_tune_speedup={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
