"""The fine-tuned top's training step on each Keras backend: TensorFlow (today's) against JAX.

    pip install "jax[cpu]"     # not a dependency of the project: this benchmark's candidate only
    python bench/top_step_backends.py
    python bench/top_step_backends.py --cut block14 --backends tensorflow,jax --rounds 3

The trainable top of `experiment=cpu model.fine_tune_from=block12` (EfficientNet-Lite0 from the cut, pooled,
the head; `classifier.fine_tune_split`, the model the fine-tuned runs train) on inputs of the bottom's
output shape at 150 px, batch 32, the training split's 3,068 images an epoch (96 steps), Adam and
cross-entropy as in training. Only the step is timed: the inputs are arrays in memory (a fine-tuned run
feeds the top cached bottom outputs), random, the same for every backend. Each backend trains in a process
of its own (Keras picks its backend once), rounds alternating, the first epoch (tracing, compiling) not
counted. Last lines: `epoch_s=<backend>:<median seconds of an epoch's steps>` and
`jax_over_tensorflow=<ratio of the medians>` (below 1: JAX is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from frozen_runtime import cpu_model  # loads Keras: in a child, on the backend its KERAS_BACKEND names

ROOT = Path(__file__).resolve().parent.parent
IMAGES, BATCH, CLASSES, SIZE = 3068, 32, 10, 150


def child(backend: str, cut: str, epochs: int) -> None:
    """Train the top for `epochs` epochs on this process's backend (KERAS_BACKEND, set by the parent);
    print the seconds of each epoch."""
    import numpy as np

    from pipeline.backend import keras
    from pipeline.config.compose import compose
    from pipeline.model.classifier import build_model, fine_tune_split

    assert keras.backend.backend() == backend, keras.backend.backend()
    config = compose(["experiment=cpu", f"model.fine_tune_from={cut}", "model.weights=null"])
    keras.utils.set_random_seed(0)
    _, top = fine_tune_split(build_model(config.model, CLASSES, (SIZE, SIZE)), config.model)
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(IMAGES, *top.input_shape[1:])).astype(np.float32)
    labels = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, IMAGES)]
    top.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            print(json.dumps({"epoch_s": time.perf_counter() - self.started}), flush=True)

    top.fit(inputs, labels, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0, callbacks=[EpochTimer()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--cut", default="block12", help="model.fine_tune_from")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per process; the first is not counted")
    parser.add_argument("--rounds", type=int, default=2, help="processes per backend, alternating")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options.child, options.cut, options.epochs)
        return

    backends = options.backends.split(",")
    seconds: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(options.rounds):
        for backend in backends:
            done = subprocess.run(
                [sys.executable, __file__, "--child", backend, "--cut", options.cut, "--epochs", str(options.epochs)],
                cwd=ROOT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": backend},
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                sys.exit(f"{backend} failed: {done.stderr[-3000:]}")
            epochs = [json.loads(line)["epoch_s"] for line in done.stdout.splitlines() if line.startswith("{")]
            seconds[backend] += epochs[1:]
            print(f"{backend}: {', '.join(f'{s:.2f}' for s in epochs)} s an epoch (the first not counted)", flush=True)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; top from {options.cut}, {IMAGES} inputs, batch {BATCH}")
    for backend in backends:
        print(f"epoch_s={backend}:{statistics.median(seconds[backend]):.2f}")
    if {"tensorflow", "jax"} <= set(backends):
        print(f"jax_over_tensorflow={statistics.median(seconds['jax']) / statistics.median(seconds['tensorflow']):.2f}")


if __name__ == "__main__":
    main()
