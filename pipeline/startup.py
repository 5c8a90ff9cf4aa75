"""A quiet start: TensorFlow's start-up lines are dropped, its real warnings and errors kept.

TensorFlow 2.21 writes half a dozen lines to stderr while it loads (the oneDNN notice,
"Could not find cuda drivers", CPU-instruction advice, a failed `cuInit` on machines
without a GPU). They come from C++ before its logging is set up, so TF_CPP_MIN_LOG_LEVEL
does not stop them. Here file descriptor 2 is caught while TensorFlow loads and looks for
GPUs; afterwards the lines that are not known start-up noise are written back to stderr.

Set AUGMENT_PIPELINE_VERBOSE=1 to see everything (debugging a GPU set-up, say).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

STARTUP_NOISE = (
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "failed call to cuInit",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning",
)
VERBOSE_VARIABLE = "AUGMENT_PIPELINE_VERBOSE"


def by_design_retracing(record: logging.LogRecord) -> bool:
    """False for TensorFlow's "N out of the last M calls ... triggered tf.function retracing" warning.

    A sweep runs its jobs in one process and each job builds its own model, so Keras's step functions and
    ours (the frozen network's, the augmenter's) are new `tf.function`s from the same Python code. TensorFlow
    counts traces by code, not by instance, and calls this excessive from the fifth job on. It is by design
    here: a shape that really changed would trace in one job and be seen in its epoch time."""
    return "triggered tf.function retracing" not in record.getMessage()


def quiet_tensorflow_start() -> list[str]:
    """Import TensorFlow and probe its devices with start-up noise filtered out of stderr; returns the
    lines dropped."""
    if os.environ.get(VERBOSE_VARIABLE):
        return []
    # MLflow's system-metrics monitor announces itself at INFO on every run (and that it found no GPU).
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").addFilter(by_design_retracing)
    if "tensorflow" in sys.modules:
        return []  # loaded already (a script that imported it first): its start-up lines are out
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO lines off; warnings and errors stay
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the cuInit probe happens here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        lines = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True) if line.strip()]
    noise = [line for line in lines if any(known in line for known in STARTUP_NOISE)]
    sys.stderr.write("".join(line for line in lines if line not in noise))
    return noise
