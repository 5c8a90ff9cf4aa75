"""Where the frozen layers run: OpenVINO on a CPU when it is installed, else TensorFlow.

A frozen network (the pretrained base with its pooling: pixels in, features out) does the same
arithmetic for every run of a sweep, so it is worth running in the fastest runtime a package gives.
Measured on 2 cores (docs/benchmarks.md, `bench/frozen_runtime.py`): OpenVINO ran the frozen
EfficientNet-Lite0 at about twice TensorFlow's images per second with features equal to TensorFlow's
within 1e-5, and ONNX Runtime within a few percent of OpenVINO; OpenVINO is the default because
it reads the Keras network itself (no exporter package) and offers bf16 on CPUs that have it.

* `auto`: OpenVINO on a machine without a GPU when the package is installed, else TensorFlow
  (with one note saying why). On a GPU TensorFlow stays: the network runs there.
* `precision`: `f32` (exact: the features equal TensorFlow's within 1e-4) or `bf16`, an opt-in:
  about twice as fast on CPUs with AMX or AVX-512 bf16, features within a few percent.

The network is exported once per content (its weights, shapes and layer types, hashed) into
`<cache_dir>/frozen-networks/`, and OpenVINO keeps its compiled form there too, so a sweep
converts it once. OpenVINO's conversion API (`openvino.convert_model`) sends usage telemetry
unless opted out; this module never calls it: it exports a TensorFlow SavedModel with Keras and
reads that with OpenVINO's own reader.

Batches go through with two requests in flight (`FrozenNetwork.map`), so the cores stay busy
while the caller prepares the next batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backend import keras, tf
from pipeline.config.schema import DEFAULT_CACHE_DIR
from pipeline.console import say_once
from pipeline.data.cache import folder_files, folder_proven, record_folder
from pipeline.files import atomic_target

NETWORKS_FOLDER = "frozen-networks"

_compiled: dict[tuple[str, str, str], FrozenNetwork] = {}  # (digest, runtime, precision) -> network


def content_digest(model: keras.Model) -> str:
    """A sha256 of what the network computes: the Keras version that runs and exports it, its input
    shape, each layer's type and dtype policy (`train.mixed_precision` computes in float16), and every
    weight's shape and bytes. Two builds of the same frozen base hash alike; a fine-tuned one does not."""
    digest = hashlib.sha256(f"keras {keras.__version__} {tuple(model.input_shape)}".encode())
    for layer in _all_layers(model):
        digest.update(f"{type(layer).__name__} {layer.dtype_policy.name}".encode())
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _all_layers(model) -> Iterator:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


class FrozenNetwork:
    """A frozen Keras model run for inference: float32 pixel batches in, float32 outputs out."""

    runtime = "tensorflow"
    precision = "f32"

    def __init__(self, model: keras.Model, digest: str | None = None):
        self.output_shape = tuple(model.output_shape[1:])
        self.digest = digest or content_digest(model)  # what caches of its outputs are keyed by
        self._call = tf.function(lambda x: model(x, training=False), jit_compile=_has_gpu())

    @property
    def description(self) -> str:
        """What a run records (param `model.frozen_runtime_used`): runtime, version and precision."""
        version = tf.__version__ if self.runtime == "tensorflow" else _openvino_version()
        return f"{self.runtime} {version} {self.precision}"

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([out for out, _ in self.map([(pixels, None)])])

    def map(self, batches: Iterable[tuple[np.ndarray, Any]]) -> Iterator[tuple[np.ndarray, Any]]:
        """(outputs, tag) for each (pixels, tag), in order."""
        for pixels, tag in batches:
            # float32 out, whatever the compute dtype (float16 under train.mixed_precision on a GPU)
            yield self._call(np.asarray(pixels, np.float32)).numpy().astype(np.float32, copy=False), tag

    def outputs(self, pixel_batches: Iterable[np.ndarray]) -> np.ndarray:
        """Every batch's outputs, concatenated."""
        parts = [out for out, _ in self.map((p, None) for p in pixel_batches)]
        return np.concatenate(parts) if parts else np.zeros((0, *self.output_shape), np.float32)


