"""The published verdict tables of docs/results.md, again from their runs' test accuracies (a fixture
kept in tests/data): the statistics now come from scipy.stats, and the frozen map and the 5-seed
ablation must come out as published, to the hundredth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.study.decisions import correct_for_many
from pipeline.study.grouping import group_runs
from pipeline.study.records import RunSummary
from pipeline.study.verdicts import ablation_contributions, compare_groups

STUDY = json.loads((Path(__file__).parent / "data" / "frozen_study.json").read_text())

# docs/results.md, "Frozen EfficientNet-Lite0, 150 px": group -> (points, low, high, level %, Holm p, verdict)
PUBLISHED_MAP = {
    "lesson-no-vertical_flip": (-1.29, -3.02, +0.43, 95.0, 0.106, "inconclusive"),
    "randaugment": (-1.67, -3.33, -0.00, 98.3, 0.059, "inconclusive"),
    "light": (-2.42, -4.81, -0.02, 97.5, 0.059, "inconclusive"),
    "mixup": (-2.90, -5.96, +0.15, 98.8, 0.059, "inconclusive"),
    "strong": (-3.60, -6.98, -0.22, 99.0, 0.040, "drop"),
    "cutmix": (-4.89, -8.47, -1.31, 99.2, 0.016, "drop"),
    "lesson": (-5.70, -8.24, -3.15, 99.4, 0.002, "drop"),
    "vertical_flip": (-4.41, -6.50, -2.32, 99.3, 0.003, "drop"),  # its contribution, in lesson
}
# "lesson's operations one by one, 5 seeds": operation -> (points, low, high, level %, Holm p, seeds, verdict)
PUBLISHED_ABLATION = {
    "vertical_flip": (-4.41, -6.41, -2.41, 99.2, 0.003, 4, "drop"),
    "rotation": (-1.34, -3.30, +0.61, 99.0, 0.171, 10, "inconclusive"),
    "zoom": (-0.59, -2.04, +0.85, 98.3, 0.540, 27, "inconclusive"),
    "shear": (-0.59, -1.83, +0.65, 98.8, 0.434, 18, "inconclusive"),
    "height_shift": (+0.22, -1.89, +2.32, 95.0, 0.791, 755, "inconclusive"),
    "width_shift": (+0.59, -0.88, +2.06, 97.5, 0.540, 34, "inconclusive"),
}


def runs(presets) -> list[RunSummary]:
    ablated = STUDY["ablated"]
    return [
        RunSummary(
            f"{preset}-{seed}",
            preset,
            seed,
            {"seed": seed, "augmentation.ablate": ablated.get(preset, "None")},
            {"test_accuracy": accuracy},
        )
        for preset in presets
        for seed, accuracy in STUDY["test_accuracy"][preset].items()
    ]


def as_published(d) -> tuple:
    """A decided difference as the tables print it: points to 2 decimals, the level to 1, Holm p to 3."""
    return (
        round(100 * d.mean, 2),
        round(100 * d.low, 2),
        round(100 * d.high, 2),
        round(100 * d.verdict_confidence, 1),
        round(d.p_adjusted, 3),
        d.verdict,
    )


def decided(groups):
    differences = compare_groups(groups, "none", "test_accuracy", 0.95, 0.8)
    ablations = ablation_contributions(groups, "test_accuracy", 0.95, 0.8)
    correct_for_many(differences + ablations, 0.95, 0.8, 0.01)
    return differences, ablations


def test_the_frozen_map_comes_out_as_published():
    presets = [p for p in STUDY["test_accuracy"] if p == "lesson-no-vertical_flip" or not p.startswith("lesson-no-")]
    differences, ablations = decided(group_runs(runs(presets)))
    found = {d.group: as_published(d) for d in differences} | {a.group: as_published(a) for a in ablations}
    assert found == {g: pytest.approx(v, abs=0.0051) for g, v in PUBLISHED_MAP.items()}
    assert {k: v[-1] for k, v in found.items()} == {k: v[-1] for k, v in PUBLISHED_MAP.items()}


def test_the_five_seed_ablation_comes_out_as_published():
    differences, ablations = decided(group_runs(runs([p for p in STUDY["test_accuracy"] if p.startswith("lesson")])))
    assert differences == []  # no `none` among these: the operations alone, Holm over the 6 of them
    found = {a.group: (*as_published(a)[:5], a.seeds_needed, a.verdict) for a in ablations}
    assert found == {g: pytest.approx(v, abs=0.0051) for g, v in PUBLISHED_ABLATION.items()}
    assert {k: v[-1] for k, v in found.items()} == {k: v[-1] for k, v in PUBLISHED_ABLATION.items()}
