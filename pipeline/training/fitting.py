"""Fitting one model, for the `train` stage (pipeline/train.py tells its story): the model and its
datasets built under the distribution strategy (`FitSetup`), the frozen part run ahead in the
fastest runtime, Keras' fit resumed from a checkpoint, and the model saved.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.augmentation import augmentation_layer
from pipeline.backend import keras
from pipeline.config.schema import Config, TrainConfig
from pipeline.data.cache import DiskCache, disk_cache
from pipeline.data.manifests import ImageSet, Split
from pipeline.errors import ConfigError
from pipeline.files import atomic_target
from pipeline.model.classifier import build_model, compile_model, fine_tune_split, frozen_backbone
from pipeline.model.frozen_runtime import FrozenNetwork, frozen_network
from pipeline.training import devices
from pipeline.training.checkpoints import EpochCheckpoints, SavedState, StopOnSignal, WorkFolder
from pipeline.training.epoch_lines import ProgressLines
from pipeline.training.frozen_features import AugmentedViews, plain_features
from pipeline.training.pipelines import (
    build_eval_dataset,
    build_feature_eval_dataset,
    build_feature_train_dataset,
    build_train_dataset,
    steps_per_epoch,
)


@dataclass
class FitSetup:
    """Everything `fit` needs, built under the distribution strategy."""

    model: keras.Model  # what is saved: raw pixels in, class probabilities out
    trainer: keras.Model  # what is fitted: `model`, behind the Augment layer when placement is 'model'
    train_set: ImageSet
    val_set: ImageSet
    image_size: tuple[int, int]
    placement: str
    replicas: int  # of the distribution strategy
    cache: DiskCache | None
    network: FrozenNetwork | None = None  # the frozen part, when the trainable part trains on its outputs
    node: str | None = None  # this process's task in a multi-worker cluster (worker-0), else None
    device: str = ""
    _pixels: dict[str, np.ndarray] = field(default_factory=dict)

    def pixels(self, name: str) -> np.ndarray:
        """The decoded images of "train" or "val" (`ImageSet.decoded`), read when first needed: a plain
        run whose frozen features are kept reads no pixels at all."""
        if name not in self._pixels:
            self._pixels[name] = getattr(self, f"{name}_set").decoded(self.image_size, self.cache)
        return self._pixels[name]

    def facts(self) -> dict:
        """What the run's record adds from this setup: params, tags and the cluster node."""
        return {
            "params": {
                "data.train_images": len(self.train_set),
                "data.val_images": len(self.val_set),
                "data.classes": ",".join(self.train_set.classes),
                "model.frozen_runtime_used": self.network.description if self.network else "none",
            },
            "tags": {"augmentation_placement": self.placement, "replicas": str(self.replicas), "device": self.device},
            "node": self.node,
        }


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


def prepare_fit(config: Config, strategy, split: Split) -> FitSetup:
    """The model and its trainer, compiled under `strategy`, and the frozen part in its runtime. Every
    train and val image is checked against the manifest first, whatever the cache holds."""
    image_size = tuple(config.data.image_size)
    cache = disk_cache(config.paths.cache_dir, config.data.cache)
    split.require_unchanged(cache)
    devices.configure_precision(config.train)
    placement = devices.augmentation_placement(config.augmentation)
    with strategy.scope():
        model = build_model(config.model, len(split.classes), image_size)
        parts = split_for_runtime(config, model, placement)
        trainer = parts[1] if parts else model
        if placement == "model" and not config.augmentation.is_identity:
            trainer = keras.Sequential(
                [keras.Input((*image_size, 3)), augmentation_layer(config.augmentation, config.seed), model],
                name="augmented_training",
            )
        steps = steps_per_epoch(split.train, config.train.batch_size)
        compile_model(trainer, config.model, config.train, steps, devices.jit_setting(config.train))
    network = None
    if parts:
        network = frozen_network(
            parts[0], config.model.frozen_runtime, config.model.frozen_precision, config.paths.cache_dir
        )
    return FitSetup(
        model,
        trainer,
        split.train,
        split.val,
        image_size,
        placement,
        devices.replica_count(strategy),
        cache,
        network,
        devices.task_name() if devices.is_multi_worker(strategy) else None,
        devices.describe_device(),
    )


