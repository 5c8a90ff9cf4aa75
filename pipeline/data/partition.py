"""The split algorithm: the dataset's layout read and every image assigned to train, val or test
(stratified, seeded; the manifests are written by `manifests.write_split`); and a run's own train/val
split drawn from the manifests' train and val images (`draw_train_val`, data.split.train_val_per_seed).

Layouts understood below the dataset root:

* one folder per class (`root/<class>/<image>`): pooled and split by fractions;
* pre-split (`root/{train,validation,test}/<class>/<image>`; `val`/`valid` also work):
  kept as it is when `data.split.respect_existing`, else pooled.

Nothing here drops a file silently: every file is either an image in a split, or listed
in the report as skipped (with its reason), ignored (hidden/system files), a duplicate
or a label conflict.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.images import is_ignored
from pipeline.data.manifests import SPLITS, ImageSet, Split
from pipeline.errors import DataError

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


def draw_train_val(split: Split, seed: int) -> Split:
    """`split` with its train and val sets drawn anew with `seed`: the manifests' train and val images
    pooled, and each class's val images drawn from its pool, as many as the manifest's val has
    (stratified); images of one content (one sha256) stay on one side; test is untouched. A drawn set
    keeps which rows of the manifests' sets it holds (`ImageSet.drawn_from`), so the decoded images and
    frozen features kept for those sets serve every seed's draw without decoding or computing again."""
    pool = [(part, row) for part in (split.train, split.val) for row in range(len(part))]
    by_class: dict[int, dict[str, list[tuple[ImageSet, int]]]] = defaultdict(dict)
    for part, row in pool:
        key = part.sha256[row] if part.sha256 else part.paths[row]
        by_class[part.labels[row]].setdefault(key, []).append((part, row))
    wanted = Counter(split.val.labels)
    drawn_val: set[tuple[int, int]] = set()  # (id of the manifest set, row)
    for label, units in by_class.items():
        rng = np.random.default_rng([seed, zlib.crc32(split.classes[label].encode()), 1])
        keys = sorted(units)
        taken = 0
        for i in rng.permutation(len(keys)):
            if taken >= wanted[label]:
                break
            drawn_val.update((id(part), row) for part, row in units[keys[i]])
            taken += len(units[keys[i]])
    train = _drawn_set([(p, r) for p, r in pool if (id(p), r) not in drawn_val])
    val = _drawn_set([(p, r) for p, r in pool if (id(p), r) in drawn_val])
    return dataclasses.replace(
        split,
        train=train,
        val=val,
        digests={**split.digests, "train": train.manifest_digest(), "val": val.manifest_digest()},
    )


def _drawn_set(members: list[tuple[ImageSet, int]]) -> ImageSet:
    """The images of `members` (rows of the manifests' sets, in pool order) as one set that knows its rows."""
    parts: dict[int, tuple[ImageSet, list[int]]] = {}
    for part, row in members:
        parts.setdefault(id(part), (part, []))[1].append(row)
    ordered = [(part, rows) for part, rows in parts.values()]
    first = members[0][0] if members else None
    return ImageSet(
        [part.paths[r] for part, rows in ordered for r in rows],
        [part.labels[r] for part, rows in ordered for r in rows],
        list(first.classes) if first else [],
        [part.sha256[r] for part, rows in ordered for r in rows] if all(p.sha256 for p, _ in ordered) else None,
        drawn_from=ordered,
    )


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
