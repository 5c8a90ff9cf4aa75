"""The augmentation engine: ImageDataGenerator parity, bounds, train-only, determinism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from pipeline import preview
from pipeline.augmentation import (
    BatchAugmenter,
    affine_matrices,
    augmentation_layer,
    mix_batch,
    sample_params,
    warp_images,
)
from pipeline.config.compose import compose
from pipeline.data.images import load_image
from pipeline.data.manifests import ImageSet
from pipeline.training.pipelines import build_eval_dataset, build_train_dataset, steps_per_epoch
from tests.conftest import ROOT, path_overrides

SIZE = 64
NEUTRAL = dict(
    angle=0.0, shift_x=0.0, shift_y=0.0, shear=0.0, shear_y=0.0, zoom_x=1.0, zoom_y=1.0, flip_h=0.0, flip_v=0.0
)


def smooth_image() -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([128 + 100 * np.sin(xx / 7.0), 128 + 100 * np.cos(yy / 5.0), (2 * xx + yy) % 255], -1).astype(
        np.float32
    )


def our_warp(image: np.ndarray, **params) -> np.ndarray:
    values = {k: tf.constant([float(v)]) for k, v in {**NEUTRAL, **params}.items()}
    return warp_images(tf.constant(image[None]), affine_matrices(values, (SIZE, SIZE)))[0].numpy()


# ImageDataGenerator.apply_transform's keys -> ours. Its 'tx'/'zx' act on columns (x).
PARITY_CASES = [
    ({"theta": 25}, dict(angle=25)),
    ({"tx": 6}, dict(shift_x=6)),
    ({"ty": -7.5}, dict(shift_y=-7.5)),
    ({"tx": 0.1 * SIZE, "ty": 0.05 * SIZE}, dict(shift_x=0.1 * SIZE, shift_y=0.05 * SIZE)),
    ({"shear": 10}, dict(shear=10)),
    ({"zx": 1.2, "zy": 1.15}, dict(zoom_x=1.2, zoom_y=1.15)),
    ({"zx": 0.85, "zy": 0.9}, dict(zoom_x=0.85, zoom_y=0.9)),
    ({"flip_horizontal": True}, dict(flip_h=1)),
    ({"flip_vertical": True}, dict(flip_v=1)),
    (
        {"theta": 15, "tx": 3, "ty": -4, "shear": 8, "zx": 1.1, "zy": 0.95, "flip_vertical": True},
        dict(angle=15, shift_x=3, shift_y=-4, shear=8, zoom_x=1.1, zoom_y=0.95, flip_v=1),
    ),
]


@pytest.mark.parametrize("theirs, ours", PARITY_CASES, ids=[str(c[0]) for c in PARITY_CASES])
def test_warp_matches_imagedatagenerator(theirs, ours):
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    image = smooth_image()
    expected = ImageDataGenerator().apply_transform(image, theirs)
    actual = our_warp(image, **ours)
    border = 10
    assert np.abs(expected - actual)[border:-border, border:-border].max() < 0.05
    assert np.abs(actual - image).max() > 1  # the transform did something


def test_lesson_preset_is_exactly_the_lesson():
    preset = yaml.safe_load((ROOT / "conf" / "augmentation" / "lesson.yaml").read_text())
    assert preset == {
        "name": "lesson",
        "rotation_range": 30,
        "width_shift_range": 10.0,
        "height_shift_range": 10.0,
        "shear_range": 10,
        "zoom_range": 0.1,
        "vertical_flip": True,
    }


@pytest.mark.parametrize("shift, limit", [(10.0, 10.0), (0.1, 0.1 * 150)])
def test_sampled_parameters_stay_in_bounds(shift, limit):
    config = compose(
        ["augmentation=lesson", f"augmentation.width_shift_range={shift}", f"augmentation.height_shift_range={shift}"]
    ).augmentation
    p = {k: v.numpy() for k, v in sample_params(config, 4000, (150, 150), tf.constant([3, 4], tf.int64)).items()}
    assert np.abs(p["angle"]).max() <= 30 and np.abs(p["angle"]).max() > 29
    assert np.abs(p["shear"]).max() <= 10 and np.abs(p["shear"]).max() > 9.9
    assert np.abs(p["shift_x"]).max() <= limit and np.abs(p["shift_x"]).max() > 0.99 * limit
    assert np.abs(p["shift_y"]).max() <= limit
    for axis in ("zoom_x", "zoom_y"):
        assert 0.9 <= p[axis].min() < 0.901 and 1.099 < p[axis].max() <= 1.1
    assert abs(np.corrcoef(p["zoom_x"], p["zoom_y"])[0, 1]) < 0.1  # drawn independently
    assert set(np.unique(p["flip_v"])) == {0.0, 1.0} and not p["flip_h"].any()
    assert 0.45 < p["flip_v"].mean() < 0.55


def test_photometric_ranges_are_respected():
    config = compose(["augmentation=strong"]).augmentation
    p = sample_params(config, 2000, (150, 150), tf.constant([1, 2], tf.int64))
    assert 0.7 <= p["brightness"].numpy().min() and p["brightness"].numpy().max() <= 1.3
    assert 0.7 <= p["contrast"].numpy().min() and p["contrast"].numpy().max() <= 1.3
    assert np.abs(p["hue"].numpy()).max() <= 0.05
    assert 0.4 < p["erase_on"].numpy().mean() < 0.6


@pytest.fixture
def image_set(tiny_dataset) -> ImageSet:
    paths = sorted(str(p) for p in tiny_dataset.rglob("*.png"))
    labels = [Path(p).parent.name for p in paths]
    return ImageSet.from_manifest(paths, labels, sorted(set(labels)))


def batches(ds, n):
    return [b[0].numpy() for b in ds.take(n)]


def test_eval_batches_are_plain_and_identical_every_epoch(image_set):
    ds = build_eval_dataset(image_set, (32, 32), batch_size=8)
    first, second = np.concatenate(batches(ds, 100)), np.concatenate(batches(ds, 100))
    assert np.array_equal(first, second)
    plain = np.stack([load_image(p, (32, 32)) for p in image_set.paths]).astype(np.float32)
    assert np.array_equal(first, plain)


def test_training_epochs_differ_and_none_changes_nothing(image_set):
    lesson = compose(["augmentation=lesson"]).augmentation
    steps = steps_per_epoch(image_set, 8)
    epochs = batches(build_train_dataset(image_set, (32, 32), 8, lesson, seed=5), 2 * steps)
    assert not np.array_equal(np.concatenate(epochs[:steps]), np.concatenate(epochs[steps:]))

    none = compose(["augmentation=none"]).augmentation
    plain = {load_image(p, (32, 32)).astype(np.float32).tobytes() for p in image_set.paths}
    seen = [
        img.tobytes() for b in batches(build_train_dataset(image_set, (32, 32), 8, none, seed=5), steps) for img in b
    ]
    assert len(seen) == len(image_set) and set(seen) == plain  # a reshuffled, untouched epoch


def test_resume_stream_continues_where_it_stopped(image_set):
    lesson = compose(["augmentation=lesson"]).augmentation
    steps = steps_per_epoch(image_set, 8)
    whole = batches(build_train_dataset(image_set, (32, 32), 8, lesson, seed=5), 3 * steps)
    resumed = batches(build_train_dataset(image_set, (32, 32), 8, lesson, seed=5, start_epoch=2), steps)
    for a, b in zip(whole[2 * steps :], resumed):
        np.testing.assert_array_equal(a, b)


FINGERPRINT = """
import hashlib, sys
from pathlib import Path
from pipeline.config.compose import compose
from pipeline.training.pipelines import build_train_dataset
from pipeline.data.manifests import ImageSet
paths = sorted(str(p) for p in Path(sys.argv[1]).rglob("*.png"))
labels = [Path(p).parent.name for p in paths]
images = ImageSet.from_manifest(paths, labels, sorted(set(labels)))
for preset in sys.argv[2:]:
    ds = build_train_dataset(images, (32, 32), 8, compose([f"augmentation={preset}"]).augmentation, seed=11)
    digest = hashlib.sha256()
    for x, y in ds.take(6):
        digest.update(x.numpy().tobytes()); digest.update(y.numpy().tobytes())
    print(preset, digest.hexdigest())
