"""A run's life: connecting to the store, a run that always ends in a final state, and the runs
that others left open.

A run is FINISHED on success, FAILED on an exception and KILLED on Ctrl-C/SIGTERM: never left
RUNNING, so one crashed job does not leave a sweep's table half-true. Two things can still leave
a run open, and the next command that connects (`connect`) ends them (`end_runs_left_open`):

* **its process was killed outright** (SIGKILL, the out-of-memory killer, a power cut). Every
  training run records its process in one tag, `process` (JSON: `host`, `pid`, `started` - the
  process's start time, so that a reused pid is not mistaken for it - and where that pid means
  something: `boot` and `pid_namespace`). A RUNNING run of this host, boot and PID namespace whose
  process is gone is marked KILLED, its PENDING models FAILED. A run it cannot check (another
  machine or container, a record without these fields) is left alone: a live run called dead is
  worse than a dead one left RUNNING. A run that finishes after all clears the mark.
* **its tracking server was away** when the training had to end it (`outages.ServerGone`):
  `tracked_run` writes the run down under `<paths.cache_dir>/unended-runs/` (`unended_runs_dir`),
  and it is ended FAILED naming the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
import psutil
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException

from pipeline.config.schema import TrackingConfig
from pipeline.files import write_atomically
from pipeline.stopping import RunKilled, request_stop, stop_requested
from pipeline.tracking import outages
from pipeline.tracking.store import check_store, use_experiment

PROCESS_TAG = "process"  # JSON of the fields below
HOST, PID, STARTED, BOOT, PID_NAMESPACE = "host", "pid", "started", "boot", "pid_namespace"
# The start of the `end_reason` a run marked here gets; a run that finishes after all removes it.
MARKED_REASON = "its process"


def connect(tracking: TrackingConfig, cache_dir: str, create_experiment: bool = True) -> str:
    """Point MLflow at the store and make sure it answers, before any training starts; end the
    runs left open (see the module doc; those a dead server left are noted under `cache_dir`).
    `create_experiment=False` (readers such as compare) fails on a missing experiment instead.
    Returns the store's URI."""
    uri = check_store(tracking)
    mlflow.set_tracking_uri(uri)
    experiment = use_experiment(tracking.experiment, uri, create_experiment)
    end_runs_left_open(experiment.experiment_id, uri, unended_runs_dir(cache_dir))
    return uri


