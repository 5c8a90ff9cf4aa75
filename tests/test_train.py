"""Training with MLflow tracking: a real sqlite store, a real `mlflow server`, real Keras fits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port, make_image, run_module, train_args

pytestmark = pytest.mark.slow


def only_run(uri: str, experiment: str = "augmentation"):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_training_run_is_recorded_and_its_model_predicts(split_done):
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_module("pipeline.train", *train_args(tmp_path, uri, "augmentation=lesson"))
    assert result.returncode == 0, result.stderr[-3000:]

    client, run = only_run(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["augmentation.rotation_range"] == "30.0"
    assert run.data.params["model.name"] == "small_cnn" and run.data.params["data.classes"] == "cat,dog,fox"
    assert run.data.tags["augmentation"] == "lesson" and run.data.tags["augmented"] == "true"
    assert len(run.data.tags["data_manifest_sha256"]) == 64 and run.data.tags["git_commit"]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    for metric in ("loss", "accuracy", "val_loss", "learning_rate", "epoch_seconds", "train_images_per_second"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "augmentation_preview.png", "history.csv", "training_curves.png", "model"} <= artifacts

    mlflow.set_tracking_uri(uri)
    loaded = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    probabilities = loaded.predict(np.full((2, 32, 32, 3), 100.0, np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (tmp_path / "models" / "model.keras").exists()
    assert (tmp_path / "reports" / "history.csv").read_text().splitlines()[0].startswith("epoch,")

    # predict: the saved file and the MLflow URI; a broken file gets its own error line
    good = make_image(tmp_path / "mine" / "photo.webp", size=(64, 50), seed=7, pattern=1, fmt="WEBP")
    broken = tmp_path / "mine" / "notes.jpg"
    broken.write_text("not an image")
    for model in (str(tmp_path / "models" / "model.keras"), f"runs:/{run.info.run_id}/model"):
        result = run_module("pipeline.predict", model, str(good), str(broken), "--top-k", "2", "--json",
                            env={"MLFLOW_TRACKING_URI": uri})
        assert result.returncode == 1, result.stderr[-2000:]  # one file failed, the other was predicted
        photo, notes = json.loads(result.stdout)
        assert [name for name, _ in photo["top"]] != [] and len(photo["top"]) == 2
        assert {name for name, _ in photo["top"]} <= {"cat", "dog", "fox"}
        assert photo["top"][0][1] >= photo["top"][1][1] and 0 < sum(p for _, p in photo["top"]) <= 1.0 + 1e-6
        assert "not an image" in notes["error"] and f"{broken}: not an image" in result.stderr
    missing = run_module("pipeline.predict", str(tmp_path / "nope.keras"), str(good))
    assert missing.returncode == 2 and "no such model file" in missing.stderr


def test_failure_is_recorded_failed(split_done):
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "split" / "val.csv").write_text("path,label\n/nonexistent/image.png,cat\n")
    result = run_module("pipeline.train", *train_args(tmp_path, uri))
    assert result.returncode != 0
    _, run = only_run(uri)
    assert run.info.status == "FAILED" and "end_reason" in run.data.tags


def start_and_stop_after(args: list[str], epoch_line: str) -> subprocess.Popen:
    """Start training and send SIGTERM once `epoch_line` (e.g. 'Epoch 3/') is printed."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.train", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if epoch_line in line:
                break
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        process.kill()
    return process


def test_sigterm_marks_the_run_killed_and_resume_continues(split_done):
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    long_run = train_args(tmp_path, uri, "train.epochs=200", "train.patience=200", "train.resume=true")
    process = start_and_stop_after(long_run, "Epoch 3/")
    assert process.returncode != 0
    _, run = only_run(uri)
    assert run.info.status == "KILLED"
    assert (tmp_path / "models" / "backup" / "training_metadata.json").exists()

    done = len(MlflowClient(uri).get_metric_history(run.info.run_id, "val_accuracy"))
    assert done >= 2
    resumed = run_module("pipeline.train", *train_args(tmp_path, uri, f"train.epochs={done + 2}", "train.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = [int(line.split(",")[0]) for line in (tmp_path / "reports" / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [done + 1, done + 2]  # continued, not restarted


def test_training_against_a_real_mlflow_server(split_done, mlflow_server):
    tmp_path = split_done
    result = run_module("pipeline.train", *train_args(tmp_path, mlflow_server, "augmentation=light"))
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(mlflow_server)
    assert run.info.status == "FINISHED" and run.data.tags["augmentation"] == "light"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2


def test_dead_tracking_server_is_reported_before_training(split_done):
    tmp_path = split_done
    result = run_module("pipeline.train", *train_args(tmp_path, f"http://127.0.0.1:{free_port()}"))
    assert result.returncode != 0
    assert "does not answer" in result.stderr and "tracking.uri" in result.stderr
    assert not (tmp_path / "models" / "model.keras").exists()


def test_multirun_gives_one_run_per_job_and_compare_reads_them(split_done):
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [a for a in train_args(tmp_path, uri, "train.epochs=2") if not a.startswith("hydra.run")]
    result = run_module("pipeline.train", "-m", "augmentation=none,lesson", "seed=1,2,3", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.tags["augmentation"], r.data.tags["seed"]) for r in runs} == {
        (p, s) for p in ("none", "lesson") for s in ("1", "2", "3")}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert len(list((tmp_path / "multirun").glob("*/models/model.keras"))) == 6  # own folder per job

    report = run_module("pipeline.compare", f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/reports",
                        f"hydra.run.dir={tmp_path}/hydra-compare")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "| none | 3 | 1,2,3 |" in report.stdout and "| lesson | 3 | 1,2,3 |" in report.stdout
    assert "paired t over 3 seeds" in report.stdout
    assert any(f"**{verdict}**" in report.stdout for verdict in ("keep", "drop", "inconclusive"))
    assert (tmp_path / "reports" / "comparison.png").stat().st_size > 10_000


def test_offline_imagenet_weights_fail_fast_with_advice():
    from pipeline.models import ModelError, resolve_weights

    start = time.perf_counter()
    try:
        resolve_weights("imagenet", timeout_s=3)
    except ModelError as error:
        assert "model.weights=null" in str(error)
    assert time.perf_counter() - start < 30  # never hangs
    with pytest.raises(ModelError, match="no such file"):
        resolve_weights("/nonexistent/weights.h5")
