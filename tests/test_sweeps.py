"""Augmentation search and sweep hygiene: an Optuna study over augmentation, a failing job
in a sweep, an interrupted sweep run again, an ablation sweep and the comparison at the end
of a sweep - all against one real MLflow store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config.sweeps import FAILED_JOB_FILE
from tests.conftest import ROOT, make_image, new_store, run_in_process, run_module, sweep_args, training_runs

pytestmark = pytest.mark.slow


def test_optuna_search_over_augmentation(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    result = run_module(  # its own process: Hydra's logging, which prints Optuna's best parameters, is its own
        "pipeline.train", "-m", "hparams_search=augmentation", "hydra.sweeper.n_trials=3", *sweep_args(tmp_path, uri)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best parameters: {'augmentation.rotation_range'" in result.stdout + result.stderr

    runs = training_runs(uri)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["optuna_study"] for r in runs} == {"augmentation-search"}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert len({r.data.tags["data_manifest_sha256"] for r in runs}) == 1  # one shared split
    # every trial drew its own magnitudes, inside the search space
    rotations = [float(r.data.params["augmentation.rotation_range"]) for r in runs]
    assert all(0 <= v <= 40 for v in rotations)
    assert (
        len({tuple(sorted((k, v) for k, v in r.data.params.items() if k.startswith("augmentation."))) for r in runs})
        == 3
    )
    (results,) = (tmp_path / "multirun").glob("*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert best["best_value"] == pytest.approx(max(r.data.metrics["best_val_accuracy"] for r in runs))
    assert "comparison of the" not in result.stdout  # trials are not presets: no end-of-sweep comparison

    # The same search again (same sampler seed, same trials): every trial is found FINISHED and
    # its recorded objective returned; nothing is trained twice.
    again = run_in_process(
        "pipeline.train", "-m", "hparams_search=augmentation", "hydra.sweeper.n_trials=3", *sweep_args(tmp_path, uri)
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip: this configuration already has the FINISHED MLflow run") == 3
    assert len(training_runs(uri)) == 3
    (first, second) = sorted((tmp_path / "multirun").glob("*/optimization_results.yaml"))
    assert yaml.safe_load(second.read_text())["best_value"] == pytest.approx(best["best_value"])


def test_a_failing_job_does_not_sink_the_sweep_and_reruns_add_runs(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    broken = tmp_path / "broken-split"
    broken.mkdir()
    for name in ("train.csv", "test.csv", "classes.json"):
        (broken / name).write_text((tmp_path / "split" / name).read_text())
    (broken / "val.csv").write_text("path,label\n/nonexistent/image.png,cat\n")  # an image gone since the split

    args = sweep_args(tmp_path, uri, "augmentation=lesson") + [f"paths.split_dir={broken},{tmp_path}/split"]
    first = run_in_process("pipeline.train", "-m", *args)
    assert first.returncode == 1  # the sweep reports the failure ...
    assert "error: /nonexistent/image.png is listed in the split but cannot be read" in first.stderr
    assert "== comparison of the 1 runs of this sweep" in first.stdout  # ... after comparing the finished job
    assert "1 job(s) of this sweep failed" in first.stderr and "Traceback" not in first.stderr
    assert [r.info.status for r in training_runs(uri)] == ["FINISHED"]  # ... found before its run: no record

    second = run_in_process("pipeline.train", "-m", *args)  # the same sweep again: the failed job is tried again,
    assert second.returncode != 0  # the finished one skipped
    assert "skip: this configuration already has the FINISHED MLflow run" in second.stdout
    assert "error: /nonexistent/image.png is listed in the split but cannot be read" in second.stderr
    assert [r.info.status for r in training_runs(uri)] == ["FINISHED"]
    assert len(list((tmp_path / "multirun").glob("*/1/models/model.keras"))) == 1  # trained once

    third = run_in_process("pipeline.train", "-m", *args, "train.rerun=true")  # ... unless asked to train it again
    assert third.returncode != 0
    assert [r.info.status for r in training_runs(uri)].count("FINISHED") == 2


def test_a_finished_configuration_is_not_skipped_over_images_changed_since(split_done):
    """The skip of a finished configuration trusts its record, tied to the split's manifest: an
    image edited after the split (and no split since) stops the job, naming the file."""
    from pipeline.data.manifests import read_manifest

    tmp_path = split_done
    uri = new_store(tmp_path)
    args = sweep_args(tmp_path, uri, "augmentation=none", "seed=1", "train.test_in_sweeps=false")
    assert run_in_process("pipeline.train", "-m", *args).returncode == 0
    edited = read_manifest(tmp_path / "split", "val")[0][0]
    make_image(Path(edited), size=(40, 40), seed=999, pattern=2)  # other pixels, same name
    again = run_in_process("pipeline.train", "-m", *args)
    assert again.returncode == 1
    assert "skip:" not in again.stdout
    assert f"error: {edited} has changed since the split was made" in again.stderr
    assert len(training_runs(uri)) == 1


def test_a_skipped_run_stopped_before_its_test_is_evaluated_when_its_model_is_still_its_own(split_done):
    """A sweep stopped between a job's training and its test evaluation leaves a FINISHED run without
    test metrics (made here by removing them from the store); the sweep run again skips the training
    but evaluates that run's model - unless the file was replaced since, which it says."""
    tmp_path = split_done
    uri = new_store(tmp_path)
    args = sweep_args(tmp_path, uri, "augmentation=none", "seed=1")
    assert run_in_process("pipeline.train", "-m", *args).returncode == 0
    with sqlite3.connect(tmp_path / "mlflow.db") as store:
        for table in ("metrics", "latest_metrics"):
            store.execute(f"DELETE FROM {table} WHERE key LIKE 'test_%'")
    (run,) = training_runs(uri)
    assert "test_accuracy" not in run.data.metrics
    model_file = Path(run.data.tags["model_file"])
    saved = model_file.stat().st_mtime

    os.utime(model_file, (saved + 3600, saved + 3600))  # as if another training wrote it since
    replaced = run_in_process("pipeline.train", "-m", *args)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "skip:" in replaced.stdout and "its model.keras is gone or was replaced since" in replaced.stdout
    assert "test_accuracy" not in training_runs(uri)[0].data.metrics

    os.utime(model_file, (saved, saved))
    again = run_in_process("pipeline.train", "-m", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"evaluating {model_file.parent}/model.keras" in again.stdout
    (evaluated,) = training_runs(uri)
    assert evaluated.info.run_id == run.info.run_id and evaluated.info.status == "FINISHED"
    assert 0 <= evaluated.data.metrics["test_accuracy"] <= 1


def finished_runs(uri: str) -> list:
    return [r for r in training_runs(uri) if r.info.status == "FINISHED"]


def run_statuses(db: Path) -> list[str]:
    """The runs' statuses, read straight from sqlite: an MLflow client here would race the
    sweep's own creation of the store's tables."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return [status for (status,) in connection.execute("SELECT status FROM runs")]
    except sqlite3.OperationalError:  # not created yet
        return []


def test_an_interrupted_sweep_resumes_with_the_same_command(split_done):
    """2 presets x 2 seeds, SIGTERM while the third job trains, the same command again:
    exactly one FINISHED run per configuration, and the sweep ends with the comparison."""
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # made by the sweep, while this test reads it (run_statuses)
    command = [
        sys.executable,
        "-m",
        "pipeline.train",
        "-m",
        "augmentation=none,lesson",
        "seed=1,2",
        *sweep_args(tmp_path, uri, "train.epochs=3"),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    sweep = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(1)
        statuses = run_statuses(tmp_path / "mlflow.db")
        if statuses.count("FINISHED") >= 2 and "RUNNING" in statuses:
            break
    sweep.send_signal(signal.SIGTERM)
    output = sweep.communicate(timeout=120)[0]
    assert sweep.returncode != 0, output[-3000:]
    interrupted = training_runs(uri)
    assert len(finished_runs(uri)) == 2 and "KILLED" in {r.info.status for r in interrupted}, output[-3000:]

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip: this configuration already has the FINISHED MLflow run") == 2
    finished = finished_runs(uri)
    assert len(finished) == 4
    assert len({r.data.tags["config_hash"] for r in finished}) == 4
    assert {(r.data.tags["augmentation"], r.data.tags["seed"]) for r in finished} == {
        (p, s) for p in ("none", "lesson") for s in ("1", "2")
    }
    # the end-of-sweep comparison covers all four runs, the two skipped ones included
    assert "comparison of the 4 runs of this sweep" in again.stdout
    assert again.stdout.rstrip().splitlines()[-1].startswith("lesson vs none: ")  # its verdict, last
    (report,) = (tmp_path / "multirun").glob("*/comparison/comparison.json")
    assert json.loads(report.read_text())["runs"] == 4


def test_an_ablation_sweep_reports_each_operation(split_done):
    """augmentation.ablate over the preset's operations: each operation's contribution, paired by seed."""
    tmp_path = split_done
    uri = new_store(tmp_path)
    result = run_in_process(
        "pipeline.train",
        "-m",
        "augmentation=lesson",
        "augmentation.ablate=none,rotation,zoom",
        "seed=1,2",
        *sweep_args(tmp_path, uri),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = finished_runs(uri)
    assert sorted({r.data.tags["augmentation"] for r in runs}) == ["lesson", "lesson-no-rotation", "lesson-no-zoom"]
    no_rotation = [r for r in runs if r.data.tags["augmentation"] == "lesson-no-rotation"]
    assert {r.data.params["augmentation.rotation_range"] for r in no_rotation} == {"0.0"}
    assert {r.data.params["augmentation.zoom_range"] for r in no_rotation} == {"0.1"}
    (report,) = (tmp_path / "multirun").glob("*/comparison/comparison.json")
    assert "## Which operation helps" in report.with_name("comparison.md").read_text()
    assert "rotation in lesson: " in result.stdout and "zoom in lesson: " in result.stdout  # a verdict line each
    comparison = json.loads(report.read_text())
    ablations = {a["group"]: a for a in comparison["ablations"]}
    assert set(ablations) == {"rotation", "zoom"}
    assert comparison["differences"] == [] and "(missing)" not in result.stdout  # no `none` swept: no rows for it
    assert ablations["rotation"]["baseline"] == "lesson-no-rotation"
    assert ablations["rotation"]["method"] == "paired over 2 seeds"
    by_seed = {(r.data.tags["augmentation"], r.data.tags["seed"]): r.data.metrics["best_val_accuracy"] for r in runs}
    assert ablations["zoom"]["per_seed"] == pytest.approx(
        {s: by_seed[("lesson", s)] - by_seed[("lesson-no-zoom", s)] for s in ("1", "2")}
    )


def test_test_time_augmentation_in_a_sweep_and_afterwards_without_training_again(split_done):
    """evaluate.tta=flip on a sweep: every run records its TTA results and the sweep's comparison gives each
    group a TTA verdict; the same sweep with another TTA trains nothing and evaluates every run with it."""
    tmp_path = split_done
    uri = new_store(tmp_path)
    args = sweep_args(tmp_path, uri, "augmentation=none,lesson", "seed=1,2", "compare.affinity=false")
    first = run_in_process("pipeline.train", "-m", *args, "evaluate.tta=flip")
    assert first.returncode == 0, first.stderr[-3000:]
    runs = training_runs(uri)
    assert len(runs) == 4 and {r.data.tags["evaluate.tta"] for r in runs} == {"flip"}
    assert all({"test_accuracy", "tta_test_accuracy", "tta_test_loss"} <= set(r.data.metrics) for r in runs)
    assert "none+tta(flip) vs none:" in first.stdout and "lesson+tta(flip) vs lesson:" in first.stdout

    again = run_in_process("pipeline.train", "-m", *args, "evaluate.tta=lesson", "evaluate.tta_views=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip: this configuration already has") == 4  # nothing trained again ...
    assert again.stdout.count("that run has no evaluate.tta=lesson results yet: evaluating") == 4  # ... evaluated
    rerun = training_runs(uri)
    assert len(rerun) == 4 and {r.data.tags["evaluate.tta"] for r in rerun} == {"lesson x2 seed 0"}
    plain = {r.info.run_id: r.data.metrics["test_accuracy"] for r in runs}
    assert {r.info.run_id: r.data.metrics["test_accuracy"] for r in rerun} == plain  # the same model, the same test
    assert "none+tta(lesson x2 seed 0) vs none:" in again.stdout


def test_a_sweep_on_splits_drawn_per_seed_records_each_and_pairs_within_it(split_done):
    """data.split.train_val_per_seed: each seed trains on its own train/val draw, recorded on its runs
    (tag train_val_sha256, the datasets' digests); none and lesson of one seed share it and are paired."""
    from mlflow.tracking import MlflowClient

    tmp_path = split_done
    uri = new_store(tmp_path)
    swept = ["augmentation=none,lesson", "seed=1,2", "data.split.train_val_per_seed=true"]
    result = run_in_process("pipeline.train", "-m", *swept, *sweep_args(tmp_path, uri))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train/val drawn for seed 2: 30 and 3 images (test fixed)" in result.stdout
    runs = finished_runs(uri)
    assert len(runs) == 4 and {r.data.params["data.split.train_val_per_seed"] for r in runs} == {"True"}
    draws = {(r.data.tags["augmentation"], r.data.tags["seed"]): r.data.tags["train_val_sha256"] for r in runs}
    assert draws[("none", "1")] == draws[("lesson", "1")] != draws[("none", "2")] == draws[("lesson", "2")]
    fixed = hashlib.sha256(
        b"".join(
            hashlib.sha256((tmp_path / "split" / f"{n}.csv").read_bytes()).hexdigest().encode()
            for n in ("train", "val")
        )
    ).hexdigest()
    assert fixed not in draws.values()  # neither seed trained on the split stage's own train/val
    client = MlflowClient(uri)
    datasets = {
        r.data.tags["seed"]: {d.dataset.digest for d in client.get_run(r.info.run_id).inputs.dataset_inputs}
        for r in runs
    }
    assert datasets["1"] != datasets["2"]  # the drawn train and val manifests' digests
    (report,) = (tmp_path / "multirun").glob("*/comparison/comparison.json")
    (lesson,) = json.loads(report.read_text())["differences"]
    assert lesson["method"] == "paired over 2 seeds" and lesson["other_splits"] == []


def test_a_failing_optuna_trial_is_recorded_failed_and_the_search_goes_on(split_done):
    """A trial whose drawn value is refused (a 40-pixel shift of 32-pixel images) fails alone: Optuna's
    sweeper records it FAILED, the other trials train, and the command names it and exits 1. The
    space is a file outside conf/, found through hydra.searchpath."""
    tmp_path = split_done
    uri = new_store(tmp_path)
    space = tmp_path / "spaces" / "hparams_search" / "shifts.yaml"
    space.parent.mkdir(parents=True)
    text = (ROOT / "conf" / "hparams_search" / "augmentation.yaml").read_text()
    space.write_text(
        text[: text.index("    params:")] + "    params:\n      augmentation.width_shift_range: choice(0.1, 40.0)\n"
    )
    result = run_in_process(
        "pipeline.train",
        "-m",
        "hparams_search=shifts",
        f"hydra.searchpath=[file://{tmp_path / 'spaces'}]",
        "hydra.sweeper.n_trials=4",
        *sweep_args(tmp_path, uri),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    failed = list((tmp_path / "multirun").glob(f"*/*/{FAILED_JOB_FILE}"))
    ran = list((tmp_path / "multirun").glob("*/*/reports/run.json"))  # a value drawn again: its run is found
    assert failed and ran and len(failed) + len(ran) == 4, result.stderr[-3000:]
    finished = finished_runs(uri)
    assert "moves every image out of its 32-pixel width" in failed[0].read_text()
    assert {r.data.params["augmentation.width_shift_range"] for r in finished} == {"0.1"}
    assert f"{len(failed)} job(s) of this sweep failed" in result.stderr
    (results,) = (tmp_path / "multirun").glob("*/optimization_results.yaml")
    assert yaml.safe_load(results.read_text())["best_params"] == {"augmentation.width_shift_range": 0.1}


def test_a_preset_found_through_hydra_searchpath_is_checked_before_the_sweep(split_done):
    """A sweep over a preset kept outside conf/ (hydra.searchpath, as pipeline.search's candidates are):
    its jobs are composed with that search path up front, so a bad value in it stops the sweep at once."""
    tmp_path = split_done
    presets = tmp_path / "mine" / "augmentation"
    presets.mkdir(parents=True)
    (presets / "tilted.yaml").write_text("name: tilted\nrotation_range: -5\n")
    result = run_in_process(
        "pipeline.train",
        "-m",
        "augmentation=none,tilted",
        "seed=1,2",
        f"hydra.searchpath=[file://{tmp_path / 'mine'}]",
        *sweep_args(tmp_path, f"sqlite:///{tmp_path}/mlflow.db"),
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "job #2 of this sweep (augmentation=tilted seed=1 " in result.stderr
    assert "augmentation.rotation_range: must be [0, 360], got -5.0 Nothing has run" in result.stderr
    assert "raised" not in result.stderr and not (tmp_path / "mlflow.db").exists()
