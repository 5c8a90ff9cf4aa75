"""The frozen layers in OpenVINO: the same features as TensorFlow, converted once per content, and
TensorFlow (said once) where OpenVINO cannot be had."""

from __future__ import annotations

import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest

from tests.conftest import SHARED_DATASET, make_image, new_store, run_module, train_args

pytest.importorskip("openvino", reason="OpenVINO is part of the project's dependencies")


def real_or_made_images(tmp_path: Path, count: int = 12) -> np.ndarray:
    """float32 pixels [count, 150, 150, 3]: photos of the shared dataset where it is, else made ones."""
    from pipeline.data.images import load_image

    photos = sorted(SHARED_DATASET.glob("test/*/*.jpg"))[:count] if SHARED_DATASET.is_dir() else []
    if len(photos) < count:
        photos = [make_image(tmp_path / f"img{i}.png", size=(200, 170), seed=i, pattern=i % 5) for i in range(count)]
    return np.stack([load_image(p, (150, 150)) for p in photos]).astype(np.float32)


@pytest.mark.slow
def test_openvino_gives_tensorflows_features_on_the_real_weights_and_converts_once(tmp_path):
    from pipeline.config.compose import compose
    from pipeline.model import frozen_runtime
    from pipeline.model.classifier import build_model
    from pipeline.model.frozen_runtime import FrozenNetwork, frozen_network

    model = build_model(compose(["experiment=cpu"]).model, 10, (150, 150))  # ImageNet weights from the package
    features = model.get_layer("features")
    pixels = real_or_made_images(tmp_path)

    network = frozen_network(features, "auto", "f32", tmp_path)
    assert network.runtime == "openvino" and network.description.endswith(" f32")
    expected = FrozenNetwork(features)(pixels)
    assert expected.shape == (len(pixels), 1280) and np.abs(expected).max() > 0.5  # real features, not zeros
    np.testing.assert_allclose(network(pixels), expected, atol=1e-4, rtol=0)
    # several batches, two in flight, in order; a last batch of another size
    batched = network.outputs([pixels[:5], pixels[5:10], pixels[10:]])
    np.testing.assert_allclose(batched, expected, atol=1e-4, rtol=0)

    saved = next((tmp_path / frozen_runtime.NETWORKS_FOLDER).glob("*/saved_model.pb"))
    written = saved.stat().st_mtime_ns
    frozen_runtime._compiled.clear()  # as a new process: only the disk cache is left
    again = frozen_network(
        build_model(compose(["experiment=cpu"]).model, 10, (150, 150)).get_layer("features"), cache_dir=tmp_path
    )
    assert again.runtime == "openvino" and again.digest == network.digest
    assert saved.stat().st_mtime_ns == written  # read from the cache, not exported again
    np.testing.assert_allclose(again(pixels[:3]), expected[:3], atol=1e-4, rtol=0)

    bf16 = frozen_network(features, "openvino", "bf16", tmp_path)
    if bf16.precision == "bf16":  # a CPU with bf16: close, not equal
        relative = np.abs(bf16(pixels) - expected).max() / np.abs(expected).max()
        assert 0 < relative < 0.2


def test_a_changed_network_gets_another_digest():
    from pipeline.backend import keras
    from pipeline.model.frozen_runtime import content_digest

    def network(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((16, 16, 3))
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))

    assert content_digest(network(1)) == content_digest(network(1))
    assert content_digest(network(1)) != content_digest(network(2))


@pytest.mark.slow
def test_without_openvino_training_runs_in_tensorflow_and_says_so_once(split_done):
    """A machine without the package: the same sweep works, one note, the runtime in the params."""
    tmp_path = split_done
    blocker = tmp_path / "no-openvino" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(textwrap.dedent('raise ImportError("No module named openvino (test)")\n'))
    uri = new_store(tmp_path)
    args = [a if a != "model=residual_cnn" else "model=mobilenet_v2" for a in train_args(tmp_path, uri)]
    result = run_module(
        "pipeline.train",
        "-m",
        *args,
        "model.weights=null",
        "augmentation=none,light",
        "compare.after_sweep=false",
        env={"PYTHONPATH": str(blocker.parent)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("OpenVINO is not installed") == 1, result.stdout[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["augmentation"], output_format="list")
    assert len(runs) == 2
    assert all(r.data.params["model.frozen_runtime_used"].startswith("tensorflow ") for r in runs)


@pytest.mark.slow
def test_fine_tuning_runs_the_frozen_bottom_in_openvino_and_trains_the_top(split_done):
    from pipeline.backend import keras
    from pipeline.config.compose import compose
    from pipeline.model.classifier import build_model
    from tests.conftest import run_in_process

    tmp_path = split_done
    uri = new_store(tmp_path)
    settings = [
        "experiment=cpu",
        "model.weights=null",
        "model.fine_tune_from=block12",
        "model.fine_tune_learning_rate=0.01",
    ]
    args = [a for a in train_args(tmp_path, uri) if not a.startswith(("model=", "model.residual"))]
    result = run_in_process("pipeline.train", *args, *settings, "augmentation=light", "seed=7")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "frozen bottom (below block12) in openvino" in result.stdout
    # the bottom is frozen and deterministic: each view's bottom output is computed once and reused
    assert "augmented frozen bottom outputs are computed for 3 views (epochs 1-3) and reused" in result.stdout

    trained = keras.models.load_model(tmp_path / "models" / "model.keras")
    keras.utils.set_random_seed(7)  # the training's own initial weights
    initial = build_model(compose([*settings, "data.image_size=[32,32]"]).model, 3, (32, 32))
    base = trained.get_layer("features").get_layer("efficientnet_lite0")
    start = initial.get_layer("features").get_layer("efficientnet_lite0")
    for layer, first in zip(base.layers, start.layers):
        moved = any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), first.get_weights()))
        unfrozen = layer.name.startswith(("block12", "block13", "block14", "block15", "head_conv"))
        assert moved == (unfrozen and layer.get_weights() != [] and "_bn" not in layer.name), layer.name
    run = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("augmentation").experiment_id]
    )[0]
    assert run.data.params["model.frozen_runtime_used"].startswith("openvino ")
