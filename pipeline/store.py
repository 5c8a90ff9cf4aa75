"""The MLflow store: where it is, whether it answers and lets us in, and a lock around creating one.

A local store is a sqlite file at the project root (`mlflow.db`, artifacts in `mlruns/` beside
it); a shared one is a tracking server (`tracking.uri=http://...`, credentials from the
environment only). Every stage checks its store before doing any work, so "server down",
"too slow" and "wrong credentials" are said at once, each with its fix.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.config import PROJECT_ROOT, Config, TrackingConfig
from pipeline.errors import TrackingError


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


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def check_store(config: Config, timeout_s: float = 5.0) -> None:
    """The store answers and lets us in (a server) or can be written (sqlite), said in a second:
    training calls this before it loads TensorFlow."""
    uri = tracking_uri(config.tracking)
    if uri.startswith(("http://", "https://")):
        check_server(uri, timeout_s)
    elif uri.startswith("sqlite:///"):
        check_sqlite_store(Path(uri[len("sqlite:///") :]))


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
