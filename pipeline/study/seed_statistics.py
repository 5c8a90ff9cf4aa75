"""Statistics for comparing training runs over seeds: intervals, t and permutation tests, Holm's
correction for many comparisons, the probability of improvement and how many seeds a study needs.

After Bouthillier et al. 2021 ("Accounting for variance in machine learning benchmarks") and
Agarwal et al. 2021 (`rliable`): runs that share a seed share their initialisation and data
order, so an augmented run and a plain run are compared seed by seed (paired), and a study's
number of seeds is a question of statistical power, not habit.

Inputs are accuracies as fractions (0.81); differences are in the same units (0.02 = 2 points).
Every function takes plain sequences of floats and returns floats, so each can be checked by
hand on a handful of numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
EXACT_PERMUTATIONS_UP_TO = 2**20  # beyond this many relabellings, a seeded Monte Carlo sample of them
MOST_SEEDS_ADVISED = 1000  # seeds_needed answers None beyond this ("not with this spread")
# A spread below this (accuracy units: 0.001 points) is rounding, not variation: metrics are logged to
# 6 decimals, so "one image more on every seed" comes back as 0.083333 and 0.083334.
NO_SPREAD = 1e-5


def t_interval(differences: Sequence[float], confidence: float) -> tuple[float, float]:
    """Student-t interval on the mean of paired differences (needs >= 2)."""
    d = np.asarray(differences, dtype=float)
    half = stats.t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


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


def t_p_value(mean: float, error: float, freedom: float) -> float:
    """Two-sided p of a t statistic mean / error with `freedom` degrees of freedom; NaN with no error."""
    return float(2 * stats.t.sf(abs(mean) / error, freedom)) if error > 0 else math.nan


def t_quantile(confidence: float, freedom: float) -> float:
    """The half-width of a two-sided t interval at `confidence`, in standard errors."""
    return float(stats.t.ppf((1 + confidence) / 2, freedom))


def welch_interval(ours: Sequence[float], theirs: Sequence[float], confidence: float) -> tuple[float, float]:
    """Welch's t interval on mean(ours) - mean(theirs) for unpaired runs (>= 2 in each)."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    half = stats.t.ppf((1 + confidence) / 2, dof) * se
    mean = a.mean() - b.mean()
    return float(mean - half), float(mean + half)


def bootstrap_interval(
    differences: Sequence[float], confidence: float, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval on the mean of paired differences: resample the seeds
    with replacement `resamples` times (seeded, so a report is reproducible)."""
    d = np.asarray(differences, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def bootstrap_interval_unpaired(
    ours: Sequence[float],
    theirs: Sequence[float],
    confidence: float,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap on mean(ours) - mean(theirs), each group resampled on its own."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1) - b[
        rng.integers(0, len(b), size=(resamples, len(b)))
    ].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_t_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (needs >= 2 seeds).

    Unlike the sign-flip p it has no floor set by the number of seeds, so it is the p-value a
    correction for many comparisons can use: it agrees with the t interval (p < 1 - confidence
    exactly when the interval at `confidence` excludes 0). NaN when all differences are equal,
    up to rounding too (`NO_SPREAD`): t would be a huge number made of rounding error."""
    d = np.asarray(differences, dtype=float)
    spread = d.std(ddof=1)
    if not spread > NO_SPREAD:
        return math.nan
    t = d.mean() / (spread / math.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def welch_t_p_value(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test of equal means (unpaired, >= 2 runs each); NaN without spread."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if not math.sqrt(va + vb) > NO_SPREAD:
        return math.nan
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    return float(2 * stats.t.sf(abs(t), dof))


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given).

    Sorted ascending p_(1) <= ... <= p_(m), the adjusted p_(i) is max over j <= i of
    min(1, (m - j + 1) * p_(j)). Rejecting where the adjusted p < alpha keeps the chance of
    any false rejection in the family at most alpha (Holm 1979), whatever the dependence
    between the tests; at 6 comparisons and no correction that chance is up to 26%.
    NaN entries (no test) are left NaN and not counted in m."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), math.nan)
    running = 0.0
    for rank, index in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - rank) * p[index]))
        adjusted[index] = running
    return [float(a) for a in adjusted]


def holm_levels(p_values: Sequence[float], confidence: float) -> list[float]:
    """The confidence of each comparison's interval under Holm's method: the one ranked i-th
    smallest p (from 1) of m is tested at level alpha / (m - i + 1), so its interval is drawn at
    1 - alpha / (m - i + 1). The first is Bonferroni's; a single test keeps `confidence`.
    NaN entries get `confidence`."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    alpha = 1 - confidence
    levels = [confidence] * len(p)
    for rank, index in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        levels[index] = 1 - alpha / (len(tested) - rank)
    return levels


def sign_flip_p_value(differences: Sequence[float], seed: int = 0) -> float:
    """Two-sided permutation p-value of "the mean difference is 0", paired by seed.

    Under the null hypothesis each per-seed difference is as likely positive as negative: the
    p-value is the share of the 2^n sign assignments whose |mean| is at least the observed one.
    Exact (all assignments) up to 20 seeds. With n seeds the smallest possible p is 2 / 2^n:
    0.0625 with 5 seeds, so a 5-seed study can be decisive by its interval, never by p < 0.05.
    """
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if 2**n <= EXACT_PERMUTATIONS_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(100_000, n))
    observed = abs(d.mean())
    flipped = np.abs((signs * d).mean(axis=1))
    return float(np.mean(flipped >= observed - 1e-12))


def label_permutation_p_value(ours: Sequence[float], theirs: Sequence[float], seed: int = 0) -> float:
    """Two-sided permutation p-value of "equal means" for unpaired runs: the share of the ways
    to split the pooled runs into groups of the same sizes whose |mean difference| is at least
    the observed one (exact while there are at most 2^20 splits)."""
    pooled = np.asarray([*ours, *theirs], dtype=float)
    n, k = len(pooled), len(ours)
    observed = abs(np.mean(ours) - np.mean(theirs))
    if math.comb(n, k) <= EXACT_PERMUTATIONS_UP_TO:
        splits = [list(c) for c in itertools.combinations(range(n), k)]
    else:
        rng = np.random.default_rng(seed)
        splits = [rng.permutation(n)[:k] for _ in range(100_000)]
    total = pooled.sum()
    extreme = 0
    for chosen in splits:
        first = pooled[chosen].sum()
        extreme += abs(first / k - (total - first) / (n - k)) >= observed - 1e-12
    return extreme / len(splits)


def probability_of_improvement(differences: Sequence[float]) -> float:
    """Paired: the share of seeds on which the group beats the baseline (a tie counts half)."""
    d = np.asarray(differences, dtype=float)
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def probability_of_improvement_unpaired(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """Unpaired (rliable's estimator): P(a run of ours beats a run of theirs) over all pairs, ties half."""
    a, b = np.asarray(ours, dtype=float)[:, None], np.asarray(theirs, dtype=float)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


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
    n = np.arange(2, MOST_SEEDS_ADVISED + 1)
    critical = stats.t.ppf((1 + confidence) / 2, n - 1) + stats.t.ppf(power, n - 1)  # every n at once
    enough = np.flatnonzero(critical * spread / np.sqrt(n) <= abs(effect))
    return int(n[enough[0]]) if enough.size else None
