"""The split: the dataset's layout read, every image assigned to train, val or test, and the
manifests written (`data/split/{train,val,test}.csv`: path, label, sha256 of the file).

Layouts understood below the dataset root:

* one folder per class (`root/<class>/<image>`): pooled and split by fractions;
* pre-split (`root/{train,validation,test}/<class>/<image>`; `val`/`valid` also work):
  kept as it is when `data.split.respect_existing`, else pooled.

Nothing here drops a file silently: every file is either an image in a split, or listed
in the report as skipped (with its reason), ignored (hidden/system files), a duplicate
or a label conflict.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.images import is_ignored

SPLITS = ("train", "val", "test")
SOURCE_FILE = "source.json"  # beside the manifests: the data.source they were made from
SPLIT_FOLDER_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
LAYOUT_HELP = (
    "Expected one folder per class (<root>/<class>/<image>) or train/validation/test folders "
    "each holding one folder per class; check data.source."
)


@dataclass(frozen=True)
class Candidate:
    path: Path  # absolute
    label: str
    folder_split: str | None  # from a pre-split layout, else None


def scan(root: Path, respect_existing: bool) -> tuple[list[Candidate], list[str]]:
    """List every file below `root` with its class; return (candidates, ignored paths)."""
    top = {c.name.lower(): c for c in root.iterdir() if c.is_dir() and not is_ignored(c.name)}
    split_dirs = {SPLIT_FOLDER_NAMES[n]: d for n, d in top.items() if n in SPLIT_FOLDER_NAMES}
    presplit = "train" in split_dirs and len(split_dirs) >= 2
    if presplit and len(split_dirs) != len(top):
        other = sorted(set(top) - {n for n in top if n in SPLIT_FOLDER_NAMES})
        raise DataError(
            f"{root} mixes split folders ({', '.join(sorted(split_dirs))}) with other folders ({', '.join(other)})."
        )
    groups = [(s, d) for s, d in sorted(split_dirs.items())] if presplit else [(None, root)]

    candidates, ignored = [], []
    for split, base in groups:
        for class_dir in sorted(base.iterdir()):
            if is_ignored(class_dir.name):
                ignored.append(str(class_dir))
                continue
            if not class_dir.is_dir():
                ignored.append(str(class_dir))  # a loose file beside the class folders
                continue
            for file in sorted(class_dir.rglob("*")):
                rel_parts = file.relative_to(class_dir).parts
                if any(is_ignored(p) for p in rel_parts):
                    if file.is_file():
                        ignored.append(str(file))
                    continue
                if file.is_file():
                    candidates.append(Candidate(file, class_dir.name, split if respect_existing else None))
    return candidates, sorted(ignored)


@dataclass
class SplitResult:
    rows: dict[str, list[tuple[str, str, str]]]  # split -> [(path, label, sha256)]
    classes: list[str]
    skipped: list[dict]
    ignored: list[str]
    duplicates: list[dict]
    conflicts: list[dict]


def split_dataset(
    candidates: list[Candidate],
    checks: list[tuple[str | None, str | None]],
    ignored: list[str],
    fractions: list[float],
    seed: int,
    limit_per_class: int | None = None,
) -> SplitResult:
    """Assign every valid image to one split; duplicate groups stay together, conflicts go out."""
    skipped = [{"path": str(c.path), "reason": reason} for c, (_, reason) in zip(candidates, checks) if reason]
    valid = [(c, digest) for c, (digest, _) in zip(candidates, checks) if digest]

    by_hash: dict[str, list[Candidate]] = defaultdict(list)
    for c, digest in valid:
        by_hash[digest].append(c)
    conflicts, units = [], []  # a unit: one duplicate group (usually a single image)
    for digest in sorted(by_hash):
        group = by_hash[digest]
        labels = sorted({c.label for c in group})
        if len(labels) > 1:
            conflicts.append({"sha256": digest, "labels": labels, "paths": sorted(str(c.path) for c in group)})
        else:
            units.append((digest, group))

    classes = sorted({group[0].label for _, group in units})
    if not classes:
        reasons = Counter(item["reason"].split(":")[0] for item in skipped)
        seen = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common(3)) or "no files at all"
        raise DataError(f"No valid image was found ({len(candidates)} files: {seen}). " + LAYOUT_HELP)
    if len(classes) < 2:
        raise DataError(
            f"Only one class was found ({classes[0]}, {sum(len(g) for _, g in units)} images): "
            "a classifier needs at least two. " + LAYOUT_HELP
        )

    unit_split: dict[str, str] = {}
    presplit = any(c.folder_split for c, _ in valid)
    if presplit:
        for digest, group in units:
            votes = Counter(c.folder_split for c in group)
            best = max(votes.values())
            unit_split[digest] = next(s for s in SPLITS if votes.get(s) == best)
    else:
        by_class: dict[str, list[tuple[str, list[Candidate]]]] = defaultdict(list)
        for digest, group in units:
            by_class[group[0].label].append((digest, group))
        for label in classes:
            members = sorted(by_class[label], key=lambda u: str(u[1][0].path))
            rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
            order = rng.permutation(len(members))
            counts = _split_counts(len(members), fractions, label)
            bounds = np.cumsum([0, *counts])
            for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
                for i in order[lo:hi]:
                    unit_split[members[i][0]] = split

    rows: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}  # (path, label, sha256 of the file)
    duplicates = []
    for digest, group in units:
        split = unit_split[digest]
        rows[split] += [(str(c.path), c.label, digest) for c in group]
        if len(group) > 1:
            moved = sorted(str(c.path) for c in group if c.folder_split and c.folder_split != split)
            duplicates.append(
                {"sha256": digest, "split": split, "paths": sorted(str(c.path) for c in group), "moved": moved}
            )
    for split in SPLITS:
        rows[split].sort()
        if limit_per_class:
            rows[split] = _limit(rows[split], limit_per_class, seed)

    expected = [s for s, f in zip(SPLITS, fractions) if f > 0] if not presplit else [s for s in SPLITS if rows[s]]
    for label in classes:
        missing = [s for s in expected if not any(row[1] == label for row in rows[s])]
        if missing:
            raise DataError(
                f"Class '{label}' has no image in split(s) {', '.join(missing)}: it is too small to appear "
                "in every split. Add images, remove the class folder, or change data.split.fractions."
            )
    return SplitResult(rows, classes, skipped, ignored, duplicates, conflicts)


def _split_counts(n: int, fractions: list[float], label: str) -> list[int]:
    needed = sum(1 for f in fractions if f > 0)
    if n < needed:
        raise DataError(
            f"Class '{label}' has {n} image(s), too few to appear in all {needed} splits; "
            "add images, remove the class folder, or change data.split.fractions."
        )
    val = max(1, round(n * fractions[1])) if fractions[1] > 0 else 0
    test = max(1, round(n * fractions[2])) if fractions[2] > 0 else 0
    while n - val - test < 1:
        if val >= test and val > 1:
            val -= 1
        else:
            test -= 1
    return [n - val - test, val, test]


def _limit(rows: list[tuple[str, str, str]], per_class: int, seed: int) -> list[tuple[str, str, str]]:
    by_class: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for row in rows:
        by_class[row[1]].append(row)
    kept = []
    for label, members in by_class.items():
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        kept += [members[i] for i in sorted(rng.permutation(len(members))[:per_class])]
    return sorted(kept)


def write_split(result: SplitResult, split_dir: Path, report_path: Path, source: str) -> dict:
    """Write the manifests, classes.json and the split report; return the report.

    A manifest row is path,label,sha256: the file's content hash makes the manifest - and so
    `manifest_hash`, each run's data identity and DVC's view of `data/split` - change when an
    image is edited in place, not only when files are added, removed or relabelled."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in result.rows.items():
        with open(split_dir / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "label", "sha256"])
            writer.writerows(rows)
    (split_dir / "classes.json").write_text(json.dumps(result.classes, indent=2) + "\n")
    (split_dir / SOURCE_FILE).write_text(json.dumps({"source": source}) + "\n")
    report = {
        "source": source,
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
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


SMALL_CLASS_SHARE = 0.1  # a class with fewer train images than this share of the largest class's is flagged


def imbalance_warnings(train_counts: dict[str, int]) -> list[str]:
    """One line per class that the accuracy of a model could ignore: fewer train images than
    SMALL_CLASS_SHARE of the largest class's."""
    if not train_counts:
        return []
    largest = max(train_counts, key=train_counts.get)
    return [
        f"class '{name}' has {n} train image(s) against {train_counts[largest]} of '{largest}': a model can "
        f"ignore it and keep a high accuracy. Add images, or judge by balanced accuracy and macro F1 (evaluate "
        f"reports both; compare.metric=test_balanced_accuracy)"
        for name, n in sorted(train_counts.items())
        if n < SMALL_CLASS_SHARE * train_counts[largest]
    ]


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


def read_manifest_rows(split_dir: str | Path, split: str) -> list[dict[str, str]]:
    """One split's manifest, read from `split_dir`."""
    return manifest_rows(read_split_file(split_dir, f"{split}.csv"))


def read_manifest(split_dir: str | Path, split: str) -> tuple[list[str], list[str]]:
    """Return (paths, labels) of one split's manifest."""
    rows = read_manifest_rows(split_dir, split)
    return [r["path"] for r in rows], [r["label"] for r in rows]


def split_source(split_dir: str | Path) -> str | None:
    """The `data.source` the split in `split_dir` was made from (None for a split older than this record)."""
    path = Path(split_dir) / SOURCE_FILE
    return json.loads(path.read_text())["source"] if path.is_file() else None


def read_classes(split_dir: str | Path) -> list[str]:
    return json.loads(read_split_file(split_dir, "classes.json"))
