"""The dataset on disk: fetching it, reading its layout, validating every image, splitting it.

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
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageFile, ImageOps
from tqdm import tqdm

from pipeline.errors import DataError

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
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
LAYOUT_HELP = (
    "Expected one folder per class (<root>/<class>/<image>) or train/validation/test folders "
    "each holding one folder per class; check data.source."
)
MAX_PIXELS = 250_000_000  # larger images are skipped (decompression-bomb guard), not crashed on

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image


# ------------------------------------------------------------------------ sources


def resolve_source(source: str, download_dir: str, sha256: str | None = None) -> Path:
    """Return a local folder holding the dataset named by `data.source`.

    `source` is a folder, a local .zip/.tar.gz, or an http(s) URL of one. The cache in
    `download_dir` is keyed by content, never by file name:

    * `downloads/<digest of the URL>/<name>`: a URL's archive, beside a record of its sha256.
      It is downloaded again when that record is missing or no longer matches the file
      (an interrupted or damaged copy), or when it does not match `data.sha256`;
    * `extracted/<sha256 of the archive>/`: one extraction per archive content, so two
      different `master.zip` never share one and a changed archive is extracted anew.
      Extraction goes to a temporary folder that is renamed into place only when complete.
    """
    cache = Path(download_dir).expanduser().resolve()
    if source.startswith(("http://", "https://")):
        archive, digest = _cached_download(source, cache, sha256)
        return _extracted(archive, digest, cache, sha256, downloaded=True)
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        return _dataset_root(path)
    if path.is_file() and _archive_kind(path):
        return _extracted(path, file_sha256(path), cache, sha256, downloaded=False)
    raise DataError(
        f"data.source={source!r} is neither a folder, a .zip/.tar.gz archive nor an http(s) URL "
        f"(resolved to {path}). Point it at the dataset folder, e.g. data.source=/path/to/clothing-small"
    )


def _cached_download(url: str, cache: Path, sha256: str | None) -> tuple[Path, str]:
    """(the URL's archive in the cache, its sha256), downloaded unless a validated copy is there."""
    name = PurePosixPath(urllib.request.urlparse(url).path).name or "archive"
    archive = cache / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:24] / name
    record = archive.with_name(archive.name + ".sha256")
    if archive.is_file() and record.is_file():
        actual = file_sha256(archive)
        if actual == record.read_text().strip() and (not sha256 or actual == sha256.lower()):
            return archive, actual
    download(url, archive)
    actual = file_sha256(archive)
    record.write_text(actual + "\n")
    return archive, actual


def download(url: str, target: Path, timeout_s: float = 30.0) -> None:
    """Download `url` to `target` with a progress bar; a partial file never stays behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"Could not download data.source={url}: {getattr(error, 'reason', error)}. "
            "If this machine is offline, fetch the archive elsewhere and pass a local copy: "
            "data.source=<folder or archive>."
        ) from None
    partial.replace(target)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return None


def _extracted(archive: Path, actual: str, cache: Path, sha256: str | None, downloaded: bool) -> Path:
    """The dataset root inside the extraction of `archive` (whose sha256 is `actual`), extracted once per content."""
    if sha256 and actual != sha256.lower():
        raise DataError(
            f"{archive} has sha256 {actual}, but data.sha256 is {sha256}. "
            "The download is damaged or the archive changed: delete it and retry, or fix data.sha256."
        )
    target = cache / "extracted" / actual[:24]
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)  # left over from an older, interrupted layout
        scratch = target.with_name(f".{target.name}.part-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            safe_extract(archive, scratch)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as error:
            shutil.rmtree(scratch, ignore_errors=True)
            if downloaded:
                archive.unlink(missing_ok=True)  # never keep a broken download: the next run fetches it again
            again = (
                "It was deleted from the cache; the next run downloads it again."
                if downloaded
                else "Replace it with a good copy, or point data.source at the extracted folder."
            )
            raise DataError(
                f"{archive} is not a readable {_archive_kind(archive)} archive ({error}). {again}"
            ) from None
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        (scratch / ".complete").write_text(f"{archive}\n")
        try:
            scratch.rename(target)
        except OSError:  # another process finished the same extraction first
            shutil.rmtree(scratch, ignore_errors=True)
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                raise DataError(f"{target} is an incomplete extraction; it was removed, run again.") from None
    return _dataset_root(target)


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a zip or tar archive, refusing any entry that would land outside `target`."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()

    def check(name: str) -> None:
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or not (root / pure).resolve().is_relative_to(root):
            raise DataError(f"{archive} holds an unsafe entry {name!r} (absolute path or '..'); nothing was extracted.")

    if _archive_kind(archive) == "zip":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                check(name)
            zf.extractall(root)
    else:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                check(member.name)
                if member.issym() or member.islnk():
                    raise DataError(
                        f"{archive} holds a link {member.name!r}; links are refused, nothing was extracted."
                    )
            tf.extractall(root, members=members, filter="data")


def _dataset_root(path: Path) -> Path:
    """Descend through single wrapper folders (as in GitHub archives); a single folder that
    holds images itself is a class, not a wrapper."""
    while True:
        children = [c for c in path.iterdir() if not is_ignored(c.name)]
        if (
            len(children) == 1
            and children[0].is_dir()
            and children[0].name.lower() not in SPLIT_FOLDER_NAMES
            and any(c.is_dir() and not is_ignored(c.name) for c in children[0].iterdir())
        ):
            path = children[0]
        else:
            return path


# ------------------------------------------------------------------------ scanning


@dataclass(frozen=True)
class Candidate:
    path: Path  # absolute
    label: str
    folder_split: str | None  # from a pre-split layout, else None


def is_ignored(name: str) -> bool:
    """Hidden and system files or folders (.DS_Store, Thumbs.db, __MACOSX): never data."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES or name == "__MACOSX"


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


