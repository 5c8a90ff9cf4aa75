"""The 5-seed `none` vs `lesson` study on an NVIDIA GPU: the augmentation inside the compiled step,
mixed precision. Without a GPU it says so in one line and exits 0.

    python bench/gpu_study.py --data ../shared/datasets/clothing-small

On a GPU the frozen base runs in TensorFlow on the device (`model.frozen_runtime=auto`), plain runs
train the head on its features computed once, and augmented runs train the whole model with the
warp inside the XLA-compiled train step (`augmentation.placement=auto` puts it there on a GPU), in
float16 (`train.mixed_precision=true`). Runs the same sweep as the README's loop through
`bench/study_wall_time.py`, which prints the wall time, each group's MLflow durations and the
verdict. Trailing arguments are Hydra overrides.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def gpu_names() -> list[str]:
    """The NVIDIA GPUs TensorFlow can use, asked in a child process (its start-up lines stay there)."""
    probe = (
        "import tensorflow as tf;"
        "print('\\n'.join(tf.config.experimental.get_device_details(g).get('device_name', 'GPU')"
        " for g in tf.config.list_physical_devices('GPU')))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    return [line for line in found.stdout.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the sweep")
    args = parser.parse_args()
    gpus = gpu_names()
    if not gpus:
        print("no GPU here (TensorFlow sees none): nothing to measure; bench/study_wall_time.py times the CPU study")
        return
    print(f"GPU: {', '.join(gpus)}")
    command = [
        sys.executable,
        str(HERE / "study_wall_time.py"),
        "--data",
        str(args.data),
        "train.mixed_precision=true",
        "train.jit_compile=true",
        "augmentation.placement=model",
        *args.overrides,
    ]
    sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    main()
