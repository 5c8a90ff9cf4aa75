"""Classifiers: the lesson's Xception head and its siblings, plus a residual CNN trained from scratch on CPUs.

Every model takes raw RGB pixels (float32, 0..255) and applies its own preprocessing as
its first layers, so augmentation happens before preprocessing (as ImageDataGenerator
did) and a saved model predicts straight from decoded images.

Transfer learning follows the Keras guide: a pretrained base is called in inference mode
(`base(x, training=False)`), so its BatchNorm statistics never move, whether the base is
frozen, trained whole or fine-tuned from one of its layers on (`model.fine_tune_from`,
at `model.fine_tune_learning_rate`, with its BatchNorm layers kept frozen).
"""

from __future__ import annotations

import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from pipeline.backend import keras
from pipeline.config.schema import ModelConfig, TrainConfig
from pipeline.errors import ModelError
from pipeline.model import efficientnet_lite
from pipeline.model.model_file import check_model_file

BACKBONES = {
    "xception": ("Xception", "xception"),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet"),
}
WEIGHTS_HOST = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _preprocess(name: str, x):
    if name in ("xception", "mobilenet_v2"):  # their preprocess_input: scale to [-1, 1]
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    if name in ("efficientnet_b0", "efficientnet_lite0"):  # these rescale inside the network
        return x
    return keras.layers.Rescaling(1 / 255.0, name="preprocess")(x)


def resolve_weights(weights: str | None, timeout_s: float = 5.0) -> str | None:
    """Check that the configured weights can be had, within seconds; never hang offline."""
    if weights in (None, "null", "none"):
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(
                f"model.weights={weights!r}: no such file. Use model.weights=imagenet, "
                "model.weights=null (random init) or a path to a local .weights.h5 file."
            )
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
            f"Keras also looks in {cache}/models). Offline, experiment=cpu (the default: a frozen ImageNet "
            "EfficientNet-Lite0 whose weights come with the package) needs no download, nor does model=residual_cnn."
        ) from None
    return "imagenet"


def _cached_imagenet(name: str) -> bool:
    folder = Path("~/.keras/models").expanduser()
    return folder.is_dir() and any(name in f.name for f in folder.iterdir())


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(
        x
    )  # statistics that keep up with ~100 steps an epoch
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual_block(x, filters: int, stride: int, name: str):
    """A ResNet basic block: two 3x3 convolutions beside a shortcut (a 1x1 projection where the shape changes)."""
    shortcut = (
        x
        if stride == 1 and x.shape[-1] == filters
        else _conv_bn_relu(x, filters, 1, stride, f"{name}_shortcut", relu=False)
    )
    x = _conv_bn_relu(x, filters, 3, stride, f"{name}_a")
    x = _conv_bn_relu(x, filters, 3, 1, f"{name}_b", relu=False)
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([x, shortcut]))


def residual_cnn_features(x, stages: list[list[int]]):
    """The from-scratch CPU backbone: a stem of two 3x3 convolutions (32 filters, the first with
    stride 2), residual `stages` ([filters, blocks] each, starting with stride 2; by default 64,
    128, 256 filters in 2, 2, 1 blocks) with BatchNorm, global average pooling. The default has
    about 1.6 M parameters and at 96x96 pixels about 0.2 G multiply-adds per image."""
    x = _conv_bn_relu(x, 32, 3, 2, "stem1")
    x = _conv_bn_relu(x, 32, 3, 1, "stem2")
    for i, (filters, blocks) in enumerate(stages, start=1):
        for j in range(blocks):
            x = _residual_block(x, filters, 2 if j == 0 else 1, f"stage{i}_block{j + 1}")
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


def base_network(config: ModelConfig, image_size: tuple[int, int]) -> keras.Model:
    """The backbone with its configured weights (ImageNet, a local file, or none), without its top."""
    height, width = image_size
    if config.name == "efficientnet_lite0":  # ImageNet weights from a package: nothing to download
        base = efficientnet_lite.efficientnet_lite0((height, width, 3))
        if config.weights == "imagenet":
            efficientnet_lite.load_imagenet_weights(base)
        elif local_file := resolve_weights(config.weights):
            base.load_weights(local_file)
        return base
    class_name, module = BACKBONES[config.name]
    cached = config.weights == "imagenet" and _cached_imagenet(module)
    weights = "imagenet" if cached else resolve_weights(config.weights)
    return getattr(keras.applications, class_name)(include_top=False, weights=weights, input_shape=(height, width, 3))


