"""A quiet command line: TensorFlow's start-up lines are dropped unless asked for."""

from __future__ import annotations

import zipfile

from pipeline.startup import STARTUP_NOISE, VERBOSE_VARIABLE
from tests.conftest import run_module


def test_commands_print_no_tensorflow_start_up_noise_unless_asked(tmp_path):
    not_a_model = tmp_path / "not-a-model.keras"  # a zip archive, so TensorFlow loads before it is refused
    with zipfile.ZipFile(not_a_model, "w") as archive:
        archive.writestr("notes.txt", "no model here")
    args = [str(not_a_model), str(tmp_path / "photo.jpg")]
    quiet = run_module("pipeline.predict", *args, env={"TF_CPP_MIN_LOG_LEVEL": ""})
    assert quiet.returncode == 2
    (line,) = quiet.stderr.strip().splitlines()
    assert line.startswith(f"error: {not_a_model} cannot be loaded as a Keras model")
    verbose = run_module("pipeline.predict", *args, env={VERBOSE_VARIABLE: "1", "TF_CPP_MIN_LOG_LEVEL": ""})
    assert verbose.returncode == 2
    assert any(noise in verbose.stderr for noise in STARTUP_NOISE)  # what the quiet start removed


def test_a_missing_model_file_is_said_before_tensorflow_loads(tmp_path):
    missing = tmp_path / "missing.keras"
    result = run_module("pipeline.predict", str(missing), str(tmp_path / "photo.jpg"), env={VERBOSE_VARIABLE: "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [  # not even TensorFlow's start-up lines, asked for: it never loaded
        f"error: {missing}: no such model file. Train one first (python -m pipeline.train or dvc repro), "
        "or pass an MLflow model URI such as runs:/<run_id>/model."
    ]
