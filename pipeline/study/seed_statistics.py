"""Statistics for comparing training runs over seeds: t intervals and tests, bootstrap intervals and
permutation tests from `scipy.stats`; written out here only what scipy does not have: an images x
seeds estimator, Holm's correction with its levels, and how many seeds a study needs.

After Bouthillier et al. 2021 ("Accounting for variance in machine learning benchmarks") and
Agarwal et al. 2021 (`rliable`): runs that share a seed share their initialisation and data
order, so an augmented run and a plain run are compared seed by seed (paired), and a study's
number of seeds is a question of statistical power, not habit.

Inputs are accuracies as fractions (0.81); differences are in the same units (0.02 = 2 points).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
MOST_SEEDS_ADVISED = 1000  # seeds_needed answers None beyond this ("not with this spread")
# A spread below this (accuracy units: 0.001 points) is rounding, not variation: metrics are logged to
# 6 decimals, so "one image more on every seed" comes back as 0.083333 and 0.083334.
NO_SPREAD = 1e-5


def paired_t(differences: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(low, high, p) of Student's t on the mean of paired differences (>= 2): the interval at
    `confidence` and the two-sided p of "the mean is 0". Unlike the sign-flip p, this p has no floor
    set by the number of seeds, so it is the one a correction for many comparisons can use; it agrees
    with the interval. p is NaN when all differences are equal, up to rounding (`NO_SPREAD`)."""
    d = np.asarray(differences, dtype=float)
    spread = float(d.std(ddof=1))
    if spread == 0:  # an interval of no width
        return float(d.mean()), float(d.mean()), math.nan
    if spread <= NO_SPREAD:  # rounding: the same interval, without scipy's precision-loss warning
        low, high, _ = t_from(float(d.mean()), spread / math.sqrt(len(d)), len(d) - 1, confidence)
        return low, high, math.nan
    test = stats.ttest_1samp(d, 0.0)
    interval = test.confidence_interval(confidence)
    return float(interval.low), float(interval.high), float(test.pvalue)


def welch_t(ours: Sequence[float], theirs: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(low, high, p) of Welch's t on mean(ours) - mean(theirs) for unpaired runs (>= 2 in each)."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    share_a, share_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    spread, mean = math.sqrt(share_a + share_b), float(a.mean() - b.mean())
    if spread <= NO_SPREAD:  # rounding: the same interval, without scipy's precision-loss warning
        if spread == 0:
            return mean, mean, math.nan
        freedom = spread**4 / (share_a**2 / (len(a) - 1) + share_b**2 / (len(b) - 1))  # Welch-Satterthwaite
        low, high, _ = t_from(mean, spread, freedom, confidence)
        return low, high, math.nan
    test = stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(confidence)
    return float(interval.low), float(interval.high), float(test.pvalue)


def t_from(mean: float, error: float, freedom: float, confidence: float) -> tuple[float, float, float]:
    """(low, high, p) of a t statistic mean / error with `freedom` degrees of freedom (the images x seeds
    estimate, `crossed_t`); with no error, an interval of no width and p NaN."""
    if error <= 0:
        return mean, mean, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, freedom)) * error
    return mean - half, mean + half, float(2 * stats.t.sf(abs(mean) / error, freedom))


def crossed_t(table: np.ndarray) -> tuple[float, float, float]:
    """(mean, standard error, degrees of freedom) of the mean of an images x seeds table of paired
    differences, when both the images and the seeds are samples: the error covers another seed
    *and* other images of the class. Owen 2007's conservative estimator for crossed random effects
    (the variance of the image means / images + that of the seed means / seeds), with
    Welch-Satterthwaite degrees of freedom for the sum. Needs >= 2 images and >= 2 seeds; the
    error is 0 when every cell is the same."""
    images, seeds = table.shape
    over_images = float(np.var(table.mean(axis=1), ddof=1)) / images
    over_seeds = float(np.var(table.mean(axis=0), ddof=1)) / seeds
    variance = over_images + over_seeds
    if variance == 0:
        return float(table.mean()), 0.0, math.inf
    freedom = variance**2 / (over_images**2 / (images - 1) + over_seeds**2 / (seeds - 1))
    return float(table.mean()), math.sqrt(variance), freedom


