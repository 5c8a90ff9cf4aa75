"""Progress that shows when nobody watches a terminal: `dvc exp run`, a log file, a cluster job.

Keras prints one line per epoch there (verbose=2), and an epoch of augmented training can take
minutes on a CPU, so a run looks hung. `ProgressLines` prints a line every `every_s` seconds of
an epoch instead: where it is, images per second, and when the epoch and the run will end.
"""

from __future__ import annotations

import sys
import time

from pipeline.backend import keras


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressLines(keras.callbacks.Callback):
    """A line every `every_s` seconds (and none faster), e.g.

        epoch 3/60, batch 40/96: 88 images/s, this epoch ends in 0:21, the run in at most 21:40

    "at most": the run's time assumes every epoch up to the cap; early stopping ends it sooner."""

    def __init__(self, steps_per_epoch: int, batch_size: int, every_s: float = 30.0, stream=None):
        super().__init__()
        self.steps, self.batch_size, self.every_s = steps_per_epoch, batch_size, every_s
        self.stream = stream or sys.stdout
        self._epoch, self._started, self._last = 0, 0.0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._started = self._last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        done = batch + 1
        elapsed = now - self._started
        epoch_seconds = elapsed / done * self.steps
        epochs = self.params.get("epochs") or self._epoch + 1
        left_in_epoch = epoch_seconds - elapsed
        left_in_run = left_in_epoch + epoch_seconds * (epochs - self._epoch - 1)
        print(
            f"epoch {self._epoch + 1}/{epochs}, batch {done}/{self.steps}: "
            f"{done * self.batch_size / elapsed:.0f} images/s, this epoch ends in {_clock(left_in_epoch)}, "
            f"the run in at most {_clock(left_in_run)}",
            file=self.stream,
            flush=True,
        )
