"""Stage `split`: validate every image of `data.source` and write the split manifests.

    python -m pipeline.split data.source=../shared/datasets/clothing-small

Writes <paths.split_dir>/{train,val,test}.csv (columns path,label,sha256), classes.json,
source.json (the data.source they come from, which training runs record) and
<paths.reports_dir>/split_report.json (counts, per-class counts, skipped files with
their reasons, ignored files, duplicate groups, label conflicts).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.cli import stage_entry
from pipeline.config.schema import Config
from pipeline.data.images import validate_images
from pipeline.data.manifests import SOURCE_FILE, SPLITS, source_record, write_split
from pipeline.data.partition import imbalance_warnings, scan, split_dataset
from pipeline.data.sources import resolve_source
from pipeline.errors import ConfigError


def run(config: Config) -> dict:
    data = config.data
    report_path = Path(config.paths.reports_dir) / "split_report.json"
    # A failed split must not leave an earlier split behind for train to use.
    for stale in (
        report_path,
        *(Path(config.paths.split_dir) / name for name in (*(f"{s}.csv" for s in SPLITS), "classes.json", SOURCE_FILE)),
    ):
        stale.unlink(missing_ok=True)
    root = resolve_source(data.source, data.download_dir, data.sha256)
    refuse_writing_inside(root, Path(config.paths.split_dir))
    print(f"dataset: {root}")
    candidates, ignored = scan(root, data.split.respect_existing)
    checks = validate_images([c.path for c in candidates])
    result = split_dataset(candidates, checks, ignored, list(data.split.fractions), config.seed, data.limit_per_class)
    report = write_split(result, Path(config.paths.split_dir), report_path, source_record(data.source, root))
    counts = ", ".join(f"{s} {n}" for s, n in report["counts"].items())
    print(
        f"split: {counts} images in {len(report['classes'])} classes; skipped {len(report['skipped'])}, "
        f"duplicate groups {len(report['duplicates'])}, label conflicts {len(report['conflicts'])}"
    )
    for item in report["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")
    for warning in imbalance_warnings(report["per_class"]["train"]) + empty_split_warnings(report["counts"]):
        print(f"warning: {warning}")
    return report


def refuse_writing_inside(root: Path, split_dir: Path) -> None:
    """The manifests must not land among the images they list: the next split would find them as files
    of a class (or as a class of their own)."""
    if split_dir.resolve().is_relative_to(root.resolve()):
        raise ConfigError(
            f"paths.split_dir={split_dir} is inside data.source ({root}): the manifests would become files of "
            "the dataset. Choose a paths.split_dir outside it (the default, data/split, is in the project)."
        )


def empty_split_warnings(counts: dict[str, int]) -> list[str]:
    """An empty validation split stops training (nothing to choose the best epoch by); an empty
    test split leaves `evaluate` nothing to measure. Say so here, where it can be fixed."""
    uses = {"val": "training refuses it (the best epoch is chosen on it)", "test": "evaluate has nothing to measure"}
    return [
        f"the {split} split has no images: {use}. Use a larger data.split.fractions share for it, or "
        "data.split.respect_existing=false if the source's own folders made it empty."
        for split, use in uses.items()
        if counts.get(split, 0) == 0
    ]


main = stage_entry(
    run,
    reads=(
        "data.source",
        "data.sha256",
        "data.download_dir",
        "data.split",
        "data.limit_per_class",
        "seed",
        "paths.split_dir",
        "paths.reports_dir",
    ),
)

if __name__ == "__main__":
    main()
