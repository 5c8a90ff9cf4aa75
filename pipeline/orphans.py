"""Runs whose process is gone: a training killed with SIGKILL (or by the out-of-memory killer,
or a power cut) cannot end its MLflow run, which would otherwise stay RUNNING - and its
model PENDING - forever, and be counted as live by anyone reading the experiment.

Every training run records the process that trains it (`process.host`, `process.pid`,
`process.started`: the process's start time, so that a reused pid is not mistaken for it).
The next training or comparison in the same experiment marks such runs of this host KILLED,
and their PENDING models FAILED, saying so in one line each. Runs of other hosts cannot be
checked from here and are left as they are.
"""

from __future__ import annotations

import os
import socket

import mlflow
import psutil
from mlflow.entities import LoggedModelStatus

HOST, PID, STARTED = "process.host", "process.pid", "process.started"


def process_tags() -> dict[str, str]:
    """The tags that identify this process, for the run it trains."""
    return {HOST: socket.gethostname(), PID: str(os.getpid()), STARTED: f"{psutil.Process().create_time():.2f}"}


def process_alive(pid: int, started: str) -> bool:
    """True while the process `pid` that started at `started` (seconds since the epoch) runs."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}" == started
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def mark_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark this host's RUNNING runs of the experiment whose process is gone KILLED (their
    PENDING logged models FAILED); returns the ids of the runs marked."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    marked = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get(HOST) != host or PID not in tags or process_alive(int(tags[PID]), tags.get(STARTED, "")):
            continue
        client.set_tag(run.info.run_id, "end_reason", f"its process {tags[PID]} on {host} ended without closing it")
        client.set_terminated(run.info.run_id, "KILLED")
        for model in mlflow.search_logged_models(
            experiment_ids=[experiment_id], output_format="list", filter_string=f"source_run_id = '{run.info.run_id}'"
        ):
            if model.status == LoggedModelStatus.PENDING:
                mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        print(
            f"note: run {run.info.run_id} ({run.info.run_name}) was RUNNING, but its process {tags[PID]} on {host} "
            "is gone (killed?): marked KILLED"
        )
        marked.append(run.info.run_id)
    return marked
