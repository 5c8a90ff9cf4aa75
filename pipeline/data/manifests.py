"""The split as files and as values: the manifests the split stage writes (`<split_dir>/{train,val,
test}.csv`: path, label, sha256 of the file; classes.json; source.json) and `Split` / `ImageSet`,
what every later stage reads from them, once per command. No TensorFlow here.

The manifests are the data's identity: a file's sha256 makes the manifest - and so the data
version each run records, and DVC's view of `data/split` - change when an image is edited in
place, not only when files are added, removed or relabelled. Every stage that reads images checks
them against it (`Split.require_unchanged`, `ImageSet.decoded`), whatever the cache holds.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config.schema import DataConfig
from pipeline.console import say_once
from pipeline.data import images as image_files
from pipeline.data.cache import DiskCache
from pipeline.errors import DataError
from pipeline.files import write_atomically

SPLITS = ("train", "val", "test")
SOURCE_FILE = "source.json"  # beside the manifests: the data.source they were made from


@dataclass
class ImageSet:
    """One split: image paths, integer labels, the class list and, when read from a manifest,
    each file's sha256 at split time (checked when the file is read)."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    sha256: list[str] | None = None
    drawn_from: list[tuple[ImageSet, list[int]]] | None = None  # a set drawn per seed: (manifest set, its rows)

    @classmethod
    def from_manifest(
        cls, paths: list[str], names: list[str], classes: list[str], sha256: list[str] | None = None
    ) -> ImageSet:
        index = {name: i for i, name in enumerate(classes)}
        return cls(list(paths), [index[n] for n in names], list(classes), list(sha256) if sha256 else None)

    @classmethod
    def from_rows(cls, rows: list[dict[str, str]], classes: list[str]) -> ImageSet:
        hashes = [r.get("sha256") for r in rows]
        return cls.from_manifest(
            [r["path"] for r in rows],
            [r["label"] for r in rows],
            classes,
            hashes if all(hashes) else None,  # a hand-made manifest without them: read unchecked, uncached
        )

    def __len__(self) -> int:
        return len(self.paths)

    def one_hot(self) -> np.ndarray:
        """The labels as one-hot float32 [n, classes]."""
        return np.eye(len(self.classes), dtype=np.float32)[np.asarray(self.labels, np.int64)]

    def content_key(self) -> dict:
        """What these images' pixels depend on in the cache's keys: every file's content (its manifest
        sha256), in order, and how many."""
        if self.sha256 is None:
            raise ValueError("content_key needs an ImageSet read from a manifest (Split.read)")
        return {"images_sha256": hashlib.sha256("\n".join(self.sha256).encode()).hexdigest(), "count": len(self)}

    def require_unchanged(self, cache: DiskCache | None) -> None:
        """Every file still has the bytes the manifest records, or a DataError naming the first that
        does not (`images.check_unchanged`); a hand-made manifest without hashes: every file is there."""
        if self.sha256 is not None:
            image_files.check_unchanged(self.paths, self.sha256, cache)
        else:
            image_files.check_readable(self.paths)

    def decoded(self, image_size: tuple[int, int], cache: DiskCache | None = None) -> np.ndarray:
        """Every image decoded and resized as training sees it: uint8 [n, height, width, 3], in order,
        kept in `cache` under `decoded_key`, so the runs of a sweep decode the split once. The files
        are checked against the manifest before a kept array is served; decoding checks each file."""
        if self.drawn_from:  # the rows of the manifests' sets, decoded (and kept) as those sets
            return np.concatenate([part.decoded(image_size, cache)[rows] for part, rows in self.drawn_from])
        if cache is None or self.sha256 is None:
            return image_files.decode_all(self.paths, self.sha256, image_size)
        found = cache.get("decoded", self.decoded_key(image_size))
        if found is not None:
            self.require_unchanged(cache)
            return found
        kept = cache.put_parts(  # decoded straight into the cache file: memory holds one part at a time
            "decoded",
            self.decoded_key(image_size),
            (len(self), *image_size, 3),
            np.uint8,
            image_files.decode_chunks(self.paths, self.sha256, image_size),
        )
        return kept if kept is not None else image_files.decode_all(self.paths, self.sha256, image_size)

    def manifest_digest(self) -> str:
        """The sha256 of this set written as its manifest (`write_split`'s format): a manifest file's own
        sha256, and for a set drawn per seed the digest its manifest would have."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "label", "sha256"])
        writer.writerows(zip(self.paths, (self.classes[i] for i in self.labels), self.sha256 or [""] * len(self)))
        return hashlib.sha256(text.getvalue().encode()).hexdigest()

    def decoded_key(self, image_size: tuple[int, int]) -> dict:
        """What decoded pixels depend on: the files' content, the size, and the decoder (its version
        here and Pillow's, whose resampling it uses)."""
        return {**self.content_key(), "size": list(image_size), "decoder": image_files.decoder_version()}


