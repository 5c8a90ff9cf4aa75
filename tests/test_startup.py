"""A quiet command line, quick to end: TensorFlow's start-up lines are dropped unless asked for, and a
command run as its own process ends right after it."""

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


AS_ITS_OWN_PROCESS = """
import atexit, runpy, sys
atexit.register(lambda: print("exit handler ran", flush=True))
sys.argv = ["pipeline.split", *sys.argv[1:]]
runpy.run_module("pipeline.split", run_name="__main__", alter_sys=True)  # as `python -m pipeline.split` does
print("the interpreter went on")  # never: the command's process ended with it
"""


def test_a_command_s_process_ends_with_its_code_its_output_whole_and_its_exit_handlers_run(tmp_path):
    """A command run as its own process ends right after it (`stopping.end_command_process`): with its exit
    code, every line it printed, and the exit handlers run; run by other code (a test, here, in-process)
    it returns to that code."""
    from tests.conftest import make_tiny_dataset, path_overrides, run_in_process

    dataset = make_tiny_dataset(tmp_path)
    overrides = [o for o in path_overrides(tmp_path) if not o.startswith("hydra.")]
    for source, code, said in ((dataset, 0, "split: train 30, val 3, test 3"), (tmp_path / "nope", 1, "error: ")):
        done = subprocess.run(
            [sys.executable, "-c", AS_ITS_OWN_PROCESS, f"data.source={source}", *overrides],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == code, done.stderr[-2000:]
        assert said in done.stdout + done.stderr and done.stdout.rstrip().endswith("exit handler ran")
        assert "the interpreter went on" not in done.stdout
    in_process = run_in_process("pipeline.split", f"data.source={dataset}", *overrides)
    assert in_process.returncode == 0 and "split: train 30" in in_process.stdout
