"""The confirmed search: a real Optuna search over pipeline.train, its top settings confirmed on fresh
seeds against `none` in a real MLflow store, interrupted by SIGTERM and resumed; its bookkeeping
(which trials become candidates, their presets, the space file) checked on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.config.compose import validate
from pipeline.errors import ConfigError
from pipeline.study.search import Job, candidate_name, conclusion, preset_text, searched_keys, top_settings
from tests.conftest import ROOT, new_store, split_tiny, train_args, training_runs

FLIPS = ["augmentation.horizontal_flip", "augmentation.vertical_flip"]


def trial(number: int, best_val: float, **settings: str) -> Job:
    overrides = {"seed": "42", **{f"augmentation.{k}": v for k, v in settings.items()}}
    return Job(number, overrides, f"run{number}", best_val, skipped=False)


def test_the_candidates_are_the_best_distinct_settings_earlier_trial_first():
    trials = [
        trial(0, 0.70, horizontal_flip="true", vertical_flip="false"),
        trial(1, 0.80, horizontal_flip="false", vertical_flip="true"),
        trial(2, 0.80, horizontal_flip="false", vertical_flip="true"),  # the same setting again: not a candidate
        trial(3, 0.80, horizontal_flip="true", vertical_flip="true"),
        trial(4, 0.75, horizontal_flip="true", vertical_flip="false"),  # a setting seen at trial 0, scored higher
    ]
    assert [t.number for t in top_settings(trials, 3, FLIPS)] == [1, 3, 4]
    assert [t.number for t in top_settings(trials, 9, FLIPS)] == [1, 3, 4]  # only 3 distinct settings
    names = {candidate_name(t, FLIPS) for t in trials}
    assert candidate_name(trials[1], FLIPS) == candidate_name(
        trial(1, 0.1, horizontal_flip="false", vertical_flip="true"), FLIPS
    )
    assert len(names) == 5  # a name says its trial
    other_search = trial(1, 0.80, horizontal_flip="true", vertical_flip="false")  # trial 1 of another search
    assert candidate_name(other_search, FLIPS) != candidate_name(trials[1], FLIPS)


def test_a_candidates_preset_is_a_valid_augmentation_preset():
    best = trial(7, 0.9, rotation_range="12", brightness_range="[0.9,1.1]", horizontal_flip="true")
    keys = ["augmentation.rotation_range", "augmentation.brightness_range", "augmentation.horizontal_flip"]
    text = preset_text("search-t7-abcd", best, keys, "# from a test\n")
    assert text.startswith("# from a test\n")
    preset = yaml.safe_load(text)
    assert preset == {
        "name": "search-t7-abcd",
        "rotation_range": 12,
        "brightness_range": [0.9, 1.1],
        "horizontal_flip": True,
    }
    augmentation = validate({"augmentation": preset}).augmentation
    assert (augmentation.rotation_range, augmentation.horizontal_flip) == (12, True)


def test_a_space_must_search_augmentation_keys_only(tmp_path):
    assert searched_keys(ROOT / "conf" / "hparams_search" / "augmentation.yaml")[0] == "augmentation.rotation_range"
    space = tmp_path / "space.yaml"
    space.write_text("hydra:\n  sweeper:\n    params:\n      model.dropout: interval(0.1, 0.5)\n")
    with pytest.raises(ConfigError, match="searches model.dropout; .* must be an augmentation.\\* key"):
        searched_keys(space)
    space.write_text("hydra:\n  sweeper:\n    direction: maximize\n")
    with pytest.raises(ConfigError, match="searches no keys"):
        searched_keys(space)


def test_the_conclusion_names_a_kept_candidate_or_says_nothing_beats_none():
    row = {"name": "search-t3-aaaa", "estimate": 0.05, "confirmed_test": -0.01, "seeds": 5, "low": -0.03, "high": 0.01}
    nothing = conclusion({"candidates": [{**row, "verdict": "inconclusive"}]})
    assert nothing[0].startswith(
        "the search found nothing that beats `none`: its best estimate, search-t3-aaaa at +5.00"
    )
    kept = conclusion({"candidates": [{**row, "verdict": "keep", "confirmed_test": 0.02, "low": 0.01}]})
    assert kept == [
        "search-t3-aaaa beats `none`: keep, +2.00 points on test [+1.00, +1.00]; adopt it: cp presets/search-t3-aaaa.yaml conf/augmentation/"
    ]


def noisy_dataset(folder: Path) -> Path:
    """3 classes x 30 noisy images told apart by stripe direction and period only: a flip keeps every class,
    so flipping is a no-op for what is learnt, and a 3-epoch run's accuracy is noisy."""
    root = folder / "stripes"
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i in range(30):
            rng = np.random.default_rng(1000 * c + i)
            yy, xx = np.ogrid[0:40, 0:48]
            stripes = ((xx if c % 2 else yy) // (3 + c)) % 2
            pixels = rng.integers(0, 200, size=(40, 48, 3)) + 40 * stripes[..., None]
            path = root / name / f"{name}_{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


@pytest.mark.slow
def test_a_search_won_by_a_no_op_is_not_confirmed_and_resumes_after_sigterm(tmp_path):
    split_tiny(tmp_path, noisy_dataset(tmp_path))
    space = tmp_path / "flips.yaml"  # a copy of the shipped space, its ranges edited: flips only
    text = (ROOT / "conf" / "hparams_search" / "augmentation.yaml").read_text()
    params = "\n".join(f"      {key}: choice(true, false)" for key in FLIPS)
    space.write_text(text[: text.index("    params:")] + f"    params:\n{params}\n")
    uri = new_store(tmp_path)
    args = train_args(tmp_path, uri, "train.epochs=3", f"search.space={space}", "search.trials=5", "search.top_k=1")
    command = [sys.executable, "-m", "pipeline.search", *args, "search.seeds=3", "compare.affinity=false"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    # SIGTERM during the search's second trial: the command hands it on, its run ends KILLED
    stopped = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in stopped.stdout:
        seen.append(line)
        if line.startswith("sweep: job 2 of 5"):
            time.sleep(1.0)
            stopped.send_signal(signal.SIGTERM)
            break
    seen += stopped.stdout.readlines()
    assert stopped.wait(timeout=120) == 143, "".join(seen)[-3000:]
    assert "stopped: received SIGTERM" in "".join(seen)
    assert {r.info.status for r in training_runs(uri)} <= {"FINISHED", "KILLED"}

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skip: this configuration already has the FINISHED MLflow run" in done.stdout  # trial 0, not trained again
    assert "raised" not in done.stderr  # the confirmation's jobs, candidates included, were checked up front
    report = json.loads((tmp_path / "reports" / "search.json").read_text())
    runs = [r for r in training_runs(uri) if r.info.status == "FINISHED"]
    trials = [r for r in runs if r.data.params["augmentation.name"] == "optuna-search"]
    assert len(report["trials"]) == 5 and {r.data.params["seed"] for r in trials} == {"42"}
    # a setting drawn twice is one run (the second trial finds it FINISHED): 4 flip settings at most
    assert {t["run_id"] for t in report["trials"]} == {r.info.run_id for r in trials} and len(trials) <= 4
    confirmation = [r for r in runs if r.data.params["seed"] != "42"]
    assert {r.data.params["seed"] for r in confirmation} == {"43", "44", "45"}  # fresh: never searched
    names = [c["name"] for c in report["candidates"]]
    assert sorted({r.data.params["augmentation.name"] for r in confirmation}) == sorted(["none", *names])

    # The search's winner won by luck: flips cannot change what is learnt here
    winner = report["candidates"][0]
    assert winner["search_val"] == max(t["best_val"] for t in report["trials"])
    assert winner["estimate"] == pytest.approx(winner["search_val"] - report["none_search_val"])
    assert winner["estimate"] > 0
    assert all(c["verdict"] != "keep" for c in report["candidates"])
    assert "the search found nothing that beats `none`" in done.stdout
    comparison = json.loads((tmp_path / "reports" / "comparison.json").read_text())
    assert sorted(d["group"] for d in comparison["differences"]) == sorted(names)

    # Each candidate is a preset a user can adopt; the comparison run carries the search
    preset = yaml.safe_load((tmp_path / "reports" / "presets" / f"{names[0]}.yaml").read_text())
    assert preset["name"] == names[0] and set(preset) == {"name", "horizontal_flip", "vertical_flip"}
    assert (tmp_path / "reports" / "search.png").stat().st_size > 10_000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (compared,) = client.search_runs([client.get_experiment_by_name("augmentation-comparisons").experiment_id])
    assert compared.info.run_id == report["comparison_run_id"]
    assert compared.data.tags["search.conclusion"].startswith("the search found nothing that beats `none`")
    assert set(compared.data.tags["search.trials"].split(",")) == {r.info.run_id for r in trials}
    assert "The search's trials" in compared.data.tags["mlflow.note.content"]
    assert {"search.md", "search.png", "presets"} <= {a.path for a in client.list_artifacts(compared.info.run_id)}
