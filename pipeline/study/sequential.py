"""Seeds in rounds: add seeds only where a verdict is still open, without inflating false verdicts.

A study that looks at its verdicts after 3 seeds, adds seeds to the comparisons still
`inconclusive` and looks again has a chance of a false `keep` or `drop` at every look: at 5%
each, four looks give up to about 12%. So the study's 5% (1 - compare.confidence) is *spent*
over its looks (Lan & DeMets 1983) with Pocock's spending function,

    spent(t) = alpha * ln(1 + (e - 1) * t),   t = seeds so far / seeds of the last round,

and look k decides at alpha_k = spent(t_k) - spent(t_{k-1}), with Holm's correction over the
comparisons still open at that look. The alpha_k sum to alpha, so by the union bound the chance
of any false keep/drop over the whole study is at most alpha, however the looks are correlated
(a boundary computed on their joint distribution would be a little less strict: Jennison &
Turnbull 2000, ch. 7). Each look's intervals, at 1 - alpha_k, are then repeated confidence
intervals that hold together with probability >= 1 - alpha, so an `equivalent` at a look is
as safe as at the end. Pocock's function spends early: a large effect stops at the first look.

A study's verdicts are a function of its runs: `decide_in_rounds` replays the looks on the first
n_k seeds of every group (in numeric order, as `pipeline.rounds` adds them), so `compare` with the
study's `compare.rounds` gives the verdicts the study stopped on, whenever it is run.
"""

from __future__ import annotations

import math

from pipeline.study.decisions import correct_for_many
from pipeline.study.records import Difference, Group
from pipeline.study.verdicts import ablation_contributions, compare_groups

DEFAULT_ROUNDS = (3, 5, 7, 10)  # seeds per group after each round, when compare.rounds is null
SETTLED = ("keep", "drop", "equivalent", "not converged")  # more seeds would not change these


def spent(fraction: float, alpha: float) -> float:
    """Pocock-type alpha spending: the share of `alpha` spent once `fraction` of the seeds are in."""
    return alpha * math.log(1 + (math.e - 1) * fraction)


def look_alphas(rounds: list[int], alpha: float) -> list[float]:
    """The false-verdict rate each look may use: increments of `spent` at n_k / n_last; they sum to `alpha`."""
    totals = [spent(n / rounds[-1], alpha) for n in rounds]
    return [now - before for before, now in zip([0.0, *totals], totals)]


def first_seeds(group: Group, count: int) -> Group:
    """The group as it stood after its first `count` seeds (its runs are in numeric seed order)."""
    return Group(group.preset, group.settings, group.runs[:count], group.repeats_dropped)


def decide_in_rounds(
    groups: list[Group],
    baseline: str,
    metric: str,
    rounds: list[int],
    confidence: float,
    power: float,
    margin: float,
) -> tuple[list[Difference], list[Difference]]:
    """(differences against `baseline`, ablated operations' contributions), each as decided at
    the look where it settled (`SETTLED`), or at the last look it reached. A comparison reaches a
    look when both its groups have that look's seeds; one stopped short (a failed run, a round
    still training) keeps the verdict of the last look it reached."""
    decided: dict[tuple[str, str], Difference] = {}  # (group, baseline) -> latest decision, in first-seen order
    ablation_keys: set[tuple[str, str]] = set()
    settled: set[tuple[str, str]] = set()
    for look, (seeds, alpha) in enumerate(zip(rounds, look_alphas(rounds, 1 - confidence)), start=1):
        seen = [first_seeds(g, seeds) for g in groups]
        differences = compare_groups(seen, baseline, metric, 1 - alpha, power)
        ablations = ablation_contributions(seen, metric, 1 - alpha, power)
        ablation_keys |= {(d.group, d.baseline) for d in ablations}
        family = [
            d
            for d in differences + ablations
            if (d.group, d.baseline) not in settled and (_reached(d, seeds) or (d.group, d.baseline) not in decided)
        ]
        correct_for_many(family, 1 - alpha, power, margin)
        for d in family:
            where = f"round {look} of {len(rounds)}: {seeds} seeds, at {alpha:.4f} of the study's {1 - confidence:.2f}"
            d.reason = f"{d.reason} ({where})"
            decided[(d.group, d.baseline)] = d
            if _reached(d, seeds) and d.verdict in SETTLED:
                settled.add((d.group, d.baseline))
    return (
        [d for key, d in decided.items() if key not in ablation_keys],
        [d for key, d in decided.items() if key in ablation_keys],
    )


def _reached(d: Difference, seeds: int) -> bool:
    return min(d.n_group, d.n_baseline) >= seeds


def open_comparisons(report: dict) -> list[dict]:
    """The comparisons of a `compare` report whose verdict more seeds could still change."""
    return [d for d in report["differences"] + report["ablations"] if d["verdict"] not in SETTLED]
