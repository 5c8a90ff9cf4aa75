"""MLflow: where runs go, what a run records, and a run that always ends in a final state.

A run is FINISHED on success, FAILED on an exception and KILLED on Ctrl-C/SIGTERM: never
left RUNNING, so one crashed job does not leave a sweep's table half-true.
In MLflow 3's own vocabulary a training run has inputs (the train/val/test manifests as
datasets) and an output (a LoggedModel, linked at the best epoch's step); the experiment is
tagged as model development so that the UI opens on its runs, not on an empty traces page.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
from hydra.experimental.callback import Callback
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from pipeline import orphans
from pipeline.config import PROJECT_ROOT, Config, flatten, to_dict
from pipeline.errors import TrackingError
from pipeline.stopping import RunKilled, request_stop, stop_requested


def store_root(project: Path = PROJECT_ROOT) -> Path:
    """Where the default store lives: the project root, also when this code runs from DVC's
    temporary copy of it (`dvc exp run --queue/--temp` work in <repo>/.dvc/tmp/exps/...)."""
    parts = project.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return project


def tracking_uri(config: Config) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else an absolute sqlite store at the project root."""
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{store_root() / 'mlflow.db'}"


def connect(config: Config, timeout_s: float = 5.0, create_experiment: bool = True) -> str:
    """Point MLflow at the store and make sure it answers, before any training starts.

    `create_experiment=False` (readers such as compare) fails on a missing experiment instead.
    Runs of this host left RUNNING by a killed process are marked KILLED (`orphans`).
    """
    uri = tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        check_server(uri, timeout_s)
    mlflow.set_tracking_uri(uri)
    experiment = use_experiment(config.tracking.experiment, uri, create_experiment)
    orphans.mark_orphaned_runs(experiment.experiment_id)
    return uri


def use_experiment(name: str, uri: str, create: bool = True) -> mlflow.entities.Experiment:
    """Make `name` the active experiment of the store at `uri`: created if missing (with
    `create`, its artifacts beside the store) and tagged for the UI's model-training mode."""
    with store_lock(uri):  # a new sqlite store: one process creates its tables, the others wait
        _ensure_experiment(name, uri, create)
    return mlflow.set_experiment(name)


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


SLOW_SERVER_PATIENCE_S = 120.0  # as long as MLflow's own client keeps retrying a request