def set_trainable_layers(base: keras.Model, config: ModelConfig) -> None:
    """Freeze the base, train it whole (`trainable_base`), or fine-tune it from the first layer
    whose name starts with `fine_tune_from` on; fine-tuned BatchNorm layers stay frozen."""
    if config.fine_tune_from is None:
        base.trainable = config.trainable_base
        return
    names = [layer.name for layer in base.layers]
    start = next((i for i, name in enumerate(names) if name.startswith(config.fine_tune_from)), None)
    if start is None:
        starts = sorted({name.split("_")[0] for name in names if name.startswith("block")}, key=lambda n: (len(n), n))
        raise ModelError(
            f"model.fine_tune_from={config.fine_tune_from!r}: no layer of the {config.name} base starts "
            f"with that name. Its blocks: {', '.join(starts) or '-'} (layers: {names[1]} ... {names[-1]})."
        )
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)


def build_model(config: ModelConfig, num_classes: int, image_size: tuple[int, int]) -> keras.Model:
    """Raw pixels -> preprocessing -> backbone -> pooling -> dense -> dropout -> softmax.

    Built as two parts, `features` (pixels to pooled features) and `head` (features to class
    probabilities), called in turn: a frozen backbone's features can then be computed once and
    the head trained on them alone (`datasets.feature_cache`), while the saved model stays whole.
    """
    height, width = image_size
    inputs = keras.Input((height, width, 3), name="image")
    x = _preprocess(config.name, inputs)
    if config.name == "residual_cnn":
        pooled = residual_cnn_features(x, config.residual_stages)
    else:
        base = base_network(config, image_size)
        set_trainable_layers(base, config)
        # A pretrained base runs in inference mode; one trained from scratch updates its BatchNorm.
        pooled = keras.layers.GlobalAveragePooling2D(name="pool")(
            base(x, training=config.trainable_base and not config.pretrained)
        )
    features = keras.Model(inputs, pooled, name="features")

    head_inputs = keras.Input(features.output_shape[1:], name="pooled_features")
    x = head_inputs
    if config.inner_units:
        x = keras.layers.Dense(config.inner_units, activation="relu", name="inner")(x)
    x = keras.layers.Dropout(config.dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classes")(x)
    head = keras.Model(head_inputs, outputs, name="head")
    return keras.Model(inputs, head(features(inputs)), name=config.name)


def frozen_backbone(config: ModelConfig) -> bool:
    """True when training cannot change the `features` part (a pretrained-style base kept frozen)."""
    return config.name != "residual_cnn" and not config.trainable_base and config.fine_tune_from is None


def fine_tuned_variables(trainer: keras.Model) -> list:
    """The trainable variables of the base (those that `fine_tune_from` unfroze): all of the
    trainer's but the head's, whichever model trains (the whole model, the model behind the
    Augment layer, or the top of a split model)."""
    head = _nested_layer(trainer, "head")
    theirs = {id(v) for v in head.trainable_variables} if head is not None else set()
    return [v for v in trainer.trainable_variables if id(v) not in theirs]


def _nested_layer(model: keras.Model, name: str):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model) and (found := _nested_layer(layer, name)) is not None:
            return found
    return None


