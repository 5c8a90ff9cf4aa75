"""Does a CPU setup learn? `experiment=cpu` (or another), plain, through the stages' own code.

    python bench/learn_cpu.py --data ../shared/datasets/clothing-small
    python bench/learn_cpu.py --data ../shared/datasets/clothing-small augmentation=lesson
    python bench/learn_cpu.py --data ../shared/datasets/clothing-small --experiment scratch

Splits the dataset, trains with `experiment=<--experiment>` (plus any Hydra overrides) via the
train stage's `run`, evaluates on the test split via the evaluate stage's `run`, all in a
temporary folder with its own MLflow store. Prints the training minutes, the test accuracy
and, last, best_val_accuracy=<x>. Goals on 2 CPU cores: `experiment=cpu` test accuracy
>= 0.83 within 5 minutes; `experiment=scratch` best val >= 0.80 within 15 minutes (not met:
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline import evaluate, split, train
from pipeline.config.compose import compose
from pipeline.training import devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--experiment", default="cpu", help="conf/experiment/<name>.yaml (default: cpu)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of the experiment")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        config = compose(
            [
                f"experiment={args.experiment}",
                f"data.source={args.data.resolve()}",
                f"paths.split_dir={scratch}/split",
                f"paths.reports_dir={scratch}/reports",
                f"paths.models_dir={scratch}/models",
                f"tracking.uri=sqlite:///{scratch}/mlflow.db",
                "tracking.log_model=false",
                *args.overrides,
            ]
        )
        split.run(config)
        print(
            f"model {config.model.name}, {config.data.image_size[0]}x{config.data.image_size[1]}, "
            f"augmentation {config.augmentation.name}, {config.train.epochs} epochs, "
            f"device {devices.describe_device()}"
        )
        start = time.perf_counter()
        best_val = train.run(config)
        minutes = (time.perf_counter() - start) / 60
        test = evaluate.run(config)["test_accuracy"]
    print(f"training_minutes={minutes:.1f}")
    print(f"test_accuracy={test:.4f}")
    print(f"best_val_accuracy={best_val:.4f}")


if __name__ == "__main__":
    main()
