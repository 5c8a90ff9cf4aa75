"""Does an augmentation help, and which of its operations? Group tracked runs, summarise them
over seeds, compare each with the baseline.

One run's accuracy is noisy: on the clothing dataset one validation image is worth 0.29
points and a single run's standard error near 85% is about 1.9 points. So each group
(augmentation preset, plus any other setting that was varied) is summarised over its seeds,
and each augmented group is compared with the baseline group (`none`) of the same other
settings (statistics: pipeline/study/seed_statistics.py):

- paired by seed when the seeds of one group are all among the other's, and >= 2 (same
  init, same shuffling: pairing removes that shared noise): Student-t and bootstrap
  intervals on the per-seed differences, a sign-flip permutation p-value, the share of
  seeds on which the group wins;
- otherwise unpaired: Welch's t and a two-sample bootstrap (needs >= 2 runs in each);
- with fewer runs there is no interval and the verdict says so.

The verdict on each comparison: pipeline/study/decisions.py. An ablation (`augmentation.ablate=<operation>`, preset label `<preset>-no-<operation>`) is
compared with its full preset instead: the operation's contribution is full minus ablated.
All accuracies are fractions in [0, 1]; differences are in fraction units (0.02 = 2 points).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pipeline.config.augmentation import read_ablation_label
from pipeline.study import seed_statistics
from pipeline.study.decisions import MIN_SEEDS_FOR_VERDICT, SEEDS_ADVISED, decide, intervals, within_bounds
from pipeline.study.grouping import baseline_for, mean_std
from pipeline.study.records import TRAIN_VAL, TTA_MARK, Difference, Group


def compare_with_baseline(
    group: Group,
    baseline: Group,
    metric: str,
    confidence: float,
    power: float = 0.8,
    margin: float = 0.0,
    decided: bool = True,
) -> Difference:
    """`group` minus `baseline` on `metric`: paired by seed where possible (see the module doc),
    with the verdict of a single comparison (`correct_for_many` revises it within a family);
    `margin` (a fraction) for `equivalent`. decided=False: its statistics only, for a family whose
    verdicts `correct_for_many` decides, each once."""
    ours, theirs = group.values(metric), baseline.values(metric)
    other_splits = seeds_on_other_splits(group, baseline)  # never a pair of runs on different train/val sets
    ours, theirs = ({s: v for s, v in side.items() if s not in other_splits} for side in (ours, theirs))
    common = sorted(set(ours) & set(theirs))
    result = Difference(
        group.label, baseline.label, metric, len(ours), len(theirs), "none", math.nan, ours=ours, theirs=theirs
    )
    result.other_splits = other_splits
    still_improving = [(g, r) for g in (group, baseline) for r in g.still_improving]
    result.not_converged = [
        f"{g.preset} seed {r.seed} (best epoch {r.best_epoch} of {len(r.curves['val_accuracy'])})"
        for g, r in still_improving
    ]
    result.annealed = any(r.annealed_to_cap for _, r in still_improving)
    if not ours or not theirs:
        result.reason = f"no {metric} in one of the groups"
        return result
    if _paired(ours, theirs):
        differences = [ours[s] - theirs[s] for s in common]
        result.per_seed = dict(zip(common, differences))
        result.method = f"paired over {len(common)} seeds"
        result.mean, result.spread = mean_std(differences)
        result.p_value = seed_statistics.permutation_p_value((differences,))
        result.t_p_value = seed_statistics.paired_t(differences, confidence)[2]
        result.probability_of_improvement = seed_statistics.probability_of_improvement(differences)
        result.per_class = class_differences(group, baseline, confidence)
    elif len(ours) >= 2 and len(theirs) >= 2:
        a, b = list(ours.values()), list(theirs.values())
        result.method = f"unpaired (Welch) over {len(a)} and {len(b)} runs"
        result.mean = float(np.mean(a) - np.mean(b))
        result.spread = math.sqrt(np.var(a, ddof=1) + np.var(b, ddof=1))  # of one run's difference from another
        result.p_value = seed_statistics.permutation_p_value((a, b))
        result.t_p_value = seed_statistics.welch_t(a, b, confidence)[2]
        result.probability_of_improvement = seed_statistics.probability_of_improvement(a, b)
    else:  # a single run on one side: a difference, but no interval
        if common:  # on the shared seed: a half-finished sweep must not mix seeds' luck into it
            result.per_seed = {s: ours[s] - theirs[s] for s in common}
            result.mean = float(np.mean(list(result.per_seed.values())))
            measured_on = f"measured on seed {', '.join(common)} alone"
        else:
            result.mean = float(np.mean(list(ours.values())) - np.mean(list(theirs.values())))
            measured_on = "no seed in common: group means"
        result.reason = (
            f"no repeats ({len(ours)} and {len(theirs)} run(s); {measured_on}); run >= {SEEDS_ADVISED} seeds "
            f"per group, e.g. seed={','.join(map(str, range(1, SEEDS_ADVISED + 1)))}"
        )
        return result
    result.t_low, result.t_high, result.bootstrap_low, result.bootstrap_high = intervals(result, confidence)
    if decided:
        decide(result, confidence, result.t_p_value, confidence, power, margin)
    return result


def seeds_on_other_splits(group: Group, baseline: Group) -> list[str]:
    """The seeds whose run in `group` and run in `baseline` trained on different train/val sets (tag
    train_val_sha256): the grouping keeps a split drawn per seed apart, so only records at odds land here."""
    theirs = {r.seed: r.params.get(TRAIN_VAL) for r in baseline.runs}
    return sorted(r.seed for r in group.runs if r.seed in theirs and theirs[r.seed] != r.params.get(TRAIN_VAL))


def _paired(ours: dict[str, float], theirs: dict[str, float]) -> bool:
    """Paired when >= 2 seeds are shared and the smaller group's seeds are all in the other."""
    common = set(ours) & set(theirs)
    return len(common) >= 2 and len(common) >= min(len(ours), len(theirs))


