"""Command `preview`: look at augmented images before choosing a preset (the lesson's advice).

    python -m pipeline.preview augmentation=lesson data.source=../shared/datasets/clothing-small

Writes <paths.reports_dir>/augmentation_preview_<preset>.png: rows of training images,
each original followed by augmented variants, class names as labels; prints its path.
Runs the split stage first when the manifests are missing.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.cli import stage_entry
from pipeline.config.schema import Config
from pipeline.visuals import augmentation_grid


def run(config: Config, rows: int = 6, variants: int = 5) -> Path:
    split_dir = Path(config.paths.split_dir)
    if not (split_dir / "train.csv").exists():
        from pipeline import split

        split.run(config)
    from pipeline.data.manifests import Split

    target = Path(config.paths.reports_dir) / f"augmentation_preview_{config.augmentation.name}.png"
    train = Split.read(split_dir).train
    augmentation_grid(config.augmentation, config.data.image_size, config.seed, train, target, rows, variants)
    print(target.resolve())
    operations = config.augmentation.active_operations()
    if len(operations) > 1:  # which of them helps? the ablation sweep that answers it
        print(
            f"operations of {config.augmentation.name}: {', '.join(operations)}; which of them helps:\n"
            f"  python -m pipeline.train -m augmentation={config.augmentation.name} "
            f"augmentation.ablate=none,{','.join(operations)} seed=1,2,3,4,5"
        )
    return target


main = stage_entry(run, reads=("augmentation", "data", "seed", "paths"))

if __name__ == "__main__":
    main()
