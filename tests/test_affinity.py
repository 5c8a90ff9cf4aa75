"""Affinity from the baseline's own logged models: a model that tells classes apart by which
half of the image is bright keeps its accuracy under a vertical flip (affinity exactly 1) and
loses about half of it under a horizontal flip; `compare` reports both beside the verdicts."""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.config.compose import compose, to_dict
from pipeline.study import compare
from pipeline.tracking import logged_model

SIZE = 8


def write_val_split(split_dir: Path, per_class: int = 30) -> None:
    """A split whose val images are left (the left half bright) and right (the right half), noise on top."""
    rng = np.random.default_rng(0)
    rows = []
    for label in ("left", "right"):
        for i in range(per_class):
            pixels = rng.integers(0, 40, size=(SIZE, SIZE, 3))
            half = slice(0, SIZE // 2) if label == "left" else slice(SIZE // 2, SIZE)
            pixels[:, half] += 180
            path = split_dir / "images" / f"{label}-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            rows.append((str(path), label, hashlib.sha256(path.read_bytes()).hexdigest()))
    for name, listed in (("train", []), ("val", rows), ("test", [])):  # affinity reads the val split alone
        with open(split_dir / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("path", "label", "sha256"), *listed])
    (split_dir / "classes.json").write_text(json.dumps(["left", "right"]))


def half_model() -> keras.Model:
    """Dense weights +1 on the left half's pixels and -1 on the right's: class left when the left is brighter."""
    model = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")]
    )
    sign = np.where(np.arange(SIZE)[None, :, None] < SIZE // 2, 1.0, -1.0) * np.ones((SIZE, SIZE, 3))
    kernel = np.stack([sign.ravel(), -sign.ravel()], axis=1) / 100.0
    model.layers[-1].set_weights([kernel.astype(np.float32), np.zeros(2, np.float32)])
    return model


def log_runs(uri: str, tmp_path: Path) -> None:
    """none (with models), flips and flips without each of its two operations, 3 seeds each."""
    presets = {"none": [], "flips": ["augmentation.horizontal_flip=true", "augmentation.vertical_flip=true"]}
    classes = tmp_path / "classes.json"
    classes.write_text('["left", "right"]')
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("augmentation")
    half_model().save(tmp_path / "half.keras")
    accuracy = {"none": 0.80, "flips": 0.82, "flips-no-vertical_flip": 0.81, "flips-no-horizontal_flip": 0.79}
    for name, ablate in (("none", None), ("flips", None), ("flips", "vertical_flip"), ("flips", "horizontal_flip")):
        overrides = [f"augmentation.name={name}", *presets[name]] + (
            [f"augmentation.ablate={ablate}"] if ablate else []
        )
        config = compose(overrides)
        label = config.augmentation.name
        for seed in ("1", "2", "3"):
            with mlflow.start_run(tags={"augmentation": label, "seed": seed}):
                mlflow.log_params({"seed": seed, "augmentation.ablate": ablate or "None"})
                with tempfile.TemporaryDirectory() as scratch:
                    (Path(scratch) / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
                    mlflow.log_artifact(str(Path(scratch) / "config.yaml"))
                mlflow.log_metric("test_accuracy", accuracy[label] + 0.01 * int(seed) ** 2 / 4)
                mlflow.log_metric("best_val_accuracy", accuracy[label])
                for step, loss in enumerate((0.9, 0.5 + 0.1 * (label != "none")), start=1):
                    mlflow.log_metric("loss", loss, step=step)
                if label == "none":
                    logged_model.log_keras_model(tmp_path / "half.keras", (SIZE, SIZE), classes, 1, "half", {}, {})


@pytest.mark.slow
def test_affinity_of_each_operation_from_the_baselines_models(tmp_path, store_uri):
    uri = store_uri
    write_val_split(tmp_path / "split")
    log_runs(uri, tmp_path)
    report = compare.run(
        compose([f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/reports", f"paths.split_dir={tmp_path}/split"])
    )
    differences = {d["group"]: d for d in report["differences"]}  # every preset, ablated ones too, against none
    flips = differences["flips"]
    assert differences["flips-no-horizontal_flip"]["affinity"] == 1.0  # the preset left with a vertical flip
    ablations = {d["group"]: d for d in report["ablations"]}
    assert ablations["vertical_flip"]["affinity"] == 1.0  # the halves stay where they were
    for d in (ablations["horizontal_flip"], flips):  # about half of the images swap halves
        assert 0.25 < d["affinity"] < 0.75
    assert flips["diversity"] == pytest.approx(0.6 / 0.5)  # final training loss with / without
    markdown = (tmp_path / "reports" / "comparison.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| vertical_flip |"))
    assert "| 1.00 |" in row
    assert (tmp_path / "reports" / "affinity_diversity.png").stat().st_size > 10_000
    # the baseline runs' models are read, never changed; no run gains a metric
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("augmentation")
    for run in client.search_runs([experiment.experiment_id], "tags.augmentation = 'none'"):
        assert set(run.data.metrics) == {"test_accuracy", "best_val_accuracy", "loss"}
