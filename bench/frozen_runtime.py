"""Images per second through the frozen base, per runtime and precision, against the fp32 floor.

    python bench/frozen_runtime.py --data ../shared/datasets/clothing-small
    python bench/frozen_runtime.py --data ../shared/datasets/clothing-small --rounds 12

The frozen EfficientNet-Lite0 of `experiment=cpu` (ImageNet weights from the package, 150x150, pooled
features), fed batches of real test photos. Each round times every candidate back to back on the
same batches, so a machine that drifts by 15-25% from minute to minute drifts alike for all of them;
the table gives the median images/s over the rounds, each candidate's median ratio to TensorFlow
within a round, and its largest difference from TensorFlow's features.

Candidates: TensorFlow as the stages ran it (a tf.function, batch 32) and with batch 64; OpenVINO
f32 with one request at a time and with its requests in flight (what `pipeline.model.frozen_runtime`
does), OpenVINO bf16; ONNX Runtime when `onnxruntime` and `tf2onnx` are installed (Keras exports
through tf2onnx). The fp32 floor is what the cores reach on a large matrix product divided by the
base's multiply-adds per image. Last line: frozen_runtime_speedup=<the product's runtime / TensorFlow>.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from transfer_cpu import matmul_multiply_adds_per_second, multiply_adds

import pipeline  # noqa: F401 - first, so that TensorFlow starts quietly
from pipeline.backend import tf
from pipeline.config.compose import compose
from pipeline.data.images import load_image
from pipeline.model.classifier import build_model
from pipeline.model.frozen_runtime import FrozenNetwork, OpenVinoNetwork, frozen_network


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def photos(data: Path, count: int) -> np.ndarray:
    files = sorted(data.glob("test/*/*.jpg"))[:count] or sorted(data.rglob("*.jpg"))[:count]
    if len(files) < count:
        raise SystemExit(f"{data} has fewer than {count} JPEG photos")
    return np.stack([load_image(f, (150, 150)) for f in files]).astype(np.float32)


def onnx_runtime(features, folder: Path, threads: int):
    """An ONNX Runtime session of `features`, or None where the packages are missing."""
    try:
        import onnxruntime
        import tf2onnx  # noqa: F401 - Keras' ONNX export needs it with the TensorFlow backend
    except ImportError:
        return None
    path = folder / "features.onnx"
    features.export(str(path), format="onnx", verbose=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the clothing dataset (its test/ photos)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of back-to-back timings (median)")
    parser.add_argument("--batches", type=int, default=6, help="batches of 32 per candidate per round")
    args = parser.parse_args()

    cores = len(__import__("os").sched_getaffinity(0))
    model = build_model(compose(["experiment=cpu"]).model, 10, (150, 150))
    features = model.get_layer("features")
    pixels = photos(args.data, 64)
    batch32, batch64 = pixels[:32], pixels

    with tempfile.TemporaryDirectory() as scratch:
        tensorflow = FrozenNetwork(features)
        product = frozen_network(features, "auto", "f32", scratch)
        # name -> (a network or a function of one batch, the batch it is timed on)
        candidates = {
            "tensorflow, batch 32 (as before)": (tensorflow, batch32),
            "tensorflow, batch 64": (tensorflow, batch64),
        }
        if isinstance(product, OpenVinoNetwork):
            one_request = OpenVinoNetwork(product.compiled, "f32", product.output_shape, product.digest)
            one_request.requests = 1
            candidates["openvino f32, one request"] = (one_request, batch32)
            candidates[f"openvino f32, {product.requests} requests (the default)"] = (product, batch32)
            bf16 = frozen_network(features, "openvino", "bf16", scratch)
            if bf16.precision == "bf16":
                candidates["openvino bf16 (opt-in)"] = (bf16, batch32)
        ort = onnx_runtime(features, Path(scratch), cores)
        if ort is not None:
            candidates["onnxruntime f32"] = (ort, batch32)

        reference = tensorflow(batch64)
        differences = {
            name: float(np.abs(np.asarray(run(batch)) - reference[: len(batch)]).max())
            for name, (run, batch) in candidates.items()
        }

        def images_per_second(name: str) -> float:
            run, batch = candidates[name]
            run(batch)
            start = time.perf_counter()
            if isinstance(run, OpenVinoNetwork):  # batches one after another, its requests in flight
                for _ in run.map((batch, None) for _ in range(args.batches)):
                    pass
            else:
                for _ in range(args.batches):
                    run(batch)
            return args.batches * len(batch) / (time.perf_counter() - start)

        speeds = {name: [] for name in candidates}
        ratios = {name: [] for name in candidates}
        for _ in range(args.rounds):
            measured = {name: images_per_second(name) for name in candidates}
            for name, value in measured.items():
                speeds[name].append(value)
                ratios[name].append(value / measured["tensorflow, batch 32 (as before)"])

    floor = matmul_multiply_adds_per_second() / multiply_adds(features)
    print(f"machine: {cpu_model()}, {cores} cores; tensorflow {tf.__version__}")
    print(f"fp32 floor: {floor:.0f} images/s ({multiply_adds(features) / 1e9:.3f} G multiply-adds an image)")
    scale = float(np.abs(reference).max())
    print(
        "| runtime | images/s (median) | min-max | vs TensorFlow (median ratio) | of the fp32 floor "
        "| max abs diff from TensorFlow | relative to the largest feature |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in candidates:
        median = statistics.median(speeds[name])
        print(
            f"| {name} | {median:.0f} | {min(speeds[name]):.0f}-{max(speeds[name]):.0f} | "
            f"{statistics.median(ratios[name]):.2f}x | {median / floor:.0%} | {differences[name]:.1e} "
            f"| {differences[name] / scale:.1e} |"
        )
    default = next(name for name in candidates if "(the default)" in name) if "openvino" in product.runtime else None
    speedup = statistics.median(ratios[default]) if default else 1.0
    print(f"frozen_runtime_speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
