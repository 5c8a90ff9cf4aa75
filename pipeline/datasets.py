"""tf.data input pipelines: decode once (checked, kept on disk), shuffle, batch, augment (train only), prefetch.

Train-only augmentation is structural: `build_eval_dataset` takes no augmentation
argument at all, so validation and test images are always the plain decoded pixels.

Every dataset yields (images, labels): images float32 [batch, height, width, 3] in pixel
units 0..255 (the model applies its own preprocessing), labels one-hot float32.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.array_cache import ArrayCache
from pipeline.augmentation import BatchAugmenter, mix_batch
from pipeline.augmentation_config import AugmentationConfig
from pipeline.backend import tf
from pipeline.images import DECODER_VERSION, load_checked_image
from pipeline.partition import (
    SPLITS,
    manifest_hash,
    manifest_rows,
    read_classes,
    read_manifest_rows,
    read_split_files,
    split_source,
)
from pipeline.progress_bars import progress_bar


@dataclass
class ImageSet:
    """One split: image paths, integer labels, the class list and, when read from a manifest,
    each file's sha256 at split time (checked when the file is decoded, `decoded_images`)."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    sha256: list[str] | None = None

    @classmethod
    def from_manifest(
        cls, paths: list[str], names: list[str], classes: list[str], sha256: list[str] | None = None
    ) -> ImageSet:
        index = {name: i for i, name in enumerate(classes)}
        return cls(list(paths), [index[n] for n in names], list(classes), list(sha256) if sha256 else None)

    @classmethod
    def read(cls, split_dir: str | Path, split: str, classes: list[str] | None = None) -> ImageSet:
        """The `split` (train, val, test) of the manifests in `split_dir`."""
        classes = classes if classes is not None else read_classes(split_dir)
        return cls.from_rows(read_manifest_rows(split_dir, split), classes)

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

    def one_hot_labels(self) -> tf.Tensor:
        """The labels as one-hot float32 [n, classes]."""
        return tf.one_hot(np.asarray(self.labels, dtype=np.int32), len(self.classes))


@dataclass(frozen=True)
class Split:
    """What the split stage wrote, read once per command and passed on: the classes, each split's
    images (`ImageSet`), the data version a run records (one hash over the manifests and classes),
    each manifest file's sha256 (the MLflow datasets' digests) and the `data.source` it was made from."""

    folder: Path
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    version: str
    digests: dict[str, str]
    source: str | None

    @classmethod
    def read(cls, split_dir: str | Path) -> Split:
        folder = Path(split_dir)
        files = read_split_files(folder)  # each file read once: rows, version and digests agree
        classes = json.loads(files["classes.json"])
        train, val, test = (ImageSet.from_rows(manifest_rows(files[f"{name}.csv"]), classes) for name in SPLITS)
        digests = {name: hashlib.sha256(files[f"{name}.csv"]).hexdigest() for name in SPLITS}
        return cls(folder, classes, train, val, test, manifest_hash(folder, files), digests, split_source(folder))


def images_key(images: ImageSet, image_size: tuple[int, int]) -> dict:
    """What decoded pixels depend on: every file's content (its manifest sha256), in order, and the size."""
    if images.sha256 is None:
        raise ValueError("images_key needs an ImageSet read from a manifest (ImageSet.read)")
    content = hashlib.sha256("\n".join(images.sha256).encode()).hexdigest()
    return {"images_sha256": content, "count": len(images), "size": list(image_size), "decoder": DECODER_VERSION}


def decoded_images(images: ImageSet, image_size: tuple[int, int], cache: ArrayCache | None = None) -> np.ndarray:
    """Every image decoded and resized as training sees it: uint8 [n, height, width, 3], in order.

    Each file is checked against its manifest sha256 as it is read (a file changed or removed
    since the split is an error that names it), and the array is kept in `cache`, so the runs
    of a sweep decode the split once."""

    def decode() -> np.ndarray:
        out = np.empty((len(images), *image_size, 3), np.uint8)
        hashes = images.sha256 or [None] * len(images)

        def load(i: int) -> None:
            out[i] = load_checked_image(images.paths[i], image_size, hashes[i])

        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
            for _ in progress_bar(
                pool.map(load, range(len(images))), total=len(images), desc="decode images", unit="img", leave=False
            ):
                pass
        return out

    if cache is None or images.sha256 is None:
        return decode()
    return cache.get_or_compute("decoded", images_key(images, image_size), decode)


