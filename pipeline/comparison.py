"""Does an augmentation help? Group tracked runs, summarise them over seeds, compare with the baseline.

One run's accuracy is noisy: on the clothing dataset one validation image is worth 0.29
points and a single run's standard error near 85% is about 1.9 points. So each group
(augmentation preset, plus any other setting that was varied) is summarised over its
seeds, and each augmented group is compared with the baseline group (`none`) of the
same other settings by a confidence interval on the difference in accuracy:

- paired by seed when the seeds of one group are all among the other's, and >= 2 (same
  init, same shuffling: pairing removes that shared noise): Student t on the per-seed
  differences;
- otherwise Welch's t interval on the two groups' means (needs >= 2 runs in each);
- with fewer runs there is no interval and the verdict says so.

Verdict: `keep` when the whole interval is above 0, `drop` when below, else `inconclusive`.
All accuracies are fractions in [0, 1]; differences are in fraction units (0.02 = 2 points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

# Params that differ between the runs of one group by design, or do not change the model.
NOT_GROUPING = ("seed", "train.resume", "train.start_epoch", "train.epochs", "tracking.", "paths.", "data.download_dir",
                "data.cache", "augmentation.name")


@dataclass
class RunSummary:
    """What the comparison needs of one MLflow training run."""

    run_id: str
    preset: str
    seed: str
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # val_accuracy / val_loss per epoch


@dataclass
class Group:
    preset: str
    settings: dict[str, str]  # the other varied params, same for every run of the group
    runs: list[RunSummary]

    @property
    def label(self) -> str:
        return ", ".join([self.preset, *(f"{k}={v}" for k, v in self.settings.items())])

    def values(self, metric: str) -> dict[str, float]:
        """{seed: metric} for the runs that have it."""
        return {r.seed: r.metrics[metric] for r in self.runs if metric in r.metrics}


@dataclass
class Difference:
    """Group minus baseline, on `metric`, with an interval at `confidence`."""

    group: str
    baseline: str
    metric: str
    n_group: int
    n_baseline: int
    method: str            # "paired t over N seeds", "Welch t", or "none"
    mean: float
    low: float | None
    high: float | None
    verdict: str           # keep | drop | inconclusive
    reason: str


def _is_grouping_key(key: str) -> bool:
    return not any(key == p or (p.endswith(".") and key.startswith(p)) for p in NOT_GROUPING)


def varied_settings(runs: list[RunSummary]) -> list[str]:
    """Params that vary across the runs and are not explained by the preset name alone.

    `augmentation.rotation_range` varies between `none` and `lesson` but is fixed within
    each preset, so it adds nothing; `model.name` varying within a preset makes groups.
    """
    keys = sorted({k for r in runs for k in r.params if _is_grouping_key(k)})
    varied = []
    for key in keys:
        if len({r.params.get(key) for r in runs}) < 2:
            continue
        per_preset: dict[str, set] = {}
        for r in runs:
            per_preset.setdefault(r.preset, set()).add(r.params.get(key))
        if any(len(values) > 1 for values in per_preset.values()):
            varied.append(key)
    return varied


def group_runs(runs: list[RunSummary]) -> list[Group]:
    """Groups by preset and every other varied setting, the baseline-like order kept stable."""
    keys = varied_settings(runs)
    groups: dict[tuple, Group] = {}
    for r in runs:
        settings = {k: r.params.get(k, "") for k in keys}
        key = (r.preset, *settings.values())
        groups.setdefault(key, Group(r.preset, settings, [])).runs.append(r)
    return sorted(groups.values(), key=lambda g: (tuple(g.settings.values()), g.preset))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan


def choose_metric(requested: str, groups: list[Group]) -> str:
    """`auto`: test accuracy when every run has it (the evaluate stage ran), else best val accuracy."""
    if requested != "auto":
        return requested
    every_run = [r for g in groups for r in g.runs]
    return "test_accuracy" if every_run and all("test_accuracy" in r.metrics for r in every_run) else "best_val_accuracy"


def compare_with_baseline(group: Group, baseline: Group, metric: str, confidence: float) -> Difference:
    ours, theirs = group.values(metric), baseline.values(metric)
    common = sorted(set(ours) & set(theirs))

    def result(method, mean, low, high, verdict, reason):
        return Difference(group.label, baseline.label, metric, len(ours), len(theirs), method, mean, low, high,
                          verdict, reason)

    if not ours or not theirs:
        return result("none", math.nan, None, None, "inconclusive", f"no {metric} in one of the groups")
    if len(common) >= 2 and len(common) >= min(len(ours), len(theirs)):
        differences = np.array([ours[s] - theirs[s] for s in common])
        n = len(differences)
        mean = float(differences.mean())
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * differences.std(ddof=1) / math.sqrt(n))
        method = f"paired t over {n} seeds"
    elif len(ours) >= 2 and len(theirs) >= 2:
        a, b = np.array(list(ours.values())), np.array(list(theirs.values()))
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        mean = float(a.mean() - b.mean())
        se = math.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
        half = float(stats.t.ppf((1 + confidence) / 2, dof) * se)
        method = "Welch t"
    else:
        mean = float(np.mean(list(ours.values())) - np.mean(list(theirs.values())))
        return result("none", mean, None, None, "inconclusive",
                      f"inconclusive: no repeats ({len(ours)} and {len(theirs)} run(s)); "
                      "run >= 2 seeds per group, e.g. seed=1,2,3")
    low, high = mean - half, mean + half
    if low > 0:
        verdict, reason = "keep", f"the whole {confidence:.0%} interval is above 0"
    elif high < 0:
        verdict, reason = "drop", f"the whole {confidence:.0%} interval is below 0"
    else:
        verdict, reason = "inconclusive", f"the {confidence:.0%} interval includes 0: more seeds or epochs"
    return result(method, mean, low, high, verdict, reason)


def baseline_for(group: Group, groups: list[Group], baseline_preset: str) -> Group | None:
    """The baseline group with the same other settings."""
    for candidate in groups:
        if candidate.preset == baseline_preset and candidate.settings == group.settings:
            return candidate
    return None


def compare_groups(groups: list[Group], baseline_preset: str, metric: str,
                   confidence: float) -> list[Difference]:
    differences = []
    for group in groups:
        if group.preset == baseline_preset:
            continue
        baseline = baseline_for(group, groups, baseline_preset)
        if baseline is None:
            differences.append(Difference(group.label, f"{baseline_preset} (missing)", metric, len(group.runs), 0,
                                          "none", math.nan, None, None, "inconclusive",
                                          f"no '{baseline_preset}' runs with the same settings to compare with"))
        else:
            differences.append(compare_with_baseline(group, baseline, metric, confidence))
    return differences


def group_table(groups: list[Group]) -> list[dict]:
    """Per group: runs, seeds, best val / test accuracy mean and std, epochs to best."""
    rows = []
    for g in groups:
        row = {"group": g.label, "preset": g.preset, **g.settings, "runs": len(g.runs),
               "seeds": ",".join(sorted(r.seed for r in g.runs))}
        for metric in ("best_val_accuracy", "test_accuracy", "best_epoch"):
            values = list(g.values(metric).values())
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(values) if values else (math.nan, math.nan)
            row[f"{metric}_n"] = len(values)
        rows.append(row)
    return rows


def mean_curve(runs: list[RunSummary], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std) of a per-epoch metric over the runs; epochs some runs lack use the others."""
    curves = [r.curves[metric] for r in runs if r.curves.get(metric)]
    if not curves:
        return np.array([]), np.array([]), np.array([])
    length = max(len(c) for c in curves)
    padded = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        padded[i, :len(c)] = c
    mean = np.nanmean(padded, axis=0)
    std = np.array([np.std(col[~np.isnan(col)], ddof=1) if np.sum(~np.isnan(col)) > 1 else 0.0 for col in padded.T])
    return np.arange(1, length + 1), mean, std
