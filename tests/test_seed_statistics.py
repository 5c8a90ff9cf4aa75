"""The comparison's statistics against values worked out by hand on a few fixed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.study import seed_statistics as statistics

# Five seeds' differences (augmented minus plain), in points/100.
DIFFERENCES = [0.01, 0.03, 0.02, 0.04, -0.01]


def test_t_interval_by_hand():
    # mean 0.09 / 5 = 0.018; squared deviations 6.4e-5 + 1.44e-4 + 4e-6 + 4.84e-4 + 7.84e-4 = 1.48e-3,
    # sd = sqrt(1.48e-3 / 4) = 0.0192354; t(0.975, 4) = 2.776445; half = 2.776445 * 0.0192354 / sqrt(5)
    half = 2.776445 * math.sqrt(1.48e-3 / 4) / math.sqrt(5)
    low, high, _ = statistics.paired_t(DIFFERENCES, 0.95)
    assert (low, high) == pytest.approx((0.018 - half, 0.018 + half), abs=1e-7)
    assert (low, high) == pytest.approx((-0.0058839, 0.0418839), abs=1e-7)


def test_sign_flip_p_value_is_exact():
    # In units of 0.01: |d| = 1, 3, 2, 4, 1 (sum 11), observed sum 9. Flipping a subset of sum N
    # gives 11 - 2N; |11 - 2N| >= 9 needs N <= 1 ({}, {1}, {1'}) or N >= 10 (their complements):
    # 6 of the 2^5 = 32 sign assignments.
    assert statistics.permutation_p_value((DIFFERENCES,)) == pytest.approx(6 / 32)
    # All positive: only "all +" and "all -" are as extreme: 2 / 2^n, the smallest p n seeds allow.
    assert statistics.permutation_p_value(([0.04, 0.03, 0.05],)) == pytest.approx(2 / 8)
    assert statistics.permutation_p_value(([0.01] * 5,)) == pytest.approx(2 / 32)


def test_label_permutation_p_value_is_exact():
    # Pooled 1, 2, 3, 4 split into two pairs: 6 ways; |mean difference| 2 for {1,2} and {3,4}, else 1 or 0.
    assert statistics.permutation_p_value(([1, 2], [3, 4])) == pytest.approx(2 / 6)


def test_probability_of_improvement():
    assert statistics.probability_of_improvement(DIFFERENCES) == pytest.approx(4 / 5)
    assert statistics.probability_of_improvement([0.01, 0.0, -0.02, 0.03]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # unpaired, over all pairs: 1 beats neither 2, 3 beats both -> 2 of 4; a tie counts half
    assert statistics.probability_of_improvement([1, 3], [2, 2]) == pytest.approx(0.5)
    assert statistics.probability_of_improvement([2, 3], [2]) == pytest.approx((0.5 + 1) / 2)


def test_bootstrap_interval():
    # Two seeds, 0 and 1: a resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles of 10,000 resampled means are 0 and 1.
    assert statistics.bootstrap_interval(([0.0, 1.0],), 0.95) == (0.0, 1.0)
    assert statistics.bootstrap_interval(([0.02] * 4,), 0.95) == pytest.approx((0.02, 0.02))
    low, high = statistics.bootstrap_interval((DIFFERENCES,), 0.95)
    assert -0.01 <= low < 0.018 < high <= 0.04  # inside the data's range, around the mean
    assert (low, high) == statistics.bootstrap_interval((DIFFERENCES,), 0.95)  # seeded: reproducible
    # it is narrower than the t interval for few seeds: hence the verdict uses their union
    t_low, t_high, _ = statistics.paired_t(DIFFERENCES, 0.95)
    assert high - low < t_high - t_low
    low, high = statistics.bootstrap_interval(([1.0, 1.0], [0.0, 0.0]), 0.95)
    assert (low, high) == (1.0, 1.0)


def test_seeds_needed_by_hand():
    # spread 2 points, effect 1 point, 95%: the smallest n with (t(0.975, n-1) + t(power, n-1)) * 0.02 / sqrt(n) <= 0.01.
    # power 0.5 (t = 0): n = 17: 2 * 2.1199 = 4.2398 > sqrt(17) = 4.1231; n = 18: 2 * 2.1098 = 4.2196 <= 4.2426.
    assert statistics.seeds_needed(0.02, 0.01, 0.95, power=0.5) == 18
    # power 0.8: n = 33: 2 * (2.0369 + 0.8530) = 5.780 > 5.745; n = 34: 2 * (2.0345 + 0.8526) = 5.774 <= 5.831.
    assert statistics.seeds_needed(0.02, 0.01, 0.95, power=0.8) == 34
    assert statistics.seeds_needed(0.02, -0.01, 0.95, power=0.8) == 34  # a loss as much as a gain
    assert statistics.seeds_needed(0.0001, 0.05, 0.95, power=0.8) == 2
    assert statistics.seeds_needed(0.05, 0.0005, 0.95, power=0.8) is None  # beyond 1000 seeds
    assert statistics.seeds_needed(math.nan, 0.01, 0.95, power=0.8) is None


def test_holm_adjustment_by_hand():
    # p = 0.01, 0.04, 0.03, 0.005. Sorted: 0.005, 0.01, 0.03, 0.04, multiplied by 4, 3, 2, 1:
    # 0.02, 0.03, 0.06, 0.04 -> running maximum 0.02, 0.03, 0.06, 0.06.
    adjusted, levels = statistics.holm([0.01, 0.04, 0.03, 0.005], 0.95)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # At 5%, the first two are rejected and the 0.03 is not (its step tests at 0.05/2): Holm's
    # step-down rule, where Bonferroni (x4) would reject only 0.005 and 0.01 as well.
    assert levels == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 1, 1 - 0.05 / 2, 1 - 0.05 / 4])
    assert statistics.holm([0.2, 0.9], 0.95)[0] == pytest.approx([0.4, 0.9])  # capped by the running max, not 1.8
    assert statistics.holm([0.6, 0.7], 0.95)[0] == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted, levels = statistics.holm([0.01, math.nan, 0.02], 0.95)  # an untested comparison is not counted
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert levels[1] == 0.95
    assert statistics.holm([0.03], 0.95) == ([0.03], [0.95])  # one comparison: nothing to correct


def test_t_tests_by_hand():
    # paired: t = 0.018 / (0.0192354 / sqrt(5)) = 2.09247 on 4 degrees of freedom, two-sided
    assert statistics.paired_t(DIFFERENCES, 0.95)[2] == pytest.approx(2 * stats.t.sf(2.09247, 4), rel=1e-4)
    # Welch: means 0.72 and 0.795, variances 4e-4 / 3 and 1.6667e-4 / 4; t = -0.075 / 0.013229 = -5.6695,
    # on (1.3333e-4 + 4.1667e-5)^2 / ((1.3333e-4)^2 / 2 + (4.1667e-5)^2 / 3) = 3.2347 degrees of freedom
    ours, theirs = [0.70, 0.72, 0.74], [0.78, 0.80, 0.79, 0.81]
    low, high, p = statistics.welch_t(ours, theirs, 0.95)
    assert p == pytest.approx(2 * stats.t.sf(5.6695, 3.2347), rel=1e-4)
    assert (low + high) / 2 == pytest.approx(-0.075) and low < -0.075 < high < 0
    assert math.isnan(statistics.paired_t([0.01, 0.01, 0.01], 0.95)[2])  # no spread: no test
    # 5 seeds that agree: the sign-flip p stops at 2/32 = 0.0625, the t-test's p goes below 0.05,
    # so Holm over 3 comparisons can still pass (0.0625 x 3 never could)
    agree = [0.03, 0.04, 0.05, 0.02, 0.06]
    assert statistics.permutation_p_value((agree,)) == pytest.approx(0.0625)
    assert statistics.paired_t(agree, 0.95)[2] * 3 < 0.05


def test_differences_equal_but_for_rounding_are_no_evidence():
    # one hat image more (1/12) on every seed, computed from different counts: equal up to float rounding
    differences = [10 / 12 - 9 / 12, 11 / 12 - 10 / 12, 1.0 - 11 / 12]
    assert len(set(differences)) > 1 and np.std(differences) < 1e-15  # not exactly equal ...
    assert math.isnan(statistics.paired_t(differences, 0.95)[2])  # ... but no spread to test with
    assert math.isnan(statistics.welch_t([0.1 + 0.2, 0.3], [0.2, 0.2], 0.95)[2])  # 0.30000000000000004 and 0.3
    # recalls logged to 6 decimals: 12/12 - 11/12 and 11/12 - 10/12 come back as 0.083333 and 0.083334
    assert math.isnan(statistics.paired_t([1.0 - 0.916667, 0.916667 - 0.833333, 1.0 - 0.916667], 0.95)[2])
    assert statistics.paired_t([0.08, 0.09, 0.07], 0.95)[2] < 0.05  # a real spread is tested


def test_crossed_t_by_hand():
    """4 images x 3 seeds of paired right/wrong differences, worked with fractions: image means
    1/3, 0, 2/3, -1/3 (variance 5/27), seed means 1/2, 1/4, -1/4 (variance 7/48)."""
    table = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, -1]], dtype=float)
    mean, error, freedom = statistics.crossed_t(table)
    over_images, over_seeds = 5 / 27 / 4, 7 / 48 / 3
    assert mean == pytest.approx(1 / 6)
    assert error == pytest.approx(math.sqrt(over_images + over_seeds))
    assert freedom == pytest.approx((over_images + over_seeds) ** 2 / (over_images**2 / 3 + over_seeds**2 / 2))
    assert statistics.crossed_t(np.zeros((5, 3))) == (0.0, 0.0, math.inf)  # every cell alike: no error
    # the p and the interval agree: p < 0.05 exactly when the 95% interval excludes 0
    low, high, p = statistics.t_from(mean, error, freedom, 0.95)
    assert (p < 0.05) == (low > 0) and low < mean < high
