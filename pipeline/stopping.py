"""Stopping on SIGTERM at a safe point: the handler only notes the request; the training
checks it at every batch (`checkpoints.StopOnSignal`) and between its stages.

An exception thrown from a signal handler lands in whatever code runs at that moment, and
some code swallows it; a flag checked at known points stops the run cleanly instead, and the
tracked run (`tracking.tracked_run`) is then marked KILLED.

And ending at once (`end_command_process`): a command run as its own process (`python -m pipeline.<command>`)
ends once its exit handlers have run, without the interpreter's teardown of TensorFlow's modules.
"""

from __future__ import annotations

import atexit
import os
import sys
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


def end_command_process(code: int | str | None) -> None:
    """End the process now with `code` (as `sys.exit(code)` would) when it was started to run one of our
    commands (`python -m pipeline.<command>`) and no other thread of it must be waited for: the exit
    handlers run (logging, MLflow, temporary folders; they are all an orderly exit does for us) and the
    output is flushed, then the process ends without unloading its modules, which takes TensorFlow 1.5-3 s
    (measured on 2 cores). Returns, doing nothing, anywhere else: a command run by other Python code
    (a test, a notebook, a Hydra launcher's own process) ends as that code decides."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if not (spec and spec.name.startswith("pipeline.")):
        return
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others:
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    end_process_now(code or 0)


def end_process_now(code: int) -> None:
    """End this process with `code` once its exit handlers have run and its output is flushed, without
    the interpreter unloading its modules (TensorFlow's take seconds)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
