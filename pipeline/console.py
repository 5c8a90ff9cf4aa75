"""What a command prints besides its results: progress bars for long loops (validating images,
downloads, predictions, affinity passes) and notes said once per process.

On a terminal: tqdm as usual. When the output goes to a file or a pipe (`dvc exp run`, a
cluster job's log), a bar's `\\r` redraws would leave fragments in it; there a long loop writes a
whole line every `LOG_INTERVAL_S` seconds and one when it ends (`LogProgress`).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class LogProgress:
    """A progress bar for a log: `desc: done/total unit (percent), seconds` every LOG_INTERVAL_S, and
    `desc: done unit in seconds` when it ends; tqdm's calls (update, close, iteration, `with`)."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", disable=False, file=None, **_):
        self.iterable, self.total, self.desc, self.unit, self.disable = iterable, total, desc, unit, disable
        self.file, self.n, self.start, self.closed = file or sys.stderr, 0, time.monotonic(), False
        self.said = self.start

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *error):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable and time.monotonic() - self.said >= LOG_INTERVAL_S:
            self.said = time.monotonic()
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            self._say(f"{self.n}/{self.total or '?'} {self.unit}{share}, {self.said - self.start:.0f} s")

    def close(self) -> None:
        if not (self.closed or self.disable):
            self._say(f"{self.n} {self.unit} in {time.monotonic() - self.start:.1f} s")
        self.closed = True

    def _say(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.file, flush=True)


def progress_bar(iterable=None, **options):
    """`tqdm(iterable, **options)` on stderr at a terminal; a `LogProgress` when stderr is a file or a pipe."""
    stream = options.setdefault("file", sys.stderr)
    if hasattr(stream, "isatty") and stream.isatty():
        return tqdm(iterable, **options)
    return LogProgress(iterable, **options)


_notes_said: set[str] = set()


def say_once(note: str) -> None:
    """Print `note: ...` the first time this process says it (a sweep's jobs share the process)."""
    if note not in _notes_said:
        _notes_said.add(note)
        print(f"note: {note}")
