"""Where training runs: device description, distribution strategy, mixed precision."""

from __future__ import annotations

import json
import os

from pipeline.backend import keras, tf
from pipeline.config.augmentation import AugmentationConfig
from pipeline.config.schema import TrainConfig
from pipeline.errors import ConfigError


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
    if config.placement != "auto":
        return config.placement
    return "model" if gpus() else "data"


def make_strategy(train_config: TrainConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `train.strategy`.

    auto         MirroredStrategy when the machine has several GPUs, else the default strategy.
    none         the default strategy (one device).
    mirrored     one replica per GPU; without GPUs, one per logical CPU device.
    multi_worker MultiWorkerMirroredStrategy over the cluster in $TF_CONFIG. Create it
                 before any other TensorFlow work (TensorFlow's rule), as `train.run` does.
    """
    name = train_config.strategy
    if name == "auto":
        name = "mirrored" if len(gpus()) > 1 else "none"
    if name in ("mirrored", "multi_worker"):
        patch_keras_for_distribution()
    if name == "mirrored":
        replicas = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in replicas])
    if name == "multi_worker":
        cluster_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def cluster_config() -> dict:
    """$TF_CONFIG, checked: {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}."""
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ConfigError(
            f"train.strategy=multi_worker needs $TF_CONFIG describing the cluster, e.g. {example} "
            "(see README, 'Several machines')."
        )
    try:
        spec = json.loads(text)
        task, cluster = spec["task"], spec["cluster"]
        members = cluster[task["type"]]
        members[int(task["index"])]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ConfigError(
            f"$TF_CONFIG is not a valid cluster description ({type(error).__name__}: {error}); expected e.g. {example}"
        ) from None
    return spec


def task_name() -> str:
    """This process's task in a multi-worker cluster, e.g. `worker-0` (from $TF_CONFIG)."""
    task = cluster_config()["task"]
    return f"{task['type']}-{task['index']}"


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True when this process is one of several training one model together (TF_CONFIG)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that records to MLflow and writes the model (always, off a cluster)."""
    return bool(strategy.extended.should_checkpoint)


def replica_count(strategy: tf.distribute.Strategy) -> int:
    return int(strategy.num_replicas_in_sync)


# ---- Keras 3.15 + tf.distribute workarounds (github.com/tensorflow/tensorflow/issues/72388)


def _build_from_local_batch(self, iterator=None, data_batch=None):
    """TensorFlowTrainer._maybe_symbolic_build without its cross-replica reduce of the data.

    To build a model before fit/evaluate, Keras averages the first distributed batch over
    the replicas. That fails when the batch splits unevenly (AddN shape mismatch) and under
    MultiWorkerMirroredStrategy (a PerReplica cannot become a tensor). Building needs only
    shapes and dtypes, which the first local replica's batch has.
    """
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: (
                    self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                next(batches),
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_logs_per_replica(keras_reduce):
    """Keras's reduce_per_replica, but scalar logs of a multi-worker step reduce with axis=None.

    Keras reduces every log with `strategy.reduce("MEAN", v, axis=0)` on a cluster, which
    fails for the scalar loss and metrics ("Invalid reduction dimension 0 for input with 0
    dimensions").
    """

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values)
        return keras_reduce(values, strategy, reduction)

    reduce_per_replica.patched = True
    return reduce_per_replica


PATCHED_KERAS = "3.15."  # the Keras these workarounds replace private code of (pyproject.toml pins it)


def patch_keras_for_distribution() -> None:
    """Install both workarounds (for `mirrored` and `multi_worker`; no effect on one device). They
    replace private Keras code, so another Keras is refused rather than patched blindly."""
    if not keras.__version__.startswith(PATCHED_KERAS):
        raise ConfigError(
            f"train.strategy: the multi-device workarounds were written for Keras {PATCHED_KERAS}x and this is "
            f"Keras {keras.__version__}; install keras=={PATCHED_KERAS}* (pyproject.toml) or train on one device "
            "(train.strategy=none)"
        )
    from keras.src.backend.tensorflow import trainer

    trainer.TensorFlowTrainer._maybe_symbolic_build = _build_from_local_batch
    if not getattr(trainer.reduce_per_replica, "patched", False):
        trainer.reduce_per_replica = _reduce_logs_per_replica(trainer.reduce_per_replica)


def configure_precision(train_config: TrainConfig) -> str:
    policy = "mixed_float16" if train_config.mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def jit_setting(train_config: TrainConfig) -> bool:
    """Whether Keras compiles the train/predict steps with XLA. `auto`: on a GPU only.

    On a CPU, XLA makes depthwise convolutions many times slower (EfficientNet-Lite0's frozen
    base: 8 images/s compiled against 184 as a plain tf.function, 2 cores), and it did not
    speed up the residual CNN either; the augmentation warp keeps its own compiled function."""
    return bool(gpus()) if train_config.jit_compile == "auto" else bool(train_config.jit_compile)