"""


@pytest.mark.slow  # two fresh Python processes, each loading TensorFlow
def test_same_seed_gives_same_batches_in_fresh_processes(tiny_dataset):
    def fingerprints():
        out = subprocess.run(
            [sys.executable, "-c", FINGERPRINT, str(tiny_dataset), "strong", "mixup"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(line.split() for line in out.stdout.strip().splitlines()[-2:])

    first = fingerprints()
    assert set(first) == {"strong", "mixup"} and first["strong"] != first["mixup"]
    assert fingerprints() == first


@pytest.mark.parametrize("preset", ["light", "strong", "randaugment", "mixup", "cutmix"])
def test_every_preset_produces_valid_images(image_set, preset):
    config = compose([f"augmentation={preset}"]).augmentation
    x, y = next(iter(build_train_dataset(image_set, (32, 32), 8, config, seed=1)))
    assert x.shape == (8, 32, 32, 3) and y.shape == (8, 3)
    assert float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 255.01
    np.testing.assert_allclose(tf.reduce_sum(y, axis=1).numpy(), 1.0, atol=1e-5)


def test_mixup_mixes_labels_and_cutmix_weights_by_area():
    images = tf.concat([tf.zeros([4, 16, 16, 3]), tf.fill([4, 16, 16, 3], 200.0)], axis=0)
    labels = tf.one_hot([0] * 4 + [1] * 4, 2)
    for preset in ("mixup", "cutmix"):
        config = compose([f"augmentation={preset}"]).augmentation
        mixed, mixed_labels = mix_batch(images, labels, config, tf.constant([1, 2], tf.int64))
        share_of_partner = tf.reduce_mean(mixed[:4], axis=[1, 2, 3]) / 200.0  # first half: partner is bright
        np.testing.assert_allclose(share_of_partner.numpy(), mixed_labels[:4, 1].numpy(), atol=1e-4)


def test_model_placement_layer_compiles_with_xla():
    config = compose(["augmentation=strong"]).augmentation
    layer = augmentation_layer(config, seed=3)
    images = tf.random.uniform([4, 24, 24, 3], 0, 255)
    step = tf.function(lambda x: layer(x, training=True), jit_compile=True)
    first, second = step(images).numpy(), step(images).numpy()
    assert not np.array_equal(first, second)  # a new draw each step
    np.testing.assert_array_equal(layer(images, training=False).numpy(), images.numpy())


def test_batch_augmenter_identity_for_none():
    none = compose(["augmentation=none"]).augmentation
    images = tf.cast(tf.random.uniform([2, 8, 8, 3], 0, 255, dtype=tf.int32), tf.uint8)
    np.testing.assert_array_equal(
        BatchAugmenter(none, (8, 8))(images, tf.constant([1, 1])).numpy(), tf.cast(images, tf.float32).numpy()
    )


def test_preview_writes_a_png_grid(tmp_path, tiny_dataset, capsys):
    overrides = [o for o in path_overrides(tmp_path) if not o.startswith("hydra.")]
    config = compose([f"data.source={tiny_dataset}", "augmentation=lesson", *overrides])
    target = preview.run(config, rows=3, variants=4)
    with Image.open(target) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 200
    assert (tmp_path / "split" / "train.csv").exists()  # split ran first
    # ... and it names the ablation sweep over the preset's operations
    assert (
        "augmentation=lesson augmentation.ablate=none,rotation,width_shift,height_shift,shear,zoom,vertical_flip"
        in capsys.readouterr().out
    )


def test_an_ablated_operation_is_off_and_the_rest_unchanged():
    full = compose(["augmentation=lesson"]).augmentation
    no_rotation = compose(["augmentation=lesson", "augmentation.ablate=rotation"]).augmentation
    assert no_rotation.label == "lesson-no-rotation" and not no_rotation.is_identity
    assert no_rotation.rotation_range == 0 and no_rotation.active_operations() == full.active_operations()[1:]
    images = tf.cast(tf.random.uniform([4, 32, 32, 3], 0, 255, dtype=tf.int32), tf.uint8)
    seeds = tf.constant([7, 7])
    only_rotation = compose(["augmentation=none", "augmentation.rotation_range=30"]).augmentation
    rotated = BatchAugmenter(only_rotation, (32, 32))(images, seeds).numpy()
    assert not np.array_equal(rotated, tf.cast(images, tf.float32).numpy())
    # the only operation ablated: nothing changes the images any more
    nothing = compose(["augmentation=none", "augmentation.rotation_range=30", "augmentation.ablate=rotation"])
    assert nothing.augmentation.is_identity
    np.testing.assert_array_equal(
        BatchAugmenter(nothing.augmentation, (32, 32))(images, seeds).numpy(), tf.cast(images, tf.float32).numpy()
    )
