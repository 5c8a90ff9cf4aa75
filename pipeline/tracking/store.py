"""The MLflow store: where it is, whether it answers and lets us in, and a lock around creating one.

A local store is a sqlite file at the project root (`mlflow.db`, artifacts in `mlruns/` beside
it); a shared one is a tracking server (`tracking.uri=http://...`, credentials from the
environment only). Every stage checks its store before doing any work, so "server down",
"too slow" and "wrong credentials" are said at once, each with its fix.

One health probe (`answers`) and one retry policy (`patiently`, tenacity) serve every wait for
a server here and in `outages`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import tenacity
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.config import PROJECT_ROOT
from pipeline.config.schema import TrackingConfig
from pipeline.errors import TrackingError

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
PROBE_TIMEOUT_S = 5.0  # one /health probe, and one logging attempt while a server is away
SLOW_SERVER_PATIENCE_S = 120.0  # as long as MLflow's own client keeps retrying a request


def store_root(project: Path = PROJECT_ROOT) -> Path:
    """Where the default store lives: the project root, also when this code runs from DVC's
    temporary copy of it (`dvc exp run --queue/--temp` work in <repo>/.dvc/tmp/exps/...)."""
    parts = project.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return project


def tracking_uri(tracking: TrackingConfig) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else an absolute sqlite store at the project root."""
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{store_root() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """A tracking server (http or https), not a local store (a sqlite file)."""
    return uri.startswith(("http://", "https://"))


def check_store(tracking: TrackingConfig, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """The store answers and lets us in (a server) or can be written (sqlite), said in a second:
    training calls this before it loads TensorFlow. Returns its URI."""
    uri = tracking_uri(tracking)
    if is_server(uri):
        check_server(uri, timeout_s)
    elif uri.startswith("sqlite:///"):
        check_sqlite_store(Path(uri[len("sqlite:///") :]))
    return uri


def patiently(attempt: Callable[[], bool], patience_s: float, on_wait: Callable[[float], None]) -> bool:
    """The one retry policy for a server that is away or slow: `attempt()` until it returns True,
    waiting 1, 2, 4, ... up to 30 s between attempts, for at most `patience_s` seconds; `on_wait(waited
    seconds)` before each wait. False when the patience ran out."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda done: not done),
        wait=tenacity.wait_exponential(multiplier=1, max=30),
        stop=tenacity.stop_after_delay(patience_s),
        before_sleep=lambda state: on_wait(state.seconds_since_start or 0.0),
        retry_error_callback=lambda state: False,
    )
    return retrying(attempt)


def probe(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """The one health probe of a tracking server: `answers`, `slow` (it accepts the connection but
    says nothing within `timeout_s`) or `down` (refused, no such host)."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        return "answers"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return "slow" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "down"


def answers(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    return probe(uri, timeout_s) == "answers"


def check_server(uri: str, timeout_s: float, patience_s: float = SLOW_SERVER_PATIENCE_S) -> None:
    """A tracking server answers, and lets us in: "server down", "too slow" and "wrong or missing
    credentials" each get their own one-line advice. A server that refuses connections is down
    at once; one that accepts but answers slowly (busy, or fifty jobs starting together) is asked
    again (`patiently`), each time waiting twice as long for its answer, for up to `patience_s`."""
    if "@" in urllib.parse.urlsplit(uri).netloc:
        raise TrackingError(
            f"tracking.uri holds credentials ({uri.split('@')[-1]}): a URI is logged and shared. "
            f"Set {CREDENTIALS[0]} and {CREDENTIALS[1]} in the environment instead."
        )
    state = probe(uri, timeout_s)
    if state == "down":
        raise TrackingError(
            f"The MLflow tracking server at {uri} does not answer (connection refused). "
            "Start it (mlflow server --host 127.0.0.1 --port 5000), fix tracking.uri / $MLFLOW_TRACKING_URI, "
            f"or leave both unset to record into sqlite:///{store_root() / 'mlflow.db'}."
        )
    if state == "slow":
        timeouts = (timeout_s * 2**k for k in range(1, 64))

        def say(waited_s: float) -> None:
            print(
                f"note: the MLflow tracking server at {uri} is slow to answer ({waited_s:.0f} s so far); asking again"
            )

        if not patiently(lambda: answers(uri, next(timeouts)), patience_s, say):
            raise TrackingError(
                f"The MLflow tracking server at {uri} accepts connections but has not answered in "
                f"{patience_s:.0f} s: it is overloaded or stuck. Try again later, or give it more "
                "workers (mlflow server --workers N)."
            )
    _check_credentials(uri, timeout_s)


def _check_credentials(uri: str, timeout_s: float) -> None:
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = (os.environ.get(name) for name in CREDENTIALS)
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=max(timeout_s, 30.0)).close()
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
    except OSError as error:
        raise TrackingError(f"The MLflow tracking server at {uri} stopped answering ({error}).") from None


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
        if not is_server(uri):
            print(
                f"error: the jobs of hydra/launcher={launcher.rsplit('.', 1)[-1]} run on other machines and cannot "
                f"write this machine's store ({uri or 'the default sqlite file'}). Start a tracking server "
                "(README, 'On a cluster') and pass tracking.uri=http://<server>:5000.",
                file=sys.stderr,
            )
            raise SystemExit(2)


def check_sqlite_store(store: Path) -> None:
    """A sqlite store can be created and written, or a TrackingError naming the path and the fix."""
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


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a sqlite store: check it can be written (naming the path), then hold an exclusive
    lock on `<store>.lock` while the store and the experiment are created."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    store = Path(uri[len("sqlite:///") :])
    check_sqlite_store(store)
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


# The UI's mode for classic training (MLflow 3 opens experiments in its GenAI mode otherwise).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def use_experiment(name: str, uri: str, create: bool = True):
    """Make `name` the active experiment of the store at `uri`: created if missing (with `create`,
    its artifacts beside the store) and tagged for the UI's model-training mode."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with store_lock(uri):  # a new sqlite store: one process creates its tables, the others wait
        client = mlflow.MlflowClient()
        found = client.get_experiment_by_name(name)
        if found is not None and found.tags.get(EXPERIMENT_KIND[0]) is None:
            client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        if found is None:
            if not create:
                raise TrackingError(
                    f"MLflow experiment '{name}' does not exist at {uri}: train first "
                    "(python -m pipeline.train ...) or set tracking.experiment / tracking.uri."
                )
            with contextlib.suppress(MlflowException):  # created meanwhile by another job
                mlflow.create_experiment(name, artifact_location=artifact_location(uri), tags=dict([EXPERIMENT_KIND]))
    return mlflow.set_experiment(name)


SAVED_VIEW_TAG = "mlflow.sharedViewState."  # + a slug: an experiment's saved runs-table view (MLflow 3 UI)


def save_runs_view(experiment_id: str, slug: str, name: str, columns: list[str], search_filter: str = "") -> None:
    """A saved view of the experiment's runs table, as the MLflow UI's "Share" writes one (an experiment tag
    its views menu lists and `view_link` opens): `columns` shown without a click (`metrics.test_accuracy`,
    `params.seed`, `tags.augmentation`: the UI's keys, quoted here), sorted by the first, best first;
    every run the filter selects shown, none hidden."""
    import json
    import time

    import mlflow

    def key(column: str) -> str:
        kind, _, name = column.partition(".")
        return f"{kind}.`{name}`"

    state = {
        "searchFilter": search_filter,
        "orderByKey": key(columns[0]),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": [key(column) for column in columns],
        "runsHiddenMode": "SHOW_ALL",
    }
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    mlflow.MlflowClient().set_experiment_tag(experiment_id, SAVED_VIEW_TAG + slug, json.dumps(envelope))


def experiment_link(uri: str, experiment_id: str, run_id: str | None = None, view: str | None = None) -> str:
    """The experiment's runs (one run's page; or a saved view of them) in the MLflow UI, in its
    model-training mode: a local store's UI is started with `--app-name model-training` (`ui_lines`),
    whose default that mode is; a server's link says it (`workflowType`)."""
    remote = is_server(uri)
    page = f"{uri.rstrip('/') if remote else 'http://127.0.0.1:5000'}/#/experiments/{experiment_id}/runs"
    query = [*(["workflowType=machine_learning"] if remote else []), *([f"viewStateShareKey={view}"] if view else [])]
    return f"{page}{f'/{run_id}' if run_id else ''}" + (f"?{'&'.join(query)}" if query else "")


def ui_lines(uri: str, links: dict[str, str]) -> list[str]:
    """Where to look, a line each: for a local store the command that starts its UI (in the model-training
    view: `pipeline.tracking.ui`), then each link under its label."""
    start = [] if is_server(uri) else [f"  mlflow ui --app-name model-training --backend-store-uri {uri}"]
    return ["MLflow UI:", *start, *(f"  {label}: {link}" for label, link in links.items())]