# ------------------------------------------------------------------------ images


def inspect_image(path: Path) -> tuple[str | None, str | None]:
    """Fully decode one file as training will. Returns (sha256 of the bytes, None) or (None, reason it is skipped)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"
    if not data:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if min(decode_rgb(image).size) < 1:
                    return None, "image has no pixels"
    except Image.UnidentifiedImageError:
        return None, "not an image (no decoder recognises it)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, f"image too large (over {MAX_PIXELS:,} pixels)"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        text = str(error)
        reason = "truncated image" if "truncated" in text.lower() else "cannot decode"
        return None, f"{reason}: {text}"
    return hashlib.sha256(data).hexdigest(), None


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit gray (Pillow opens it as one of these)


def decode_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as an upright 8-bit RGB image: the one decoding every stage shares.

    * EXIF orientation is applied (a phone photo taken upright stays upright);
    * 16-bit gray (`I;16*`) is scaled from 0..65535 to 0..255, not clipped; 32-bit integer
      gray (`I`) from the smallest of 0..255, 0..65535 and 0..2**32-1 that holds its values
      (the file's bit depth says nothing of the range its writer used); 16-bit RGB PNG/TIFF
      Pillow already scales; float images (`F`) are read as 0..1 when their maximum is <= 1,
      else as 0..255;
    * transparent pixels are composed over white; CMYK, palette and gray convert as usual.
    """
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_DEPTH_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        largest = float(np.nanmax(values)) if values.size else 0.0
        if image.mode == "F":
            scale = 255.0 if largest <= 1.0 else 1.0
        elif image.mode == "I":
            scale = 255.0 / (255.0 if largest <= 255 else 65535.0 if largest <= 65535 else 2.0**32 - 1)
        else:
            scale = 255.0 / 65535.0
        gray = np.clip(np.round(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Decode (`decode_rgb`) and resize (bilinear) one image to size=(height, width).

    Returns uint8 [height, width, 3]. Used by training, evaluation, preview and predict
    alike, and the split stage validates with the same decoding: they see the same pixels.
    """
    with Image.open(path) as image:
        rgb = decode_rgb(image)
    height, width = size
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def validate_images(candidates: list[Candidate], workers: int = 4) -> list[tuple[str | None, str | None]]:
    """Decode every candidate once, in threads (PIL releases the GIL), with a progress bar."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(
                pool.map(inspect_image, [c.path for c in candidates]),
                total=len(candidates),
                desc="validate images",
                unit="img",
            )
        )


# ------------------------------------------------------------------------ splitting


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


# ------------------------------------------------------------------------ manifests


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


def manifest_hash(split_dir: Path) -> str:
    """One hash over the three manifests and classes.json: the data version a run used."""
    digest = hashlib.sha256()
    for name in (*(f"{s}.csv" for s in SPLITS), "classes.json"):
        digest.update(name.encode())
        digest.update((Path(split_dir) / name).read_bytes())
    return digest.hexdigest()


def read_manifest(split_dir: str | Path, split: str) -> tuple[list[str], list[str]]:
    """Return (paths, labels) of one split's manifest."""
    path = Path(split_dir) / f"{split}.csv"
    if not path.exists():
        raise DataError(f"{path} is missing: run the split stage first (python -m pipeline.split or dvc repro).")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["path"] for r in rows], [r["label"] for r in rows]


def split_source(split_dir: str | Path) -> str | None:
    """The `data.source` the split in `split_dir` was made from (None for a split older than this record)."""
    path = Path(split_dir) / SOURCE_FILE
    return json.loads(path.read_text())["source"] if path.is_file() else None


def read_classes(split_dir: str | Path) -> list[str]:
    path = Path(split_dir) / "classes.json"
    if not path.exists():
        raise DataError(f"{path} is missing: run the split stage first (python -m pipeline.split or dvc repro).")
    return json.loads(path.read_text())
