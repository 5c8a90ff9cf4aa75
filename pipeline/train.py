"""Stage `train`: fit a classifier on the train split, augmented or plain, tracked in MLflow.

    python -m pipeline.train model=small_cnn augmentation=lesson train.epochs=2
    python -m pipeline.train -m augmentation=none,lesson seed=1,2,3     # a sweep

Writes <paths.models_dir>/model.keras (the best epoch by val_accuracy) and classes.json,
<paths.reports_dir>/history.csv and run.json (the MLflow run, for `evaluate`).
In a Hydra multirun each job writes into its own job folder instead.
Returns the best val_accuracy (the objective of Optuna sweeps).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import yaml

from pipeline import devices, tracking
from pipeline.augmentation import augmentation_layer
from pipeline.config import Config, stage_entry, to_dict
from pipeline.data import manifest_hash, read_classes, read_manifest
from pipeline.datasets import ImageSet, build_eval_dataset, build_train_dataset, steps_per_epoch
from pipeline.models import build_model, compile_model
from pipeline.visuals import augmentation_grid, training_curves


def output_dirs(config: Config, chief: bool = True) -> tuple[Path, Path]:
    """(models dir, reports dir): the configured ones, or the job folder in a multirun.

    The non-chief processes of a multi-worker cluster write their checkpoints into
    `<models>/workers/<type>-<index>` so that no two processes write the same file.
    """
    models_dir, reports_dir = Path(config.paths.models_dir), Path(config.paths.reports_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        if hydra.mode.name == "MULTIRUN":
            job_dir = Path(hydra.runtime.output_dir)
            models_dir, reports_dir = job_dir / "models", job_dir / "reports"
    except (ImportError, ValueError):
        pass
    if not chief:
        task = devices.cluster_config()["task"]
        models_dir = models_dir / "workers" / f"{task['type']}-{task['index']}"
    return models_dir, reports_dir


def resume_epoch(backup_dir: Path) -> int:
    """Epochs already finished by an interrupted run (Keras BackupAndRestore's record)."""
    metadata = backup_dir / "training_metadata.json"
    return json.loads(metadata.read_text())["epoch"] if metadata.exists() else 0


@dataclass
class Training:
    """Everything `fit` needs, built under the distribution strategy."""

    model: keras.Model      # what is saved: raw pixels in, class probabilities out
    trainer: keras.Model    # what is fitted: `model`, behind the Augment layer when placement is 'model'
    train_set: ImageSet
    val_set: ImageSet
    placement: str
    start_epoch: int
    best_weights: Path
    callbacks: list


def prepare_training(config: Config, strategy, models_dir: Path) -> Training:
    split_dir = config.paths.split_dir
    classes = read_classes(split_dir)
    train_set = ImageSet.from_manifest(*read_manifest(split_dir, "train"), classes)
    val_set = ImageSet.from_manifest(*read_manifest(split_dir, "val"), classes)
    image_size = tuple(config.data.image_size)

    devices.configure_precision(config.train)
    placement = devices.augmentation_placement(config.augmentation)
    backup_dir = models_dir / "backup"
    if not config.train.resume:
        shutil.rmtree(backup_dir, ignore_errors=True)
    with strategy.scope():
        model = build_model(config.model, len(classes), image_size)
        trainer = model
        if placement == "model" and not config.augmentation.is_identity:
            trainer = keras.Sequential([keras.Input((*image_size, 3)), augmentation_layer(config.augmentation, config.seed),
                                        model], name="augmented_training")
        compile_model(trainer, config.model, devices.jit_setting(config.train))

    best_weights = models_dir / "best.weights.h5"
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(best_weights), monitor="val_accuracy", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.train.patience),
        keras.callbacks.BackupAndRestore(str(backup_dir)),
    ]
    return Training(model, trainer, train_set, val_set, placement, resume_epoch(backup_dir), best_weights, callbacks)


