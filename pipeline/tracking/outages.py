"""Training through a tracking server that goes away for a while.

A server restarted, a laptop's VPN dropping, a busy shared host: MLflow's client would retry each
call for minutes and then end the training with a traceback, its run left RUNNING and its
epochs unlogged. Here each epoch's metrics go through `EpochLog`: while the server does not
answer, training goes on, the metrics wait in memory (the work folder keeps every epoch anyway),
a line says how long the server has been away, and they are logged, at their own steps, once it
answers. Past `tracking.server_patience_s` the training stops cleanly (`ServerGone`, one line:
how to resume); the run, which cannot be ended on a server that is away, is left to the next
command that reaches it (`runs.tracked_run` writes it down, `runs.end_runs_left_open` ends it).
`train.resume=true` then continues from the last epoch into that same run. A local sqlite store
cannot go away: there, metrics are logged as they come.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from pipeline.errors import TrackingError
from pipeline.tracking.store import PROBE_TIMEOUT_S, answers, is_server, patiently


class ServerGone(TrackingError):
    """The tracking server stayed away longer than tracking.server_patience_s; `reason` is what
    the run's end_reason will say once a later command ends it."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@contextlib.contextmanager
def one_attempt() -> Iterator[None]:
    """MLflow calls inside fail after one attempt of at most PROBE_TIMEOUT_S, instead of its
    default seven retries with a doubling backoff (minutes against a server that is away)."""
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(PROBE_TIMEOUT_S)),
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class EpochLog:
    """`on_commit` of a tracked training: logs an epoch's metrics to `run_id`, or keeps them
    while the server at `uri` is away (see the module doc). `finish()` waits for the server
    before the run's last records, for what is left of `patience_s`."""

    def __init__(self, run_id: str, uri: str, patience_s: float):
        self.run_id, self.uri, self.patience_s = run_id, uri, patience_s
        self.remote = is_server(uri)
        self.waiting: list[tuple[int, int, dict[str, float]]] = []  # (epoch, its time in ms, metrics)
        self.away_since: float | None = None

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        if not self.remote:
            mlflow.log_metrics(metrics, step=epoch)
            return
        self.waiting.append((epoch, int(time.time() * 1000), dict(metrics)))
        if self._flush():
            return
        away_s = time.monotonic() - self.away_since
        if away_s > self.patience_s:
            self._give_up(f"training stopped after epoch {epoch}")
        epochs = f"{self.waiting[0][0]}-{epoch}" if len(self.waiting) > 1 else str(epoch)
        print(
            f"note: the tracking server {self.uri} has not answered for {away_s:.0f} s; training goes on and "
            f"logs epoch(s) {epochs} when it is back (gives up after {self.patience_s:.0f} s: "
            "tracking.server_patience_s)",
            flush=True,
        )

    def finish(self) -> None:
        """Before the run's last records (artifacts, the model): the server must answer. Waits
        for it (`store.patiently`), saying so, for what is left of the patience; then logs what was kept."""
        if not self.remote or (not self.waiting and self.away_since is None):
            return
        left_s = self.patience_s - (time.monotonic() - self.away_since)

        def say(waited_s: float) -> None:
            away_s = time.monotonic() - self.away_since
            print(
                f"note: waiting for the tracking server {self.uri} to record the finished training: away for "
                f"{away_s:.0f} s of {self.patience_s:.0f} (tracking.server_patience_s)",
                flush=True,
            )

        if not patiently(lambda: answers(self.uri) and self._flush(), max(left_s, 0.0), say):
            self._give_up("training finished, but its model and reports are not recorded yet")

    def _flush(self) -> bool:
        """Log every kept epoch in one call; False (and the clock of the outage started) when the
        server does not answer or is too busy to (5xx, 429). A refusal (4xx) is raised as it is."""
        batch = [
            Metric(key, float(value), timestamp, epoch)
            for epoch, timestamp, metrics in self.waiting
            for key, value in metrics.items()
        ]
        try:
            with one_attempt():
                for start in range(0, len(batch), 1000):  # MLflow's limit of metrics a call
                    mlflow.MlflowClient().log_batch(self.run_id, metrics=batch[start : start + 1000])
        except MlflowException as error:
            refused = error.get_http_status_code() < 500 and error.get_http_status_code() != 429
            if refused and answers(self.uri):
                raise  # the server is there and refuses these metrics: not an outage
            self.away_since = self.away_since or time.monotonic()  # away, or busy (5xx, 429): try again later
            return False
        if self.away_since is not None and self.waiting:
            away_s = time.monotonic() - self.away_since
            print(f"note: the tracking server {self.uri} is back after {away_s:.0f} s; kept epochs logged", flush=True)
        self.waiting.clear()
        self.away_since = None
        return True

    def _give_up(self, what: str) -> None:
        away_s = time.monotonic() - self.away_since
        reason = (
            f"the tracking server {self.uri} did not answer for {away_s:.0f} s (tracking.server_patience_s="
            f"{self.patience_s:g}); {what}"
        )
        raise ServerGone(
            f"{reason}. The work folder keeps every epoch: when the server is back, run the same command with "
            f"train.resume=true to continue into the same MLflow run ({self.run_id}).",
            reason,
        )
