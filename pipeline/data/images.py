"""Reading one image as every stage does: decoded fully once when the split is made (a file that
cannot be decoded is skipped with its reason), then loaded the same way for training,
evaluation and prediction (EXIF orientation, 16-bit scaled to 8, alpha over white, RGB).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageFile, ImageOps

from pipeline.console import progress_bar
from pipeline.data.cache import DiskCache
from pipeline.errors import DataError

SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
MAX_PIXELS = 250_000_000  # larger images are skipped (decompression-bomb guard), not crashed on

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image


def is_ignored(name: str) -> bool:
    """Hidden and system files or folders (.DS_Store, Thumbs.db, __MACOSX): never data."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES or name == "__MACOSX"


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


# Raised when `decode_rgb` or the resize changes what pixels a file gives: decoded arrays
# cached on disk under the old number are then not read again (datasets.images_key).
DECODER_VERSION = 1


def load_image(path: str | Path | io.BytesIO, size: tuple[int, int]) -> np.ndarray:
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


RERUN_SPLIT = (
    "Run the split stage again (python -m pipeline.split, or dvc repro) so that the manifests match the files."
)


def decoder_version() -> str:
    """What decoded pixels depend on besides the file: this decoding (DECODER_VERSION) and Pillow's, whose
    decoders and resampling it uses."""
    return f"{DECODER_VERSION}+pillow-{PIL.__version__}"


def _unreadable(path: str | Path, error: OSError) -> DataError:
    return DataError(f"{path} is listed in the split but cannot be read ({error.strerror or error}). {RERUN_SPLIT}")


def _changed(path: str | Path) -> DataError:
    return DataError(
        f"{path} has changed since the split was made (its sha256 differs from the manifest's). {RERUN_SPLIT}"
    )


def _file_identity(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev]


def check_unchanged(paths: list[str], sha256s: list[str], cache: DiskCache | None = None) -> None:
    """Every file still has the bytes its manifest recorded, or the DataError `load_checked_image`
    gives. A file is hashed when its size, time, inode or device differ from when it was last found
    unchanged (`cache`: a record of that kept in the disk cache, so later processes only look at
    each file's stat; without one, every file is hashed)."""
    key = {"files_sha256": hashlib.sha256("\n".join(f"{p}\t{h}" for p, h in zip(paths, sha256s)).encode()).hexdigest()}
    known = (cache.get_record("checked-files", key) if cache else None) or {}
    now, hashed = {}, 0
    for path, sha256 in zip(paths, sha256s):
        try:
            now[path] = _file_identity(path)
            if known.get(path) == now[path]:
                continue
            data = Path(path).read_bytes()
        except OSError as error:
            raise _unreadable(path, error) from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise _changed(path)
        hashed += 1
    if cache and hashed:
        cache.put_record("checked-files", key, now)


def check_readable(paths: list[str]) -> None:
    """Every file is there and can be opened, or the DataError of the first that cannot."""
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise _unreadable(path, error) from None


DECODE_CHUNK_IMAGES = 256  # images decoded before they are handed on (150 px: 17 MiB)


def decode_chunks(
    paths: list[str], sha256s: list[str] | None, size: tuple[int, int], chunk_images: int = DECODE_CHUNK_IMAGES
) -> Iterator[np.ndarray]:
    """Every file decoded and resized (`load_checked_image`, each checked against its sha256 when
    given), in order, as uint8 [<= chunk_images, height, width, 3] parts: a caller that writes each
    part on (the disk cache) holds one part in memory, however many images there are. Decoded in
    threads (Pillow releases the GIL), with one progress bar for all the parts."""
    hashes = sha256s or [None] * len(paths)
    workers = min(8, (os.cpu_count() or 1) + 1)
    with progress_bar(total=len(paths), desc="decode images", unit="img") as bar, ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), chunk_images):
            part = np.empty((min(chunk_images, len(paths) - start), *size, 3), np.uint8)

            def load(i: int, part=part, start=start) -> None:
                part[i - start] = load_checked_image(paths[i], size, hashes[i])

            for _ in pool.map(load, range(start, start + len(part))):
                bar.update(1)
            yield part


def decode_all(paths: list[str], sha256s: list[str] | None, size: tuple[int, int]) -> np.ndarray:
    """Every file decoded and resized (`decode_chunks`) into one uint8 [n, height, width, 3] array."""
    out = np.empty((len(paths), *size, 3), np.uint8)
    done = 0
    for part in decode_chunks(paths, sha256s, size):
        out[done : done + len(part)] = part
        done += len(part)
    return out


def load_checked_image(path: str | Path, size: tuple[int, int], sha256: str | None) -> np.ndarray:
    """`load_image`, after checking that the file still has the bytes its manifest recorded
    (`sha256`; None: unchecked). A file changed, moved or removed since the split raises a
    DataError naming it: training on other pixels than the record says is never silent."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise _unreadable(path, error) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise _changed(path)
    try:
        return load_image(io.BytesIO(data), size)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"{path} cannot be decoded ({error}). {RERUN_SPLIT}") from None


def validate_images(paths: list[Path], workers: int = 4) -> list[tuple[str | None, str | None]]:
    """Decode every file once, in threads (PIL releases the GIL), with a progress bar: (sha256, None) or
    (None, why it is skipped) per file."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            progress_bar(
                pool.map(inspect_image, paths),
                total=len(paths),
                desc="validate images",
                unit="img",
            )
        )
