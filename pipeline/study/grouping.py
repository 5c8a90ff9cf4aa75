"""Which runs belong together: a group is a preset plus every other setting that was varied, its
runs differ only by seed (the latest run of a repeated seed kept), and each group is compared
with the baseline group of the same other settings. Also the groups' table for the report."""

from __future__ import annotations

import math

import numpy as np

from pipeline.study.records import DATA_VERSION, PER_SEED_SPLIT, TRAIN_VAL, Group, RunSummary
from pipeline.tracking.identity import AUGMENTED_ONLY, NOT_DEFINING, defines_a_run

# What differs between the runs of one group by design, besides what defines no run at all (NOT_DEFINING):
# the seed, the preset's own name (it is the group's), the epoch cap of a run resumed with more, and the
# train/val sets (the same within a seed; drawn anew per seed with PER_SEED_SPLIT, which groups instead)
NOT_GROUPING = (*NOT_DEFINING, "seed", "augmentation.name", "train.epochs", TRAIN_VAL)
WHOLE_DATA = (DATA_VERSION, PER_SEED_SPLIT)  # make groups whenever they vary at all


def varied_settings(runs: list[RunSummary]) -> list[str]:
    """Params that vary across the runs and are not explained by the preset name alone.

    `augmentation.rotation_range` varies between `none` and `lesson` but is fixed within
    each preset, so it adds nothing; `model.name` varying within a preset makes groups. The
    data version and a split drawn per seed (`WHOLE_DATA`) make groups whenever they vary at all:
    `none` on one version (or split) and `lesson` on another would measure the data, not the augmentation.
    """
    keys = sorted({k for r in runs for k in r.params if defines_a_run(k, NOT_GROUPING)})
    varied = []
    for key in keys:
        applies = [r for r in runs if r.setting(key) is not None]
        if len({r.setting(key) for r in applies}) < 2:
            continue
        per_preset: dict[str, set] = {}
        for r in applies:
            per_preset.setdefault(r.preset, set()).add(r.setting(key))
        if key in WHOLE_DATA or any(len(values) > 1 for values in per_preset.values()):
            varied.append(key)
    return varied


def group_runs(runs: list[RunSummary]) -> list[Group]:
    """Groups by preset and every other varied setting, the baseline-like order kept stable.

    Each seed counts once per group: of repeated runs (the same sweep run twice, or the same
    preset and seed with another `train.epochs`) the latest is kept, the others counted in
    `repeats_dropped`.
    """
    keys = varied_settings(runs)
    groups: dict[tuple, Group] = {}
    for r in sorted(runs, key=lambda r: r.started_ms, reverse=True):
        settings = {k: r.setting(k) for k in keys if r.setting(k) is not None}
        group = groups.setdefault((r.preset, *settings.values()), Group(r.preset, settings, []))
        if any(kept.seed == r.seed for kept in group.runs):
            group.repeats_dropped += 1
        else:
            group.runs.append(r)
    for group in groups.values():
        group.runs.sort(key=lambda r: (len(r.seed), r.seed))  # 2 before 10
    return sorted(groups.values(), key=lambda g: (tuple(g.settings.values()), g.preset))


def baseline_for(group: Group, groups: list[Group], baseline_preset: str) -> Group | None:
    """The baseline group with the same other settings (a plain baseline has no `AUGMENTED_ONLY` ones)."""
    for candidate in groups:
        unmatched = set(group.settings) - set(candidate.settings)
        same = all(group.settings.get(k) == v for k, v in candidate.settings.items())
        if candidate.preset == baseline_preset and same and unmatched <= set(AUGMENTED_ONLY):
            return candidate
    return None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan


def choose_metric(requested: str, groups: list[Group]) -> str:
    """`auto`: test accuracy when every run has it (the evaluate stage ran), else best val accuracy."""
    if requested != "auto":
        return requested
    every_run = [r for g in groups for r in g.runs]
    return (
        "test_accuracy" if every_run and all("test_accuracy" in r.metrics for r in every_run) else "best_val_accuracy"
    )


def group_table(groups: list[Group]) -> list[dict]:
    """Per group: runs, seeds, best val / test accuracy and test balanced accuracy (mean and std),
    epochs to best, and how many runs were still improving at their last epoch."""
    rows = []
    for g in groups:
        row = {
            "group": g.label,
            "preset": g.preset,
            **g.settings,
            "runs": len(g.runs),
            "seeds": ",".join(r.seed for r in g.runs),
            "repeats_dropped": g.repeats_dropped,
            "not_converged": len(g.still_improving),
            "annealed": any(r.annealed_to_cap for r in g.still_improving),
        }
        for metric in ("best_val_accuracy", "test_accuracy", "test_balanced_accuracy", "best_epoch"):
            values = list(g.values(metric).values())
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(values) if values else (math.nan, math.nan)
            row[f"{metric}_n"] = len(values)
        rows.append(row)
    return rows