def check_server(uri: str, timeout_s: float, patience_s: float = SLOW_SERVER_PATIENCE_S) -> None:
    """A tracking server answers, and lets us in: "server down", "too slow" and "wrong or missing
    credentials" each get their own one-line advice. A server that refuses connections is down
    at once; one that accepts but answers slowly (busy, or fifty jobs starting together) is asked
    again with a doubled timeout, starting at `timeout_s`, for up to `patience_s` seconds."""
    if "@" in urllib.parse.urlsplit(uri).netloc:
        raise TrackingError(
            f"tracking.uri holds credentials ({uri.split('@')[-1]}): a URI is logged and shared. "
            f"Set {CREDENTIALS[0]} and {CREDENTIALS[1]} in the environment instead."
        )
    try:
        _patient_open(urllib.request.Request(uri.rstrip("/") + "/health"), uri, timeout_s, patience_s).close()
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise TrackingError(
            f"The MLflow tracking server at {uri} does not answer ({getattr(error, 'reason', error)}). "
            "Start it (mlflow server --host 127.0.0.1 --port 5000), fix tracking.uri / $MLFLOW_TRACKING_URI, "
            f"or leave both unset to record into sqlite:///{store_root() / 'mlflow.db'}."
        ) from None
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = (os.environ.get(name) for name in CREDENTIALS)
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        _patient_open(request, uri, timeout_s, patience_s).close()
    except urllib.error.HTTPError as error:
        if error.code == 401:
            who = f"refuses user '{user}': wrong password or unknown user" if user else "asks for credentials"
            raise TrackingError(
                f"The MLflow tracking server at {uri} {who}. Set {CREDENTIALS[0]} and "
                f"{CREDENTIALS[1]} in the environment of every job (never in a config file); "
                "the server's admin creates users."
            ) from None
        if error.code == 403:
            raise TrackingError(
                f"The MLflow tracking server at {uri} lets user '{user}' in but not read experiments: "
                "ask its admin for a permission."
            ) from None
        raise TrackingError(
            f"The MLflow tracking server at {uri} answers HTTP {error.code} ({error.reason})."
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise TrackingError(f"The MLflow tracking server at {uri} stopped answering ({error}).") from None


def _timed_out(error: BaseException) -> bool:
    reason = getattr(error, "reason", error)
    return isinstance(reason, TimeoutError) or "timed out" in str(reason)


def _patient_open(request: urllib.request.Request, uri: str, timeout_s: float, patience_s: float):
    """urlopen, asked again with a doubled timeout while the server is slow (not while it is down)."""
    start, attempt_s = time.monotonic(), timeout_s
    while True:
        try:
            return urllib.request.urlopen(request, timeout=attempt_s)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            waited = time.monotonic() - start
            if not _timed_out(error):
                raise  # refused, no such host: down, said at once
            if waited >= patience_s:
                raise TrackingError(
                    f"The MLflow tracking server at {uri} accepts connections but has not answered "
                    f"in {waited:.0f} s: it is overloaded or stuck. Try again later, or give it more "
                    "workers (mlflow server --workers N)."
                ) from None
            attempt_s = min(2 * attempt_s, max(patience_s - waited, 1.0))
            print(
                f"note: the MLflow tracking server at {uri} is slow to answer ({waited:.0f} s so far); "
                f"asking again, waiting up to {attempt_s:.0f} s"
            )


# Launchers whose jobs run on other machines: they cannot share a sqlite file.
REMOTE_LAUNCHERS = ("SlurmLauncher", "RayAWSLauncher")


class StoreReachableFromJobs(Callback):
    """Hydra callback: before a sweep's jobs are sent to other machines, make sure they can
    record there - a tracking server, not this machine's sqlite file. Fails at once, before
    anything is submitted."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if not any(name in launcher for name in REMOTE_LAUNCHERS):
            return
        uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
        if not uri.startswith(("http://", "https://")):
            print(
                f"error: the jobs of hydra/launcher={launcher.rsplit('.', 1)[-1]} run on other machines and cannot "
                f"write this machine's store ({uri or 'the default sqlite file'}). Start a tracking server "
                "(README, 'On a cluster') and pass tracking.uri=http://<server>:5000.",
                file=sys.stderr,
            )
            raise SystemExit(2)


# The UI's mode for classic training (MLflow 3 opens experiments in its GenAI mode otherwise).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_link(uri: str, experiment_id: str) -> str:
    """The experiment's runs in the MLflow UI, in its model-training mode."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_hint(uri: str, experiment_id: str) -> str:
    """One line telling where to look at the runs: the link, and for a local store the command first."""
    link = experiment_link(uri, experiment_id)
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


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a sqlite store: check it can be written (within seconds, naming the path), then hold
    an exclusive lock on `<store>.lock` while the store and the experiment are created."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    store = Path(uri[len("sqlite:///") :])
    folder = store.parent
    advice = "Fix its permissions, or choose another store with tracking.uri=sqlite:////writable/path/mlflow.db."
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(
            f"The MLflow store {store} cannot be created: {error.strerror or error}. {advice}"
        ) from None
    if store.exists() and not os.access(store, os.R_OK | os.W_OK):
        raise TrackingError(f"The MLflow store {store} is read-only for this user. {advice}")
    if not os.access(folder, os.W_OK):  # sqlite writes its journal beside the store
        raise TrackingError(f"The folder of the MLflow store {store} ({folder}) is read-only for this user. {advice}")
    with open(store.with_name(store.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts go to `mlruns/` beside the .db file, not into the working
    directory of whichever run created the experiment (a Hydra job folder, or a temporary DVC
    copy that is deleted afterwards). Servers choose for themselves (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
    return None


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
    except KeyboardInterrupt:
        mlflow.set_tag("end_reason", "interrupted (SIGINT/SIGTERM)")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as error:
        mlflow.set_tag("end_reason", f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    else:
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


def record_resume(epochs_done: int, history: list[dict[str, float]]) -> None:
    """On the reopened run: note where it resumed, and log the finished epochs it lacks.

    An epoch is logged right after its checkpoint is committed; a kill between the two
    leaves the run one epoch short, which is filled in here, so steps neither repeat nor skip.
    """
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    logged = max((m.step for m in client.get_metric_history(run_id, "val_accuracy")), default=0)
    for epoch in range(logged + 1, epochs_done + 1):
        mlflow.log_metrics(history[epoch - 1], step=epoch)
    earlier = mlflow.active_run().data.tags.get("resumed_at_epochs")
    mlflow.set_tag("resumed_at_epochs", f"{earlier},{epochs_done}" if earlier else str(epochs_done))


def log_data_inputs(split_dir: Path) -> None:
    """The run's train, validation and test manifests as MLflow datasets (the UI's Datasets
    column), named after the folder the images come from (e.g. clothing-small-train), each with
    its manifest file's sha256 as digest (MLflow's own digest reads only the first 10,000 rows)."""
    import hashlib

    import pandas as pd

    frames = {split: pd.read_csv(Path(split_dir) / f"{split}.csv") for split in ("train", "val", "test")}
    root = os.path.commonpath([os.path.dirname(p) for frame in frames.values() for p in frame["path"]])
    name = Path(root).name or "data"
    for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        digest = hashlib.sha256((Path(split_dir) / f"{split}.csv").read_bytes()).hexdigest()[:16]
        with warnings.catch_warnings():  # a local folder "can be interpreted in multiple ways": it is a folder
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                frames[split], source=root, targets="label", name=f"{name}-{split}", digest=digest
            )
        mlflow.log_input(dataset, context=context)


def log_keras_model(
    model,
    image_size: tuple[int, int],
    classes_file: str | os.PathLike,
    best_epoch: int,
    describe: dict[str, str] | None = None,
) -> str:
    """Log the model as the run's LoggedModel `model` (READY), with signature, input example
    and classes.json (the class names in output order, which `pipeline.predict` reads), linked
    to the run at the best epoch's step, whose metrics become the model's. Returns its model id;
    `models:/<id>` and `runs:/<run id>/model` both load it.

    `mlflow.keras.log_model(..., input_example=...)` in MLflow 3.17 writes the example before
    creating its folder (mlflow#16183), so the model is saved into a folder made here and
    uploaded with `log_model_artifacts`; a failed upload leaves the LoggedModel FAILED.
    Its name stays `model` (what `runs:/<run id>/model` resolves); `describe` (preset, model,
    seed) becomes its tags, so the UI's model list says what each one is.
    """
    import tempfile

    import numpy as np
    from mlflow.models import infer_signature

    run_id = mlflow.active_run().info.run_id
    example = np.full((1, *image_size, 3), 127.0, np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id, model_type="keras", tags=describe or {})
    try:
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "model")
            os.makedirs(path)
            mlflow.keras.save_model(model, path, signature=signature, input_example=example)
            shutil.copy(classes_file, os.path.join(path, "classes.json"))
            mlflow.MlflowClient().log_model_artifacts(logged.model_id, path)
    except BaseException:
        mlflow.finalize_logged_model(logged.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(logged.model_id, "READY")
    mlflow.log_outputs([LoggedModelOutput(logged.model_id, step=best_epoch)])
    link_step_metrics(run_id, logged.model_id, best_epoch)
    return logged.model_id


def link_step_metrics(run_id: str, model_id: str, step: int) -> None:
    """Make the run's metrics at `step` the model's too (as `mlflow.<flavor>.log_model(step=)`
    does): the same values and timestamps, so the run's own history gains no duplicates."""
    client = mlflow.MlflowClient()
    linked = [
        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id)
        for key in client.get_run(run_id).data.metrics
        for m in client.get_metric_history(run_id, key)
        if m.step == step
    ]
    client.log_batch(run_id, metrics=linked)


def training_runs(
    experiment: str,
    search_filter: str | None = None,
    run_ids: set[str] | None = None,
    curves: tuple[str, ...] = ("val_accuracy", "val_loss"),
):
    """The FINISHED training runs of `experiment` (with their per-epoch `curves`), only those in
    `run_ids` when given, and how many other runs (FAILED, KILLED, RUNNING) were left out.
    Comparison runs are not training runs."""
    from pipeline.verdicts import RunSummary  # here: training never needs the comparison's code

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    runs, token = [], None
    try:
        while True:
            page = client.search_runs(
                [found.experiment_id], filter_string=search_filter or "", max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    except MlflowException as error:
        raise TrackingError(
            f"compare.filter={search_filter!r} is not a valid MLflow search filter: {error.message}"
        ) from None
    training = [
        r
        for r in runs
        if "augmentation" in r.data.tags
        and r.data.tags.get("run_kind") != "comparison"
        and (run_ids is None or r.info.run_id in run_ids)
    ]
    finished = [r for r in training if r.info.status == "FINISHED"]
    summaries = []
    for r in finished:
        histories = {
            name: [m.value for m in sorted(client.get_metric_history(r.info.run_id, name), key=lambda m: m.step)]
            for name in curves
        }
        summaries.append(
            RunSummary(
                r.info.run_id,
                r.data.tags["augmentation"],
                r.data.tags.get("seed", "?"),
                dict(r.data.params),
                dict(r.data.metrics),
                histories,
                r.info.start_time or 0,
            )
        )
    return summaries, len(training) - len(finished)


def finished_run_with(experiment_name: str, config_hash: str) -> mlflow.entities.Run | None:
    """The latest FINISHED training run of the experiment tagged with `config_hash` (None if none)."""
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    found = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id],
        f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def comparisons_experiment(experiment: str) -> str:
    """Comparison runs live in their own experiment, beside the training runs they compare."""
    return f"{experiment}-comparisons"
