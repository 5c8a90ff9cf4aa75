"""Stopping on SIGTERM at a safe point: the handler only notes the request; the training
checks it at every batch (`checkpoints.StopOnSignal`) and between its stages.

An exception thrown from a signal handler lands in whatever code runs at that moment, and
some code swallows it; a flag checked at known points stops the run cleanly instead, and the
tracked run (`tracking.tracked_run`) is then marked KILLED.
"""

from __future__ import annotations

import threading


class RunKilled(KeyboardInterrupt):
    """Raised at the next check point after the process received SIGTERM (exit code 143, as for SIGTERM)."""

    exit_code = 143


stop_requested = threading.Event()


def request_stop(signum, frame) -> None:
    """The SIGTERM handler: only note the request (see the module doc)."""
    stop_requested.set()


def raise_if_stopped() -> None:
    if stop_requested.is_set():
        raise RunKilled("received SIGTERM; the MLflow run is marked KILLED")
