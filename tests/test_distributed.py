"""train.strategy=mirrored on a CPU split into 2 logical devices, and multi_worker with two
local worker processes on 127.0.0.1 (TF_CONFIG): real tf.distribute, real MLflow records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError
from pipeline.training.devices import cluster_config
from tests.conftest import ROOT, free_port, new_store, train_args

pytestmark = pytest.mark.slow

TWO_CPU_DEVICES = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pipeline.train import main

sys.argv[0] = "pipeline.train"
main()
"""


def recorded_runs(uri: str):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])


def test_mirrored_strategy_over_two_logical_cpus(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            TWO_CPU_DEVICES,
            *train_args(tmp_path, uri, "train.strategy=mirrored", "augmentation=lesson"),
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = recorded_runs(uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["replicas"] == "2"  # really two replicas, not the default strategy
    assert len(client.get_metric_history(runs[0].info.run_id, "epoch_seconds")) == 2
    assert (tmp_path / "models" / "model.keras").exists()


def test_multi_worker_strategy_with_two_local_workers(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        args = train_args(tmp_path, uri, "train.strategy=multi_worker", f"hydra.run.dir={tmp_path}/hydra-{index}")
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.train", *args],
                cwd=ROOT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [w.communicate(timeout=600)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, output in zip(workers, outputs):
        assert w.returncode == 0, output[-3000:]

    client, runs = recorded_runs(uri)
    assert len(runs) == 1, "only the chief (worker 0) records to MLflow"
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["replicas"] == "2"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "epoch_seconds")] == [1, 2]
    model = keras.models.load_model(tmp_path / "models" / "model.keras")
    assert np.allclose(model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).sum(), 1.0, atol=1e-5)
    helper = tmp_path / "models" / "workers" / "worker-1"
    assert helper.is_dir() and not (helper / "model.keras").exists()  # it checkpointed there, saved no model
    assert not list(helper.glob("work/*/state.json"))  # and its finished work folder is gone


@pytest.mark.parametrize(
    "tf_config, complaint",
    [
        (None, "needs $TF_CONFIG"),
        ("{not json", "not a valid cluster description"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "IndexError"),
    ],
)
def test_bad_tf_config_is_explained(monkeypatch, tf_config, complaint):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match="TF_CONFIG") as error:
        cluster_config()
    assert complaint in str(error.value)
