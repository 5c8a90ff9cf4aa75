"""A tracking server that goes away while a training runs: a short outage is ridden out with
every epoch logged once it is back; a long one stops the training cleanly, the run is ended
FAILED naming the server by the next command that reaches it, and train.resume=true continues
into the same run. A real `mlflow server`, stopped and started again on the same port and store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config.compose import compose
from pipeline.tracking import runs
from tests.conftest import free_port, path_overrides, run_module, running_mlflow_server, train_args

pytestmark = pytest.mark.slow

EPOCHS = 8  # enough for an outage to begin mid-training; the waits cover the rest


def start_training(args: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """A training in its own process; its output lines are collected as they come."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", *args],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return process, lines


def wait_for_line(process: subprocess.Popen, lines: list[str], text: str, timeout_s: float = 180) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in lines):
        assert process.poll() is None or any(text in line for line in lines), "".join(lines)[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + "".join(lines)[-3000:]
        time.sleep(0.05)


def only_run(uri: str):
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])
    return client, run


def test_a_short_outage_is_ridden_out_and_every_epoch_logged(split_done):
    tmp_path, port = split_done, free_port()
    args = train_args(tmp_path, f"http://127.0.0.1:{port}", f"train.epochs={EPOCHS}", "train.patience=100")
    with running_mlflow_server(tmp_path, port=port):
        training, lines = start_training(args)
        wait_for_line(training, lines, "Epoch 2/")
    # the server is gone; the training goes on and says so
    wait_for_line(training, lines, "has not answered for")
    with running_mlflow_server(tmp_path, port=port) as uri:
        assert training.wait(timeout=300) == 0, "".join(lines)[-3000:]
        output = "".join(lines)
        assert f"the tracking server {uri}" in output and "is back after" in output
        client, run = only_run(uri)
        assert run.info.status == "FINISHED" and "end_reason" not in run.data.tags
        history = client.get_metric_history(run.info.run_id, "epoch_seconds")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # each epoch once, at its step


def test_a_long_outage_stops_cleanly_and_resume_continues_the_same_run(split_done):
    tmp_path, port = split_done, free_port()
    args = train_args(
        tmp_path,
        f"http://127.0.0.1:{port}",
        f"train.epochs={EPOCHS}",
        "train.patience=100",
        "tracking.server_patience_s=1",
    )
    with running_mlflow_server(tmp_path, port=port):
        training, lines = start_training(args)
        wait_for_line(training, lines, "Epoch 2/")
    assert training.wait(timeout=300) == 1
    said = "".join(lines)
    assert "error: the tracking server" in said and "tracking.server_patience_s=1" in said
    assert "run the same command with train.resume=true" in said and "Traceback" not in said

    with running_mlflow_server(tmp_path, port=port) as uri:
        client, run = only_run(uri)
        assert run.info.status == "RUNNING"  # it could not be ended while the server was away ...
        overrides = [o for o in path_overrides(tmp_path) if not o.startswith("hydra.")]
        config = compose([f"tracking.uri={uri}", *overrides])
        runs.connect(config.tracking, config.paths.cache_dir)  # ... the next command that reaches it does
        stopped = client.get_run(run.info.run_id)
        assert stopped.info.status == "FAILED"
        assert f"the tracking server {uri} did not answer" in stopped.data.tags["end_reason"]

        resumed = run_module("pipeline.train", *args[:-1], "train.resume=true")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        client, again = only_run(uri)
        assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
        assert again.data.tags["end_reason"] == "finished after resuming"
        history = client.get_metric_history(run.info.run_id, "epoch_seconds")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