class OpenVinoNetwork(FrozenNetwork):
    """The same network compiled by OpenVINO for the CPU, with `requests` inferences in flight."""

    runtime = "openvino"

    def __init__(self, compiled, precision: str, output_shape: tuple[int, ...], digest: str):
        self.output_shape, self.digest = output_shape, digest
        self.compiled = compiled
        self.precision = precision
        self.requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))  # in flight

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """One batch, split over the requests so that every stream works on it."""
        parts = np.array_split(np.asarray(pixels, np.float32), min(self.requests, max(1, len(pixels))))
        return np.concatenate([out for out, _ in self.map((part, None) for part in parts)])

    def map(self, batches: Iterable[tuple[np.ndarray, Any]]) -> Iterator[tuple[np.ndarray, Any]]:
        """(outputs, tag) for each (pixels, tag), in order, `requests` batches in flight (OpenVINO's
        AsyncInferQueue: a queue of this call's own, so that two maps at once - a training's prefetch
        thread and an evaluation - never share a request)."""
        import openvino

        queue = openvino.AsyncInferQueue(self.compiled, self.requests)
        done: dict[int, np.ndarray] = {}
        queue.set_callback(lambda request, index: done.__setitem__(index, request.get_output_tensor(0).data.copy()))
        waiting: dict[int, tuple[Any, np.ndarray]] = {}  # index -> (tag, its input, kept alive until done)
        emitted = 0
        for index, (pixels, tag) in enumerate(batches):
            waiting[index] = (tag, np.ascontiguousarray(pixels, np.float32))
            queue.start_async({0: waiting[index][1]}, index, share_inputs=True)  # waits for a free request
            while emitted in done:
                yield done.pop(emitted), waiting.pop(emitted)[0]
                emitted += 1
        queue.wait_all()
        while emitted in done:
            yield done.pop(emitted), waiting.pop(emitted)[0]
            emitted += 1


def _openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


def frozen_network(
    model: keras.Model,
    runtime: str = "auto",
    precision: str = "f32",
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    convert: bool = True,
) -> FrozenNetwork:
    """`model` (frozen: pixels in, features out) in the configured runtime.

    `convert=False` uses OpenVINO only when this network's conversion is cached already (a
    one-off model, e.g. one fine-tuned, is not worth converting for a few hundred images).
    A runtime that cannot be had falls back to TensorFlow, saying why once per process."""
    if runtime == "tensorflow" or (runtime == "auto" and _has_gpu()):
        if precision != "f32":
            say_once(f"model.frozen_precision={precision} needs OpenVINO: the frozen layers run in TensorFlow, f32")
        return FrozenNetwork(model)
    try:
        import openvino  # noqa: F401
    except ImportError:
        say_once(
            "OpenVINO is not installed, so the frozen layers run in TensorFlow (about half the speed on a CPU): "
            "pip install openvino"
        )
        return FrozenNetwork(model)
    digest = content_digest(model)
    key = (digest, "openvino", precision)
    if key not in _compiled:
        saved = exported_network(model, digest, Path(cache_dir).expanduser() / NETWORKS_FOLDER, convert)
        if saved is None:
            return FrozenNetwork(model, digest)
        try:
            _compiled[key] = _compile(saved, precision, tuple(model.output_shape[1:]), digest)
        except RuntimeError as error:  # an op OpenVINO cannot read or compile
            say_once(
                f"OpenVINO cannot run the frozen layers ({str(error).splitlines()[0][:160]}): they run in TensorFlow"
            )
            return FrozenNetwork(model, digest)
    return _compiled[key]


def exported_network(model: keras.Model, digest: str, folder: Path, convert: bool) -> Path | None:
    """The network's SavedModel export in `folder`, proven to be the files written when it was exported
    from these weights (`cache.folder_proven`; a damaged one is exported again), or None where it
    cannot be had (`convert=False` and none kept, or an op the exporter cannot trace)."""
    saved, card = folder / digest[:32], folder / f"{digest[:32]}.card.json"
    made_from = {"network": digest, "tensorflow": tf.__version__}
    if saved.exists() and not folder_proven(saved, card, made_from):
        print(f"note: the exported network {saved} is not the one written from these weights: exporting it again")
        shutil.rmtree(saved, ignore_errors=True)
    if saved.exists():
        return saved
    if not convert:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_target(saved) as scratch:
            _export_saved_model(model, scratch)
        record_folder(saved, card, made_from)
    except Exception as error:  # an op the exporter cannot trace, or a cache that cannot be written
        say_once(
            f"the frozen layers could not be exported for OpenVINO ({str(error).splitlines()[0][:160]}): "
            "they run in TensorFlow"
        )
        return None
    return saved


