"""The head's training data when the base is frozen: the base's features, not its pixels.

A frozen base maps an image to the same features every time, so only the head needs training
steps; what costs is the base's forward pass. Two ways to pay it less:

* **Plain images**: the features of a split are computed once (`plain_features`) and kept on
  disk by content (`ArrayCache`), so every plain run of a sweep after the first reads them.
* **Augmented images** (`AugmentedViews`): the augmented training stream of epoch `v` is one
  *view* of the training set. With `train.augment_views=V`, epochs 1..V compute their views
  (each image warped with that epoch's draws, through the base), and every later epoch `e`
  reuses view `e mod V`, reshuffled into new batches: data echoing (Choi et al. 2019,
  arXiv:1907.05550), at V base passes per run instead of one per epoch. `V=0`: a fresh view
  every epoch, which is what the whole model in Keras does, through the faster runtime.

Views are deterministic: epoch `e`'s order is a permutation drawn from [seed, e] and batch `k`
of the stream is augmented with the stateless seed [seed, k] (MixUp/CutMix with [seed + 1, k]),
as in `datasets.build_train_dataset`; a resumed run recomputes exactly the views it had.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from pipeline.augmentation import BatchAugmenter, mix_batch
from pipeline.backend import tf
from pipeline.config.augmentation import AugmentationConfig
from pipeline.console import progress_bar
from pipeline.data.cache import DiskCache
from pipeline.data.manifests import ImageSet
from pipeline.model.frozen_runtime import FrozenNetwork
from pipeline.stopping import raise_if_stopped
from pipeline.training.pipelines import steps_per_epoch, without_autotune


def features_key(network: FrozenNetwork, images: ImageSet, image_size: tuple[int, int]) -> dict:
    """What the frozen part's outputs depend on: the decoded pixels' inputs (`ImageSet.decoded_key`),
    the network's content (weights, layers, compute dtypes, Keras version: `frozen_runtime.content_digest`)
    and the runtime that ran it, with its version and precision."""
    return {"images": images.decoded_key(image_size), "network": network.digest, "runtime": network.description}


def plain_features(
    network: FrozenNetwork,
    images: ImageSet,
    image_size: tuple[int, int],
    pixels: Callable[[], np.ndarray],
    batch_size: int,
    cache: DiskCache | None,
    split: str = "",
) -> np.ndarray:
    """The frozen network's outputs for `images` (float32 [n, ...], in order), kept in `cache` under
    `features_key`; `pixels()` gives the decoded images, read only when the outputs are computed."""

    if images.drawn_from:  # a train/val set drawn per seed: its rows of the manifests' sets' outputs
        return np.concatenate(
            [
                plain_features(
                    network, part, image_size, lambda p=part: p.decoded(image_size, cache), batch_size, cache, split
                )[rows]
                for part, rows in images.drawn_from
            ]
        )

    def compute() -> np.ndarray:
        decoded = pixels()
        bar = progress_bar(total=len(images), desc=f"base features{f' ({split})' if split else ''}", unit="img")
        parts = []
        batches = (
            (decoded[i : i + batch_size], min(batch_size, len(images) - i)) for i in range(0, len(images), batch_size)
        )
        for out, count in network.map(batches):
            parts.append(out)
            bar.update(count)
            raise_if_stopped()
        bar.close()
        return np.concatenate(parts) if parts else np.zeros((0, *network.output_shape), np.float32)

    if cache is None or images.sha256 is None:
        return compute()
    return cache.get_or_compute("features", features_key(network, images, image_size), compute)


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order in which epoch `epoch` (0-based) visits the `count` training images."""
    return np.random.default_rng([seed, epoch]).permutation(count)


_augmenting_functions: dict[str, tf.types.experimental.GenericFunction] = {}


def _augmenting_function(augmentation: AugmentationConfig, pixel_shape: tuple[int, ...], classes: int, seed: int):
    """(uint8 batch, one-hot labels, batch index) -> (warped float32 batch, labels, MixUp/CutMix
    mixed), drawn with [seed, batch index] as `datasets.build_train_dataset` draws. One traced and
    XLA-compiled function per augmentation and shape, shared by the runs of a sweep (the seed is an
    argument), so each seed does not compile the warp again."""
    key = repr((augmentation, pixel_shape, classes))
    if key not in _augmenting_functions:
        augmenter = BatchAugmenter(augmentation, pixel_shape[:2])

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, *pixel_shape], tf.uint8),
                tf.TensorSpec([None, classes], tf.float32),
                tf.TensorSpec([2], tf.int64),
            ]
        )
        def augment(batch, labels, seed_pair):
            warped = augmenter.apply(batch, augmenter.sample(tf.shape(batch)[0], seed_pair))
            return mix_batch(warped, labels, augmentation, seed_pair + tf.constant([1, 0], tf.int64))

        _augmenting_functions[key] = augment
    augment = _augmenting_functions[key]
    return lambda batch, labels, index: augment(batch, labels, tf.stack([tf.constant(seed, tf.int64), index]))


