"""Augmentation search and sweep hygiene: an Optuna study over augmentation, a failing job
in a sweep, a re-run sweep - all against one real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import run_module, train_args

pytestmark = pytest.mark.slow


def sweep_args(tmp_path: Path, uri: str, *extra: str) -> list[str]:
    """train_args for a multirun: each sweep gets its own timestamped folder, as by default."""
    return [a for a in train_args(tmp_path, uri, "train.epochs=1", *extra) if not a.startswith("hydra.")] + [
        f"hydra.sweep.dir={tmp_path}/multirun/${{now:%H-%M-%S-%f}}"]


def all_runs(uri: str):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])


def test_optuna_search_over_augmentation(split_done):
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_module("pipeline.train", "-m", "hparams_search=augmentation", "hydra.sweeper.n_trials=3",
                        *sweep_args(tmp_path, uri))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best parameters: {'augmentation.rotation_range'" in result.stdout + result.stderr

    runs = all_runs(uri)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["optuna_study"] for r in runs} == {"augmentation-search"}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert len({r.data.tags["data_manifest_sha256"] for r in runs}) == 1  # one shared split
    # every trial drew its own magnitudes, inside the search space
    rotations = [float(r.data.params["augmentation.rotation_range"]) for r in runs]
    assert all(0 <= v <= 40 for v in rotations)
    assert len({tuple(sorted((k, v) for k, v in r.data.params.items() if k.startswith("augmentation.")))
                for r in runs}) == 3
    (results,) = (tmp_path / "multirun").glob("*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert best["best_value"] == pytest.approx(max(r.data.metrics["best_val_accuracy"] for r in runs))


def test_a_failing_job_does_not_sink_the_sweep_and_reruns_add_runs(split_done):
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    broken = tmp_path / "broken-split"
    broken.mkdir()
    for name in ("train.csv", "test.csv", "classes.json"):
        (broken / name).write_text((tmp_path / "split" / name).read_text())
    (broken / "val.csv").write_text("path,label\n/nonexistent/image.png,cat\n")  # fails inside fit

    args = sweep_args(tmp_path, uri, "augmentation=lesson") + [f"paths.split_dir={broken},{tmp_path}/split"]
    first = run_module("pipeline.train", "-m", *args)
    assert first.returncode != 0  # the sweep reports the failure ...
    runs = all_runs(uri)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # ... after the next job still ran
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "end_reason" in failed.data.tags

    second = run_module("pipeline.train", "-m", *args)  # the same sweep again
    assert second.returncode != 0
    runs = all_runs(uri)
    assert len(runs) == 4 and len({r.info.run_id for r in runs}) == 4  # earlier runs kept
    assert len({r.data.tags["sweep_id"] for r in runs}) == 2
    assert len(list((tmp_path / "multirun").glob("*/1/models/model.keras"))) == 2  # two sweep folders
