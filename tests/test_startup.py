"""A quiet command line: TensorFlow's start-up lines are dropped unless asked for."""

from __future__ import annotations

from pipeline.startup import STARTUP_NOISE, VERBOSE_VARIABLE
from tests.conftest import run_module


def test_commands_print_no_tensorflow_start_up_noise_unless_asked(tmp_path):
    args = [str(tmp_path / "missing.keras"), str(tmp_path / "photo.jpg")]
    quiet = run_module("pipeline.predict", *args, env={"TF_CPP_MIN_LOG_LEVEL": ""})
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [
        f"error: {args[0]}: no such model file. Train one first "
        "(python -m pipeline.train or dvc repro), or pass an MLflow model "
        "URI such as runs:/<run_id>/model."
    ]
    verbose = run_module("pipeline.predict", *args, env={VERBOSE_VARIABLE: "1", "TF_CPP_MIN_LOG_LEVEL": ""})
    assert verbose.returncode == 2
    assert any(noise in verbose.stderr for noise in STARTUP_NOISE)  # what the quiet start removed