def fine_tune_split(model: keras.Model, config: ModelConfig) -> tuple[keras.Model, keras.Model] | None:
    """A fine-tuned model as two models sharing its layers: the frozen `bottom` (pixels in, the
    input of the first unfrozen layer out) and the trainable `top` (that tensor in, class
    probabilities out), so that the bottom can run in a faster runtime and only the top trains in
    Keras. None where more than one tensor crosses from the frozen layers to the unfrozen ones."""
    features = model.get_layer("features")
    base = next(layer for layer in features.layers if isinstance(layer, keras.Model))
    names = [layer.name for layer in base.layers]
    start = next(i for i, name in enumerate(names) if name.startswith(config.fine_tune_from))
    below = {id(layer) for layer in base.layers[:start]}
    crossing = {}
    for layer in base.layers[start:]:
        for tensor in keras.tree.flatten(layer.input):
            if id(tensor._keras_history.operation) in below:
                crossing[id(tensor)] = tensor
    if len(crossing) != 1:
        return None
    (boundary,) = crossing.values()
    inner_bottom = keras.Model(base.input, boundary, name=f"{base.name}_bottom")
    inner_top = keras.Model(boundary, base.output, name=f"{base.name}_top")
    pixels = keras.Input(model.input_shape[1:], name="image")
    scaled = (
        features.get_layer("preprocess")(pixels)
        if "preprocess" in [layer.name for layer in features.layers]
        else pixels
    )
    bottom = keras.Model(pixels, inner_bottom(scaled, training=False), name="frozen_bottom")
    below_top = keras.Input(boundary.shape[1:], name="bottom_features")
    pooled = features.get_layer("pool")(inner_top(below_top, training=False))  # a pretrained base: inference mode
    top = keras.Model(below_top, model.get_layer("head")(pooled), name="fine_tuned_top")
    return bottom, top


def load_saved_model(path: str | Path) -> keras.Model:
    """A model saved by the train stage (`.keras`), or a ModelError that says what is wrong with the file."""
    path = check_model_file(path)
    try:
        return keras.models.load_model(path)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise ModelError(
            f"{path} cannot be loaded as a Keras model ({str(error).splitlines()[0]}). "
            "It may be damaged or saved by another Keras version: train again."
        ) from None


def scale_learning_rate(optimizer: keras.optimizers.Optimizer, variables: list, factor: float) -> None:
    """Make `optimizer` step `variables` at `factor` x its learning rate (schedule included),
    the other variables at the rate itself; weight decay is kept off `variables`.

    Keras 3 has no per-variable learning rate, so this instance's `update_step` scales the
    rate it is given for those variables. The optimizer's class and config stay Keras' own:
    a saved model loads anywhere.
    """
    if not variables:
        return
    keys = {optimizer._var_key(v) for v in variables}
    plain_step = optimizer.update_step

    def update_step(gradient, variable, learning_rate):
        if optimizer._var_key(variable) in keys:
            learning_rate = learning_rate * factor
        return plain_step(gradient, variable, learning_rate)

    optimizer.update_step = update_step
    optimizer.exclude_from_weight_decay(var_list=variables)


def learning_rate_schedule(peak: float, train_config: TrainConfig, steps_per_epoch: int):
    """`constant`: `peak` throughout. `warmup_cosine`: linear warm-up from peak/10 to `peak` over
    `train.warmup_epochs`, then cosine decay to 0 at the last step of `train.epochs`."""
    if train_config.lr_schedule == "constant":
        return peak
    total = max(1, train_config.epochs * steps_per_epoch)
    warmup = min(total - 1, train_config.warmup_epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        peak / 10, decay_steps=total - warmup, alpha=0.0, warmup_target=peak, warmup_steps=warmup
    )


def compile_model(
    model: keras.Model, model_config: ModelConfig, train_config: TrainConfig, steps_per_epoch: int, jit_compile
) -> keras.Model:
    """Adam (AdamW when `train.weight_decay` > 0) or SGD with Nesterov momentum 0.9, on the schedule;
    cross-entropy with label smoothing. Weight decay is decoupled: each step shrinks a weight by
    learning rate x weight_decay of itself (for SGD the same as an L2 penalty of that coefficient)."""
    rate = learning_rate_schedule(model_config.learning_rate, train_config, steps_per_epoch)
    decay = train_config.weight_decay or None
    if train_config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=decay)
    else:
        optimizer = keras.optimizers.AdamW(rate, weight_decay=decay) if decay else keras.optimizers.Adam(rate)
    if model_config.fine_tune_from is not None:
        scale_learning_rate(
            optimizer, fine_tuned_variables(model), model_config.fine_tune_learning_rate / model_config.learning_rate
        )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_config.label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model
