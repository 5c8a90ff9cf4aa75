"""Experiment-tracked image-augmentation workflow: DVC stages, Hydra configs, Keras 3, MLflow.

Importing the package loads nothing heavy: TensorFlow comes in through `pipeline.backend`, only
in the modules that compute."""
