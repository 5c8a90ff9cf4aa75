"""The record of one training, for the `train` stage: the MLflow run (params, tags, datasets,
per-epoch metrics, pictures, the model), the stage's files (model.keras, classes.json,
history.csv, run.json) and where they go; a sweep job trained before is named, not redone.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import mlflow
import yaml

from pipeline import devices, logged_model, outages, tracking
from pipeline.backend import keras
from pipeline.checkpoints import SavedState, WorkFolder, write_atomically
from pipeline.cli import in_multirun
from pipeline.config import Config, PathsConfig, to_dict
from pipeline.datasets import Split
from pipeline.fitting import FitSetup, fit_from_state
from pipeline.images import check_unchanged
from pipeline.run_identity import digest_of
from pipeline.stopping import raise_if_stopped
from pipeline.visuals import augmentation_grid, training_curves


def output_dirs(paths: PathsConfig, chief: bool = True) -> tuple[Path, Path, Path]:
    """(models dir, reports dir, work root): the configured ones, or the job folder in a multirun.

    The work root holds the per-configuration checkpoint folders (`WorkFolder`); it stays
    `paths.models_dir` in a multirun, so that a sweep run again finds its interrupted jobs.
    The non-chief processes of a multi-worker cluster write their checkpoints into
    `<models>/workers/<type>-<index>` so that no two processes write the same file.
    """
    work_root = models_dir = Path(paths.models_dir)
    reports_dir = Path(paths.reports_dir)
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        job_dir = Path(HydraConfig.get().runtime.output_dir)
        models_dir, reports_dir = job_dir / "models", job_dir / "reports"
    if not chief:
        work_root = models_dir = work_root / "workers" / devices.task_name()
    return models_dir, reports_dir, work_root


def with_split_source(config: Config, split: Split) -> Config:
    """The config with `data.source` set to what the split was made from: a run records the
    data it trains on, whatever `data.source` says on this command line."""
    source = split.source
    if source is None or source == config.data.source:
        return config
    print(
        f"note: {config.paths.split_dir} was split from {source}; this run records that as data.source "
        f"(not {config.data.source})"
    )
    return replace(config, data=replace(config.data, source=source))


def require_unchanged_images(split: Split) -> None:
    """The train and val images still have the bytes the split recorded (`images.check_unchanged`)."""
    for images in (split.train, split.val):
        if images.sha256 is not None:
            check_unchanged(images.paths, images.sha256)


def saved_model_folder(finished: mlflow.entities.Run, models_dir: Path) -> Path | None:
    """The folder of the finished run's model.keras while the file is still the one it saved: its tag
    `model_file` (or this job folder, for runs from before the tag), written between the run's start
    and end. None: gone, or replaced since."""
    model_file = Path(finished.data.tags.get("model_file") or models_dir / "model.keras")
    info = finished.info
    try:
        saved_ms = model_file.stat().st_mtime * 1000
    except OSError:
        return None
    return model_file.parent if info.start_time <= saved_ms <= (info.end_time or 0) + 1000 else None


def skip_finished(finished: mlflow.entities.Run, reports_dir: Path, uri: str) -> float:
    """A sweep job whose configuration was trained already: name that run, return its objective.
    Its run.json points at the earlier run, so the end-of-sweep comparison includes it."""
    best_val = finished.data.metrics.get("best_val_accuracy", 0.0)
    print(
        f"skip: this configuration already has the FINISHED MLflow run {finished.info.run_id} "
        f"({finished.info.run_name}, best val_accuracy {best_val:.4f}); train.rerun=true trains it again"
    )
    write_run_record(
        reports_dir, finished.info, uri, None, best_val, finished.data.metrics.get("best_epoch"), skipped=True
    )
    return best_val


def record_training(
    config: Config,
    setup: FitSetup,
    work: WorkFolder,
    state: SavedState,
    uri: str,
    models_dir: Path,
    reports_dir: Path,
    split: Split,
) -> float:
    """Train as one MLflow run (the interrupted run itself when resuming); write the stage's outputs."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    run_name = f"{config.augmentation.label}-seed{config.seed}-{config.model.name}"  # cut from the end in the UI
    interval = config.tracking.system_metrics_interval_s if config.tracking.system_metrics else None
    with tracking.tracked_run(
        run_name, state.mlflow_run_id, system_metrics_interval_s=interval, node=setup.node
    ) as active:
        if active.info.run_id == state.mlflow_run_id:
            tracking.record_resume(state.epochs_done, state.history)
            # params are immutable: what the resume changed (train.epochs, train.patience) is a tag, and the
            # run now stands for the configuration it finishes as (a constant schedule: the same training)
            for key, value in work.resumed_with().items():
                mlflow.set_tag(f"resumed_with.{key}", value)
            mlflow.set_tag("config_hash", digest_of(work.identity))
        else:
            state.mlflow_run_id = active.info.run_id
            mlflow.log_params(tracking.flat_params(config))
            mlflow.log_params(
                {
                    "data.train_images": len(setup.train_set),
                    "data.val_images": len(setup.val_set),
                    "data.classes": ",".join(setup.train_set.classes),
                    "train.start_epoch": state.epochs_done,
                    "model.frozen_runtime_used": setup.network.description if setup.network else "none",
                }
            )
            mlflow.set_tags(
                {
                    **tracking.run_tags(config, split.version, devices.describe_device(), setup.placement),
                    "replicas": str(setup.replicas),
                    "config_hash": digest_of(work.identity),
                }
            )  # same hash = same trained model
            tracking.log_data_inputs(split)
            with tempfile.TemporaryDirectory() as scratch:
                config_file = Path(scratch) / "config.yaml"
                config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
                mlflow.log_artifact(str(config_file))
                if not config.augmentation.is_identity:  # a plain run's "augmented" images are its originals
                    preview = augmentation_grid(
                        config, setup.train_set, Path(scratch) / "augmentation_preview.png", rows=5, variants=4
                    )
                    mlflow.log_artifact(str(preview))

        patience_s = config.tracking.server_patience_s
        epoch_log = outages.EpochLog(
            active.info.run_id, uri, patience_s, outages.unended_runs_dir(config.paths.cache_dir)
        )
        fit_from_state(
            config,
            setup,
            work,
            state,
            on_commit=lambda epoch, metrics: epoch_log(epoch, tracking.epoch_history(metrics)),
        )
        epoch_log.finish()  # a server that went away must be back for the run's last records
        raise_if_stopped()

        models_dir.mkdir(parents=True, exist_ok=True)
        model_path = models_dir / "model.keras"
        scratch_model = models_dir / f".tmp-{os.getpid()}-model.keras"  # Keras wants the .keras suffix
        try:
            setup.model.save(scratch_model)
            os.replace(scratch_model, model_path)
        finally:
            scratch_model.unlink(missing_ok=True)  # gone after the rename; left by a failure, removed
        mlflow.set_tag("model_file", str(model_path.resolve()))  # a resumed sweep can evaluate it (train.py)
        classes_path = models_dir / "classes.json"  # the model's output order, for predict
        write_atomically(classes_path, json.dumps(setup.train_set.classes) + "\n")
        mlflow.log_artifact(str(write_history(state.history, reports_dir / "history.csv")))
        curves = {
            k: [row[k] for row in state.history]
            for k in ("accuracy", "val_accuracy", "loss", "val_loss")
            if all(k in row for row in state.history)
        }
        mlflow.log_artifact(str(training_curves(curves, reports_dir / "training_curves.png", run_name)))
        best_val, best_epoch = state.best_val_accuracy or 0.0, state.best_epoch
        mlflow.log_metrics({"best_val_accuracy": best_val, "best_epoch": best_epoch})
        tracking.log_kept_epoch(state.history, best_epoch)
        model_id = None
        raise_if_stopped()
        if config.tracking.log_model:  # the saved file, reloaded off the strategy: no cluster needed
            model_id = logged_model.log_keras_model(
                keras.models.load_model(model_path),
                tuple(config.data.image_size),
                classes_path,
                best_epoch,
                describe={
                    "augmentation": config.augmentation.label,
                    "model": config.model.name,
                    "seed": str(config.seed),
                },
                params=tracking.flat_params(config),
            )
        write_run_record(reports_dir, active.info, uri, model_id, best_val, best_epoch)
    print(
        f"best val_accuracy {best_val:.4f} at epoch {best_epoch}; model {model_path}; MLflow run {active.info.run_id}"
        + (f", model models:/{model_id}" if model_id else "")
    )
    print(tracking.ui_hint(uri, active.info.experiment_id))
    return best_val


