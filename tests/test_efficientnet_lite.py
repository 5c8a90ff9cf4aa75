"""EfficientNet-Lite0 on the ImageNet weights that its package ships: the safe reader, the
mapping onto the Keras build, what the network sees, and transfer learning on it."""

from __future__ import annotations

import os
import pickle

import keras
import numpy as np
import pytest

from pipeline.config.compose import compose
from pipeline.errors import ConfigError, ModelError
from pipeline.model import efficientnet_lite
from pipeline.model.classifier import build_model, compile_model, frozen_backbone

SHOE_CLASSES = {502, 514, 630, 770, 774}  # ImageNet: clog, cowboy boot, loafer, running shoe, sandal


@pytest.fixture(scope="module")
def imagenet_tensors() -> dict[str, np.ndarray]:
    return efficientnet_lite.read_torch_state_dict(efficientnet_lite.packaged_weights_file())


def test_the_packaged_file_reads_without_torch(imagenet_tensors):
    assert len(imagenet_tensors) == 296
    assert imagenet_tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert imagenet_tensors["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert imagenet_tensors["_fc.weight"].shape == (1000, 1280) and imagenet_tensors["_fc.bias"].dtype == np.float32
    assert np.all(imagenet_tensors["_bn1.running_var"] > 0)  # real statistics, not zeros
    assert "torch" not in __import__("sys").modules


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("position", ["first pickle", "state_dict"])
def test_a_file_naming_a_foreign_global_is_refused_without_running_it(tmp_path, position):
    marker = tmp_path / "ran"
    hostile = pickle.dumps(_RunsACommand(marker), protocol=2)
    if position == "first pickle":
        content = hostile
    else:  # a well-formed header, then the payload where the state_dict belongs
        content = b"".join(pickle.dumps(x, protocol=2) for x in (efficientnet_lite._LEGACY_MAGIC, 1001, {}))
        content += hostile
    weights = tmp_path / "weights.pth"
    weights.write_bytes(content)
    with pytest.raises(ModelError, match=r"posix\.system|os\.system") as error:
        efficientnet_lite.read_torch_state_dict(weights)
    assert "refused without running it" in str(error.value)
    assert not marker.exists()


def test_a_cut_short_file_is_a_clear_error(tmp_path):
    source = efficientnet_lite.packaged_weights_file().read_bytes()
    weights = tmp_path / "cut.pth"
    weights.write_bytes(source[: len(source) // 2])
    with pytest.raises(ModelError, match="missing or cut short|cannot be read"):
        efficientnet_lite.read_torch_state_dict(weights)


def test_a_shape_mismatch_names_the_tensor(tmp_path):
    pixels = keras.Input((32, 32, 3))
    wrong = keras.Model(pixels, keras.layers.Conv2D(16, 3, use_bias=False, name="stem_conv")(pixels))
    with pytest.raises(ModelError, match=r"_conv_stem.*|stem_conv.*\(3, 3, 3, 32\)"):
        efficientnet_lite.load_imagenet_weights(wrong)


def test_imagenet_top5_of_shoe_photos_holds_a_shoe(shared_dataset):
    from pipeline.data.images import load_image

    network = efficientnet_lite.efficientnet_lite0((224, 224, 3), include_top=True)
    efficientnet_lite.load_imagenet_weights(network)
    assert network.count_params() == pytest.approx(4.69e6, rel=0.01)
    photos = sorted((shared_dataset / "test" / "shoes").iterdir())[:20]
    images = np.stack([load_image(p, (224, 224)) for p in photos]).astype(np.float32)
    top5 = np.argsort(-network.predict(images, verbose=0), axis=1)[:, :5]
    with_a_shoe = sum(bool(SHOE_CLASSES & set(row)) for row in top5)
    assert with_a_shoe >= 16, f"only {with_a_shoe} of {len(photos)} shoe photos have a shoe class in the top 5"


def test_whole_model_equals_cached_features_through_the_head():
    config = compose(["experiment=cpu"])
    assert config.model.name == "efficientnet_lite0" and frozen_backbone(config.model)
    model = build_model(config.model, 10, (64, 64))
    images = np.random.default_rng(0).uniform(0, 255, (6, 64, 64, 3)).astype(np.float32)
    whole = model.predict(images, verbose=0)
    parts = model.get_layer("head").predict(model.get_layer("features").predict(images, verbose=0), verbose=0)
    np.testing.assert_allclose(whole, parts, atol=1e-5)
    assert not model.get_layer("features").trainable_weights  # frozen: nothing in the base trains


def _weights_by_layer(model: keras.Model) -> dict[str, np.ndarray]:
    """'base/<layer>/<weight>' and 'head/<layer>/<weight>' -> a copy of its value."""
    parts = {"base": model.get_layer("features").get_layer("efficientnet_lite0"), "head": model.get_layer("head")}
    return {
        f"{part}/{layer.name}/{v.name}": keras.ops.convert_to_numpy(v).copy()
        for part, network in parts.items()
        for layer in network.layers
        for v in layer.weights
    }


@pytest.mark.slow  # Lite0 built, two Adam steps, saved and loaded again: 7 s
def test_fine_tuning_moves_only_the_unfrozen_layers_at_their_own_rate(tmp_path):
    config = compose(["experiment=cpu", "model.fine_tune_from=block14", "model.fine_tune_learning_rate=0.00001"])
    assert not frozen_backbone(config.model)
    model = build_model(config.model, 3, (64, 64))
    compile_model(model, config.model, config.train, steps_per_epoch=2, jit_compile=False)
    before = _weights_by_layer(model)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (16, 64, 64, 3)).astype(np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 3, 16), 3)
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0)  # 2 Adam steps
    after = _weights_by_layer(model)
    moved = {path: float(np.max(np.abs(after[path] - before[path]))) for path in before}

    base = [p for p in moved if p.startswith("base/")]
    unfrozen = [p for p in base if p.split("/")[1].startswith(("block14", "block15", "head_conv"))]
    batchnorm = [p for p in base if "_bn" in p.split("/")[1]]
    assert unfrozen and batchnorm
    for path in base:
        if path in unfrozen and path not in batchnorm:
            # Adam moves each weight by at most about its rate per step: 2 steps at 1e-5
            assert 0 < moved[path] <= 2.5e-5, (path, moved[path])
        else:  # the frozen layers, and every BatchNorm weight and statistic of the base
            assert moved[path] == 0, (path, moved[path])
    head = [p for p in moved if p.startswith("head/")]
    assert head and max(moved[p] for p in head) > 1e-3  # the head at model.learning_rate 0.001

    model.save(tmp_path / "model.keras")  # Keras' own optimizer class: loads without this project's code
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(reloaded.optimizer) is keras.optimizers.Adam
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_fine_tuning_keys_are_checked():
    with pytest.raises(ConfigError, match="model.fine_tune_from"):
        compose(["model=residual_cnn", "model.fine_tune_from=stage3"])
    with pytest.raises(ConfigError, match="model.fine_tune_from"):
        compose(["model=efficientnet_lite0", "model.trainable_base=true", "model.fine_tune_from=block12"])
    with pytest.raises(ConfigError, match="model.fine_tune_learning_rate"):
        compose(["model=efficientnet_lite0", "model.fine_tune_learning_rate=0"])
    config = compose(["experiment=cpu", "model.fine_tune_from=block99"])
    with pytest.raises(ModelError, match=r"block99.*block0, block1, .*block15"):
        build_model(config.model, 3, (32, 32))