@contextlib.contextmanager
def tracked_run(
    run_name: str | None = None,
    continue_run_id: str | None = None,
    system_metrics_interval_s: float | None = None,
    node: str | None = None,
    unended_dir: Path | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, FAILED (exception) or KILLED (SIGINT/SIGTERM); one that a
    server gone away cannot end (`outages.ServerGone`) is written down in `unended_dir`.

    `continue_run_id` reopens that run (an interrupted training being resumed) when the
    store has it; otherwise a new run starts. With `system_metrics_interval_s`, MLflow samples
    CPU, memory, disk, network (psutil) and GPUs (nvidia-ml-py) every that many seconds into
    `system/*` metrics, tagged with `node` (this process's task in a multi-worker cluster).
    """
    stop_requested.clear()
    previous = signal.signal(signal.SIGTERM, request_stop)
    if continue_run_id and not _run_exists(continue_run_id):
        print(
            f"note: the interrupted MLflow run {continue_run_id} is not in {mlflow.get_tracking_uri()}; "
            "the resumed training is recorded as a new run"
        )
        continue_run_id = None
    system_metrics = system_metrics_interval_s is not None
    if system_metrics:
        from mlflow import system_metrics as sampler

        sampler.set_system_metrics_sampling_interval(system_metrics_interval_s)
        if node:
            sampler.set_system_metrics_node_id(node)
    run = (
        mlflow.start_run(run_id=continue_run_id, log_system_metrics=system_metrics)
        if continue_run_id
        else mlflow.start_run(run_name=run_name, log_system_metrics=system_metrics)
    )
    try:
        mlflow.set_tags({PROCESS_TAG: json.dumps(this_process())})  # a later command can tell if it was killed
        yield run
    except outages.ServerGone as gone:  # nothing can be recorded now: the next command that reaches the server ends it
        if unended_dir is not None:
            write_down_unended(unended_dir, run.info.run_id, mlflow.get_tracking_uri(), gone.reason)
        with outages.one_attempt(), contextlib.suppress(MlflowException):
            mlflow.end_run(status="FAILED")
        raise
    except KeyboardInterrupt:
        mlflow.set_tag("end_reason", "interrupted (SIGINT/SIGTERM)")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as error:
        mlflow.set_tag("end_reason", f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    else:
        client = mlflow.MlflowClient()
        if client.get_run(run.info.run_id).data.tags.get("end_reason", "").startswith(MARKED_REASON):
            client.delete_tag(run.info.run_id, "end_reason")  # marked KILLED by a process that could not see this one
        if continue_run_id:
            mlflow.set_tag("end_reason", "finished after resuming")
        mlflow.end_run(status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stop_requested.is_set():  # it came after the last check: the run is complete, the process stops
        raise RunKilled("received SIGTERM as the run finished; stopping here")


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


# ------------------------------------------------------------------ runs left open


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


def end_runs_left_open(experiment_id: str, uri: str, unended_dir: Path) -> list[str]:
    """End the runs left open (the module doc): KILLED where this process can see that the run's
    own process is gone, FAILED where a training wrote down that this server was away. Returns
    the ids of the runs ended, saying so in one line each."""
    client = mlflow.MlflowClient()
    ended = []
    for left in unended_runs(unended_dir, uri):
        with contextlib.suppress(MlflowException):  # a run gone from the store has nothing to end
            run = client.get_run(left["run_id"])
            if run.info.status == "RUNNING":
                _end(run, "FAILED", left["reason"])
                ended.append(run.info.run_id)
        (Path(unended_dir) / f"{left['run_id']}.json").unlink(missing_ok=True)
    host, here = socket.gethostname(), process_space()
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = recorded_process(run.data.tags)
        visible = tags.get(HOST) == host and all(tags.get(key) == value for key, value in here.items())
        if not visible or PID not in tags or process_alive(int(tags[PID]), tags.get(STARTED, "")):
            continue
        _end(run, "KILLED", f"{MARKED_REASON} {tags[PID]} on {host} ended without closing it")
        ended.append(run.info.run_id)
    return ended


def unended_runs_dir(cache_dir: str) -> Path:
    """Where a training writes down the run it could not end (`paths.cache_dir`/unended-runs)."""
    return Path(cache_dir).expanduser() / "unended-runs"


def write_down_unended(unended_dir: Path, run_id: str, uri: str, reason: str) -> None:
    """One run the server at `uri` was not there to end, for `end_runs_left_open` to end FAILED."""
    Path(unended_dir).mkdir(parents=True, exist_ok=True)
    write_atomically(Path(unended_dir) / f"{run_id}.json", json.dumps({"run_id": run_id, "uri": uri, "reason": reason}))


def unended_runs(unended_dir: Path, uri: str) -> list[dict]:
    """The runs of the server at `uri` that a training could not end ({run_id, uri, reason} each)."""
    found = []
    for record in sorted(Path(unended_dir).glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            left = json.loads(record.read_text())
            if left.get("uri") == uri and "run_id" in left:
                found.append(left)
    return found


def _end(run: mlflow.entities.Run, status: str, reason: str) -> None:
    """End `run` with `status` and `reason` (tag end_reason); its PENDING logged models become FAILED."""
    client = mlflow.MlflowClient()
    client.set_tag(run.info.run_id, "end_reason", reason)
    client.set_terminated(run.info.run_id, status)
    for model in mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        output_format="list",
        filter_string=f"source_run_id = '{run.info.run_id}'",
    ):
        if model.status == LoggedModelStatus.PENDING:
            mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    print(f"note: run {run.info.run_id} ({run.info.run_name}) was RUNNING: ended {status}, {reason}")