def compare_groups(
    groups: list[Group], baseline_preset: str, metric: str, confidence: float, power: float = 0.8
) -> list[Difference]:
    """Each group against its baseline (`baseline_for`), undecided: `correct_for_many` decides them
    with the rest of the report. None at all when no group is the baseline preset (a report of
    ablations alone: their contributions are the answer)."""
    if not any(group.preset == baseline_preset for group in groups):
        return []
    differences = []
    for group in groups:
        if group.preset == baseline_preset:
            continue
        baseline = baseline_for(group, groups, baseline_preset)
        if baseline is None:
            differences.append(
                Difference(
                    group.label,
                    f"{baseline_preset} (missing)",
                    metric,
                    len(group.runs),
                    0,
                    "none",
                    math.nan,
                    reason=f"no '{baseline_preset}' runs with the same settings to compare with",
                )
            )
        else:
            difference = compare_with_baseline(group, baseline, metric, confidence, power, decided=False)
            difference.diversity, difference.cost = diversity(group, baseline), cost(group, baseline)
            differences.append(difference)
    return differences


def tta_differences(groups: list[Group], metric: str, confidence: float, power: float = 0.8) -> list[Difference]:
    """Each group's test-time augmentation (`evaluate.tta`) against its plain evaluation: the same runs,
    so paired by seed, `tta_<metric>` minus `<metric>`, labelled `<preset>+tta(<its TTA>)`; undecided (as
    `compare_groups`). Only on a test metric, and only for a group whose every run was evaluated with one
    and the same TTA (the run's tag `evaluate.tta`, a param here)."""
    if not metric.startswith("test_"):
        return []
    arms = []
    for group in groups:
        kinds = {r.params.get("evaluate.tta") for r in group.runs}
        if len(kinds) != 1 or None in kinds:
            continue
        tested = [  # the TTA metrics under the plain names; its per-class figures from its own recalls
            dataclasses.replace(
                r,
                metrics={k: v for k, v in r.metrics.items() if not k.startswith("test_")}
                | {k.removeprefix("tta_"): v for k, v in r.metrics.items() if k.startswith("tta_test_")},
                test_predictions={},
            )
            for r in group.runs
        ]
        arm = Group(f"{group.preset}{TTA_MARK}{kinds.pop()})", group.settings, tested)
        arms.append(compare_with_baseline(arm, group, metric, confidence, power, decided=False))
    return arms


