"""Models and their training settings: the residual CNN, the two-part layout, the schedule."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config.compose import compose
from pipeline.errors import ConfigError
from pipeline.model.classifier import build_model, compile_model, frozen_backbone, learning_rate_schedule


def test_residual_cnn_is_whole_and_two_parts():
    config = compose(["experiment=scratch"])
    model = build_model(config.model, 10, (96, 96))
    assert 1.2e6 < model.count_params() < 2.0e6
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.get_layer("features").layers)
    assert any(isinstance(layer, keras.layers.Add) for layer in model.get_layer("features").layers)  # residual
    images = np.random.default_rng(0).uniform(0, 255, (4, 96, 96, 3)).astype(np.float32)
    whole = model.predict(images, verbose=0)
    parts = model.get_layer("head").predict(model.get_layer("features").predict(images, verbose=0), verbose=0)
    np.testing.assert_allclose(whole, parts, atol=1e-6)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, atol=1e-5)
    assert not frozen_backbone(config.model)  # trained from scratch: never a feature cache
    assert frozen_backbone(compose(["model=xception"]).model)
    assert not frozen_backbone(compose(["model=xception", "model.trainable_base=true"]).model)


def test_residual_cnn_stages_are_configurable_and_checked():
    small = build_model(compose(["model=residual_cnn", "model.residual_stages=[[16,1],[24,2]]"]).model, 3, (32, 32))
    names = [layer.name for layer in small.get_layer("features").layers]
    blocks = sorted({"_".join(name.split("_")[:2]) for name in names if name.startswith("stage")})
    assert blocks == ["stage1_block1", "stage2_block1", "stage2_block2"]
    assert small.get_layer("features").output_shape[-1] == 24
    with pytest.raises(ConfigError, match=r"model.residual_stages: needs 1 to 6 \[filters, blocks\] pairs"):
        compose(["model=residual_cnn", "model.residual_stages=[[16]]"])


def test_warmup_cosine_rises_then_decays_to_zero():
    train = compose(["train.lr_schedule=warmup_cosine", "train.epochs=10", "train.warmup_epochs=2"]).train
    schedule = learning_rate_schedule(0.002, train, steps_per_epoch=50)
    at = {step: float(schedule(step)) for step in (0, 50, 100, 300, 499, 500)}
    assert at[0] == pytest.approx(0.0002)
    assert at[0] < at[50] < at[100] == pytest.approx(0.002)  # warm-up ends at the peak
    assert at[100] > at[300] > at[499] > at[500] - 1e-12 and at[500] == pytest.approx(0.0, abs=1e-9)
    constant = compose([]).train
    assert learning_rate_schedule(0.001, constant, steps_per_epoch=50) == 0.001


def test_optimizer_weight_decay_and_label_smoothing_reach_the_training():
    config = compose(["experiment=scratch"])
    model = compile_model(build_model(config.model, 3, (32, 32)), config.model, config.train, 10, False)
    assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.optimizer.weight_decay == pytest.approx(0.05)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    sgd = compose(
        ["model=residual_cnn", "train.optimizer=sgd", "train.weight_decay=0.0005", "model.learning_rate=0.05"]
    )
    model = compile_model(build_model(sgd.model, 3, (32, 32)), sgd.model, sgd.train, 10, False)
    assert isinstance(model.optimizer, keras.optimizers.SGD) and model.optimizer.nesterov
    assert model.optimizer.momentum == pytest.approx(0.9) and model.optimizer.weight_decay == pytest.approx(0.0005)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr_schedule=linear", "train.lr_schedule"),
        ("train.optimizer=rmsprop", "train.optimizer"),
        ("train.weight_decay=-1", "train.weight_decay"),
        ("train.label_smoothing=1.5", "train.label_smoothing"),
    ],
)
def test_training_keys_are_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        compose([override])


def test_xla_is_off_on_a_cpu_unless_asked():
    from pipeline.training import devices

    if devices.gpus():
        pytest.skip("this machine has a GPU, where train.jit_compile=auto compiles with XLA")
    assert devices.jit_setting(compose([]).train) is False
    assert devices.jit_setting(compose(["train.jit_compile=true"]).train) is True
