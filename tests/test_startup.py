"""A quiet command line: TensorFlow's start-up lines are dropped unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from pipeline.startup import STARTUP_NOISE, VERBOSE_VARIABLE
from tests.conftest import ROOT, run_module

QUIET_COMMAND = """
import runpy, sys
from pipeline import startup
dropped = startup.quiet_tensorflow_start()  # what `pipeline.backend` does first
print(f"dropped {len(dropped)} line(s)")
sys.argv = ["pipeline.predict", *sys.argv[1:]]
runpy.run_module("pipeline.predict", run_name="__main__")
"""


@pytest.mark.slow  # a fresh process that starts TensorFlow
def test_commands_print_no_tensorflow_start_up_noise(tmp_path):
    """One TensorFlow start: the command's stderr is its one line, and the start did drop noise."""
    not_a_model = tmp_path / "not-a-model.keras"  # a zip archive, so TensorFlow loads before it is refused
    with zipfile.ZipFile(not_a_model, "w") as archive:
        archive.writestr("notes.txt", "no model here")
    quiet = subprocess.run(
        [sys.executable, "-c", QUIET_COMMAND, str(not_a_model), str(tmp_path / "photo.jpg")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", VERBOSE_VARIABLE)},
    )
    assert quiet.returncode == 2
    (line,) = quiet.stderr.strip().splitlines()
    assert line.startswith(f"error: {not_a_model} cannot be loaded as a Keras model")
    assert int(quiet.stdout.split("dropped ")[1].split()[0]) >= 1  # the noise was there, and removed
    assert not any(noise in quiet.stderr for noise in STARTUP_NOISE)


def test_a_missing_model_file_is_said_before_tensorflow_loads(tmp_path):
    missing = tmp_path / "missing.keras"
    result = run_module("pipeline.predict", str(missing), str(tmp_path / "photo.jpg"), env={VERBOSE_VARIABLE: "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [  # not even TensorFlow's start-up lines, asked for: it never loaded
        f"error: {missing}: no such model file. Train one first (python -m pipeline.train or dvc repro), "
        "or pass an MLflow model URI such as models:/<model_id> (printed by the training)."
    ]