def test_weights_null_and_a_local_weights_file(tmp_path):
    untrained = compose(["experiment=cpu", "model.weights=null"])
    base = efficientnet_lite.efficientnet_lite0((32, 32, 3))
    efficientnet_lite.load_imagenet_weights(base)
    saved = tmp_path / "lite0.weights.h5"
    base.save_weights(saved)
    random_model = build_model(untrained.model, 3, (32, 32))
    from_file = build_model(compose(["experiment=cpu", f"model.weights={saved}"]).model, 3, (32, 32))
    stem = lambda m: keras.ops.convert_to_numpy(  # noqa: E731
        m.get_layer("features").get_layer("efficientnet_lite0").get_layer("stem_conv").kernel
    )
    np.testing.assert_array_equal(stem(from_file), keras.ops.convert_to_numpy(base.get_layer("stem_conv").kernel))
    assert not np.allclose(stem(random_model), stem(from_file))


def forward(network, images: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(network(images, training=False))


def test_a_fine_tuned_model_splits_into_a_frozen_bottom_and_a_trainable_top():
    from pipeline.model.classifier import fine_tune_split, fine_tuned_variables

    config = compose(["experiment=cpu", "model.weights=null", "model.fine_tune_from=block12"])
    model = build_model(config.model, 3, (64, 64))
    bottom, top = fine_tune_split(model, config.model)
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (8, 64, 64, 3)).astype(np.float32)
    whole = forward(model, images)  # eager calls: no predict function traced per model
    np.testing.assert_allclose(forward(top, forward(bottom, images)), whole, atol=1e-5)
    assert bottom.trainable_weights == [] and len(bottom.weights) > 100  # every layer below block12, frozen
    assert {id(v) for v in fine_tuned_variables(top)} == {id(v) for v in fine_tuned_variables(model)}
    assert all(
        v.path.startswith(("block12", "block13", "block14", "block15", "head_conv")) for v in fine_tuned_variables(top)
    )

    compile_model(top, config.model, config.train, steps_per_epoch=1, jit_compile=False)
    frozen_before = [keras.ops.convert_to_numpy(w).copy() for w in bottom.weights]
    labels = keras.utils.to_categorical(rng.integers(0, 3, 8), 3)
    top.fit(forward(bottom, images), labels, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(forward(model, images), whole)  # the shared layers trained ...
    for before, after in zip(frozen_before, bottom.weights):  # ... the bottom's did not
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after), before)

    inside = compose(["experiment=cpu", "model.weights=null", "model.fine_tune_from=block12_depthwise"])
    assert fine_tune_split(model, inside.model) is None  # a cut inside a block: its shortcut crosses it
