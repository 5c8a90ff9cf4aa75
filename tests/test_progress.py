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


def test_a_bar_into_a_log_writes_whole_lines_and_on_a_terminal_is_tqdm(monkeypatch):
    """tqdm redraws with `\\r` ten times a second; into a file that leaves fragments: there a long loop
    writes a whole line now and then, and one when it ends."""
    from pipeline import console

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, terminal = io.StringIO(), Terminal()
    with console.progress_bar(total=3, file=log, desc="validate", unit="img") as into_log:
        with console.progress_bar(total=3, file=terminal) as shown:
            into_log.update(3)
            shown.update(3)
    assert shown.mininterval == 0.1 and "3/3" in terminal.getvalue()  # tqdm's own bar
    (line,) = log.getvalue().splitlines()
    assert line.startswith("validate: 3 img in ") and "\r" not in log.getvalue()
    monkeypatch.setattr(console, "LOG_INTERVAL_S", 0.0)  # a long loop: a line as it goes
    log = io.StringIO()
    for _ in console.progress_bar(range(2), total=2, file=log, desc="decode", unit="img"):
        pass
    assert (
        log.getvalue().splitlines() == [line for line in log.getvalue().splitlines() if line.startswith("decode: ")]
        and len(log.getvalue().splitlines()) == 3
    )
    assert "decode: 1/2 img (50%)" in log.getvalue() and "decode: 2 img in" in log.getvalue()
