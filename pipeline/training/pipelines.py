"""tf.data input pipelines: the decoded split (`ImageSet.decoded`) shuffled, batched, augmented (train only), prefetched.

Train-only augmentation is structural: `build_eval_dataset` takes no augmentation
argument at all, so validation and test images are always the plain decoded pixels.

Every dataset yields (images, labels): images float32 [batch, height, width, 3] in pixel
units 0..255 (the model applies its own preprocessing), labels one-hot float32.
"""

from __future__ import annotations

import numpy as np

from pipeline.augmentation import BatchAugmenter, mix_batch
from pipeline.backend import tf
from pipeline.config.augmentation import AugmentationConfig
from pipeline.data.manifests import ImageSet


def _to_float(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32)


def _pixels_of(images: ImageSet, image_size: tuple[int, int], pixels: np.ndarray | None):
    """A tf.data map from a batch of image indices to (uint8 images, one-hot labels)."""
    if pixels is None:
        pixels = images.decoded(image_size)
    labels = tf.constant(images.one_hot())

    def gather(indices):
        batch = tf.numpy_function(lambda i: pixels[i], [indices], tf.uint8)
        batch.set_shape([None, *image_size, 3])
        return batch, tf.gather(labels, indices)

    return gather


def build_eval_dataset(
    images: ImageSet, image_size: tuple[int, int], batch_size: int, pixels: np.ndarray | None = None
) -> tf.data.Dataset:
    """Validation/test batches in manifest order: plain decode + resize, never augmented.
    `pixels`: the split already decoded (`ImageSet.decoded`), else it is decoded here."""
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
    decoded (`ImageSet.decoded`), else it is decoded here; what is shuffled is the images' indices.
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
    labels = images.one_hot()
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size).repeat()
    if start_epoch:
        ds = ds.skip(start_epoch * steps_per_epoch(images, batch_size))
    return without_autotune(ds)


def build_feature_eval_dataset(features: np.ndarray, images: ImageSet, batch_size: int) -> tf.data.Dataset:
    labels = images.one_hot()
    return without_autotune(tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size))
