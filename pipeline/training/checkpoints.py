"""Resumable training state: one work folder per training configuration, safe to kill at any moment.

    <models_dir>/work/<resume key>/
        identity.json          the config this state was started with (written once, never changes)
        state.json             the commit point: finished epochs, every epoch's metrics, the best
                               epoch and its val_accuracy, the MLflow run, the files below
        last-e0007.weights.h5  model + optimizer after the last finished epoch
        best-e0005.weights.h5  weights of the best epoch so far
        lock                   held (flock) by the one training that uses the folder

Every file is written under a temporary name and renamed into place; `state.json` is
replaced last and names the weight files it belongs to, so a `kill -9` at any moment
leaves either the previous or the new state, never half of one. Files no state names
are removed when the folder is next opened.

The resume key is a digest of the training identity without `RESUMABLE_KEYS` (settings
that may change when resuming, e.g. more epochs): two different configs never share a
folder, so concurrent trainings of different configs never touch each other's files, and
the same config twice at once is refused while the first holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backend import keras
from pipeline.errors import ConfigError, UserError
from pipeline.files import atomic_target, write_atomically
from pipeline.stopping import raise_if_stopped

RESUMABLE_KEYS = ("train.epochs", "train.patience")  # may differ between an interrupted run and its resume


@dataclass
class SavedState:
    """What `state.json` holds."""

    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one row of metrics per finished epoch
    best_val_accuracy: float | None = None
    best_epoch: int = 0  # 1-based; 0 = none yet
    last_weights: str | None = None
    best_weights: str | None = None
    mlflow_run_id: str | None = None

    def patience_exhausted(self, patience: int) -> bool:
        """True when `patience` epochs have passed since the best one (early stopping)."""
        return bool(self.best_epoch) and self.epochs_done - self.best_epoch >= patience


class WorkFolder:
    """The work folder of one training configuration, locked for as long as it is open."""

    def __init__(self, models_dir: Path, identity: dict[str, str]):
        from pipeline.tracking.identity import digest_of

        self.identity = identity
        self.started_as: dict[str, str] | None = None  # identity.json of an interrupted state, once opened
        self.key = digest_of({k: v for k, v in identity.items() if k not in RESUMABLE_KEYS})[:16]
        self.root = Path(models_dir) / "work"
        self.path = self.root / self.key
        self._lock_file = None

    # ------------------------------------------------------------------ opening

    def open(self, resume: bool, refuse_other: bool = True) -> SavedState:
        """Lock the folder and return the state to start from (empty unless resuming).

        resume=False discards this config's earlier state; resume=True continues it, and
        (with `refuse_other`) refuses, naming the keys, when the only interrupted state is
        another config's. A sweep passes refuse_other=False: its jobs that never started begin
        at epoch 0 beside the interrupted ones.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path / "lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise UserError(
                f"Another training of this same configuration is running and uses {self.path} "
                "(its checkpoints). Wait for it to finish, or change the seed or another setting "
                "to train a different configuration at the same time."
            ) from None
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        state = self._read_state()
        if not resume:
            if state.epochs_done:
                print(
                    f"note: discarding the interrupted state of this configuration at epoch {state.epochs_done} "
                    f"({self.path}); train.resume=true would have continued it"
                )
            self._clear()
            state = SavedState()
        elif not state.epochs_done:
            other = self._other_interrupted() if refuse_other else None
            if other is not None:
                self.close(finished=True)  # leave nothing behind for a training that did not start
                raise ConfigError(self._mismatch_message(other))
            print(
                f"note: train.resume=true, but no interrupted training of this configuration is in {self.root}: "
                "starting at epoch 0"
            )
        else:
            print(
                f"resuming from epoch {state.epochs_done} (best val_accuracy so far {state.best_val_accuracy:.4f} "
                f"at epoch {state.best_epoch}) in {self.path}"
            )
        saved = self.path / "identity.json"
        if state.epochs_done and saved.exists():
            self.started_as = json.loads(saved.read_text())
        else:
            write_atomically(saved, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")
        self._remove_unnamed_files(state)
        return state

    @contextlib.contextmanager
    def opened(self, resume: bool, refuse_other: bool = True) -> Iterator[SavedState]:
        """`open` ... `close`: the folder is removed when the block finishes, kept when it fails."""
        state = self.open(resume, refuse_other)
        try:
            yield state
        except BaseException:
            self.close(finished=False)
            raise
        self.close(finished=True)

    def close(self, finished: bool) -> None:
        """Release the lock; a finished training's folder is removed (nothing left to resume)."""
        if finished:
            shutil.rmtree(self.path, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only when no other configuration's folder is left
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def resumed_with(self) -> dict[str, str]:
        """The resumable keys whose value differs from the interrupted training's: {key: now}."""
        return {
            k: self.identity[k]
            for k in RESUMABLE_KEYS
            if self.started_as is not None and self.started_as.get(k) != self.identity.get(k)
        }

    def _read_state(self) -> SavedState:
        path = self.path / "state.json"
        if not path.exists():
            return SavedState()
        try:
            state = SavedState(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise UserError(
                f"{path} is damaged ({error}). Delete {self.path} to start this configuration afresh "
                "(train.resume=false does that)."
            ) from None
        for name in (state.last_weights, state.best_weights):
            if name and not (self.path / name).is_file():
                raise UserError(
                    f"{path} names {name}, which is missing. Delete {self.path} to start afresh "
                    "(train.resume=false does that)."
                )
        return state

    def _clear(self) -> None:
        for item in self.path.iterdir():
            if item.name != "lock":
                item.unlink() if item.is_file() else shutil.rmtree(item, ignore_errors=True)

    def _remove_unnamed_files(self, state: SavedState) -> None:
        keep = {"lock", "identity.json", "state.json", state.last_weights, state.best_weights}
        for item in self.path.iterdir():
            if item.is_file() and item.name not in keep:
                item.unlink()

    def _other_interrupted(self) -> Path | None:
        """The most recent other work folder holding an interrupted state, if any."""
        others = [
            p
            for p in self.root.iterdir()
            if p != self.path and (p / "state.json").exists() and (p / "identity.json").exists()
        ]
        return max(others, key=lambda p: (p / "state.json").stat().st_mtime) if others else None

    def _mismatch_message(self, other: Path) -> str:
        theirs = json.loads((other / "identity.json").read_text())
        keys = sorted(
            k
            for k in set(theirs) | set(self.identity)
            if k not in RESUMABLE_KEYS and theirs.get(k) != self.identity.get(k)
        )
        differences = ", ".join(f"{k}: {theirs.get(k, '-')} there, {self.identity.get(k, '-')} now" for k in keys)
        return (
            f"train.resume=true, but the interrupted training in {other} has another configuration "
            f"({differences}). Resume it with its own settings, or drop train.resume to start this one afresh."
        )

    # ------------------------------------------------------------------ saving

    def commit(
        self, state: SavedState, model: keras.Model, epoch: int, metrics: dict[str, float], improved: bool
    ) -> None:
        """Record a finished epoch (1-based): weights first, then `state.json` names them."""
        previous = {state.last_weights, state.best_weights}
        last = f"last-e{epoch:04d}.weights.h5"
        self._save_weights(model, last)
        if improved:
            best = f"best-e{epoch:04d}.weights.h5"
            self._save_weights(model, best)
            state.best_weights, state.best_epoch = best, epoch
            state.best_val_accuracy = metrics["val_accuracy"]
        state.last_weights, state.epochs_done = last, epoch
        state.history = [*state.history[: epoch - 1], metrics]
        write_atomically(self.path / "state.json", json.dumps(state.__dict__, indent=1) + "\n")
        for name in previous - {state.last_weights, state.best_weights, None}:
            (self.path / name).unlink(missing_ok=True)

    def _save_weights(self, model: keras.Model, name: str) -> None:
        with atomic_target(self.path / name) as scratch:
            model.save_weights(str(scratch), overwrite=True)

    def load_weights(self, model: keras.Model, name: str) -> None:
        path = self.path / name
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # so that its saved state has a place to go
        try:
            model.load_weights(str(path))
        except (OSError, ValueError) as error:
            raise UserError(
                f"the checkpoint {path} cannot be read ({str(error).splitlines()[0]}). Delete {self.path} "
                "to start this configuration afresh (train.resume=false does that)."
            ) from None


class EpochCheckpoints(keras.callbacks.Callback):
    """Checkpoints every epoch into a `WorkFolder`, keeps the best epoch, stops early.

    Restores the last checkpoint (model + optimizer) at the start of `fit`; commits after
    every epoch; `patience` counts epochs since the best one, across interruptions. After
    each commit `on_commit(epoch, metrics)` is called (run_record.py logs to MLflow there), so an
    epoch is logged only once it can no longer be lost.
    """

    def __init__(self, folder: WorkFolder, state: SavedState, patience: int, images_per_epoch: int, on_commit=None):
        super().__init__()
        self.folder, self.state, self.patience = folder, state, patience
        self.images_per_epoch = images_per_epoch
        self.on_commit = on_commit
        self._epoch_start = 0.0

    def on_train_begin(self, logs=None):
        if self.state.last_weights:
            self.folder.load_weights(self.model, self.state.last_weights)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_start
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        metrics["epoch_seconds"] = seconds
        metrics["train_images_per_second"] = self.images_per_epoch / seconds
        best = self.state.best_val_accuracy
        improved = "val_accuracy" in metrics and (best is None or metrics["val_accuracy"] > best)
        self.folder.commit(self.state, self.model, epoch + 1, metrics, improved)
        if self.on_commit is not None:
            self.on_commit(epoch + 1, metrics)
        if self.state.patience_exhausted(self.patience):
            self.model.stop_training = True


class StopOnSignal(keras.callbacks.Callback):
    """Ends fit, predict or evaluate at the next batch once SIGTERM has arrived (before the
    epoch is committed: a half epoch is never checkpointed as a whole one)."""

    def on_train_batch_end(self, batch, logs=None):
        raise_if_stopped()

    on_predict_batch_end = on_test_batch_end = on_epoch_begin = on_train_batch_end
