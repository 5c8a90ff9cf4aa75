"""Stage `train`: fit a classifier on the train split, augmented or plain, tracked in MLflow.

    python -m pipeline.train model=small_cnn augmentation=lesson train.epochs=2
    python -m pipeline.train -m augmentation=none,lesson seed=1,2,3     # a sweep

Writes <paths.models_dir>/model.keras (the best epoch by val_accuracy),
<paths.reports_dir>/history.csv and run.json (the MLflow run, for `evaluate`).
In a Hydra multirun each job writes into its own job folder instead.
Returns the best val_accuracy (the objective of Optuna sweeps).
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import yaml

from pipeline import devices, tracking
from pipeline.augmentation import augmentation_layer
from pipeline.config import Config, stage_entry, to_dict
from pipeline.data import DataError, manifest_hash, read_classes, read_manifest
from pipeline.datasets import ImageSet, build_eval_dataset, build_train_dataset, steps_per_epoch
from pipeline.models import ModelError, build_model, compile_model
from pipeline.visuals import augmentation_grid, training_curves


def output_dirs(config: Config) -> tuple[Path, Path]:
    """(models dir, reports dir): the configured ones, or the job folder in a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        if hydra.mode.name == "MULTIRUN":
            job_dir = Path(hydra.runtime.output_dir)
            return job_dir / "models", job_dir / "reports"
    except (ImportError, ValueError):
        pass
    return Path(config.paths.models_dir), Path(config.paths.reports_dir)


def resume_epoch(backup_dir: Path) -> int:
    """Epochs already finished by an interrupted run (Keras BackupAndRestore's record)."""
    metadata = backup_dir / "training_metadata.json"
    return json.loads(metadata.read_text())["epoch"] if metadata.exists() else 0


def run(config: Config) -> float:
    keras.utils.set_random_seed(config.seed)
    uri = tracking.connect(config)  # a dead server fails here, before any work
    models_dir, reports_dir = output_dirs(config)
    models_dir.mkdir(parents=True, exist_ok=True)
    reports_dir.mkdir(parents=True, exist_ok=True)

    split_dir = config.paths.split_dir
    classes = read_classes(split_dir)
    train_set = ImageSet.from_manifest(*read_manifest(split_dir, "train"), classes)
    val_set = ImageSet.from_manifest(*read_manifest(split_dir, "val"), classes)
    image_size = tuple(config.data.image_size)
    batch = config.train.batch_size

    devices.configure_precision(config.train)
    placement = devices.augmentation_placement(config.augmentation)
    backup_dir = models_dir / "backup"
    start_epoch = resume_epoch(backup_dir) if config.train.resume else 0
    strategy = devices.make_strategy(config.train)
    with strategy.scope():
        model = build_model(config.model, len(classes), image_size)
        trainer = model
        if placement == "model" and not config.augmentation.is_identity:
            trainer = keras.Sequential([keras.Input((*image_size, 3)), augmentation_layer(config.augmentation, config.seed),
                                        model], name="augmented_training")
        compile_model(trainer, config.model, devices.jit_setting(config.train))

    train_ds = build_train_dataset(train_set, image_size, batch, config.augmentation, config.seed,
                                   start_epoch=start_epoch, augment_images=placement == "data",
                                   cache=config.data.cache)
    val_ds = build_eval_dataset(val_set, image_size, batch, cache=config.data.cache)
    best_weights = models_dir / "best.weights.h5"
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(best_weights), monitor="val_accuracy", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.train.patience),
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        tracking.EpochMetricsLogger(len(train_set)),
    ]
    if not config.train.resume:
        import shutil

        shutil.rmtree(backup_dir, ignore_errors=True)

    with tracking.tracked_run(run_name=f"{config.augmentation.name}-{config.model.name}-seed{config.seed}") as active:
        mlflow.log_params(tracking.flat_params(config))
        mlflow.log_params({"data.train_images": len(train_set), "data.val_images": len(val_set),
                           "data.classes": ",".join(classes), "train.start_epoch": start_epoch})
        mlflow.set_tags(tracking.run_tags(config, manifest_hash(split_dir), devices.describe_device(), placement))
        with tempfile.TemporaryDirectory() as scratch:
            config_file = Path(scratch) / "config.yaml"
            config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
            mlflow.log_artifact(str(config_file))
            grid = augmentation_grid(config, Path(scratch) / "augmentation_preview.png", rows=5, variants=4)
            mlflow.log_artifact(str(grid))

        history = trainer.fit(train_ds, validation_data=val_ds, epochs=config.train.epochs,
                              initial_epoch=start_epoch, steps_per_epoch=steps_per_epoch(train_set, batch),
                              callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2).history

        if best_weights.exists():
            trainer.load_weights(str(best_weights))
        model_path = models_dir / "model.keras"
        model.save(model_path)
        history_path = write_history(history, reports_dir / "history.csv", start_epoch)
        curves = training_curves(history, reports_dir / "training_curves.png",
                                 f"{config.augmentation.name} / {config.model.name} / seed {config.seed}")
        mlflow.log_artifact(str(history_path))
        mlflow.log_artifact(str(curves))
        best_val = float(max(history.get("val_accuracy", [0.0])))
        best_epoch = int(np.argmax(history["val_accuracy"])) + 1 + start_epoch if history.get("val_accuracy") else 0
        mlflow.log_metrics({"best_val_accuracy": best_val, "best_epoch": best_epoch})
        if config.tracking.log_model:
            tracking.log_keras_model(model, image_size)
        (reports_dir / "run.json").write_text(json.dumps(
            {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id, "tracking_uri": uri,
             "best_val_accuracy": best_val, "best_epoch": best_epoch}, indent=2) + "\n")
    print(f"best val_accuracy {best_val:.4f} at epoch {best_epoch}; model {model_path}; MLflow run {active.info.run_id}")
    return best_val


def write_history(history: dict[str, list[float]], target: Path, start_epoch: int) -> Path:
    keys = sorted(history)
    with open(target, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["epoch", *keys])
        for i in range(len(history[keys[0]]) if keys else 0):
            writer.writerow([start_epoch + i + 1, *(f"{history[k][i]:.6f}" for k in keys)])
    return target


def _run_or_explain(config: Config) -> float:
    try:
        return run(config)
    except (DataError, ModelError, tracking.TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except tracking.RunKilled:
        print("training stopped by SIGTERM; the MLflow run is marked KILLED", file=sys.stderr)
        sys.exit(143)


main = stage_entry(_run_or_explain)

if __name__ == "__main__":
    main()
