"""Experiment-tracked image-augmentation workflow (DVC + Hydra + Keras 3 + MLflow)."""

import os

# Quieter TensorFlow start-up; the user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
