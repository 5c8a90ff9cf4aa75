"""The `rounds` command: seeds in rounds through real sweeps of pipeline.train, a real MLflow store,
and `compare` replaying the rounds afterwards; its bookkeeping checked on its own."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import ConfigError
from pipeline.study.rounds import check_groups, group_sweeps, groups_to_train
from tests.conftest import new_store, run_in_process, run_module, train_args, training_runs


@pytest.mark.slow
def test_rounds_train_the_next_seeds_and_compare_replays_the_verdicts(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    args = train_args(tmp_path, uri, "train.epochs=1", "compare.groups=[none,lesson]", "compare.rounds=[3,4]")
    args.append("compare.affinity=false")
    done = run_module("pipeline.rounds", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== round 1 of 2: seeds 42-44 of none, lesson ==" in done.stdout
    report = json.loads((tmp_path / "reports" / "comparison.json").read_text())
    (lesson,) = report["differences"]
    assert report["rounds"] == [3, 4]
    runs = training_runs(uri)
    seeds = sorted((r.data.tags["augmentation"], r.data.params["seed"]) for r in runs)
    if lesson["verdict"] == "inconclusive":  # open after round 1: round 2 trained seed 45 of both groups
        assert "== round 2 of 2: seeds 45-45 of none, lesson ==" in done.stdout
        assert seeds == sorted((p, str(s)) for p in ("none", "lesson") for s in range(42, 46))
        assert "(round 2 of 2: 4 seeds" in lesson["reason"]
    else:  # settled after round 1 (not converged, say, at 1 epoch): no second round
        assert "round 2 of 2" not in done.stdout and len(runs) == 6
        assert "(round 1 of 2: 3 seeds" in lesson["reason"]
    assert f"{lesson['group']} vs {lesson['baseline']}: {lesson['verdict']}" in done.stdout  # the study summary

    again = run_module("pipeline.rounds", *args)  # the same command: every run is skipped, the same verdict
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(training_runs(uri)) == len(runs) and "skip: this configuration already has" in again.stdout
    replayed = run_in_process("pipeline.compare", *args, f"paths.reports_dir={tmp_path}/later")
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    later = json.loads((tmp_path / "later" / "comparison.json").read_text())
    assert [(d["verdict"], d["low"], d["high"]) for d in later["differences"]] == [
        (lesson["verdict"], lesson["low"], lesson["high"])
    ]


def test_the_groups_need_the_baseline_and_known_presets():
    assert check_groups(["none", "lesson-no-vertical_flip"], "none") == ["none", "lesson-no-vertical_flip"]
    with pytest.raises(ConfigError, match=r"the baseline 'none' \(compare.baseline\) must be one of them"):
        check_groups(["light", "lesson"], "none")
    with pytest.raises(ConfigError, match="augmentation=lessen: there is no conf/augmentation/lessen.yaml"):
        check_groups(["none", "lessen"], "none")


def test_a_round_sweeps_presets_together_and_each_ablation_apart():
    assert group_sweeps(["none", "lesson", "lesson-no-vertical_flip"], [4, 5]) == [
        ["augmentation=none,lesson", "seed=4,5"],
        ["augmentation=lesson", "augmentation.ablate=vertical_flip", "seed=4,5"],
    ]


def test_only_the_groups_of_open_comparisons_train_again():
    open_ones = [
        {"group": "light", "baseline": "none"},  # a preset against the baseline: both
        {"group": "vertical_flip", "baseline": "lesson-no-vertical_flip"},  # an operation: its preset, with and without
    ]
    assert groups_to_train(open_ones, "none") == ["none", "light", "lesson", "lesson-no-vertical_flip"]
    assert groups_to_train(open_ones[1:], "none") == ["lesson", "lesson-no-vertical_flip"]  # no baseline needed