def ablation_contributions(groups: list[Group], metric: str, confidence: float, power: float = 0.8) -> list[Difference]:
    """Each ablated operation's contribution: the full preset minus the preset without it, paired by
    seed, undecided (as `compare_groups`). keep: the operation helps; drop: the preset is better
    without it."""
    contributions = []
    for ablated in groups:
        operation = ablated.runs[0].ablated
        if operation is None:
            continue
        full_name = read_ablation_label(ablated.preset)[0]
        full = next((g for g in groups if g.preset == full_name and g.settings == ablated.settings), None)
        if full is None:
            reason = (
                f"no runs of the full preset '{full_name}' with the same settings: "
                "add augmentation.ablate=none to the sweep"
            )
            contributions.append(
                Difference(
                    operation, f"{full_name} (missing)", metric, 0, len(ablated.runs), "none", math.nan, reason=reason
                )
            )
            continue
        difference = compare_with_baseline(full, ablated, metric, confidence, power, decided=False)
        difference.group = operation
        difference.diversity, difference.cost = diversity(full, ablated), cost(full, ablated)
        contributions.append(difference)
    return contributions


CLASS_METRIC_PREFIX = "test_recall."  # per-class test recall, logged by the evaluate stage


def class_differences(group: Group, baseline: Group, confidence: float) -> dict[str, dict]:
    """Per class: the paired difference of test recall (group minus baseline, mean over seeds)
    with its interval, Holm-corrected over the classes so that `significant` keeps a 5% chance
    (at confidence 0.95) of any false flag among them. After Balestriero et al. 2022: an
    augmentation that raises the average can cost single classes a lot.

    With every run's test predictions (`RunSummary.test_predictions`), each image of the class
    on each seed is a pair - right or wrong under the group, and under the baseline - and the
    interval comes from the images x seeds table (`seed_statistics.crossed_t`): both the seeds and
    the test images are samples. Without them (runs evaluated before predictions were logged),
    from each seed's class recall alone (a t interval over the seeds)."""
    seeds = sorted(
        set(group.values("test_accuracy")) & set(baseline.values("test_accuracy")), key=lambda s: (len(s), s)
    )
    tables = per_image_tables(group, baseline, seeds) if len(seeds) >= MIN_SEEDS_FOR_VERDICT else {}
    if tables:
        found = {name: seed_statistics.crossed_t(table) for name, table in tables.items()}
        method, counts = "per image", {name: table.shape[0] for name, table in tables.items()}
    else:
        found = {name: _t_over_seeds(d) for name, d in per_seed_recall_differences(group, baseline).items()}
        method, counts = "per seed", {}
    p_values = [seed_statistics.t_from(*estimate, confidence)[2] for estimate in found.values()]
    adjusted, levels = seed_statistics.holm(p_values, confidence)
    table = {}
    for (name, (mean, error, freedom)), p, level in zip(found.items(), adjusted, levels):
        zero_spread = math.isnan(p)
        low, high = within_bounds(*seed_statistics.t_from(mean, 0.0 if zero_spread else error, freedom, level)[:2])
        table[name] = {
            "mean": mean,
            "low": low,
            "high": high,
            "p_adjusted": None if zero_spread else p,
            "significant": not zero_spread and p < 1 - confidence,
            "seeds": len(seeds) if tables else len(found),
            "method": method,
            **({"images": counts[name]} if counts else {}),
        }
    return table


