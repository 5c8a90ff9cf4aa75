"""What is kept on disk in `paths.cache_dir` and read back, proven before it is served.

Decoded images of a split, the frozen part's outputs for them and the record of which image
files were last checked are computed by the first run of a sweep and read by every later one.
Each entry is two files: the content (`<kind>-<key digest>.npy`, or `.json` for a record) and
its card (`<kind>-<key digest>.card.json`: the whole key, the content's sha256 and size).

* **The key names every input the bytes depend on** (listed per kind in docs/guide.md, "What the
  cache keeps"; the callers build them: `images.decoded_key`, `frozen_features.features_key`). A read
  compares the card's key with the one asked for, so a digest collision or a key built from
  other inputs is never served.
* **The content is checked against its digest** the first time this process reads the file (and
  again when its size, time or inode changed): a changed, truncated or unreadable entry is removed
  (when the folder can be written) and computed again, with one line naming the file.
* Entries are written under a scratch name and renamed (`files.atomic_target`): two processes
  computing one entry both write whole files. They are read memory-mapped (the page cache is
  shared by the jobs of a sweep) and need no write access: a read-only or shared cache serves its
  entries, an entry removed by another process meanwhile is computed again. The least recently
  used entries go once the folder holds more than `limit_bytes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pipeline.console import say_once
from pipeline.errors import DataError
from pipeline.files import atomic_target, file_sha256, write_atomically

CACHE_LIMIT_BYTES = 8 * 1024**3
FOLDER = "arrays"
_verified: dict[Path, tuple[int, int, int]] = {}  # content file -> (size, mtime ns, inode) when its digest matched


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def proven(content: Path, sha256: str, size: int) -> bool:
    """True when `content` has `size` bytes with `sha256` (hashed once per process while the file's
    size, time and inode stay the same)."""
    try:
        identity = _identity(content)
        if identity[0] != size:
            return False
        if _verified.get(content) == identity:
            return True
        if file_sha256(content) != sha256:
            return False
    except OSError:
        return False
    _verified[content] = identity
    return True


class DiskCache:
    """Entries by kind and key under `<cache_dir>/arrays` (see the module doc)."""

    def __init__(self, cache_dir: str | Path, limit_bytes: int = CACHE_LIMIT_BYTES, required: bool = False):
        self.root = Path(cache_dir).expanduser() / FOLDER
        self.limit_bytes, self.required = limit_bytes, required

    def paths(self, kind: str, key: dict, suffix: str) -> tuple[Path, Path]:
        """(content, card) of the entry `kind` with `key`."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{kind}-{digest}{suffix}", self.root / f"{kind}-{digest}.card.json"

    def _serve(self, kind: str, key: dict, suffix: str) -> Path | None:
        """The content file of a proven entry, or None (none there, or one removed for what it was)."""
        content, card_file = self.paths(kind, key, suffix)
        try:
            card = json.loads(card_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            card = None
        if card is not None and card.get("key") != json.loads(json.dumps(key)):
            self._drop(content, card_file, "its card names other inputs than asked for")
            return None
        if card is None or not proven(content, card.get("sha256", ""), card.get("bytes", -1)):
            if content.exists() or card_file.exists():
                self._drop(content, card_file, "its content does not match the sha256 recorded when it was written")
            return None
        with contextlib.suppress(OSError):  # recently used; a read-only cache is served all the same
            os.utime(content)
        return content

    def _drop(self, content: Path, card: Path, why: str) -> None:
        try:
            content.unlink(missing_ok=True)
            card.unlink(missing_ok=True)
            print(f"note: the cache entry {content} is damaged ({why}): removed, computing it again")
        except OSError:
            print(f"note: the cache entry {content} is damaged ({why}) and cannot be removed here: computing it anew")

    def _keep(self, kind: str, key: dict, suffix: str, write: Callable[[Path], None]) -> Path | None:
        """Write an entry's content (`write(path)`) and then its card; None where the folder cannot be written."""
        content, card_file = self.paths(kind, key, suffix)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_target(content) as scratch:
                write(scratch)
                card = {"key": key, "sha256": file_sha256(scratch), "bytes": scratch.stat().st_size}
            write_atomically(card_file, json.dumps(card, indent=1, sort_keys=True) + "\n")
        except OSError as error:
            advice = "Free space there, choose another paths.cache_dir, or set data.cache=memory."
            if self.required:
                raise DataError(
                    f"data.cache=file, but {self.root} cannot be written ({error.strerror or error}). {advice}"
                ) from None
            say_once(
                f"cannot keep decoded images and features in {self.root} ({error.strerror or error}); this run "
                f"keeps them in memory and the next computes them again. {advice}"
            )
            return None
        _verified[content] = _identity(content)
        self._evict(keep=content)
        return content

    # ---------------------------------------------------------------- arrays and records

    def get(self, kind: str, key: dict) -> np.ndarray | None:
        """The array entry, memory-mapped read-only, or None."""
        content = self._serve(kind, key, ".npy")
        if content is None:
            return None
        try:
            return np.load(content, mmap_mode="r")
        except (OSError, ValueError):  # removed by another process after it was proven
            return None

    def put(self, kind: str, key: dict, array: np.ndarray) -> np.ndarray:
        """Keep `array` under its key and return it (read back memory-mapped when it was kept)."""
        kept = self.put_parts(kind, key, array.shape, array.dtype, [array])
        return array if kept is None else kept

    def put_parts(
        self, kind: str, key: dict, shape: tuple[int, ...], dtype: np.dtype, parts: Iterable[np.ndarray]
    ) -> np.ndarray | None:
        """Keep the array of `shape` and `dtype` whose rows come in `parts` (written to the file as they
        come: memory holds one part, not the array; the file is the one `np.save` writes of the whole) and
        return it memory-mapped; None where it was not kept (the folder cannot be written: the caller
        computes it in memory) or cannot be read back (removed meanwhile by another process)."""
        dtype = np.dtype(dtype)

        def write(path: Path) -> None:
            rows = 0
            with open(path, "wb") as file:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(file, header)
                for part in parts:
                    if part.shape[1:] != shape[1:] or part.dtype != dtype:
                        raise ValueError(f"a part of {part.dtype} {part.shape} for an array of {dtype} {shape}")
                    file.write(np.ascontiguousarray(part).data)
                    rows += len(part)
            if rows != shape[0]:
                raise ValueError(f"{rows} rows came for an array of {shape[0]}")

        if self._keep(kind, key, ".npy", write) is None:
            return None
        return self.get(kind, key)

    def get_or_compute(self, kind: str, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
        found = self.get(kind, key)
        return found if found is not None else self.put(kind, key, compute())

    def get_record(self, kind: str, key: dict) -> dict | None:
        """A small JSON entry (`put_record`), or None."""
        content = self._serve(kind, key, ".json")
        try:
            return json.loads(content.read_text()) if content else None
        except (OSError, ValueError):
            return None

    def put_record(self, kind: str, key: dict, record: dict) -> None:
        self._keep(kind, key, ".json", lambda path: path.write_text(json.dumps(record, sort_keys=True)))

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used entries until the folder is under the limit."""
        entries = []
        for path in self.root.glob("*"):
            if path.name.endswith(".card.json") or path.name.startswith("."):
                continue
            with contextlib.suppress(OSError):  # removed meanwhile by another process
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                path.with_name(path.name.rsplit(".", 1)[0] + ".card.json").unlink(missing_ok=True)
                total -= size


def disk_cache(cache_dir: str | Path, mode: str) -> DiskCache | None:
    """The cache `data.cache` asks for: on disk in `cache_dir` (`auto`: when the folder cannot be written,
    in memory, said once; `file`: an error then), or none (`memory`: each run decodes the images and
    computes the features into memory)."""
    return None if mode == "memory" else DiskCache(cache_dir, required=mode == "file")


# ------------------------------------------------------------------ folders (exported networks)


def folder_files(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def record_folder(folder: Path, card: Path, made_from: dict) -> None:
    """Write `card`: what `folder` was made from and every file's sha256 in it, right after making it."""
    with contextlib.suppress(OSError):  # a read-only cache: the folder is used unproven this once
        write_atomically(card, json.dumps({"made_from": made_from, "files": folder_files(folder)}, indent=1) + "\n")


def folder_proven(folder: Path, card: Path, made_from: dict) -> bool:
    """True when `card` says `folder` was made from `made_from` and every file in it is as written then."""
    try:
        recorded = json.loads(card.read_text())
        return recorded.get("made_from") == made_from and recorded.get("files") == folder_files(folder)
    except (OSError, ValueError):
        return False