def _to_float(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32)


def _pixels_of(images: ImageSet, image_size: tuple[int, int], pixels: np.ndarray | None):
    """A tf.data map from a batch of image indices to (uint8 images, one-hot labels)."""
    if pixels is None:
        pixels = decoded_images(images, image_size)
    labels = images.one_hot_labels()

    def gather(indices):
        batch = tf.numpy_function(lambda i: pixels[i], [indices], tf.uint8)
        batch.set_shape([None, *image_size, 3])
        return batch, tf.gather(labels, indices)

    return gather


def build_eval_dataset(
    images: ImageSet, image_size: tuple[int, int], batch_size: int, pixels: np.ndarray | None = None
) -> tf.data.Dataset:
    """Validation/test batches in manifest order: plain decode + resize, never augmented.
    `pixels`: the split already decoded (`decoded_images`), else it is decoded here."""
    ds = tf.data.Dataset.range(len(images)).batch(batch_size).map(_pixels_of(images, image_size, pixels))
    return ds.map(lambda x, y: (_to_float(x), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(images: ImageSet, batch_size: int) -> int:
    return -(-len(images) // batch_size)


def build_train_dataset(
    images: ImageSet,
    image_size: tuple[int, int],
    batch_size: int,
    augmentation: AugmentationConfig,
    seed: int,
    start_epoch: int = 0,
    augment_images: bool = True,
    pixels: np.ndarray | None = None,
) -> tf.data.Dataset:
    """An endless stream of shuffled, augmented training batches; pass `steps_per_epoch` to fit.

    Each epoch is one reshuffled pass over the images (the last batch may be smaller).
    Batch k of the stream (epoch = k // steps_per_epoch) is augmented with the stateless
    seed [seed, k]: a fixed seed gives the same batches in any process, every epoch gets
    new draws, and `start_epoch` resumes the stream exactly where an interrupted run was.
    `augment_images=False` leaves the per-image augmentation to the model (placement=model);
    MixUp/CutMix always run here because they mix labels too. `pixels`: the split already
    decoded (`decoded_images`), else it is decoded here; what is shuffled is the images' indices.
    """
    augmenter = BatchAugmenter(augmentation, image_size)
    ds = tf.data.Dataset.range(len(images))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size).repeat()
    ds = ds.enumerate()
    if start_epoch:
        ds = ds.skip(start_epoch * steps_per_epoch(images, batch_size))
    gather = _pixels_of(images, image_size, pixels)

    def draw(index, indices):
        pixels, labels = gather(indices)
        seed_pair = tf.stack([tf.constant(seed, tf.int64), index])
        params = augmenter.sample(tf.shape(pixels)[0], seed_pair) if augment_images else {}
        return pixels, labels, params, index

    def augment(pixels, labels, params, index):
        pixels = augmenter.apply(pixels, params) if augment_images else _to_float(pixels)
        return mix_batch(pixels, labels, augmentation, tf.stack([tf.constant(seed + 1, tf.int64), index]))

    ds = ds.map(draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------ the head's features


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with a fixed prefetch and tf.data's autotuning off. A feature dataset has nothing to tune,
    and an autotuned iterator kept for a whole fit (Keras keeps the validation one) has its tuning
    thread asleep for up to a minute at the end, which the iterator's deletion waits for: 40 s of
    idle time at the end of a run was measured (docs/benchmarks.md)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


def build_feature_train_dataset(
    features: np.ndarray, images: ImageSet, batch_size: int, seed: int, start_epoch: int = 0
) -> tf.data.Dataset:
    """The endless, reshuffled stream of (features, one-hot label) batches; as `build_train_dataset`."""
    labels = images.one_hot_labels()
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size).repeat()
    if start_epoch:
        ds = ds.skip(start_epoch * steps_per_epoch(images, batch_size))
    return without_autotune(ds)


def build_feature_eval_dataset(features: np.ndarray, images: ImageSet, batch_size: int) -> tf.data.Dataset:
    labels = images.one_hot_labels()
    return without_autotune(tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size))
