"""Where training runs: device description, distribution strategy, mixed precision."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from pipeline.config import AugmentationConfig, TrainConfig


def gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def describe_device() -> str:
    """'NVIDIA H100 80GB HBM3 x1' or 'CPU (N cores)'."""
    found = gpus()
    if found:
        details = tf.config.experimental.get_device_details(found[0])
        return f"{details.get('device_name', 'GPU')} x{len(found)}"
    return f"CPU ({os.cpu_count()} cores)"


def augmentation_placement(config: AugmentationConfig) -> str:
    """'data' (tf.data on the CPU) or 'model' (inside the train step, on the GPU)."""
    if config.device != "auto":
        return config.device
    return "model" if gpus() else "data"


def make_strategy(train: TrainConfig) -> tf.distribute.Strategy:
    """`auto`: MirroredStrategy over several GPUs, else the default strategy;
    `multi_worker` reads the cluster from $TF_CONFIG."""
    name = train.strategy
    if name == "auto":
        name = "mirrored" if len(gpus()) > 1 else "none"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("train.strategy=multi_worker needs $TF_CONFIG describing the cluster (see README).")
        json.loads(os.environ["TF_CONFIG"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def configure_precision(train: TrainConfig) -> str:
    policy = "mixed_float16" if train.mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def jit_setting(train: TrainConfig):
    return "auto" if train.jit_compile == "auto" else bool(train.jit_compile)

