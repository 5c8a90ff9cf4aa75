"""Arrays kept on disk under a content key: the decoded images of a split and the frozen base's
features of them, computed by the first run of a sweep and read by every later one.

An entry's key names everything its content depends on (the manifest with every image's sha256,
the image size, the network's content digest, the runtime and precision), so an entry is never
stale: changed inputs give another key. Entries are `.npy` files written under a temporary name
and renamed into place (two processes computing the same entry both write whole files; either
one wins), read back memory-mapped (the page cache is shared between the jobs of a sweep), and
the least recently used are removed once the folder holds more than `limit_bytes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

ARRAY_CACHE_LIMIT_BYTES = 8 * 1024**3
FOLDER = "arrays"
_unwritable_said: set[Path] = set()  # cache folders already reported unwritable in this process


class ArrayCache:
    def __init__(self, cache_dir: str | Path, limit_bytes: int = ARRAY_CACHE_LIMIT_BYTES):
        self.root = Path(cache_dir).expanduser() / FOLDER
        self.limit_bytes = limit_bytes

    def path(self, kind: str, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{kind}-{digest}.npy"

    def get(self, kind: str, key: dict) -> np.ndarray | None:
        """The entry, memory-mapped read-only, or None when there is none (or it is damaged)."""
        path = self.path(kind, key)
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # missing, or cut short by a crash before the rename: not an entry
            return None
        os.utime(path)  # recently used
        return array

    def put(self, kind: str, key: dict, array: np.ndarray) -> np.ndarray:
        """Keep `array` under its key and return it. A cache that cannot be written (a full disk,
        no permission) is only slower: the run goes on with the array in memory, saying so once."""
        path = self.path(kind, key)
        scratch = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(scratch, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(scratch, path)
        except OSError as error:
            with contextlib.suppress(OSError):  # a partial file would only take the space the disk lacks
                scratch.unlink()
            if self.root not in _unwritable_said:
                _unwritable_said.add(self.root)
                print(
                    f"note: cannot keep decoded images and features in {self.root} ({error.strerror or error}); "
                    "this run keeps them in memory and the next computes them again. Free space there, choose "
                    "another paths.cache_dir, or set data.cache=memory."
                )
            return array
        self._evict(keep=path)
        return array

    def get_or_compute(self, kind: str, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
        found = self.get(kind, key)
        return found if found is not None else self.put(kind, key, compute())

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used entries until the folder is under the limit."""
        entries = []
        for path in self.root.glob("*.npy"):
            try:
                entries.append((path.stat().st_mtime, path.stat().st_size, path))
            except OSError:  # removed meanwhile by another process
                continue
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size


def array_cache(cache_dir: str | Path, mode: str) -> ArrayCache | None:
    """The cache `data.cache` asks for: on disk in `cache_dir` (`auto`, `file`), or none (`memory`:
    each run decodes the images and computes the features into memory)."""
    return None if mode == "memory" else ArrayCache(cache_dir)
