"""Classifiers: the lesson's Xception head and its siblings, plus a small CNN for CPUs.

Every model takes raw RGB pixels (float32, 0..255) and applies its own preprocessing as
its first layers, so augmentation happens before preprocessing (as ImageDataGenerator
did) and a saved model predicts straight from decoded images.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import keras

from pipeline.config import ModelConfig
from pipeline.errors import ModelError

BACKBONES = {
    "xception": ("Xception", "xception"),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet"),
}
WEIGHTS_HOST = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _preprocess(name: str, x):
    if name in ("xception", "mobilenet_v2"):  # their preprocess_input: scale to [-1, 1]
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    if name == "efficientnet_b0":  # EfficientNet rescales inside the network
        return x
    return keras.layers.Rescaling(1 / 255.0, name="preprocess")(x)


def resolve_weights(weights: str | None, timeout_s: float = 5.0) -> str | None:
    """Check that the configured weights can be had, within seconds; never hang offline."""
    if weights in (None, "null", "none"):
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"model.weights={weights!r}: no such file. Use model.weights=imagenet, "
                             "model.weights=null (random init) or a path to a local .weights.h5 file.")
        return str(path.resolve())
    try:
        urllib.request.urlopen(urllib.request.Request(WEIGHTS_HOST, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # the host answered: downloads work
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        cache = Path(keras.config.keras_home() if hasattr(keras.config, "keras_home") else "~/.keras").expanduser()
        raise ModelError(
            f"model.weights=imagenet needs a download from {WEIGHTS_HOST} and this machine cannot reach it "
            f"({getattr(error, 'reason', error)}). Use model.weights=null to train from random weights, or "
            f"model.weights=/path/to/<model>_weights_tf_dim_ordering_tf_kernels_notop.h5 (a local copy; "
            f"Keras also looks in {cache}/models). Offline, model=small_cnn needs no weights at all."
        ) from None
    return "imagenet"


def _cached_imagenet(name: str) -> bool:
    folder = Path("~/.keras/models").expanduser()
    return folder.is_dir() and any(name in f.name for f in folder.iterdir())


def build_model(config: ModelConfig, num_classes: int, image_size: tuple[int, int]) -> keras.Model:
    """Raw pixels -> preprocessing -> backbone -> pooling -> dense -> dropout -> softmax."""
    height, width = image_size
    inputs = keras.Input((height, width, 3), name="image")
    x = _preprocess(config.name, inputs)
    if config.name == "small_cnn":
        for filters in (32, 64, 128):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        class_name, module = BACKBONES[config.name]
        cached = config.weights == "imagenet" and _cached_imagenet(module)
        weights = "imagenet" if cached else resolve_weights(config.weights)
        base = getattr(keras.applications, class_name)(include_top=False, weights=weights,
                                                        input_shape=(height, width, 3))
        base.trainable = config.trainable_base
        x = base(x, training=config.trainable_base)
        x = keras.layers.GlobalAveragePooling2D()(x)
    if config.inner_units:
        x = keras.layers.Dense(config.inner_units, activation="relu", name="inner")(x)
    x = keras.layers.Dropout(config.dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name=config.name)


def compile_model(model: keras.Model, config: ModelConfig, jit_compile) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"], jit_compile=jit_compile)
    return model