def supports_bf16() -> bool:
    """True when OpenVINO can compute in bfloat16 on this CPU (AMX or AVX-512 bf16)."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def _export_saved_model(model: keras.Model, target: Path) -> None:
    """Keras' own SavedModel export into `target`, quietly."""
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.WARNING)  # not "Assets written to ..." (INFO) under Hydra's logging
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the exported signature
            model.export(str(target), format="tf_saved_model", verbose=False)
    finally:
        tf_logger.setLevel(level)


def _compile(saved: Path, precision: str, output_shape: tuple[int, ...], digest: str) -> OpenVinoNetwork:
    """The export compiled by OpenVINO for this CPU. Its compiled form is kept beside the export (one
    folder per network and precision, OpenVINO's CACHE_DIR) and proven against what was compiled before
    it is loaded; a damaged one is removed and compiled again. A cache that cannot be written compiles
    every time."""
    import openvino

    core = openvino.Core()
    if precision == "bf16" and not supports_bf16():
        say_once("model.frozen_precision=bf16: this CPU has no bf16 support, so OpenVINO computes in f32")
        precision = "f32"
    compiled_dir = saved.parent / "compiled" / f"{saved.name}-{precision}"
    card = compiled_dir.with_name(compiled_dir.name + ".card.json")
    made_from = {"export": folder_files(saved), "openvino": openvino.get_version(), "precision": precision}
    if compiled_dir.exists() and any(compiled_dir.iterdir()) and not folder_proven(compiled_dir, card, made_from):
        print(f"note: the compiled network in {compiled_dir} is not the one compiled from this export: compiling again")
        shutil.rmtree(compiled_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        compiled_dir.mkdir(parents=True, exist_ok=True)
    writable = os.access(compiled_dir, os.W_OK)
    if writable:
        core.set_property({"CACHE_DIR": str(compiled_dir)})
    compiled = core.compile_model(
        core.read_model(str(saved)),
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT"},
    )
    if writable and not folder_proven(compiled_dir, card, made_from):
        record_folder(compiled_dir, card, made_from)
    return OpenVinoNetwork(compiled, precision, output_shape, digest)


class SplitClassifier:
    """A classifier saved by the train stage, run as its two parts: `features` (pixels to pooled
    features) in the frozen runtime, `head` (features to class probabilities) in Keras.

    `convert`: convert the features part for OpenVINO if it is not cached yet; a caller that
    knows the part was frozen in training (the same base every run shares) says True, one that
    holds a one-off model (fine-tuned, from scratch) says False and so converts nothing."""

    def __init__(self, model: keras.Model, runtime: str, precision: str, cache_dir: str | Path, convert: bool):
        names = {layer.name for layer in model.layers}
        if {"features", "head"} <= names:
            self.network = frozen_network(model.get_layer("features"), runtime, precision, cache_dir, convert)
            self.head = model.get_layer("head")
        else:  # a model saved before the two parts existed: all of it in TensorFlow
            self.network, self.head = FrozenNetwork(model), None

    def probabilities(self, pixel_batches: Iterable[np.ndarray]) -> np.ndarray:
        """Class probabilities (float32 [n, classes]) of every image of the float32 pixel batches."""
        outputs = self.network.outputs(pixel_batches)
        if self.head is None:
            return outputs
        return (
            np.concatenate(
                [
                    keras.ops.convert_to_numpy(self.head(outputs[i : i + 1024], training=False))
                    for i in range(0, len(outputs), 1024)
                ]
            )
            if len(outputs)
            else np.zeros((0, self.head.output_shape[-1]), np.float32)
        )
