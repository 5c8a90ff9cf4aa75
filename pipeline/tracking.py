"""MLflow runs: what a run records, a run that always ends in a final state, and finding runs again.

A run is FINISHED on success, FAILED on an exception and KILLED on Ctrl-C/SIGTERM: never
left RUNNING, so one crashed job does not leave a sweep's table half-true.
In MLflow 3's own vocabulary a training run has inputs (the train/val/test manifests as
datasets) and an output (a LoggedModel, linked at the best epoch's step); the experiment is
tagged as model development so that the UI opens on its runs, not on an empty traces page.
The store itself (where, reachable, locked) is `store.py`; the logged model, `logged_model.py`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import signal
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException

from pipeline import orphans, outages
from pipeline.config import PROJECT_ROOT, Config, flatten, to_dict
from pipeline.errors import TrackingError
from pipeline.stopping import RunKilled, request_stop, stop_requested
from pipeline.store import artifact_location, check_server, store_lock, tracking_uri

if TYPE_CHECKING:  # its type only: the datasets module loads TensorFlow
    from pipeline.datasets import Split


def connect(config: Config, timeout_s: float = 5.0, create_experiment: bool = True) -> str:
    """Point MLflow at the store and make sure it answers, before any training starts.

    `create_experiment=False` (readers such as compare) fails on a missing experiment instead.
    Runs of this host left RUNNING by a killed process are marked KILLED (`orphans`); runs a
    training could not end while this server was away, FAILED (`outages`).
    """
    uri = tracking_uri(config.tracking)
    if uri.startswith(("http://", "https://")):
        check_server(uri, timeout_s)
    mlflow.set_tracking_uri(uri)
    experiment = use_experiment(config.tracking.experiment, uri, create_experiment)
    outages.end_runs_left_open(uri, outages.unended_runs_dir(config.paths.cache_dir))
    orphans.mark_orphaned_runs(experiment.experiment_id)
    return uri


def use_experiment(name: str, uri: str, create: bool = True) -> mlflow.entities.Experiment:
    """Make `name` the active experiment of the store at `uri`: created if missing (with
    `create`, its artifacts beside the store) and tagged for the UI's model-training mode."""
    with store_lock(uri):  # a new sqlite store: one process creates its tables, the others wait
        _ensure_experiment(name, uri, create)
    return mlflow.set_experiment(name)


# The UI's mode for classic training (MLflow 3 opens experiments in its GenAI mode otherwise).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_link(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The experiment's runs (or one run's page) in the MLflow UI, in its model-training mode."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs{f'/{run_id}' if run_id else ''}?workflowType=machine_learning"


def ui_hint(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """One line telling where to look at the runs (or one run): the link, and for a local store the command first."""
    link = experiment_link(uri, experiment_id, run_id)
    return (
        f"MLflow UI: {link}"
        if uri.startswith(("http://", "https://"))
        else (f"MLflow UI: mlflow ui --backend-store-uri {uri}   then open {link}")
    )


def _ensure_experiment(name: str, uri: str, create: bool) -> None:
    found = mlflow.MlflowClient().get_experiment_by_name(name)
    if found is not None and found.tags.get(EXPERIMENT_KIND[0]) is None:
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    if found is None:
        if not create:
            raise TrackingError(
                f"MLflow experiment '{name}' does not exist at {uri}: train first "
                "(python -m pipeline.train ...) or set tracking.experiment / tracking.uri."
            )
        try:
            mlflow.create_experiment(name, artifact_location=artifact_location(uri), tags=dict([EXPERIMENT_KIND]))
        except MlflowException:
            pass  # created meanwhile by another job


def flat_params(config: Config) -> dict[str, str]:
    """The whole training config as dotted keys (`compare.*`, the report's settings, left out)."""
    return flatten({k: v for k, v in to_dict(config).items() if k != "compare"})


def git_state() -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(git("status", "--porcelain"))).lower()}