def per_image_tables(group: Group, baseline: Group, seeds: list[str]) -> dict[str, np.ndarray]:
    """{class: images x seeds table of (group right) - (baseline right)}, over the test images every
    compared run predicted; {} unless every run of `seeds` in both groups has its predictions."""
    runs = [{r.seed: r for r in g.runs} for g in (group, baseline)]
    predictions = [[by_seed[s].test_predictions for s in seeds] for by_seed in runs]
    if not all(p for side in predictions for p in side):
        return {}
    images = set.intersection(*(set(p) for side in predictions for p in side))
    truth = {image: predictions[0][0][image][0] for image in images}
    tables = {}
    for name in sorted(set(truth.values())):
        members = sorted(image for image in images if truth[image] == name)
        if len(members) < 2:
            continue
        right = [
            np.array([[side[k][image][1] == name for k in range(len(seeds))] for image in members], dtype=float)
            for side in predictions
        ]
        tables[name] = right[0] - right[1]
    return tables


def per_seed_recall_differences(group: Group, baseline: Group) -> dict[str, list[float]]:
    """{class: the paired per-seed differences of its logged test recall}, classes with >= 3 seeds."""
    classes = sorted(
        {
            k[len(CLASS_METRIC_PREFIX) :]
            for r in group.runs + baseline.runs
            for k in r.metrics
            if k.startswith(CLASS_METRIC_PREFIX)
        }
    )
    found = {}
    for name in classes:
        ours, theirs = group.values(CLASS_METRIC_PREFIX + name), baseline.values(CLASS_METRIC_PREFIX + name)
        common = sorted(set(ours) & set(theirs))
        if len(common) >= MIN_SEEDS_FOR_VERDICT:
            found[name] = [ours[s] - theirs[s] for s in common]
    return found


def _t_over_seeds(differences: list[float]) -> tuple[float, float, float]:
    """(mean, standard error, degrees of freedom) of per-seed differences."""
    d = np.asarray(differences, dtype=float)
    error = float(d.std(ddof=1) / math.sqrt(len(d)))
    return float(d.mean()), (error if d.std(ddof=1) > seed_statistics.NO_SPREAD else 0.0), len(d) - 1


def class_flags(d: Difference) -> list[str]:
    """Classes that move against the average: a significant loss while the average gains, or the reverse."""
    flags = []
    for name, c in d.per_class.items():
        if c["significant"] and c["mean"] < 0 < d.mean:
            flags.append(
                f"{d.group} gains {d.mean * 100:.2f} points on average but costs {name} "
                f"{c['mean'] * 100:+.2f} points of test recall [{c['low'] * 100:+.1f}, {c['high'] * 100:+.1f}]"
            )
        elif c["significant"] and c["mean"] > 0 > d.mean:
            flags.append(
                f"{d.group} loses {-d.mean * 100:.2f} points on average but gives {name} "
                f"{c['mean'] * 100:+.2f} points of test recall [{c['low'] * 100:+.1f}, {c['high'] * 100:+.1f}]"
            )
    return flags


def diversity(group: Group, reference: Group) -> float | None:
    """How much harder the augmentation makes the training data (Gontijo-Lopes et al. 2020): the
    mean final training loss of `group`'s runs over that of `reference`'s (> 1: harder)."""
    ours = [r.final("train_loss") for r in group.runs if r.final("train_loss") is not None]
    theirs = [r.final("train_loss") for r in reference.runs if r.final("train_loss") is not None]
    return float(np.mean(ours) / np.mean(theirs)) if ours and theirs and np.mean(theirs) > 0 else None


def cost(group: Group, reference: Group) -> float | None:
    """Training cost: a run's training time (its epochs' seconds summed), the mean of `group`'s runs
    over that of `reference`'s. Per run, not per epoch: with augmented views reused (train.augment_views)
    the first epochs pay the base passes and the later ones almost nothing."""
    ours = [sum(r.curves["epoch_seconds"]) for r in group.runs if r.curves.get("epoch_seconds")]
    theirs = [sum(r.curves["epoch_seconds"]) for r in reference.runs if r.curves.get("epoch_seconds")]
    return float(np.mean(ours) / np.mean(theirs)) if ours and theirs and np.mean(theirs) > 0 else None
