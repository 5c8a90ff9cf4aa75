"""The mechanics of one training, for the `train` stage (pipeline/train.py tells its story):
the model and datasets built under the distribution strategy, Keras' fit from a checkpoint,
and the MLflow record of it all (params, tags, datasets, per-epoch metrics, the model).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import yaml

from pipeline import devices, logged_model, outages, tracking
from pipeline.array_cache import array_cache
from pipeline.augmentation import augmentation_layer
from pipeline.backend import keras
from pipeline.checkpoints import EpochCheckpoints, SavedState, StopOnSignal, WorkFolder, write_atomically
from pipeline.cli import in_multirun
from pipeline.config import Config, to_dict
from pipeline.datasets import (
    ImageSet,
    Split,
    build_eval_dataset,
    build_feature_eval_dataset,
    build_feature_train_dataset,
    build_train_dataset,
    decoded_images,
    steps_per_epoch,
)
from pipeline.errors import ConfigError, DataError
from pipeline.frozen_features import AugmentedViews, plain_features
from pipeline.frozen_runtime import FrozenNetwork, frozen_network
from pipeline.images import check_unchanged
from pipeline.models import build_model, compile_model, fine_tune_split, frozen_backbone
from pipeline.progress import ProgressLines
from pipeline.run_identity import digest_of
from pipeline.stopping import raise_if_stopped
from pipeline.visuals import augmentation_grid, training_curves


def output_dirs(config: Config, chief: bool = True) -> tuple[Path, Path, Path]:
    """(models dir, reports dir, work root): the configured ones, or the job folder in a multirun.

    The work root holds the per-configuration checkpoint folders (`WorkFolder`); it stays
    `paths.models_dir` in a multirun, so that a sweep run again finds its interrupted jobs.
    The non-chief processes of a multi-worker cluster write their checkpoints into
    `<models>/workers/<type>-<index>` so that no two processes write the same file.
    """
    work_root = models_dir = Path(config.paths.models_dir)
    reports_dir = Path(config.paths.reports_dir)
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        job_dir = Path(HydraConfig.get().runtime.output_dir)
        models_dir, reports_dir = job_dir / "models", job_dir / "reports"
    if not chief:
        work_root = models_dir = work_root / "workers" / devices.task_name()
    return models_dir, reports_dir, work_root


@dataclass
class Training:
    """Everything `fit` needs, built under the distribution strategy."""

    model: keras.Model  # what is saved: raw pixels in, class probabilities out
    trainer: keras.Model  # what is fitted: `model`, behind the Augment layer when placement is 'model'
    train_set: ImageSet
    val_set: ImageSet
    placement: str
    replicas: int  # of the distribution strategy
    pixels: dict[str, np.ndarray]  # "train", "val": decoded (`decoded_images`), each file checked as read
    network: FrozenNetwork | None = None  # the frozen part, when the trainable part trains on its outputs
    node: str | None = None  # this process's task in a multi-worker cluster (worker-0), else None


def split_for_runtime(config: Config, model: keras.Model, placement: str) -> tuple[keras.Model, keras.Model] | None:
    """(frozen part, trainable part) of `model` when the frozen part can run ahead of training in
    the frozen runtime, on plain images or on images augmented in tf.data (`augmentation.placement=
    data`, the CPU's default; on a GPU the augmentation runs inside the whole model's compiled step):

    * a frozen base: its `features` (base and pooling) and the `head`;
    * a base fine-tuned from `model.fine_tune_from` on: the frozen bottom and the top with the head
      (`models.fine_tune_split`).
    None: the whole model trains in Keras (`train.cache_features=false`, a base trained whole, a
    model from scratch)."""
    if not config.train.cache_features or not (config.augmentation.is_identity or placement == "data"):
        return None
    if frozen_backbone(config.model):
        return model.get_layer("features"), model.get_layer("head")
    if config.model.fine_tune_from is not None:
        parts = fine_tune_split(model, config.model)
        if parts is None:
            print(
                f"note: model.fine_tune_from={config.model.fine_tune_from} starts inside a block (more than one "
                "tensor crosses into the unfrozen layers), so the whole model trains in Keras; name a block "
                "(e.g. block12) to run the frozen bottom ahead of training"
            )
        return parts
    return None


def prepare_training(config: Config, strategy, split: Split) -> Training:
    classes, train_set, val_set = split.classes, split.train, split.val
    image_size = tuple(config.data.image_size)

    # every image read (and checked against the manifest) now, before any record of the run exists
    cache = array_cache(config.paths.cache_dir, config.data.cache)
    pixels = {
        name: decoded_images(images, image_size, cache) for name, images in (("train", train_set), ("val", val_set))
    }

    devices.configure_precision(config.train)
    placement = devices.augmentation_placement(config.augmentation)
    with strategy.scope():
        model = build_model(config.model, len(classes), image_size)
        parts = split_for_runtime(config, model, placement)
        trainer = parts[1] if parts else model
        if placement == "model" and not config.augmentation.is_identity:
            trainer = keras.Sequential(
                [keras.Input((*image_size, 3)), augmentation_layer(config.augmentation, config.seed), model],
                name="augmented_training",
            )
        compile_model(
            trainer,
            config.model,
            config.train,
            steps_per_epoch(train_set, config.train.batch_size),
            devices.jit_setting(config.train),
        )
    network = None
    if parts:
        network = frozen_network(
            parts[0], config.model.frozen_runtime, config.model.frozen_precision, config.paths.cache_dir
        )
    return Training(
        model,
        trainer,
        train_set,
        val_set,
        placement,
        devices.replica_count(strategy),
        pixels,
        network,
        devices.task_name() if devices.is_multi_worker(strategy) else None,
    )


def feature_datasets(config: Config, training: Training, start_epoch: int):
    """(train, val) datasets of the frozen part's outputs for the trainable part: plain ones from the
    cache, augmented views computed as the epochs need them (`frozen_features`). Views are reused
    only below a frozen base: a fine-tuned top sees a fresh view every epoch."""
    batch = config.train.batch_size
    cache, network = array_cache(config.paths.cache_dir, config.data.cache), training.network
    fine_tuned = config.model.fine_tune_from is not None
    views = 0 if fine_tuned else config.train.augment_views
    part = "frozen bottom" if fine_tuned else "frozen base"
    if config.augmentation.is_identity:
        how = "its outputs for each image are computed once" + (" (kept in paths.cache_dir)" if cache else "")
    elif views:
        how = (
            f"each image's augmented features are computed for {views} views (epochs 1-{views}) and reused by later "
            "epochs (train.augment_views; 0: a fresh view every epoch)"
        )
    else:
        how = f"each epoch's augmented images go through the {part} afresh"
    print(
        f"{part}{f' (below {config.model.fine_tune_from})' if fine_tuned else ''} in {network.description}: "
        f"{'the top and the head train' if fine_tuned else 'only the head trains'}; {how}"
    )
    val_features = plain_features(network, training.val_set, training.pixels["val"], batch, cache, "val")
    val_ds = build_feature_eval_dataset(val_features, training.val_set, batch)
    if config.augmentation.is_identity:
        train_features = plain_features(network, training.train_set, training.pixels["train"], batch, cache, "train")
        return build_feature_train_dataset(train_features, training.train_set, batch, config.seed, start_epoch), val_ds
    stream = AugmentedViews(
        network, training.train_set, training.pixels["train"], config.augmentation, batch, config.seed, views
    )
    return stream.dataset(start_epoch), val_ds


def fit(config: Config, training: Training, callbacks: list = (), start_epoch: int = 0) -> None:
    """Keras fit on the augmented train stream from `start_epoch`, validated on plain images."""
    image_size, batch = tuple(config.data.image_size), config.train.batch_size
    if training.network is not None:
        train_ds, val_ds = feature_datasets(config, training, start_epoch)
    else:
        train_ds = build_train_dataset(
            training.train_set,
            image_size,
            batch,
            config.augmentation,
            config.seed,
            start_epoch=start_epoch,
            augment_images=training.placement == "data",
            pixels=training.pixels["train"],
        )
        val_ds = build_eval_dataset(training.val_set, image_size, batch, pixels=training.pixels["val"])
    steps = steps_per_epoch(training.train_set, batch)
    watched = sys.stdout.isatty()  # a terminal gets Keras' progress bar; a log gets a line every 30 s
    training.trainer.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.train.epochs,
        initial_epoch=start_epoch,
        steps_per_epoch=steps,
        shuffle=False,  # the datasets shuffle themselves, seeded; Keras cannot shuffle a tf.data pipeline
        callbacks=[*callbacks, StopOnSignal(), *([] if watched else [ProgressLines(steps, batch)])],
        verbose=1 if watched else 2,
    )


def train_from_state(config: Config, training: Training, work: WorkFolder, state: SavedState, on_commit=None) -> None:
    """Fit from where `state` stopped (checkpoint every epoch), then load the best epoch's weights."""
    checkpoints = EpochCheckpoints(work, state, config.train.patience, len(training.train_set), on_commit)
    if not state.patience_exhausted(config.train.patience):
        fit(config, training, [checkpoints], start_epoch=state.epochs_done)
    if state.best_weights:
        work.load_weights(training.trainer, state.best_weights)


