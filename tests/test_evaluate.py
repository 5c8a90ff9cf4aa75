"""The evaluate stage on a saved model: what it reads, what it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import evaluate
from pipeline.config import compose
from pipeline.data import read_classes
from pipeline.models import build_model


def test_evaluate_uses_the_size_the_model_was_trained_at(split_done, capsys):
    tmp_path = split_done
    overrides = [f"paths.split_dir={tmp_path}/split", f"paths.reports_dir={tmp_path}/reports",
                 f"paths.models_dir={tmp_path}/models"]
    trained_at = compose(["model=residual_cnn", "data.image_size=[32,32]", *overrides])
    model = build_model(trained_at.model, len(read_classes(tmp_path / "split")), (32, 32))
    (tmp_path / "models").mkdir()
    model.save(tmp_path / "models" / "model.keras")

    metrics = evaluate.run(compose(overrides))  # data.image_size left at its default, 150x150
    assert "the model takes 32x32 images (data.image_size is 150x150)" in capsys.readouterr().out
    assert metrics["test_images"] == 3 and 0 <= metrics["accuracy"] <= 1
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text())["test_images"] == 3


def test_balanced_accuracy_sees_a_class_that_is_never_predicted():
    actual = np.array([0] * 98 + [1] * 2)
    predicted = np.zeros(100, dtype=int)  # the majority class, always
    metrics = evaluate.classification_metrics(actual, predicted, ["common", "rare"])
    assert metrics["accuracy"] == 0.98
    assert metrics["balanced_accuracy"] == 0.5  # recalls 1.0 and 0.0
    assert metrics["macro_f1"] == pytest.approx((2 * 0.98 / 1.98 + 0) / 2, abs=1e-6)
    assert metrics["per_class"]["rare"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
