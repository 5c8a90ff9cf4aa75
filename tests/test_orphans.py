"""Runs left RUNNING by a process that was killed (SIGKILL) are found and closed by the next one;
runs whose process cannot be seen from here (another host, boot or PID namespace) are left alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from pipeline.config.compose import compose
from pipeline.tracking import runs


def test_the_next_run_marks_a_killed_processs_run_killed_and_its_model_failed(tmp_path, capsys, store_uri):
    uri = store_uri
    config = compose([f"tracking.uri={uri}"])
    runs.connect(config.tracking, config.paths.cache_dir)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("augmentation").experiment_id
    alive = runs.this_process()  # this very process: alive
    gone = {**alive, runs.STARTED: "1.00"}  # same pid, another start: a process that is gone
    unseen = {  # a gone pid, but not one of this process's space: cannot be checked from here
        "elsewhere": {**gone, runs.HOST: "another-host"},
        "another container": {**gone, runs.PID_NAMESPACE: "pid:[1]"},
        "before a reboot": {**gone, runs.BOOT: "an-earlier-boot"},
        "an older record": {key: gone[key] for key in (runs.HOST, runs.PID, runs.STARTED)},
    }
    as_tag = {name: {runs.PROCESS_TAG: json.dumps(fields)} for name, fields in unseen.items()}
    as_tag["an older record"] = {f"process.{key}": value for key, value in unseen["an older record"].items()}
    as_tag["gone before the single tag"] = {f"process.{key}": value for key, value in gone.items()}  # still checked
    run_ids = {
        name: client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        for name, tags in (
            ("alive", {runs.PROCESS_TAG: json.dumps(runs.this_process())}),
            ("gone", {runs.PROCESS_TAG: json.dumps(gone)}),
            *as_tag.items(),
        )
    }
    pending = mlflow.initialize_logged_model(name="model", source_run_id=run_ids["gone"], experiment_id=experiment_id)

    runs.connect(config.tracking, config.paths.cache_dir)  # what train and compare do first

    status = {name: client.get_run(run_id).info.status for name, run_id in run_ids.items()}
    assert status == {
        "alive": "RUNNING",
        "gone": "KILLED",
        "gone before the single tag": "KILLED",
        **{name: "RUNNING" for name in unseen},
    }
    assert mlflow.get_logged_model(pending.model_id).status == LoggedModelStatus.FAILED
    assert f"run {run_ids['gone']} (gone) was RUNNING: ended KILLED, its process" in capsys.readouterr().out
    assert "ended without closing it" in client.get_run(run_ids["gone"]).data.tags["end_reason"]
    assert socket.gethostname() in client.get_run(run_ids["gone"]).data.tags["end_reason"]


CONTAINED_TRAINING = """
import pathlib, sys, time
from pipeline.tracking import runs
from pipeline.config.compose import compose
uri, started, go = sys.argv[1:]
config = compose([f"tracking.uri={uri}"])
runs.connect(config.tracking, config.paths.cache_dir)
with runs.tracked_run(run_name="in-a-container") as run:
    pathlib.Path(started).write_text(run.info.run_id)
    while not pathlib.Path(go).exists():
        time.sleep(0.1)
"""


def _new_pid_namespace() -> list[str]:
    """The `unshare` prefix that starts a process in a PID namespace of its own (pid 1 there), as
    a container on this host would be: as root, or through a user namespace; skip where neither runs."""
    for prefix in (
        ["unshare", "--pid", "--fork", "--mount-proc"],
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"],
    ):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    pytest.skip("cannot start a process in a new PID namespace here (unshare)")


@pytest.mark.slow  # a training process in a container of its own
def test_a_live_run_in_another_pid_namespace_is_not_called_dead(tmp_path):
    """A training in a container of this host (pid 1 there, the same host name) is still running
    when a training outside it starts: it stays RUNNING, and finishes FINISHED with no end_reason."""
    prefix = _new_pid_namespace()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    started, go = tmp_path / "started", tmp_path / "go"
    contained = subprocess.Popen(
        [*prefix, sys.executable, "-c", CONTAINED_TRAINING, uri, str(started), str(go)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and contained.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "the contained training did not start its run"
        run_id = started.read_text()
        client = MlflowClient(uri)
        recorded = runs.recorded_process(client.get_run(run_id).data.tags)
        assert recorded[runs.PID] == "1"  # its pid, valid only in its namespace

        config = compose([f"tracking.uri={uri}"])
        runs.connect(config.tracking, config.paths.cache_dir)  # a training outside starts

        assert client.get_run(run_id).info.status == "RUNNING"
        go.touch()
        assert contained.wait(timeout=60) == 0
    finally:
        go.touch()
        contained.kill()
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and "end_reason" not in finished.data.tags


def test_a_run_marked_killed_by_mistake_clears_the_mark_when_it_finishes(tmp_path, store_uri):
    uri = store_uri
    config = compose([f"tracking.uri={uri}"])
    runs.connect(config.tracking, config.paths.cache_dir)
    client = MlflowClient(uri)
    with runs.tracked_run(run_name="alive after all") as run:
        # what another process's orphan check did, which could not see this one
        client.set_tag(run.info.run_id, "end_reason", f"{runs.MARKED_REASON} 1 on {socket.gethostname()} ended")
        client.set_terminated(run.info.run_id, "KILLED")
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and "end_reason" not in finished.data.tags