def feature_datasets(config: Config, setup: FitSetup, start_epoch: int):
    """(train, val) datasets of the frozen part's outputs for the trainable part: plain ones from the
    cache, augmented views computed as the epochs need them and reused (`frozen_features`): the
    frozen part is deterministic, so a view's outputs are the same whether the part above it is a
    head or a fine-tuned top."""
    batch = config.train.batch_size
    cache, network = setup.cache, setup.network
    fine_tuned = config.model.fine_tune_from is not None
    views = config.train.augment_views
    part = "frozen bottom" if fine_tuned else "frozen base"
    if config.augmentation.is_identity:
        how = "its outputs for each image are computed once" + (" (kept in paths.cache_dir)" if cache else "")
    elif views:
        how = (
            f"each image's augmented {part} outputs are computed for {views} views (epochs 1-{views}) and reused by later "
            "epochs (train.augment_views; 0: a fresh view every epoch)"
        )
    else:
        how = f"each epoch's augmented images go through the {part} afresh"
    print(
        f"{part}{f' (below {config.model.fine_tune_from})' if fine_tuned else ''} in {network.description}: "
        f"{'the top and the head train' if fine_tuned else 'only the head trains'}; {how}"
    )
    size = setup.image_size
    val_features = plain_features(network, setup.val_set, size, lambda: setup.pixels("val"), batch, cache, "val")
    val_ds = build_feature_eval_dataset(val_features, setup.val_set, batch)
    if config.augmentation.is_identity:
        train_features = plain_features(
            network, setup.train_set, size, lambda: setup.pixels("train"), batch, cache, "train"
        )
        return build_feature_train_dataset(train_features, setup.train_set, batch, config.seed, start_epoch), val_ds
    stream = AugmentedViews(
        network, setup.train_set, setup.pixels("train"), config.augmentation, batch, config.seed, views
    )
    return stream.dataset(start_epoch), val_ds


def fit(config: Config, setup: FitSetup, callbacks: list = (), start_epoch: int = 0) -> None:
    """Keras fit on the augmented train stream from `start_epoch`, validated on plain images."""
    image_size, batch = tuple(config.data.image_size), config.train.batch_size
    if setup.network is not None:
        train_ds, val_ds = feature_datasets(config, setup, start_epoch)
    else:
        train_ds = build_train_dataset(
            setup.train_set,
            image_size,
            batch,
            config.augmentation,
            config.seed,
            start_epoch=start_epoch,
            augment_images=setup.placement == "data",
            pixels=setup.pixels("train"),
        )
        val_ds = build_eval_dataset(setup.val_set, image_size, batch, pixels=setup.pixels("val"))
    steps = steps_per_epoch(setup.train_set, batch)
    watched = sys.stdout.isatty()  # a terminal gets Keras' progress bar; a log gets a line every 30 s
    setup.trainer.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.train.epochs,
        initial_epoch=start_epoch,
        steps_per_epoch=steps,
        shuffle=False,  # the datasets shuffle themselves, seeded; Keras cannot shuffle a tf.data pipeline
        callbacks=[*callbacks, StopOnSignal(), *([] if watched else [ProgressLines(steps, batch)])],
        verbose=1 if watched else 2,
    )


def fit_from_state(config: Config, setup: FitSetup, work: WorkFolder, state: SavedState, on_commit=None) -> None:
    """Fit from where `state` stopped (checkpoint every epoch; `on_commit(epoch, metrics)` after
    each), then load the best epoch's weights."""
    checkpoints = EpochCheckpoints(work, state, config.train.patience, len(setup.train_set), on_commit)
    if not state.patience_exhausted(config.train.patience):
        fit(config, setup, [checkpoints], start_epoch=state.epochs_done)
    if state.best_weights:
        work.load_weights(setup.trainer, state.best_weights)


def save_model(setup: FitSetup, models_dir: Path) -> tuple[Path, Path]:
    """model.keras (the best epoch's weights, the whole model: raw pixels in) and classes.json (its
    outputs' order, for predict), written atomically; returns their paths."""
    import json

    from pipeline.files import write_atomically

    models_dir.mkdir(parents=True, exist_ok=True)
    model_path, classes_path = models_dir / "model.keras", models_dir / "classes.json"
    with atomic_target(model_path) as scratch:
        setup.model.save(scratch)
    write_atomically(classes_path, json.dumps(setup.train_set.classes) + "\n")
    return model_path, classes_path


def refuse_a_changed_schedule(work: WorkFolder, train_config: TrainConfig) -> None:
    """A resume may change train.epochs, but not under warmup_cosine, whose decay is laid out
    over train.epochs: the resumed run would follow neither schedule."""
    started = (work.started_as or {}).get("train.epochs")
    if "train.epochs" in work.resumed_with() and train_config.lr_schedule == "warmup_cosine":
        raise ConfigError(
            f"train.resume=true with train.epochs={train_config.epochs}, but the interrupted training "
            f"started with train.epochs={started} under train.lr_schedule=warmup_cosine, whose cosine "
            f"decay spans train.epochs: resume with train.epochs={started}, or start afresh without "
            "train.resume (its checkpoints stay until then)."
        )