class AugmentedViews:
    """The head's endless training stream of (features, one-hot labels) batches from augmented images."""

    def __init__(
        self,
        network: FrozenNetwork,
        images: ImageSet,
        pixels: np.ndarray,
        augmentation: AugmentationConfig,
        batch_size: int,
        seed: int,
        views: int,
    ):
        self.network, self.images, self.pixels = network, images, pixels
        self.augmentation, self.batch_size, self.seed, self.views = augmentation, batch_size, seed, views
        self.steps = steps_per_epoch(images, batch_size)
        self.labels = images.one_hot()
        self._augment = _augmenting_function(augmentation, tuple(pixels.shape[1:]), len(images.classes), seed)
        self._features: dict[int, np.ndarray] = {}  # view -> float32 [n, ...] in image order
        self._view_labels: dict[int, np.ndarray] = {}  # view -> [n, classes] (MixUp/CutMix mix them)
        self._batches_done: dict[int, set[int]] = {}  # view -> its batches computed so far
        self._lock = threading.Lock()

    def _batches_of(self, epoch: int) -> list[np.ndarray]:
        order = epoch_order(self.seed, epoch, len(self.images))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _fresh(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch `batch` of epoch `epoch`, augmented with the stream's draws [seed, epoch * steps + batch]
        and through the network: (features, labels, image indices)."""
        indices = self._batches_of(epoch)[batch]
        index = tf.constant(epoch * self.steps + batch, tf.int64)
        pixels, labels = self._augment(self.pixels[indices], self.labels[indices], index)
        return self.network(pixels.numpy()), labels.numpy(), indices

    def _keep(self, view: int, batch: int, features: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
        with self._lock:
            if view not in self._features:
                self._features[view] = np.empty((len(self.images), *self.network.output_shape), np.float32)
                self._view_labels[view] = np.empty_like(self.labels)
                self._batches_done[view] = set()
        self._features[view][indices], self._view_labels[view][indices] = features, labels
        with self._lock:
            self._batches_done[view].add(batch)

    def _complete(self, view: int) -> bool:
        return len(self._batches_done.get(view, ())) == self.steps

    def batch(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of batch `batch` of epoch `epoch` (0-based): fresh while the epoch is a
        view of its own (epoch < views, or views == 0, kept as it goes), else view `epoch mod views`
        in this epoch's order."""
        view = epoch % self.views if self.views else epoch
        if view == epoch and not self._complete(view):
            features, labels, indices = self._fresh(epoch, batch)
            if self.views:
                self._keep(view, batch, features, labels, indices)
            return features, labels
        if not self._complete(view):  # a resumed run: compute the view as its own epoch did
            for b in range(self.steps):
                if b not in self._batches_done.get(view, ()):
                    self._keep(view, b, *self._fresh(view, b))
        indices = self._batches_of(epoch)[batch]
        return self._features[view][indices], self._view_labels[view][indices]

    def epoch(self, epoch: int):
        """Every (features, labels) batch of epoch `epoch`, in order."""
        for b in range(self.steps):
            yield self.batch(epoch, b)

    def dataset(self, start_epoch: int = 0) -> tf.data.Dataset:
        """The endless stream from `start_epoch` on, for Keras' fit (with `steps_per_epoch`).

        Batch k is made by a py_function, called in order."""
        feature_shape, classes = self.network.output_shape, len(self.images.classes)

        def make(k):
            features, labels = self.batch(int(k) // self.steps, int(k) % self.steps)
            return features, labels

        def to_tensors(k):
            features, labels = tf.py_function(make, [k], (tf.float32, tf.float32))
            features.set_shape([None, *feature_shape])
            labels.set_shape([None, classes])
            return features, labels

        return without_autotune(tf.data.Dataset.range(start_epoch * self.steps, 2**62).map(to_tensors))
