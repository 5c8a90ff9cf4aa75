"""Seeds in rounds (pipeline/study/sequential.py): the spending boundary, the replay of the looks, and a
simulation of whole studies through the same verdict code `compare` runs."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.study.decisions import correct_for_many
from pipeline.study.grouping import group_runs
from pipeline.study.records import RunSummary
from pipeline.study.sequential import DEFAULT_ROUNDS, decide_in_rounds, first_seeds, look_alphas
from pipeline.study.verdicts import compare_groups

SPREAD = 0.0117  # the std of the per-seed differences of lesson - none seen in docs/results.md (1.17 points)
SIMULATED_STUDIES = 400


def runs_of(preset: str, accuracies: list[float], first_seed: int = 1) -> list[RunSummary]:
    return [
        RunSummary(f"{preset}{i}", preset, str(first_seed + i), {"seed": str(first_seed + i)}, {"test_accuracy": a})
        for i, a in enumerate(accuracies)
    ]


def study(rng: np.random.Generator, effect: float, spread: float = SPREAD, seeds: int = DEFAULT_ROUNDS[-1]) -> list:
    """`none` and `lesson` over `seeds` seeds: lesson = none + effect + N(0, spread) per seed."""
    none = rng.normal(0.85, 0.01, seeds)
    lesson = none + effect + rng.normal(0.0, spread, seeds)
    return group_runs(runs_of("none", list(none)) + runs_of("lesson", list(lesson)))


def verdict_in_rounds(groups: list, rounds=DEFAULT_ROUNDS) -> tuple[str, int]:
    (d,), _ = decide_in_rounds(groups, "none", "test_accuracy", list(rounds), 0.95, 0.8, 0.01)
    return d.verdict, min(d.n_group, d.n_baseline)


def verdict_alone(groups: list, seeds: int) -> str:
    """The verdict on the first `seeds` seeds as if that were the whole study, at the full 5%."""
    (d,) = compare_groups([first_seeds(g, seeds) for g in groups], "none", "test_accuracy", 0.95)
    correct_for_many([d], 0.95, 0.8)
    return d.verdict


def test_the_looks_spend_the_studys_five_percent_pocock_style():
    alphas = look_alphas([3, 5, 7, 10], 0.05)
    # alpha * ln(1 + (e - 1) t) at t = 0.3, 0.5, 0.7, 1, worked by hand: 0.02079, 0.03101, 0.03949, 0.05
    assert alphas == pytest.approx([0.02079, 0.01022, 0.00848, 0.01051], abs=2e-5)
    assert sum(alphas) == pytest.approx(0.05)
    assert look_alphas([10], 0.05) == pytest.approx([0.05])  # one look: the fixed design


def test_a_comparison_is_decided_at_the_round_where_it_settled():
    """`lesson` lost 5 points on each of its 3 seeds and stopped; `light` is even with `none` within
    0.4 points over 10 seeds: the replay decides lesson at round 1 on its 3 seeds, and light once its
    interval fits inside the 1-point margin (round 3, 7 seeds), not on all 10."""
    rng = np.random.default_rng(0)
    none = list(rng.normal(0.85, 0.01, 10))
    lesson = [a - 0.05 + e for a, e in zip(none[:3], (0.004, -0.003, 0.001))]
    light = [a + e for a, e in zip(none, rng.normal(0, 0.004, 10))]
    groups = group_runs(runs_of("none", none) + runs_of("lesson", lesson) + runs_of("light", light))
    differences, ablations = decide_in_rounds(groups, "none", "test_accuracy", [3, 5, 7, 10], 0.95, 0.8, 0.01)
    verdicts = {d.group: (d.verdict, len(d.per_seed), d.reason) for d in differences}
    assert verdicts["lesson"][:2] == ("drop", 3) and "round 1 of 4" in verdicts["lesson"][2]
    assert verdicts["light"][:2] == ("equivalent", 7) and "round 3 of 4" in verdicts["light"][2]
    assert ablations == []
    # round 1's family held both comparisons: lesson's interval is Holm-widened at 0.0208 over 2
    assert "Holm over 2 comparisons" in verdicts["lesson"][2]


def test_an_open_comparison_short_of_its_rounds_seeds_keeps_its_last_look():
    """A round still training (or a failed run): light has 4 seeds where round 2 needs 5."""
    rng = np.random.default_rng(1)
    none = list(rng.normal(0.85, 0.01, 5))
    light = [a + e for a, e in zip(none[:4], rng.normal(0, 0.02, 4))]
    groups = group_runs(runs_of("none", none) + runs_of("light", light))
    (d,), _ = decide_in_rounds(groups, "none", "test_accuracy", [3, 5], 0.95, 0.8, 0.01)
    assert d.verdict == "inconclusive" and "round 1 of 2" in d.reason and len(d.per_seed) == 3


def test_first_seeds_are_the_lowest_seeds_in_numeric_order():
    (group,) = group_runs(runs_of("none", [0.8] * 12))
    assert [r.seed for r in first_seeds(group, 10).runs] == [str(s) for s in range(1, 11)]  # 2 before 10


@pytest.mark.slow  # 400 whole studies through scipy's tests: 15 s
def test_with_no_true_difference_false_verdicts_stay_under_five_percent_over_all_rounds():
    """Whole studies with no difference, looked at after 3, 5, 7 and 10 seeds: a keep or drop at any
    look is a false verdict. Spent over the looks they stay at or under 5%; deciding every look at
    the full 5% (what looking without a correction does) exceeds it - the test can tell them apart."""
    rng = np.random.default_rng(2026)
    false_in_rounds = false_at_every_look = 0
    for _ in range(SIMULATED_STUDIES):
        groups = study(rng, 0.0)
        verdict, _ = verdict_in_rounds(groups)
        false_in_rounds += verdict in ("keep", "drop")
        false_at_every_look += any(verdict_alone(groups, seeds) in ("keep", "drop") for seeds in DEFAULT_ROUNDS)
    assert false_in_rounds / SIMULATED_STUDIES <= 0.05
    assert false_at_every_look / SIMULATED_STUDIES > 0.05


def test_a_five_point_loss_with_the_spread_seen_stops_by_five_seeds():
    rng = np.random.default_rng(7)
    stops = [verdict_in_rounds(study(rng, -0.05)) for _ in range(200)]
    assert all(verdict == "drop" for verdict, _ in stops)
    assert sum(seeds <= 5 for _, seeds in stops) / len(stops) >= 0.95  # the power of a 5-seed study and more


def test_no_difference_with_a_small_spread_ends_equivalent_early():
    """A preset even with the baseline whose seeds agree within 0.3 points: its interval fits inside
    the 1-point margin (compare.margin) once a few seeds are in - `equivalent`, not open to 10 seeds."""
    rng = np.random.default_rng(3)
    stops = [verdict_in_rounds(study(rng, 0.0, spread=0.003)) for _ in range(50)]
    equivalent_by_five = [verdict == "equivalent" and seeds <= 5 for verdict, seeds in stops]
    assert sum(equivalent_by_five) >= 45  # the rest: later, or one of the <= 5% false keep/drop
