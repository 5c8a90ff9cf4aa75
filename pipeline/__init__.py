"""Experiment-tracked image-augmentation workflow: DVC stages, Hydra configs, Keras 3, MLflow."""

from pipeline.startup import quiet_tensorflow_start

quiet_tensorflow_start()
