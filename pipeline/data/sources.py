"""Where the images come from: `data.source` is a folder, a local .zip/.tar.gz, or an http(s) URL of
one. Downloads and extractions are cached by content (sha256), never by name; archives are
extracted safely (no links, no paths outside the target).
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from pipeline.console import progress_bar
from pipeline.data.images import is_ignored
from pipeline.data.partition import SPLIT_FOLDER_NAMES
from pipeline.errors import DataError
from pipeline.files import atomic_target, file_sha256


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
    try:
        with atomic_target(target) as partial, urllib.request.urlopen(url, timeout=timeout_s) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(partial, "wb") as out,
                progress_bar(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise DataError(
            f"Could not download data.source={url}: {getattr(error, 'reason', error)}. "
            "If this machine is offline, fetch the archive elsewhere and pass a local copy: "
            "data.source=<folder or archive>."
        ) from None


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
        with atomic_target(target) as scratch:  # another process that finished first keeps its extraction
            try:
                safe_extract(archive, scratch)
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as error:
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
            (scratch / ".complete").write_text(f"{archive}\n")
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