def write_run_record(
    reports_dir: Path,
    run: mlflow.entities.RunInfo,
    uri: str,
    model_id: str | None,
    best_val: float,
    best_epoch: float | None,
    **extra,
) -> None:
    """run.json: the MLflow run behind this stage's outputs, for `evaluate` and the end-of-sweep comparison."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(
        reports_dir / "run.json",
        json.dumps(
            {
                "run_id": run.run_id,
                "experiment_id": run.experiment_id,
                "tracking_uri": uri,
                "model_id": model_id,
                "best_val_accuracy": best_val,
                "best_epoch": best_epoch,
                **extra,
            },
            indent=2,
        )
        + "\n",
    )


def write_history(history: list[dict[str, float]], target: Path) -> Path:
    """history.csv: one row per epoch (1-based), one column per metric, each named for its split as
    DVC's and MLflow's test_accuracy is (train_accuracy, val_accuracy, ...; Keras logs `accuracy`)."""
    keys = sorted({k for row in history for k in row})
    rows = [",".join(["epoch", *(tracking.SPLIT_NAMES.get(k, k) for k in keys)])]
    rows += [
        ",".join([str(epoch), *(f"{row[k]:.6f}" if k in row else "" for k in keys)])
        for epoch, row in enumerate(history, start=1)
    ]
    write_atomically(target, "\n".join(rows) + "\n")
    return target
