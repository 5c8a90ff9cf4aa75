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
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backend import keras, tf

NETWORKS_FOLDER = "frozen-networks"

_notes_said: set[str] = set()  # each fallback note is said once per process
_compiled: dict[tuple[str, str, str], FrozenNetwork] = {}  # (digest, runtime, precision) -> network


def say_once(note: str) -> None:
    if note not in _notes_said:
        _notes_said.add(note)
        print(f"note: {note}")


def content_digest(model: keras.Model) -> str:
    """A sha256 of what the network computes: its input shape, layer types and every weight's
    shape and bytes. Two builds of the same frozen base hash alike; a fine-tuned one does not."""
    digest = hashlib.sha256(str(tuple(model.input_shape)).encode())
    for layer in _all_layers(model):
        digest.update(type(layer).__name__.encode())
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
        # requests of this call's own: two maps at once (a training's prefetch thread and an
        # evaluation) never share one
        in_flight: deque = deque()
        free = deque(self.compiled.create_infer_request() for _ in range(self.requests))
        for pixels, tag in batches:
            if not free:
                yield self._collect(in_flight, free)
            request = free.popleft()
            pixels = np.ascontiguousarray(pixels, np.float32)  # kept alive in in_flight until done
            request.start_async({0: pixels}, share_inputs=True)
            in_flight.append((request, tag, pixels))
        while in_flight:
            yield self._collect(in_flight, free)

    @staticmethod
    def _collect(in_flight: deque, free: deque) -> tuple[np.ndarray, Any]:
        request, tag, _ = in_flight.popleft()
        request.wait()
        free.append(request)
        return request.get_output_tensor(0).data.copy(), tag


def _openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


def frozen_network(
    model: keras.Model,
    runtime: str = "auto",
    precision: str = "f32",
    cache_dir: str | Path = "~/.cache/augment-pipeline",
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
        folder = Path(cache_dir).expanduser() / NETWORKS_FOLDER
        saved = folder / digest[:32]
        if not (saved / "saved_model.pb").is_file():
            if not convert:
                return FrozenNetwork(model, digest)
            try:
                _export_saved_model(model, saved)
            except Exception as error:  # an op the exporter cannot trace: TensorFlow can still run it
                say_once(
                    f"the frozen layers could not be exported for OpenVINO ({str(error).splitlines()[0][:160]}): "
                    "they run in TensorFlow"
                )
                return FrozenNetwork(model, digest)
        try:
            _compiled[key] = _compile(saved, folder / "compiled", precision, tuple(model.output_shape[1:]), digest)
        except RuntimeError as error:  # an op OpenVINO cannot read or compile, or a damaged export
            shutil.rmtree(saved, ignore_errors=True)  # exported again next time
            say_once(
                f"OpenVINO cannot run the frozen layers ({str(error).splitlines()[0][:160]}): they run in TensorFlow"
            )
            return FrozenNetwork(model, digest)
    return _compiled[key]


def _has_gpu() -> bool:
    from pipeline import devices

    return bool(devices.gpus())


def _export_saved_model(model: keras.Model, target: Path) -> None:
    """Keras' own SavedModel export, written beside `target` and renamed into place (atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tf_logger = logging.getLogger("tensorflow")
        level = tf_logger.level
        tf_logger.setLevel(logging.WARNING)  # not "Assets written to ..." (INFO) under Hydra's logging
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the exported signature
                model.export(str(scratch / "model"), format="tf_saved_model", verbose=False)
        finally:
            tf_logger.setLevel(level)
        try:
            os.replace(scratch / "model", target)
        except OSError:  # another process exported the same network meanwhile: theirs is as good
            if not (target / "saved_model.pb").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _compile(
    saved: Path, compiled_cache: Path, precision: str, output_shape: tuple[int, ...], digest: str
) -> OpenVinoNetwork:
    import openvino

    core = openvino.Core()
    compiled_cache.mkdir(parents=True, exist_ok=True)
    core.set_property({"CACHE_DIR": str(compiled_cache)})
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        say_once("model.frozen_precision=bf16: this CPU has no bf16 support, so OpenVINO computes in f32")
        precision = "f32"
    compiled = core.compile_model(
        core.read_model(str(saved)),
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT"},
    )
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