def sweep_tags() -> dict[str, str]:
    """Hydra's sweep folder and job number, when this run is part of a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
    except (ImportError, ValueError):
        return {}
    if hydra.mode.name != "MULTIRUN":
        return {}
    tags = {
        "sweep_id": str(hydra.sweep.dir),
        "sweep_job": str(hydra.job.num),
        "hydra_overrides": " ".join(hydra.overrides.task),
    }
    study = hydra.sweeper.get("study_name")
    if study:  # an Optuna search: group its trials under the study
        tags["optuna_study"] = str(study)
    return tags


def run_tags(config: Config, manifest_sha256: str, device: str, placement: str) -> dict[str, str]:
    from pipeline.backend import tf

    return {
        "augmentation": config.augmentation.label,
        "augmented": str(not config.augmentation.is_identity).lower(),
        "augmentation_placement": placement,
        "model": config.model.name,
        "seed": str(config.seed),
        "data_manifest_sha256": manifest_sha256,
        "device": device,
        "tensorflow_version": tf.__version__,
        "keras_version": importlib.metadata.version("keras"),
        "python_version": platform.python_version(),
        **git_state(),
        **sweep_tags(),
    }


@contextlib.contextmanager
def tracked_run(
    run_name: str | None = None,
    continue_run_id: str | None = None,
    system_metrics_interval_s: float | None = None,
    node: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, FAILED (exception) or KILLED (SIGINT/SIGTERM).

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
        mlflow.set_tags(orphans.process_tags())  # so that a later run can tell if this process was killed
        yield run
    except outages.ServerGone:  # nothing can be recorded now: the next command that reaches the server ends it
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
        orphans.clear_false_mark(run.info.run_id)
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


EPOCH_PREFIX = "epoch/"  # the per-epoch history's metric names; the plain names hold the kept (best) epoch's
SPLIT_NAMES = {"accuracy": "train_accuracy", "loss": "train_loss"}  # Keras' names for the training split's


def named_for_the_record(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch's Keras metrics under the names of the record: `accuracy` -> `train_accuracy`, ..."""
    return {SPLIT_NAMES.get(k, k): v for k, v in metrics.items()}


def epoch_history(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch's metrics as MLflow's history of the run: `epoch/train_accuracy`, `epoch/val_accuracy`, ...
    and the learning rate's log10 beside it: MLflow's charts round 0.0001 to 0, not -4."""
    named = named_for_the_record(metrics)
    if named.get("learning_rate", 0) > 0:
        named["log10_learning_rate"] = math.log10(named["learning_rate"])
    return {EPOCH_PREFIX + k: v for k, v in named.items()}


def log_kept_epoch(history: list[dict[str, float]], best_epoch: int) -> None:
    """The kept (best) epoch's metrics under their plain names, at its step: what the run's table in
    the MLflow UI shows (its per-epoch curves are the `epoch/` history)."""
    kept = {k: v for k, v in history[best_epoch - 1].items() if k in ("accuracy", "loss", "val_accuracy", "val_loss")}
    mlflow.log_metrics(named_for_the_record(kept), step=best_epoch)


def record_resume(epochs_done: int, history: list[dict[str, float]]) -> None:
    """On the reopened run: note where it resumed, and log the finished epochs it lacks.

    An epoch is logged right after its checkpoint is committed; a kill between the two
    leaves the run one epoch short, which is filled in here, so steps neither repeat nor skip.
    """
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    logged = max((m.step for m in client.get_metric_history(run_id, EPOCH_PREFIX + "val_accuracy")), default=0)
    for epoch in range(logged + 1, epochs_done + 1):
        mlflow.log_metrics(epoch_history(history[epoch - 1]), step=epoch)
    earlier = mlflow.active_run().data.tags.get("resumed_at_epochs")
    mlflow.set_tag("resumed_at_epochs", f"{earlier},{epochs_done}" if earlier else str(epochs_done))


def log_data_inputs(split: Split) -> None:
    """The run's train, validation and test manifests as MLflow datasets (the UI's Datasets
    column), named after the folder the images come from (e.g. clothing-small-train), each with
    its manifest file's sha256 as digest (MLflow's own digest reads only the first 10,000 rows)."""
    import pandas as pd

    frames = {
        name: pd.DataFrame(
            {"path": images.paths, "label": [images.classes[i] for i in images.labels], "sha256": images.sha256}
        )
        for name, images in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    root = os.path.commonpath([os.path.dirname(p) for frame in frames.values() for p in frame["path"]])
    name = Path(root).name or "data"
    for split_name, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        digest = split.digests[split_name][:16]
        with warnings.catch_warnings():  # a local folder "can be interpreted in multiple ways": it is a folder
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                frames[split_name], source=root, targets="label", name=f"{name}-{split_name}", digest=digest
            )
        mlflow.log_input(dataset, context=context)
