"""Runs left RUNNING by a process that was killed (SIGKILL) are found and closed by the next one."""

from __future__ import annotations

import socket

import mlflow
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from pipeline import orphans, tracking
from pipeline.config import compose


def test_the_next_run_marks_a_killed_processs_run_killed_and_its_model_failed(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = compose([f"tracking.uri={uri}"])
    tracking.connect(config)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("augmentation").experiment_id
    alive_tags = orphans.process_tags()  # this very process: alive
    gone_tags = {**alive_tags, orphans.STARTED: "1.00"}  # same pid, another start: a process that is gone
    elsewhere = {**gone_tags, orphans.HOST: "another-host"}  # cannot be checked from here
    runs = {
        name: client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        for name, tags in (("alive", alive_tags), ("gone", gone_tags), ("elsewhere", elsewhere))
    }
    pending = mlflow.initialize_logged_model(name="model", source_run_id=runs["gone"], experiment_id=experiment_id)

    tracking.connect(config)  # what train and compare do first

    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"alive": "RUNNING", "gone": "KILLED", "elsewhere": "RUNNING"}
    assert mlflow.get_logged_model(pending.model_id).status == LoggedModelStatus.FAILED
    assert f"run {runs['gone']} (gone) was RUNNING, but its process" in capsys.readouterr().out
    assert "ended without closing it" in client.get_run(runs["gone"]).data.tags["end_reason"]
    assert socket.gethostname() in client.get_run(runs["gone"]).data.tags["end_reason"]
