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

Verdict: `keep` when the union of the two intervals is above 0 and the t-test's p is below
1 - confidence, `drop` when the interval is below 0 (same p), `equivalent` when it lies wholly
within +-margin (`compare.margin` points: no difference as large as one the user cares about;
a (1 - alpha) interval inside the margins is at least as strict as two one-sided tests at
alpha, Schuirmann 1987), else `inconclusive`, with the number of seeds that would resolve the
observed difference. A verdict also needs evidence: at
least `MIN_SEEDS_FOR_VERDICT` seeds (runs per group when unpaired) and some spread between
them. Two seeds, or seeds that all differ by exactly the same amount, give an interval of
(almost) no width that measures nothing: inconclusive, saying why.
It needs convergence too: when any run of either group had its best epoch within the last
`train.patience` epochs of its cap, the verdict is `not converged` (raise train.epochs; or, for
a schedule that anneals to the cap, train with a constant one): the two groups are then
compared at a budget, not each at its best.

Many comparisons in one report are many chances of a false verdict (6 at 5%: up to 26%), so
`correct_for_many` applies Holm's step-down correction to the family (every group against the
baseline and every ablated operation): adjusted p, and intervals widened to each step's
level. The correction uses the t-test's p, not the exact sign-flip p (reported too): the
sign-flip p cannot go below 2/2^n (0.0625 at 5 seeds), so no corrected 5-seed verdict could
ever pass on it.
An ablation (`augmentation.ablate=<operation>`, preset label `<preset>-no-<operation>`) is
compared with its full preset instead: the operation's contribution is full minus ablated.
All accuracies are fractions in [0, 1]; differences are in fraction units (0.02 = 2 points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.augmentation_config import read_ablation_label
from pipeline.run_identity import AUGMENTED_ONLY  # a plain run's value of these is no setting of its group
from pipeline.study import seed_statistics

DATA_VERSION = "data.version"  # the data a run trained on (its manifests' hash): a setting, read from its tag

SEEDS_ADVISED = 5  # the fewest seeds per group a study should have; fewer are flagged in the report
MIN_SEEDS_FOR_VERDICT = 3  # below this, never keep or drop
CONVERGE_ADVICE = {  # what to do about runs not converged, by whether their learning rate annealed to the cap
    False: "raise train.epochs",
    True: "train with train.lr_schedule=constant (warmup_cosine anneals to its cap, so the best epoch "
    "comes late whatever train.epochs is; early stopping then ends each run)",
}

# Params that differ between the runs of one group by design, or do not change the model.
NOT_GROUPING = (
    "seed",
    "train.resume",
    "train.rerun",
    "train.start_epoch",
    "train.epochs",
    "tracking.",
    "paths.",
    "data.download_dir",
    "data.cache",
    "augmentation.name",
    "model.frozen_runtime",  # where frozen layers ran: f32 runtimes agree within 1e-4
    "model.frozen_runtime_used",
)


@dataclass
class RunSummary:
    """What the comparison needs of one MLflow training run."""

    run_id: str
    preset: str
    seed: str
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # val_accuracy / val_loss per epoch
    started_ms: int = 0  # start time, to keep the latest of repeated runs
    augmented: bool = True  # its training images were augmented (tag `augmented`)
    test_predictions: dict[str, tuple[str, str]] = field(default_factory=dict)  # image sha256 -> (actual, predicted)

    def setting(self, key: str) -> str | None:
        """The run's value of a grouping key; None where the key does not apply (`AUGMENTED_ONLY`)."""
        return None if key in AUGMENTED_ONLY and not self.augmented else self.params.get(key, "")

    @property
    def ablated(self) -> str | None:
        """The operation this run removed from its preset (`augmentation.ablate`), if any."""
        value = self.params.get("augmentation.ablate")
        return None if value in (None, "", "None", "null") else value

    @property
    def best_epoch(self) -> int | None:
        return int(self.metrics["best_epoch"]) if "best_epoch" in self.metrics else None

    @property
    def converged(self) -> bool | None:
        """Did early stopping see the best epoch out? True when the best epoch came at least
        `train.patience` epochs before the cap (`train.epochs`, or the epochs trained when a
        resume extended them): validation accuracy then had `patience` epochs to improve and
        did not. False when the best epoch falls within the last `patience` epochs of the cap:
        the run may still have been improving. None when unknown."""
        trained = len(self.curves.get("val_accuracy", []))
        if self.best_epoch is None or not trained:
            return None
        cap = max(int(float(self.params.get("train.epochs", trained))), trained)
        patience = int(float(self.params.get("train.patience", 1)))
        return self.best_epoch <= cap - patience

    @property
    def annealed_to_cap(self) -> bool:
        """Its learning rate decays to ~0 at `train.epochs` (warmup_cosine): the smallest steps,
        and often the best epoch, come at the end whatever the cap, so a longer cap stretches
        the schedule rather than showing whether the run had converged."""
        return self.params.get("train.lr_schedule") == "warmup_cosine"

    def final(self, curve: str) -> float | None:
        """The last recorded value of a per-epoch metric (None if not recorded)."""
        values = self.curves.get(curve)
        return values[-1] if values else None


@dataclass
class Group:
    preset: str
    settings: dict[str, str]  # the other varied params, same for every run of the group
    runs: list[RunSummary]
    repeats_dropped: int = 0  # earlier runs of a seed already in the group (a sweep run twice)

    @property
    def label(self) -> str:
        return ", ".join([self.preset, *(f"{k}={v}" for k, v in self.settings.items())])

    @property
    def still_improving(self) -> list[RunSummary]:
        """Its runs whose best epoch came within `train.patience` epochs of their cap."""
        return [r for r in self.runs if r.converged is False]

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
    method: str  # "paired over N seeds", "unpaired (Welch) over N and M runs", or "none"
    mean: float
    low: float | None = None  # the verdict's interval: the union of the t and bootstrap intervals
    high: float | None = None
    t_low: float | None = None  # Student t (paired) or Welch t (unpaired)
    t_high: float | None = None
    bootstrap_low: float | None = None  # percentile bootstrap, 10,000 seeded resamples
    bootstrap_high: float | None = None
    p_value: float | None = None  # exact permutation test (sign flips when paired)
    t_p_value: float | None = None  # paired t (Welch t unpaired): the p the correction uses
    p_adjusted: float | None = None  # t_p_value after Holm's correction over the report's comparisons
    family_size: int = 1  # comparisons in that family
    verdict_confidence: float | None = None  # of the verdict's interval (low, high): widened by the correction
    probability_of_improvement: float | None = None
    spread: float = math.nan  # std of the per-seed differences (paired)
    seeds_needed: int | None = None  # seeds that would resolve the observed difference
    seeds_needed_1pt: int | None = None  # ... and a 1-point difference
    verdict: str = "inconclusive"  # keep | drop | equivalent | inconclusive | not converged
    reason: str = ""
    per_seed: dict[str, float] = field(default_factory=dict)  # seed -> difference (paired)
    ours: dict[str, float] = field(default_factory=dict)  # seed -> metric, group
    theirs: dict[str, float] = field(default_factory=dict)  # seed -> metric, baseline
    not_converged: list[str] = field(default_factory=list)  # runs whose best epoch was within patience of the cap
    annealed: bool = False  # some of those runs annealed their learning rate to the cap (warmup_cosine)
    per_class: dict[str, dict] = field(default_factory=dict)  # class -> ClassDifference fields (paired)
    diversity: float | None = None  # final training loss, group / baseline
    cost: float | None = None  # training time of a run, group / baseline
    affinity: float | None = None  # baseline models' val accuracy under the augmentation / clean


def _is_grouping_key(key: str) -> bool:
    return not any(key == p or (p.endswith(".") and key.startswith(p)) for p in NOT_GROUPING)


def varied_settings(runs: list[RunSummary]) -> list[str]:
    """Params that vary across the runs and are not explained by the preset name alone.

    `augmentation.rotation_range` varies between `none` and `lesson` but is fixed within
    each preset, so it adds nothing; `model.name` varying within a preset makes groups. The
    data version (`DATA_VERSION`) makes groups whenever it varies at all: `none` on
    one version and `lesson` on another would measure the data change, not the augmentation.
    """
    keys = sorted({k for r in runs for k in r.params if _is_grouping_key(k)})
    varied = []
    for key in keys:
        applies = [r for r in runs if r.setting(key) is not None]
        if len({r.setting(key) for r in applies}) < 2:
            continue
        per_preset: dict[str, set] = {}
        for r in applies:
            per_preset.setdefault(r.preset, set()).add(r.setting(key))
        if key == DATA_VERSION or any(len(values) > 1 for values in per_preset.values()):
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


def compare_with_baseline(
    group: Group, baseline: Group, metric: str, confidence: float, power: float = 0.8, margin: float = 0.0
) -> Difference:
    """`group` minus `baseline` on `metric`: paired by seed where possible (see the module doc),
    with the verdict of a single comparison (`correct_for_many` revises it within a family);
    `margin` (a fraction) for `equivalent`."""
    ours, theirs = group.values(metric), baseline.values(metric)
    common = sorted(set(ours) & set(theirs))
    result = Difference(
        group.label, baseline.label, metric, len(ours), len(theirs), "none", math.nan, ours=ours, theirs=theirs
    )
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
        result.p_value = seed_statistics.sign_flip_p_value(differences)
        result.t_p_value = seed_statistics.paired_t_p_value(differences)
        result.probability_of_improvement = seed_statistics.probability_of_improvement(differences)
        result.per_class = class_differences(group, baseline, confidence)
    elif len(ours) >= 2 and len(theirs) >= 2:
        a, b = list(ours.values()), list(theirs.values())
        result.method = f"unpaired (Welch) over {len(a)} and {len(b)} runs"
        result.mean = float(np.mean(a) - np.mean(b))
        result.spread = math.sqrt(np.var(a, ddof=1) + np.var(b, ddof=1))  # of one run's difference from another
        result.p_value = seed_statistics.label_permutation_p_value(a, b)
        result.t_p_value = seed_statistics.welch_t_p_value(a, b)
        result.probability_of_improvement = seed_statistics.probability_of_improvement_unpaired(a, b)
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
    result.seeds_needed_1pt = seed_statistics.seeds_needed(result.spread, 0.01, confidence, power)
    result.seeds_needed = seed_statistics.seeds_needed(result.spread, result.mean, confidence, power)
    decide(result, confidence, result.t_p_value, confidence, power, margin)
    return result


def _paired(ours: dict[str, float], theirs: dict[str, float]) -> bool:
    """Paired when >= 2 seeds are shared and the smaller group's seeds are all in the other."""
    common = set(ours) & set(theirs)
    return len(common) >= 2 and len(common) >= min(len(ours), len(theirs))


def intervals(d: Difference, confidence: float) -> tuple[float, float, float, float]:
    """(t low, t high, bootstrap low, bootstrap high) of a difference at `confidence`, within
    what it can take (`within_bounds`)."""
    if d.per_seed:
        values = list(d.per_seed.values())
        found = (
            *seed_statistics.t_interval(values, confidence),
            *seed_statistics.bootstrap_interval(values, confidence),
        )
    else:
        a, b = list(d.ours.values()), list(d.theirs.values())
        found = (
            *seed_statistics.welch_interval(a, b, confidence),
            *seed_statistics.bootstrap_interval_unpaired(a, b, confidence),
        )
    return within_bounds(*found)


def within_bounds(*ends: float) -> tuple[float, ...]:
    """Interval ends cut to [-1, 1]: every compared metric (accuracy, recall, F1) is a fraction, so a
    difference of two lies there, whatever a t interval over 3 wide-spread seeds says (+-140 points).
    The cut interval holds the true difference whenever the uncut one does."""
    return tuple(min(1.0, max(-1.0, end)) for end in ends)


def decide(
    d: Difference,
    verdict_confidence: float,
    p_adjusted: float | None,
    confidence: float,
    power: float,
    margin: float = 0.0,
) -> None:
    """Set the verdict of a difference whose statistics are computed.

    keep / drop: enough seeds with some spread, every run converged, the interval at
    `verdict_confidence` (the union of t and bootstrap, widened by a correction for many
    comparisons) wholly above / below 0, and the (adjusted) t p-value below 1 - confidence.
    equivalent: the same evidence, and that interval wholly within +-`margin` (a fraction:
    0.01 is 1 point) around 0. A keep or drop smaller than the margin stays keep or drop.
    "not converged" replaces keep/drop/inconclusive whenever a run's best epoch fell within its
    last `train.patience` epochs: the difference is then one of budgets, not of augmentations."""
    d.p_adjusted, d.verdict_confidence = p_adjusted, verdict_confidence
    t_low, t_high, b_low, b_high = intervals(d, verdict_confidence)
    d.low, d.high = min(t_low, b_low), max(t_high, b_high)
    evidence = len(d.per_seed) if d.per_seed else min(len(d.ours), len(d.theirs))
    corrected = f" (Holm over {d.family_size} comparisons)" if d.family_size > 1 else ""
    d.verdict = "inconclusive"
    if evidence < MIN_SEEDS_FOR_VERDICT:
        d.reason = (
            f"too few seeds ({evidence}): a verdict needs >= {MIN_SEEDS_FOR_VERDICT}, and "
            f"{SEEDS_ADVISED} are advised (seed={','.join(map(str, range(1, SEEDS_ADVISED + 1)))})"
        )
    elif not d.spread > seed_statistics.NO_SPREAD:
        d.reason = (
            "zero spread: every seed gave the same difference, so no interval can be estimated "
            f"from them (each is {d.mean * 100:+.2f} points); add seeds"
        )
    elif d.not_converged:
        d.verdict = "not converged"
        d.reason = (
            f"{CONVERGE_ADVICE[d.annealed]}: {len(d.not_converged)} run(s) had their best epoch within the last "
            f"train.patience epochs of the cap ({'; '.join(d.not_converged)}), so this compares budgets"
        )
    elif d.low > 0 and p_adjusted < 1 - confidence:
        d.verdict, d.reason = "keep", f"the whole {verdict_confidence:.1%} interval is above 0{corrected}"
    elif d.high < 0 and p_adjusted < 1 - confidence:
        d.verdict, d.reason = "drop", f"the whole {verdict_confidence:.1%} interval is below 0{corrected}"
    elif margin > 0 and -margin < d.low and d.high < margin:
        d.verdict, d.reason = (
            "equivalent",
            f"the whole {verdict_confidence:.1%} interval lies within +-{margin * 100:g} points "
            f"(compare.margin){corrected}: no difference that large",
        )
    else:
        d.reason = f"the {verdict_confidence:.1%} interval includes 0{corrected}; " + seeds_advice(d, power)


def correct_for_many(family: list[Difference], confidence: float, power: float, margin: float = 0.0) -> None:
    """Holm's correction over a report's comparisons (every group against the baseline and every
    ablated operation): each verdict is decided again on its adjusted t p-value and on its
    interval widened to its step's level (`equivalent` within +-`margin`, a fraction); the seeds
    advice then assumes the hardest step's level (1 - alpha/m), so it says how many seeds a
    corrected verdict needs."""
    tested = [d for d in family if d.t_p_value is not None]
    p_values = [math.nan if d.t_p_value is None else d.t_p_value for d in tested]
    adjusted = seed_statistics.holm_adjusted(p_values)
    levels = seed_statistics.holm_levels(p_values, confidence)
    size = sum(not math.isnan(p) for p in p_values)
    strictest = 1 - (1 - confidence) / max(size, 1)
    for d, p, level in zip(tested, adjusted, levels):
        d.family_size = size
        if not math.isnan(d.spread):
            d.seeds_needed = seed_statistics.seeds_needed(d.spread, d.mean, strictest, power)
            d.seeds_needed_1pt = seed_statistics.seeds_needed(d.spread, 0.01, strictest, power)
        decide(d, level, None if math.isnan(p) else p, confidence, power, margin)


def seeds_advice(d: Difference, power: float) -> str:
    """What would resolve an inconclusive difference, from the observed spread of the differences."""
    spread = f"with this spread ({d.spread * 100:.2f} points"
    if d.method.startswith("paired"):
        spread += f" between seeds' differences, {len(d.per_seed)} seeds)"
    else:
        spread += " between two runs' difference)"

    def resolve(n: int | None, effect: float) -> str:
        size = f"a {abs(effect) * 100:.2f}-point {'gain' if effect > 0 else 'loss'}"
        if n:
            return f"about {n} seeds would resolve {size}"
        return f"not even {seed_statistics.MOST_SEEDS_ADVISED} seeds would resolve {size}"

    one_point = d.seeds_needed_1pt or f"over {seed_statistics.MOST_SEEDS_ADVISED}"
    return f"{spread}, {resolve(d.seeds_needed, d.mean)}, {one_point} a 1-point one ({power:.0%} power)"


def baseline_for(group: Group, groups: list[Group], baseline_preset: str) -> Group | None:
    """The baseline group with the same other settings (a plain baseline has no `AUGMENTED_ONLY` ones)."""
    for candidate in groups:
        unmatched = set(group.settings) - set(candidate.settings)
        same = all(group.settings.get(k) == v for k, v in candidate.settings.items())
        if candidate.preset == baseline_preset and same and unmatched <= set(AUGMENTED_ONLY):
            return candidate
    return None


def compare_groups(
    groups: list[Group], baseline_preset: str, metric: str, confidence: float, power: float = 0.8
) -> list[Difference]:
    """Each group against its baseline (`baseline_for`); none at all when no group is the baseline
    preset (a report of ablations alone: their contributions are the answer)."""
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
            difference = compare_with_baseline(group, baseline, metric, confidence, power)
            difference.diversity, difference.cost = diversity(group, baseline), cost(group, baseline)
            differences.append(difference)
    return differences


def ablation_contributions(groups: list[Group], metric: str, confidence: float, power: float = 0.8) -> list[Difference]:
    """Each ablated operation's contribution: the full preset minus the preset without it,
    paired by seed. keep: the operation helps; drop: the preset is better without it."""
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
        difference = compare_with_baseline(full, ablated, metric, confidence, power)
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
    p_values = [seed_statistics.t_p_value(*estimate) for estimate in found.values()]
    adjusted = seed_statistics.holm_adjusted(p_values)
    levels = seed_statistics.holm_levels(p_values, confidence)
    table = {}
    for (name, (mean, error, freedom)), p, level in zip(found.items(), adjusted, levels):
        zero_spread = math.isnan(p)
        half = 0.0 if zero_spread else seed_statistics.t_quantile(level, freedom) * error
        low, high = within_bounds(mean - half, mean + half)
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
    ours = [r.final("loss") for r in group.runs if r.final("loss") is not None]
    theirs = [r.final("loss") for r in reference.runs if r.final("loss") is not None]
    return float(np.mean(ours) / np.mean(theirs)) if ours and theirs and np.mean(theirs) > 0 else None


def cost(group: Group, reference: Group) -> float | None:
    """Training cost: a run's training time (its epochs' seconds summed), the mean of `group`'s runs
    over that of `reference`'s. Per run, not per epoch: with augmented views reused (train.augment_views)
    the first epochs pay the base passes and the later ones almost nothing."""
    ours = [sum(r.curves["epoch_seconds"]) for r in group.runs if r.curves.get("epoch_seconds")]
    theirs = [sum(r.curves["epoch_seconds"]) for r in reference.runs if r.curves.get("epoch_seconds")]
    return float(np.mean(ours) / np.mean(theirs)) if ours and theirs and np.mean(theirs) > 0 else None


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