def refuse_a_changed_schedule(work: WorkFolder, config: Config) -> None:
    """A resume may change train.epochs, but not under warmup_cosine, whose decay is laid out
    over train.epochs: the resumed run would follow neither schedule."""
    started = (work.started_as or {}).get("train.epochs")
    if "train.epochs" in work.resumed_with() and config.train.lr_schedule == "warmup_cosine":
        raise ConfigError(
            f"train.resume=true with train.epochs={config.train.epochs}, but the interrupted training "
            f"started with train.epochs={started} under train.lr_schedule=warmup_cosine, whose cosine "
            f"decay spans train.epochs: resume with train.epochs={started}, or start afresh without "
            "train.resume (its checkpoints stay until then)."
        )


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


def require_images(split: Split) -> None:
    """Training needs train images, and validation images to choose its best epoch and to stop early."""
    for name, images in (("train", split.train), ("val", split.val)):
        if not len(images):
            raise DataError(
                f"{split.folder}/{name}.csv lists no images: training needs a {name} split to "
                + ("learn from" if name == "train" else "pick its best epoch and stop early")
                + ". Give it a share in data.split.fractions (e.g. [0.8,0.1,0.1]), or a "
                + "validation/ folder in a pre-split dataset, and run the split stage again."
            )


def require_unchanged_images(split: Split) -> None:
    """The train and val images still have the bytes the split recorded (`images.check_unchanged`)."""
    for images in (split.train, split.val):
        if images.sha256 is not None:
            check_unchanged(images.paths, images.sha256)


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
    training: Training,
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
        run_name, state.mlflow_run_id, system_metrics_interval_s=interval, node=training.node
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
                    "data.train_images": len(training.train_set),
                    "data.val_images": len(training.val_set),
                    "data.classes": ",".join(training.train_set.classes),
                    "train.start_epoch": state.epochs_done,
                    "model.frozen_runtime_used": training.network.description if training.network else "none",
                }
            )
            mlflow.set_tags(
                {
                    **tracking.run_tags(config, split.version, devices.describe_device(), training.placement),
                    "replicas": str(training.replicas),
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
                        config, training.train_set, Path(scratch) / "augmentation_preview.png", rows=5, variants=4
                    )
                    mlflow.log_artifact(str(preview))

        patience_s = config.tracking.server_patience_s
        epoch_log = outages.EpochLog(
            active.info.run_id, uri, patience_s, outages.unended_runs_dir(config.paths.cache_dir)
        )
        train_from_state(
            config,
            training,
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
            training.model.save(scratch_model)
            os.replace(scratch_model, model_path)
        finally:
            scratch_model.unlink(missing_ok=True)  # gone after the rename; left by a failure, removed
        classes_path = models_dir / "classes.json"  # the model's output order, for predict
        write_atomically(classes_path, json.dumps(training.train_set.classes) + "\n")
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
