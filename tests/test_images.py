"""Every image mode decodes faithfully, in the one place every stage uses (`load_image`)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import inspect_image, load_image
from tests.conftest import SHARED_DATASET

SIZE = (96, 128)  # (height, width) the comparisons are made at


def reference_photo() -> np.ndarray:
    """An RGB uint8 photo: one of the shared clothing photos, else a smooth generated scene."""
    photos = sorted(SHARED_DATASET.glob("train/shirt/*.jpg"))[:1]
    if photos:
        with Image.open(photos[0]) as image:
            return np.asarray(image.convert("RGB").resize((SIZE[1], SIZE[0])))
    yy, xx = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    scene = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1) % 256
    return scene.astype(np.uint8)


def png_16bit(pixels: np.ndarray, path: Path) -> Path:
    """A 16-bit PNG (gray or RGB) written byte by byte: Pillow cannot write 16-bit RGB."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, width * channels).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def to_16bit(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.uint16) * 257  # 255 -> 65535: the same picture at 16 bits


def gray(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).convert("L"))


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


@pytest.mark.parametrize("kind", ["gray PNG", "RGB PNG", "gray TIFF"])
def test_16bit_images_decode_to_the_same_picture_as_8bit(tmp_path, kind):
    photo = reference_photo()
    if kind == "RGB PNG":
        reference = photo
        path = png_16bit(to_16bit(photo), tmp_path / "photo16.png")
    else:
        reference = np.repeat(gray(photo)[..., None], 3, axis=-1)
        path = tmp_path / ("photo16.png" if kind == "gray PNG" else "photo16.tif")
        if kind == "gray PNG":
            png_16bit(to_16bit(gray(photo)), path)
        else:
            Image.fromarray(to_16bit(gray(photo))).save(path)  # Pillow writes I;16 TIFF
    with Image.open(path) as image:
        assert image.mode != "RGB" or kind == "RGB PNG"
    digest, problem = inspect_image(path)
    assert problem is None and digest
    decoded = load_image(path, SIZE)
    assert decoded.shape == (*SIZE, 3)
    assert decoded.mean() > 20 and decoded.std() > 10  # not blank (clipping made it all white)
    assert mean_abs_difference(decoded, reference) < 2


@pytest.mark.parametrize("top", [255, 65535])
def test_32bit_integer_gray_is_scaled_by_the_range_it_holds(tmp_path, top):
    reference = gray(reference_photo())
    values = np.round(reference.astype(np.float64) * top / 255).astype(np.int32)
    path = tmp_path / "gray32.tif"
    Image.fromarray(values, "I").save(path)  # Pillow mode I: 32-bit signed integer
    with Image.open(path) as image:
        assert image.mode == "I"
    decoded = load_image(path, SIZE)
    assert mean_abs_difference(decoded[..., 0], reference) < 2  # not almost black (mean 0.3 when read as 16-bit)


def test_exif_orientation_is_applied(tmp_path):
    photo = reference_photo()  # landscape 128 x 96
    stored = Image.fromarray(photo).rotate(90, expand=True)  # how a camera stores a turned photo
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": undoes the counter-clockwise rotate(90) above
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif)
    decoded = load_image(path, SIZE)  # the upright size, as a viewer shows it
    assert mean_abs_difference(decoded, photo) < 6
    sideways = np.asarray(stored.resize((SIZE[1], SIZE[0])))
    assert mean_abs_difference(decoded, sideways) > 3 * mean_abs_difference(decoded, photo)


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L"])
def test_other_modes_still_decode(tmp_path, mode):
    photo = reference_photo()
    image = Image.fromarray(photo).convert(mode)
    path = tmp_path / f"photo.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    decoded = load_image(path, SIZE)
    assert decoded.dtype == np.uint8 and decoded.shape == (*SIZE, 3)
    expected = np.asarray(image.convert("RGB"))
    assert mean_abs_difference(decoded, expected) < 8
