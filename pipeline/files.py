"""Files that readers never see half-written: everything kept on disk (manifests, checkpoints, the
model, cache entries, run records) is written under a scratch name in its own folder and renamed
into place, so a crash or `kill -9` at any moment leaves the old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A scratch path beside `path` (hidden, with the same suffixes: Keras wants `.keras` and
    `.weights.h5`) to write a file or a folder to; renamed onto `path` when the block ends, removed
    when it fails. A folder that another process renamed into place first is left as theirs."""
    path = Path(path)
    suffixes = "".join(path.suffixes)
    base = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    scratch = path.with_name(f".{base}.tmp-{os.getpid()}-{threading.get_ident()}{suffixes}")
    try:
        yield scratch
        try:
            os.replace(scratch, path)
        except OSError:
            if not (scratch.is_dir() and path.is_dir()):  # a folder made meanwhile by another process stays
                raise
    finally:
        if scratch.is_dir():
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            scratch.unlink(missing_ok=True)


def write_atomically(path: str | Path, content: str | bytes) -> None:
    """Write `content` (text or bytes) to `path` so that readers see the old or the new content, never a part."""
    with atomic_target(path) as scratch:
        scratch.write_bytes(content.encode() if isinstance(content, str) else content)
