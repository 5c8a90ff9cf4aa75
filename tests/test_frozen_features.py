"""The head's data on a frozen base: augmented views drawn as the train stream draws them, reused
by later epochs, the same after a resume; decoded images and features kept on disk by content."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image

IMAGES, BATCH, SIZE = 20, 6, (24, 24)


def tiny_network():
    """A small frozen 'base': a fixed convolution and pooling (8 features)."""
    from pipeline.backend import keras
    from pipeline.model.frozen_runtime import FrozenNetwork

    keras.utils.set_random_seed(0)
    inputs = keras.Input((*SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(inputs / 255.0))
    return FrozenNetwork(keras.Model(inputs, pooled))


def views_of(views: int, augmentation: str = "lesson", seed: int = 3):
    from pipeline.config.compose import compose
    from pipeline.data.manifests import ImageSet
    from pipeline.training.frozen_features import AugmentedViews

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (IMAGES, *SIZE, 3), dtype=np.uint8)
    images = ImageSet([f"img{i}" for i in range(IMAGES)], [i % 3 for i in range(IMAGES)], ["a", "b", "c"])
    config = compose([f"augmentation={augmentation}"]).augmentation
    return AugmentedViews(tiny_network(), images, pixels, config, BATCH, seed, views)


def by_image(stream, epoch: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Epoch `epoch`'s features and labels in image order, and its batches as they came."""
    from pipeline.training.frozen_features import epoch_order

    batches = list(stream.epoch(epoch))
    features = np.concatenate([f for f, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    order = epoch_order(stream.seed, epoch, IMAGES)
    inverse = np.argsort(order)
    return features[inverse], labels[inverse], [f for f, _ in batches]


def test_a_view_is_the_train_streams_own_draws_through_the_network():
    from pipeline.augmentation import BatchAugmenter
    from pipeline.backend import tf
    from pipeline.training.frozen_features import epoch_order

    stream = views_of(views=2)
    first_batch = next(stream.epoch(1))[0]
    indices = epoch_order(stream.seed, 1, IMAGES)[:BATCH]
    augmenter = BatchAugmenter(stream.augmentation, SIZE)
    batch_index = 1 * stream.steps + 0  # batch k of the stream is drawn with [seed, k]
    warped = augmenter(tf.constant(stream.pixels[indices]), tf.constant([stream.seed, batch_index], tf.int64))
    np.testing.assert_allclose(first_batch, stream.network(warped.numpy()), atol=1e-5)


def test_later_epochs_reuse_the_views_reshuffled():
    stream = views_of(views=2)
    epochs = [by_image(stream, e) for e in range(5)]
    assert not np.allclose(epochs[0][0], epochs[1][0])  # two views: two different draws
    np.testing.assert_array_equal(epochs[2][0], epochs[0][0])  # epoch 3 reuses view 1
    np.testing.assert_array_equal(epochs[3][0], epochs[1][0])
    np.testing.assert_array_equal(epochs[4][0], epochs[0][0])
    assert not np.array_equal(epochs[2][2][0], epochs[0][2][0])  # in new batches

    fresh = views_of(views=0)
    assert not np.allclose(by_image(fresh, 0)[0], by_image(fresh, 2)[0])  # 0: a new view every epoch


def test_same_seed_same_stream_and_a_resume_recomputes_its_views():
    whole = views_of(views=3)
    continuous = [f for e in range(6) for f, _ in whole.epoch(e)]
    resumed = views_of(views=3)  # a new process resuming at epoch 4: views 0..2 are not in memory
    after = [f for e in (4, 5) for f, _ in resumed.epoch(e)]
    for a, b in zip(continuous[4 * whole.steps :], after):
        np.testing.assert_array_equal(a, b)
    other_seed = views_of(views=3, seed=4)
    assert not np.allclose(next(other_seed.epoch(0))[0], continuous[0])


def test_mixed_labels_are_kept_with_their_view():
    stream = views_of(views=2, augmentation="mixup")
    features0, labels0, _ = by_image(stream, 0)
    features2, labels2, _ = by_image(stream, 2)
    assert not np.all(labels0.max(axis=1) == 1.0)  # MixUp mixed the labels
    np.testing.assert_allclose(labels0.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels2, labels0)
    np.testing.assert_array_equal(features2, features0)


def test_the_dataset_feeds_the_stream_to_keras():
    stream = views_of(views=2)
    expected = [f for e in range(2) for f, _ in stream.epoch(e)]
    got = [f.numpy() for f, _ in stream.dataset(0).take(2 * stream.steps)]
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ on disk


def test_array_cache_round_trip_eviction_and_a_damaged_entry(tmp_path):
    from pipeline.data.cache import DiskCache

    cache = DiskCache(tmp_path, limit_bytes=3000)
    calls = []

    def compute(value):
        calls.append(value)
        return np.full((100,), value, np.float64)  # 800 bytes + header

    first = cache.get_or_compute("features", {"k": 1}, lambda: compute(1.0))
    again = cache.get_or_compute("features", {"k": 1}, lambda: compute(9.0))
    np.testing.assert_array_equal(again, first)
    assert calls == [1.0]
    cache.put("features", {"k": 2}, compute(2.0))
    cache.put("features", {"k": 3}, compute(3.0))
    cache.put("features", {"k": 4}, compute(4.0))  # over 3000 bytes: the least recently used goes
    assert cache.get("features", {"k": 1}) is None and cache.get("features", {"k": 4}) is not None

    damaged, _ = cache.paths("features", {"k": 4}, ".npy")
    damaged.write_bytes(damaged.read_bytes()[:90])  # cut short
    assert cache.get("features", {"k": 4}) is None
    np.testing.assert_array_equal(cache.get_or_compute("features", {"k": 4}, lambda: compute(4.0)), compute(4.0))


def test_a_cache_that_cannot_be_written_only_costs_time(tmp_path, capsys):
    """A full disk or a cache folder that cannot be made: the array is returned, the run goes on,
    said once; nothing is left behind."""
    from pipeline.data.cache import DiskCache

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = DiskCache(blocker / "cache")
    for value in (1.0, 2.0):
        array = cache.get_or_compute("features", {"k": value}, lambda value=value: np.full((10,), value))
        np.testing.assert_array_equal(array, np.full((10,), value))
    said = capsys.readouterr().out
    assert said.count("note: cannot keep decoded images and features in") == 1
    assert "paths.cache_dir" in said and "data.cache=memory" in said


def test_decoded_images_are_checked_against_the_manifest_and_kept(split_done):
    from pipeline.data.cache import DiskCache
    from pipeline.data.images import load_image
    from pipeline.data.manifests import Split
    from pipeline.errors import DataError

    images = Split.read(split_done / "split").train
    cache = DiskCache(split_done / "cache")
    pixels = images.decoded((20, 16), cache)
    assert pixels.shape == (len(images), 20, 16, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[3], load_image(images.paths[3], (20, 16)))
    np.testing.assert_array_equal(images.decoded((20, 16), cache), pixels)  # from the cache

    changed = Path(images.paths[5])
    original = changed.read_bytes()
    make_image(changed, size=(48, 40), seed=999)  # changed after the split
    with pytest.raises(DataError, match=f"{changed} has changed since the split"):
        images.decoded((22, 16), cache)  # another size: decoded again, so checked again
    changed.write_bytes(original)
    Path(images.paths[6]).unlink()
    with pytest.raises(DataError, match=f"{images.paths[6]} is listed in the split but cannot be read"):
        images.decoded((24, 16), None)


def test_a_split_drawn_per_seed_gets_the_features_kept_for_the_manifests_sets(split_done):
    from pipeline.data.cache import DiskCache
    from pipeline.data.manifests import Split
    from pipeline.data.partition import draw_train_val
    from pipeline.training.frozen_features import plain_features

    network, cache = tiny_network(), DiskCache(split_done / "cache")
    split = Split.read(split_done / "split")
    kept = {
        name: plain_features(network, images, SIZE, lambda i=images: i.decoded(SIZE, cache), BATCH, cache)
        for name, images in (("train", split.train), ("val", split.val))
    }
    drawn = draw_train_val(split, seed=7).train
    assert drawn.paths != split.train.paths
    features = plain_features(
        network, drawn, SIZE, lambda: pytest.fail("no pixels: the kept features serve"), BATCH, cache
    )
    by_path = {
        p: f for name, images in (("train", split.train), ("val", split.val)) for p, f in zip(images.paths, kept[name])
    }
    np.testing.assert_array_equal(features, np.stack([by_path[p] for p in drawn.paths]))
    unknown_rows = dataclasses.replace(drawn, drawn_from=None)  # the same images, computed from their pixels
    direct = plain_features(network, unknown_rows, SIZE, lambda: drawn.decoded(SIZE, None), BATCH, None)
    np.testing.assert_allclose(features, direct, atol=1e-5)