def fit(config: Config, training: Training, extra_callbacks: list = ()) -> dict[str, list[float]]:
    """Keras fit on the augmented train stream, validated on plain images; returns the history."""
    image_size, batch = tuple(config.data.image_size), config.train.batch_size
    train_ds = build_train_dataset(training.train_set, image_size, batch, config.augmentation, config.seed,
                                   start_epoch=training.start_epoch, augment_images=training.placement == "data",
                                   cache=config.data.cache)
    val_ds = build_eval_dataset(training.val_set, image_size, batch, cache=config.data.cache)
    history = training.trainer.fit(
        train_ds, validation_data=val_ds, epochs=config.train.epochs, initial_epoch=training.start_epoch,
        steps_per_epoch=steps_per_epoch(training.train_set, batch), callbacks=[*training.callbacks, *extra_callbacks],
        verbose=1 if sys.stdout.isatty() else 2).history
    if training.best_weights.exists():
        training.trainer.load_weights(str(training.best_weights))
    return history


def run(config: Config) -> float:
    strategy = devices.make_strategy(config.train)  # first: a multi-worker strategy must precede other TF work
    keras.utils.set_random_seed(config.seed)
    chief = devices.is_chief(strategy)
    uri = tracking.connect(config) if chief else None  # a dead server fails here, before any work
    models_dir, reports_dir = output_dirs(config, chief)
    models_dir.mkdir(parents=True, exist_ok=True)
    training = prepare_training(config, strategy, models_dir)
    if not chief:  # a helper in a cluster: same steps, nothing recorded
        history = fit(config, training)
        return best_of(history, training.start_epoch)[0]

    reports_dir.mkdir(parents=True, exist_ok=True)
    image_size = tuple(config.data.image_size)
    run_name = f"{config.augmentation.name}-{config.model.name}-seed{config.seed}"
    with tracking.tracked_run(run_name=run_name) as active:
        mlflow.log_params(tracking.flat_params(config))
        mlflow.log_params({"data.train_images": len(training.train_set), "data.val_images": len(training.val_set),
                           "data.classes": ",".join(training.train_set.classes),
                           "train.start_epoch": training.start_epoch})
        mlflow.set_tags({**tracking.run_tags(config, manifest_hash(config.paths.split_dir), devices.describe_device(),
                                             training.placement),
                         "replicas": str(devices.replica_count(strategy))})
        with tempfile.TemporaryDirectory() as scratch:
            config_file = Path(scratch) / "config.yaml"
            config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
            mlflow.log_artifact(str(config_file))
            mlflow.log_artifact(str(augmentation_grid(config, Path(scratch) / "augmentation_preview.png",
                                                      rows=5, variants=4)))

        history = fit(config, training, [tracking.EpochMetricsLogger(len(training.train_set))])

        model_path = models_dir / "model.keras"
        training.model.save(model_path)
        classes_path = models_dir / "classes.json"  # the model's output order, for predict
        classes_path.write_text(json.dumps(training.train_set.classes) + "\n")
        mlflow.log_artifact(str(write_history(history, reports_dir / "history.csv", training.start_epoch)))
        mlflow.log_artifact(str(training_curves(history, reports_dir / "training_curves.png", run_name)))
        best_val, best_epoch = best_of(history, training.start_epoch)
        mlflow.log_metrics({"best_val_accuracy": best_val, "best_epoch": best_epoch})
        if config.tracking.log_model:  # the saved file, reloaded off the strategy: no cluster needed
            tracking.log_keras_model(keras.models.load_model(model_path), image_size, classes_path)
        (reports_dir / "run.json").write_text(json.dumps(
            {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id, "tracking_uri": uri,
             "best_val_accuracy": best_val, "best_epoch": best_epoch}, indent=2) + "\n")
    print(f"best val_accuracy {best_val:.4f} at epoch {best_epoch}; model {model_path}; MLflow run {active.info.run_id}")
    return best_val


def best_of(history: dict[str, list[float]], start_epoch: int) -> tuple[float, int]:
    """(best val_accuracy, its 1-based epoch) of this fit; (0.0, 0) when nothing was validated."""
    accuracies = history.get("val_accuracy")
    if not accuracies:
        return 0.0, 0
    best = int(np.argmax(accuracies))
    return float(accuracies[best]), start_epoch + best + 1


def write_history(history: dict[str, list[float]], target: Path, start_epoch: int) -> Path:
    keys = sorted(history)
    with open(target, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["epoch", *keys])
        for i in range(len(history[keys[0]]) if keys else 0):
            writer.writerow([start_epoch + i + 1, *(f"{history[k][i]:.6f}" for k in keys)])
    return target


main = stage_entry(run)

if __name__ == "__main__":
    main()