def _mean_difference(x, y, axis):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bootstrap_interval(samples: tuple[Sequence[float], ...], confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of one sample (paired differences: the seeds
    resampled), or of mean(ours) - mean(theirs) of two (each group resampled on its own); 10,000
    resamples, seeded, so a report is reproducible."""
    arrays = tuple(np.asarray(s, dtype=float) for s in samples)
    result = stats.bootstrap(
        arrays,
        np.mean if len(arrays) == 1 else _mean_difference,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        random_state=np.random.default_rng(0),
        vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def permutation_p_value(samples: tuple[Sequence[float], ...]) -> float:
    """Exact two-sided permutation p of "no difference" (no normality assumed): for one sample of paired
    differences, over the 2^n flips of their signs; for two samples, over every split of the pooled
    runs into groups of their sizes. With n seeds the smallest paired p is 2 / 2^n: 0.0625 with 5
    seeds, so a 5-seed study can be decisive by its interval, never by this p below 0.05."""
    arrays = tuple(np.asarray(s, dtype=float) for s in samples)
    if len(arrays) == 1:
        statistic, kind = (lambda x, axis: np.abs(np.mean(x, axis=axis))), "samples"
    else:
        statistic, kind = (lambda x, y, axis: np.abs(_mean_difference(x, y, axis))), "independent"
    exact = 2 ** len(arrays[0]) if len(arrays) == 1 else math.comb(sum(map(len, arrays)), len(arrays[0]))
    result = stats.permutation_test(
        arrays,
        statistic,
        permutation_type=kind,
        n_resamples=np.inf if exact <= 2**20 else 100_000,
        alternative="greater",
        vectorized=True,
        random_state=np.random.default_rng(0),
    )
    return float(result.pvalue)


def probability_of_improvement(ours: Sequence[float], theirs: Sequence[float] | None = None) -> float:
    """The share of seeds on which the group beats the baseline (`ours`: paired differences); unpaired
    (rliable's estimator), P(a run of ours beats a run of theirs) over all pairs. Ties count half."""
    if theirs is None:
        d = np.asarray(ours, dtype=float)
        return float(np.mean((d > 0) + 0.5 * (d == 0)))
    a, b = np.asarray(ours, dtype=float)[:, None], np.asarray(theirs, dtype=float)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def holm(p_values: Sequence[float], confidence: float) -> tuple[list[float], list[float]]:
    """Holm's step-down correction of a family of p-values (same order as given): (adjusted p-values,
    each comparison's interval level). Sorted ascending p_(1) <= ... <= p_(m), the adjusted p_(i) is
    max over j <= i of min(1, (m - j + 1) p_(j)), and the i-th smallest is tested at alpha / (m - i + 1),
    so its interval is drawn at 1 - alpha / (m - i + 1) (the first is Bonferroni's; one test keeps
    `confidence`). Rejecting where the adjusted p < alpha keeps the chance of any false rejection in the
    family at most alpha (Holm 1979), whatever the dependence between the tests; at 6 comparisons and no
    correction that chance is up to 26%. NaN entries (no test) stay NaN, at `confidence`, not counted."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted, levels = [math.nan] * len(p), [confidence] * len(p)
    running = 0.0
    for rank, index in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - rank) * p[index]))
        adjusted[index] = float(running)
        levels[index] = 1 - (1 - confidence) / (len(tested) - rank)
    return adjusted, levels


@functools.cache
def _critical(confidence: float, power: float) -> tuple[np.ndarray, np.ndarray]:
    """n = 2..MOST_SEEDS_ADVISED and t[(1+confidence)/2, n-1] + t[power, n-1] for each, computed once."""
    n = np.arange(2, MOST_SEEDS_ADVISED + 1)
    return n, stats.t.ppf((1 + confidence) / 2, n - 1) + stats.t.ppf(power, n - 1)


def seeds_needed(spread: float, effect: float, confidence: float, power: float) -> int | None:
    """How many seeds (paired runs per group) a study needs to resolve a difference of `effect`.

    Under a correction for m comparisons pass the corrected confidence (1 - alpha/m, the
    level of the hardest step of Holm's method), so the advice is for a corrected verdict.
    `spread` is the standard deviation of the per-seed differences. The answer is the smallest
    n >= 2 with (t[(1+confidence)/2, n-1] + t[power, n-1]) * spread / sqrt(n) <= |effect|: the
    interval at `confidence` then excludes 0 in a share `power` of such studies (power 0.5:
    when the mean difference comes out at `effect` exactly). None when more than 1000 seeds
    would be needed or the spread is unknown.
    """
    if math.isnan(spread) or effect == 0:
        return None
    n, critical = _critical(confidence, power)
    enough = np.flatnonzero(critical * spread / np.sqrt(n) <= abs(effect))
    return int(n[enough[0]]) if enough.size else None
