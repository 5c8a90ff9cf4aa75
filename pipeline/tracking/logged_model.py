"""A training run's output: its model, logged as an MLflow LoggedModel.

The model is saved with its signature, an input example, the pinned packages it loads with
and `classes.json`, and linked to its run at the best epoch, whose metrics become the model's.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelOutput, Metric


def log_keras_model(
    model_path: Path,
    image_size: tuple[int, int],
    classes_file: Path,
    best_epoch: int,
    name: str,
    describe: dict[str, str],
    params: dict[str, str],
) -> str:
    """Log the saved model (reloaded off any distribution strategy: no cluster needed to load it)
    as the run's LoggedModel `model` (READY), with signature, input example and classes.json (the
    class names in output order, which `pipeline.predict` reads), linked to the run at the best
    epoch's step, whose metrics become the model's. Returns its model id; `models:/<id>` and
    `runs:/<run id>/<name>` both load it.

    `mlflow.keras.log_model(..., input_example=...)` in MLflow 3.17 writes the example before
    creating its folder (mlflow#16183), so the model is saved into a folder made here and
    uploaded with `log_model_artifacts`; a failed upload leaves the LoggedModel FAILED.
    It is named after its run (`name`), its tags say what it is (`describe`: augmentation, model, seed,
    and its description, `mlflow.note.content`), so the UI's model list tells them apart; its `params`
    are the run's configuration.
    """
    import tempfile

    import numpy as np
    from mlflow.models import infer_signature

    from pipeline.backend import keras

    model = keras.models.load_model(model_path)
    run_id = mlflow.active_run().info.run_id
    example = np.full((1, *image_size, 3), 127.0, np.float32)
    (output,) = model.outputs  # its shape and dtype are the signature's: no prediction needed (1 s of a base)
    signature = infer_signature(example, np.zeros((1, *output.shape[1:]), output.dtype))
    logged = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, model_type="keras", tags=describe, params=params
    )
    try:
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "model")
            os.makedirs(path)
            mlflow.keras.save_model(
                model, path, signature=signature, input_example=example, pip_requirements=model_requirements()
            )
            shutil.copy(classes_file, os.path.join(path, "classes.json"))
            mlflow.MlflowClient().log_model_artifacts(logged.model_id, path)
    except BaseException:
        mlflow.finalize_logged_model(logged.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(logged.model_id, "READY")
    mlflow.log_outputs([LoggedModelOutput(logged.model_id, step=best_epoch)])
    link_step_metrics(run_id, logged.model_id, best_epoch)
    return logged.model_id


@functools.cache
def model_requirements() -> list[str]:
    """The pinned packages a logged model loads with: what MLflow would infer (tensorflow, keras,
    numpy, mlflow at their installed versions), read from the installed distributions instead of
    a subprocess that loads the model once more (12 s of a tiny run). The TensorFlow distribution
    is the one installed (`tensorflow`, `tensorflow-cpu`, ...)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    pinned = []
    for module in ("tensorflow", "keras", "numpy", "mlflow"):
        try:  # the distribution named as the module (`mlflow`, not mlflow-skinny, where both are installed)
            pinned.append(f"{module}=={version(module)}")
        except PackageNotFoundError:  # another provides it: look it up (reading every distribution, 0.6 s)
            name = packages_distributions().get(module, [module])[0]
            pinned.append(f"{name}=={version(name)}")
    return pinned


def link_step_metrics(run_id: str, model_id: str, step: int) -> None:
    """Make the run's metrics at `step` the model's too (as `mlflow.<flavor>.log_model(step=)`
    does): the same values and timestamps, so the run's own history gains no duplicates."""
    client = mlflow.MlflowClient()
    linked = [
        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id)
        for key in client.get_run(run_id).data.metrics
        for m in client.get_metric_history(run_id, key)
        if m.step == step
    ]
    client.log_batch(run_id, metrics=linked)
