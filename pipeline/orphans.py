"""Runs whose process is gone: a training killed with SIGKILL (or by the out-of-memory killer,
or a power cut) cannot end its MLflow run, which would otherwise stay RUNNING - and its
model PENDING - forever, and be counted as live by anyone reading the experiment.

Every training run records the process that trains it in one tag, `process` (JSON, one entry in
the MLflow UI's menus rather than five): `host`, `pid`, `started` (the process's start time, so
that a reused pid is not mistaken for it) and where that pid means something: `boot` (this boot of
the machine) and `pid_namespace` (containers on one host, even with one host name, each number
their processes from 1). Runs recorded before it carry them as `process.<field>` tags, read too. The next training or comparison in the same experiment marks such runs
KILLED, and their PENDING models FAILED, saying so in one line each - but only runs of this
host, this boot and this PID namespace, whose process it can see. A run it cannot check (another
machine, another container, a record without these tags) is left as it is: a live run called
dead is worse than a dead one left RUNNING. A run that finishes after all clears the mark
(`tracking.tracked_run`).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import mlflow
import psutil
from mlflow.entities import LoggedModelStatus

PROCESS_TAG = "process"  # JSON of the fields below
HOST, PID, STARTED, BOOT, PID_NAMESPACE = "host", "pid", "started", "boot", "pid_namespace"
# The start of the `end_reason` a run marked here gets; a run that finishes after all removes it.
MARKED_REASON = "its process"


def process_tags() -> dict[str, str]:
    """The tag that identifies this process, for the run it trains."""
    return {PROCESS_TAG: json.dumps(this_process())}


def this_process() -> dict[str, str]:
    """This process's fields: host, pid, start time and where its pid is valid."""
    return {
        HOST: socket.gethostname(),
        PID: str(os.getpid()),
        STARTED: f"{psutil.Process().create_time():.2f}",
        **process_space(),
    }


def recorded_process(tags: dict[str, str]) -> dict[str, str]:
    """The process fields a run's tags record: its `process` tag, or an older run's `process.<field>` tags."""
    try:
        return dict(json.loads(tags[PROCESS_TAG]))
    except (KeyError, ValueError, TypeError):
        return {key.removeprefix("process."): value for key, value in tags.items() if key.startswith("process.")}


def process_space() -> dict[str, str]:
    """Where this process's pid is valid: this boot of the machine (Linux's boot id; elsewhere the
    boot time, seconds since the epoch) and its PID namespace (`pid:[inode]`; `none` where the
    system has none)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = f"{psutil.boot_time():.0f}"
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "none"
    return {BOOT: boot, PID_NAMESPACE: namespace}


def process_alive(pid: int, started: str) -> bool:
    """True while the process `pid` that started at `started` (seconds since the epoch) runs."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}" == started
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def mark_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark the RUNNING runs of the experiment whose process this one can see is gone KILLED
    (their PENDING logged models FAILED); returns the ids of the runs marked."""
    client = mlflow.MlflowClient()
    host, here = socket.gethostname(), process_space()
    marked = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = recorded_process(run.data.tags)
        visible = tags.get(HOST) == host and all(tags.get(key) == value for key, value in here.items())
        if not visible or PID not in tags or process_alive(int(tags[PID]), tags.get(STARTED, "")):
            continue
        client.set_tag(run.info.run_id, "end_reason", f"{MARKED_REASON} {tags[PID]} on {host} ended without closing it")
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


def clear_false_mark(run_id: str) -> None:
    """A run that finishes although another process marked it KILLED (it could not see this one)
    loses that process's `end_reason`; its FINISHED status is set by the caller."""
    client = mlflow.MlflowClient()
    if client.get_run(run_id).data.tags.get("end_reason", "").startswith(MARKED_REASON):
        client.delete_tag(run_id, "end_reason")
