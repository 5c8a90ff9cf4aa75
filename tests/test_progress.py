"""Progress lines for logs: a real (tiny) Keras fit, its lines read back."""

from __future__ import annotations

import io
import re

import numpy as np

from pipeline.backend import keras
from pipeline.training.epoch_lines import ProgressLines


def test_a_fit_whose_output_is_a_log_prints_where_it_is_and_when_it_ends():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    y = keras.ops.one_hot(np.arange(40) % 2, 2)
    log = io.StringIO()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[ProgressLines(steps_per_epoch=5, batch_size=8, every_s=0, stream=log)],
    )
    lines = log.getvalue().splitlines()
    assert len(lines) == 10  # every batch, with every_s=0
    pattern = (
        r"epoch (\d)/2, batch (\d)/5: \d+ images/s, this epoch ends in \d+:\d\d, "
        r"the run in at most \d+:\d\d"
    )
    seen = [tuple(map(int, re.fullmatch(pattern, line).groups())) for line in lines]
    assert seen == [(e, b) for e in (1, 2) for b in range(1, 6)]
    assert "this epoch ends in 0:00" in lines[4]  # its last batch
    assert lines[-1].endswith("the run in at most 0:00")  # the last batch of the last epoch

    quiet = io.StringIO()  # the default: no faster than every 30 s, so a 1-second fit prints nothing
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ProgressLines(5, 8, stream=quiet)])
    assert quiet.getvalue() == ""


def test_a_bar_into_a_log_redraws_rarely_and_on_a_terminal_as_usual():
    """tqdm redraws ten times a second; into a file that is thousands of updates on one line."""
    from pipeline.console import LOG_INTERVAL_S, progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, terminal = io.StringIO(), Terminal()
    with progress_bar(total=3, file=log, desc="validate") as into_log, progress_bar(total=3, file=terminal) as shown:
        into_log.update(3)
        shown.update(3)
    assert into_log.mininterval == LOG_INTERVAL_S and shown.mininterval == 0.1  # tqdm's own default
    assert "validate: 100%" in log.getvalue() and "3/3" in log.getvalue()  # the final state is written