@dataclass(frozen=True)
class Split:
    """What the split stage wrote, read once per command and passed on: the classes, each split's
    images, the data version a run records (one hash over the manifests and classes), each manifest
    file's sha256 (the MLflow datasets' digests) and where the images were read from."""

    folder: Path
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    version: str
    digests: dict[str, str]
    source: (
        dict  # source.json: {"source": as given, "folder": the folder read, "link", "link_target": see source_record}
    )

    @classmethod
    def read(cls, split_dir: str | Path) -> Split:
        folder = Path(split_dir)
        files = read_split_files(folder)  # each file read once: rows, version and digests agree
        classes = json.loads(files["classes.json"])
        train, val, test = (ImageSet.from_rows(manifest_rows(files[f"{name}.csv"]), classes) for name in SPLITS)
        digests = {name: hashlib.sha256(files[f"{name}.csv"]).hexdigest() for name in SPLITS}
        source_file = folder / SOURCE_FILE
        source = json.loads(source_file.read_text()) if source_file.is_file() else {}
        split = cls(folder, classes, train, val, test, manifest_hash(folder, files), digests, source)
        split.require_same_link()
        return split

    def require_same_link(self) -> None:
        """A `data.source` given as a symbolic link must still lead where it led at the split: the
        manifests list the files found there, and the run records that folder."""
        link, target = self.source.get("link"), self.source.get("link_target")
        if link and target and os.path.realpath(link) != target:
            raise DataError(
                f"data.source={link} led to {target} when {self.folder} was split and leads to "
                f"{os.path.realpath(link)} now. {image_files.RERUN_SPLIT}"
            )

    def require_training_images(self) -> None:
        """Training needs train images, and validation images to choose its best epoch and to stop early."""
        for name, images in (("train", self.train), ("val", self.val)):
            if not len(images):
                raise DataError(
                    f"{self.folder}/{name}.csv lists no images: training needs a {name} split to "
                    + ("learn from" if name == "train" else "pick its best epoch and stop early")
                    + ". Give it a share in data.split.fractions (e.g. [0.8,0.1,0.1]), or a "
                    + "validation/ folder in a pre-split dataset, and run the split stage again."
                )

    def recorded_source(self, data: DataConfig) -> DataConfig:
        """`data` with `source` set to the folder the split read (links followed): a run records the data
        it trains on, whatever `data.source` says on this command line."""
        folder = self.source.get("folder") or self.source.get("source")
        if folder is None or folder == data.source:
            return data
        if data.source != self.source.get("source"):
            say_once(f"{self.folder} was split from {folder}; the runs record that as data.source")
        return dataclasses.replace(data, source=folder)

    def require_unchanged(self, cache: DiskCache | None, names: tuple[str, ...] = ("train", "val")) -> None:
        """The images of `names` still have the bytes the split recorded (`ImageSet.require_unchanged`)."""
        for name in names:
            getattr(self, name).require_unchanged(cache)

    def train_val_digest(self) -> str:
        """One digest of the train and val sets a run trains and selects on (tag train_val_sha256): the
        same for every run of a fixed split, one per seed with data.split.train_val_per_seed."""
        return hashlib.sha256((self.digests["train"] + self.digests["val"]).encode()).hexdigest()

    def image_root(self) -> str:
        """The folder that holds every image of the split."""
        paths = [os.path.dirname(p) for s in (self.train, self.val, self.test) for p in s.paths]
        return os.path.commonpath(paths) if paths else str(self.folder)


def source_record(given: str, folder: Path) -> dict:
    """source.json: `data.source` as given, the folder read (resolved: links followed), and, when a local
    path given ran through a symbolic link, that path and where it led (every later stage checks it
    still leads there: `Split.require_same_link`)."""
    record = {"source": given, "folder": str(folder)}
    if not given.startswith(("http://", "https://")):
        path = Path(given).expanduser().absolute()
        if os.path.realpath(path) != str(path):
            record |= {"link": str(path), "link_target": os.path.realpath(path)}
    return record


def write_split(result, split_dir: Path, report_path: Path, source: dict) -> dict:
    """Write the manifests, classes.json, source.json and the split report (`partition.SplitResult`);
    return the report."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in result.rows.items():
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "label", "sha256"])
        writer.writerows(rows)
        write_atomically(split_dir / f"{split}.csv", text.getvalue())
    write_atomically(split_dir / "classes.json", json.dumps(result.classes, indent=2) + "\n")
    write_atomically(split_dir / SOURCE_FILE, json.dumps(source) + "\n")
    report = {
        "source": source["source"],
        "folder": source["folder"],
        "classes": result.classes,
        "counts": {s: len(rows) for s, rows in result.rows.items()},
        "per_class": {s: dict(sorted(Counter(row[1] for row in rows).items())) for s, rows in result.rows.items()},
        "skipped": result.skipped,
        "ignored": result.ignored,
        "duplicates": result.duplicates,
        "conflicts": result.conflicts,
        "manifest_sha256": manifest_hash(split_dir),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(report_path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def read_split_file(split_dir: str | Path, name: str) -> bytes:
    """One file the split stage wrote (`train.csv`, ..., `classes.json`), or an error saying what to run."""
    path = Path(split_dir) / name
    if not path.exists():
        raise DataError(f"{path} is missing: run the split stage first (python -m pipeline.split or dvc repro).")
    return path.read_bytes()


def read_split_files(split_dir: str | Path) -> dict[str, bytes]:
    """The bytes of the three manifests and classes.json, each read once (a reader parses, hashes and
    digests the same bytes, so a split written meanwhile cannot mix into one record)."""
    return {name: read_split_file(split_dir, name) for name in (*(f"{s}.csv" for s in SPLITS), "classes.json")}


def manifest_hash(split_dir: Path, files: dict[str, bytes] | None = None) -> str:
    """One hash over the three manifests and classes.json: the data version a run used."""
    digest = hashlib.sha256()
    for name, data in (files or read_split_files(split_dir)).items():
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


def manifest_rows(data: bytes) -> list[dict[str, str]]:
    """A manifest's rows: {path, label, sha256} per image (the sha256 of its bytes at split time)."""
    return list(csv.DictReader(io.StringIO(data.decode())))


def read_manifest(split_dir: str | Path, split: str) -> tuple[list[str], list[str]]:
    """Return (paths, labels) of one split's manifest."""
    rows = manifest_rows(read_split_file(split_dir, f"{split}.csv"))
    return [r["path"] for r in rows], [r["label"] for r in rows]


def read_classes(split_dir: str | Path) -> list[str]:
    return json.loads(read_split_file(split_dir, "classes.json"))
