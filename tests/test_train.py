"""Training with MLflow tracking: a real sqlite store, a real `mlflow server`, real Keras fits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline import split
from pipeline.config import compose
from tests.conftest import path_overrides, run_module

pytestmark = pytest.mark.slow


def train_args(tmp_path: Path, uri: str, *extra: str) -> list[str]:
    return ["model=small_cnn", "train.epochs=2", "train.batch_size=8", "data.image_size=[32,32]",
            f"tracking.uri={uri}", *path_overrides(tmp_path), *extra]


@pytest.fixture
def split_done(tmp_path, tiny_dataset):
    overrides = [o for o in path_overrides(tmp_path) if not o.startswith("hydra.")]
    split.run(compose([f"data.source={tiny_dataset}", *overrides]))
    return tmp_path


def only_run(uri: str, experiment: str = "augmentation"):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_training_run_is_recorded_in_sqlite(split_done):
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
         str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(120):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


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


def test_multirun_gives_one_run_per_job(split_done):
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [a for a in train_args(tmp_path, uri, "train.epochs=1") if not a.startswith("hydra.run")]
    result = run_module("pipeline.train", "-m", "augmentation=none,lesson", "seed=1,2", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.tags["augmentation"], r.data.tags["seed"]) for r in runs} == {
        ("none", "1"), ("none", "2"), ("lesson", "1"), ("lesson", "2")}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert len(list((tmp_path / "multirun").glob("*/models/model.keras"))) == 4  # own folder per job


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
