"""What a command prints besides its results: progress bars for long loops (validating images,
downloads, predictions, affinity passes) and notes said once per process.

On a terminal: tqdm as usual. When the output goes to a file or a pipe (`dvc exp run`, a
cluster job's log), a bar redrawn ten times a second would write thousands of `\\r` updates
into one line; there it redraws at most every `LOG_INTERVAL_S` seconds instead.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def progress_bar(iterable=None, **options) -> tqdm:
    """`tqdm(iterable, **options)` on stderr, redrawn every LOG_INTERVAL_S when stderr is no terminal."""
    stream = options.setdefault("file", sys.stderr)
    if not (hasattr(stream, "isatty") and stream.isatty()):
        options.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(iterable, **options)


_notes_said: set[str] = set()


def say_once(note: str) -> None:
    """Print `note: ...` the first time this process says it (a sweep's jobs share the process)."""
    if note not in _notes_said:
        _notes_said.add(note)
        print(f"note: {note}")
