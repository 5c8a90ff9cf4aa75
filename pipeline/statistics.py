"""Statistics for comparing training runs over seeds: intervals, a permutation test, the
probability of improvement and how many seeds a study needs.

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
from typing import Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
EXACT_PERMUTATIONS_UP_TO = 2**20   # beyond this many relabellings, a seeded Monte Carlo sample of them
MOST_SEEDS_ADVISED = 1000          # seeds_needed answers None beyond this ("not with this spread")


def t_interval(differences: Sequence[float], confidence: float) -> tuple[float, float]:
    """Student-t interval on the mean of paired differences (needs >= 2)."""
    d = np.asarray(differences, dtype=float)
    half = stats.t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def welch_interval(ours: Sequence[float], theirs: Sequence[float], confidence: float) -> tuple[float, float]:
    """Welch's t interval on mean(ours) - mean(theirs) for unpaired runs (>= 2 in each)."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    half = stats.t.ppf((1 + confidence) / 2, dof) * se
    mean = a.mean() - b.mean()
    return float(mean - half), float(mean + half)


def bootstrap_interval(differences: Sequence[float], confidence: float, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval on the mean of paired differences: resample the seeds
    with replacement `resamples` times (seeded, so a report is reproducible)."""
    d = np.asarray(differences, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def bootstrap_interval_unpaired(ours: Sequence[float], theirs: Sequence[float], confidence: float,
                                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap on mean(ours) - mean(theirs), each group resampled on its own."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    rng = np.random.default_rng(seed)
    means = (a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
             - b[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1))
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


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

    `spread` is the standard deviation of the per-seed differences. The answer is the smallest
    n >= 2 with (t[(1+confidence)/2, n-1] + t[power, n-1]) * spread / sqrt(n) <= |effect|: the
    interval at `confidence` then excludes 0 in a share `power` of such studies (power 0.5:
    when the mean difference comes out at `effect` exactly). None when more than 1000 seeds
    would be needed or the spread is unknown.
    """
    if math.isnan(spread) or effect == 0:
        return None
    for n in range(2, MOST_SEEDS_ADVISED + 1):
        critical = stats.t.ppf((1 + confidence) / 2, n - 1) + stats.t.ppf(power, n - 1)
        if critical * spread / math.sqrt(n) <= abs(effect):
            return n
    return None
