"""A fine-tuned epoch, plain and augmented: seconds of its training steps, paired.

    python bench/fine_tuned_epochs.py --data ../shared/datasets/clothing-small
    python bench/fine_tuned_epochs.py --data ../shared/datasets/clothing-small --rounds 3 train.augment_views=0

`experiment=cpu model.fine_tune_from=block12`, through the training stage's own code (`fitting.prepare_fit`
/ `fitting.fit`): `none` (the frozen bottom's features of the clean images, cached, then the top and the
head train) against an augmented preset (`--preset`, default randaugment: with `train.augment_views` views
reused, each view's bottom output is cached like the clean one; `train.augment_views=0` draws a fresh view
every epoch and pays the warp and the bottom each time). Each round trains both back to back for `--epochs`
epochs; the first epochs (while the views are computed) are not counted. Last lines:
plain_epoch_s=<median> and augmented_ratio=<augmented / plain, median over the rounds> (goals: 5 s, 1.2).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from fine_tune_runtime import fine_tuned_overrides
from frozen_runtime import cpu_model
from train_overhead import epoch_seconds

from pipeline.config.compose import compose
from pipeline.split import run as run_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--preset", default="randaugment", help="the augmented preset (default randaugment)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per training; those past the views count")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of trainings (median)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.fine_tune_from=block10")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        overrides = fine_tuned_overrides(args, scratch)
        config = compose(overrides)
        views = config.train.augment_views
        if views and args.epochs <= views + 1:
            parser.error(f"--epochs must exceed train.augment_views + 1 ({views + 1}): those epochs compute views")
        run_split(config)
        plain, augmented, ratios = [], [], []
        for _ in range(args.rounds):
            plain.append(epoch_seconds(overrides, "none", skip=1)[0])
            augmented.append(epoch_seconds(overrides, args.preset, skip=max(1, views))[0])
            ratios.append(augmented[-1] / plain[-1])
    print(f"machine: {cpu_model()}; {config.model.fine_tune_from}, train.augment_views={views}")
    print(f"none:          {statistics.median(plain):.2f} s/epoch ({', '.join(f'{s:.2f}' for s in plain)})")
    print(
        f"{args.preset + ':':<14} {statistics.median(augmented):.2f} s/epoch ({', '.join(f'{s:.2f}' for s in augmented)})"
    )
    print(f"plain_epoch_s={statistics.median(plain):.2f}")
    print(f"augmented_ratio={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
