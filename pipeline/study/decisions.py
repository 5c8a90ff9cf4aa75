"""The verdict rule, written here once (the report's legend, the README and docs/guide.md point here).

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
"""

from __future__ import annotations

import math

from pipeline.study import seed_statistics
from pipeline.study.records import Difference

SEEDS_ADVISED = 5  # the fewest seeds per group a study should have; fewer are flagged in the report


MIN_SEEDS_FOR_VERDICT = 3  # below this, never keep or drop


CONVERGE_ADVICE = {  # what to do about runs not converged, by whether their learning rate annealed to the cap
    False: "raise train.epochs",
    True: "train with train.lr_schedule=constant (warmup_cosine anneals to its cap, so the best epoch "
    "comes late whatever train.epochs is; early stopping then ends each run)",
}


def intervals(d: Difference, confidence: float) -> tuple[float, float, float, float]:
    """(t low, t high, bootstrap low, bootstrap high) of a difference at `confidence`, within
    what it can take (`within_bounds`)."""
    if d.per_seed:
        samples = (list(d.per_seed.values()),)
        t_low, t_high, _ = seed_statistics.paired_t(samples[0], confidence)
    else:
        samples = (list(d.ours.values()), list(d.theirs.values()))
        t_low, t_high, _ = seed_statistics.welch_t(*samples, confidence)
    return within_bounds(t_low, t_high, *seed_statistics.bootstrap_interval(samples, confidence))


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
    advice_confidence: float | None = None,
) -> None:
    """Set the verdict of a difference whose statistics are computed, and the seeds that would resolve
    it at `advice_confidence` (default `confidence`; under Holm, its hardest step's level).

    keep / drop: enough seeds with some spread, every run converged, the interval at
    `verdict_confidence` (the union of t and bootstrap, widened by a correction for many
    comparisons) wholly above / below 0, and the (adjusted) t p-value below 1 - confidence.
    equivalent: the same evidence, and that interval wholly within +-`margin` (a fraction:
    0.01 is 1 point) around 0. A keep or drop smaller than the margin stays keep or drop.
    "not converged" replaces keep/drop/inconclusive whenever a run's best epoch fell within its
    last `train.patience` epochs: the difference is then one of budgets, not of augmentations."""
    d.p_adjusted, d.verdict_confidence = p_adjusted, verdict_confidence
    if not math.isnan(d.spread):
        d.seeds_needed = seed_statistics.seeds_needed(d.spread, d.mean, advice_confidence or confidence, power)
        d.seeds_needed_1pt = seed_statistics.seeds_needed(d.spread, 0.01, advice_confidence or confidence, power)
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
    p_values = [d.t_p_value for d in tested]
    adjusted, levels = seed_statistics.holm(p_values, confidence)
    size = sum(not math.isnan(p) for p in p_values)
    strictest = 1 - (1 - confidence) / max(size, 1)
    for d, p, level in zip(tested, adjusted, levels):
        d.family_size = size
        decide(d, level, None if math.isnan(p) else p, confidence, power, margin, strictest)


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
