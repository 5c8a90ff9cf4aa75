"""A saved model file (`.keras`), checked before TensorFlow loads (seconds): a missing or damaged
file is said at once, by `predict` as by the stages."""

from __future__ import annotations

import zipfile
from pathlib import Path

from pipeline.errors import ModelError


def check_model_file(path: str | Path) -> Path:
    """`path` if it is a file that can be a Keras model (a zip archive), else a ModelError saying what
    is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"{path}: no such model file. Train one first (python -m pipeline.train or dvc repro), "
            "or pass an MLflow model URI such as models:/<model_id> (printed by the training)."
        )
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} exists but is not a Keras model file (a .keras file is a zip archive; this one is "
            f"{path.stat().st_size} bytes of something else, perhaps damaged or cut short). "
            "Train again (python -m pipeline.train) or restore the file."
        )
    return path
