"""Stage `evaluate`: the trained model on the test split (never augmented).

    python -m pipeline.evaluate

Writes <paths.reports_dir>/metrics.json (the headline, named as in MLflow: test_accuracy,
test_balanced_accuracy, test_macro_f1, test_loss; DVC metrics), per_class.json (each class's precision, recall and F1, and its val recall) and
confusion.csv (actual,predicted,sha256 per test image, also logged: compare pairs by image), and logs test_* metrics (accuracy, balanced accuracy, macro F1, loss,
and each class's recall as test_recall.<class>) and a confusion-matrix PNG to the training's
MLflow run, without reopening it. The same model's per-class recall on the validation split
(the best epoch's weights) goes in as val_recall.<class> and under "val_per_class_recall".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.cli import stage_entry
from pipeline.config import Config

if TYPE_CHECKING:  # types only: the datasets module loads TensorFlow, which `--help` must not wait for
    from pipeline.datasets import ImageSet, Split

PREDICTIONS_FILE = "confusion.csv"  # actual,predicted,sha256 per test image; logged to the run for `compare`


def classification_metrics(actual: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy (the mean of the per-class recalls: a class never predicted
    weighs as much as any other, whatever its size), macro F1 and per-class precision/recall."""
    per_class, f1s = {}, []
    for i, name in enumerate(classes):
        tp = int(np.sum((predicted == i) & (actual == i)))
        precision = tp / max(int(np.sum(predicted == i)), 1)
        recall = tp / max(int(np.sum(actual == i)), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": round(precision, 6),
            "recall": round(recall, 6),
            "f1": round(f1, 6),
            "support": int(np.sum(actual == i)),
        }
        f1s.append(f1)
    present = [c["recall"] for c in per_class.values() if c["support"]]
    return {
        "accuracy": round(float(np.mean(actual == predicted)), 6),
        "balanced_accuracy": round(float(np.mean(present)), 6) if present else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 6),
        "per_class": per_class,
    }


def run(config: Config, split: Split | None = None) -> dict:
    """Evaluate the model in paths.models_dir on the test split (`split`: as the caller read it)."""
    # TensorFlow and MLflow load here, not at import: `--help` and a wrong key answer at once
    from pipeline.backend import keras
    from pipeline.datasets import Split
    from pipeline.frozen_runtime import SplitClassifier
    from pipeline.models import frozen_backbone, load_saved_model
    from pipeline.visuals import confusion_matrix_figure

    reports = Path(config.paths.reports_dir)
    split = split or Split.read(config.paths.split_dir)
    classes, test_set = split.classes, split.test
    model = load_saved_model(Path(config.paths.models_dir) / "model.keras")
    image_size = tuple(model.input_shape[1:3])  # the size it was trained at, whatever data.image_size says now
    if image_size != tuple(config.data.image_size):
        print(
            f"note: the model takes {image_size[0]}x{image_size[1]} images (data.image_size is "
            f"{config.data.image_size[0]}x{config.data.image_size[1]}): evaluating at the model's size"
        )
    classifier = SplitClassifier(
        model,
        config.model.frozen_runtime,
        config.model.frozen_precision,
        config.paths.cache_dir,
        convert=frozen_backbone(config.model),
    )
    probabilities = predict_split(classifier, test_set, image_size, config)
    actual = np.asarray(test_set.labels)
    predicted = probabilities.argmax(axis=1)
    loss = float(keras.losses.CategoricalCrossentropy()(keras.ops.one_hot(actual, len(classes)), probabilities))
    report = classification_metrics(actual, predicted, classes)
    metrics = {  # named as in MLflow; test_accuracy first: the first metric column of `dvc exp show`
        "test_accuracy": report["accuracy"],
        "test_balanced_accuracy": report["balanced_accuracy"],
        "test_macro_f1": report["macro_f1"],
        "test_loss": round(loss, 6),
        "test_images": len(actual),
    }
    per_class = {"test": report["per_class"], "val_recall": val_recall(classifier, config, split.val, image_size)}

    reports.mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (reports / "per_class.json").write_text(json.dumps(per_class, indent=2) + "\n")
    with open(reports / PREDICTIONS_FILE, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["actual", "predicted", "sha256"])  # sha256: the image, for comparisons paired by image
        images = test_set.sha256 or test_set.paths
        writer.writerows((classes[a], classes[p], image) for a, p, image in zip(actual, predicted, images))
    figure = confusion_matrix_figure(actual, predicted, classes, reports / "confusion.png")
    _log_to_training_run(config, reports, metrics, per_class, figure)
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}, balanced accuracy {metrics['test_balanced_accuracy']:.4f}, "
        f"macro F1 {metrics['test_macro_f1']:.4f}, loss {loss:.4f} "
        f"on {len(actual)} images -> {reports / 'metrics.json'}"
    )
    return {**metrics, "per_class": per_class}


def predict_split(classifier, images, image_size: tuple[int, int], config: Config) -> np.ndarray:
    """The classifier's probabilities for every image of a split, decoded as in training (kept in
    `paths.cache_dir`, each file checked against its manifest sha256)."""
    from pipeline.array_cache import array_cache
    from pipeline.datasets import decoded_images

    pixels = decoded_images(images, image_size, array_cache(config.paths.cache_dir, config.data.cache))
    batch = config.train.batch_size
    return classifier.probabilities(pixels[i : i + batch].astype(np.float32) for i in range(0, len(pixels), batch))


def val_recall(classifier, config: Config, val_set: ImageSet, image_size: tuple[int, int]) -> dict:
    """Each class's recall on the validation split: where the best epoch's accuracy came from."""
    classes = val_set.classes
    predicted = predict_split(classifier, val_set, image_size, config).argmax(1)
    per_class = classification_metrics(np.asarray(val_set.labels), predicted, classes)["per_class"]
    return {name: c["recall"] for name, c in per_class.items() if c["support"]}


def _log_to_training_run(config: Config, reports: Path, metrics: dict, per_class: dict, figure: Path) -> None:
    import mlflow

    run_file = reports / "run.json"
    if not run_file.exists():
        print(f"note: {run_file} is missing, so the test metrics are not logged to MLflow")
        return
    run = json.loads(run_file.read_text())
    mlflow.set_tracking_uri(run["tracking_uri"])
    # Logged into the finished run without reopening it: its status and end time stay the training's.
    run_id, client = run["run_id"], mlflow.MlflowClient()
    # measured on the test dataset, by the run's LoggedModel: the model's page shows them
    test_dataset = next(
        (
            d
            for d in client.get_run(run_id).inputs.dataset_inputs
            if any(t.key == "mlflow.data.context" and t.value == "testing" for t in d.tags)
        ),
        None,
    )
    recalls = {f"test_recall.{name}": c["recall"] for name, c in per_class["test"].items() if c["support"]}
    recalls |= {f"val_recall.{name}": recall for name, recall in per_class["val_recall"].items()}
    mlflow.log_metrics(
        {**{k: v for k, v in metrics.items() if k != "test_images"}, **recalls},
        run_id=run_id,
        model_id=run.get("model_id"),
        dataset=test_dataset.dataset if test_dataset else None,
    )
    # the run's description, at the top of its page in the MLflow UI: the headline at a glance
    client.set_tag(
        run_id,
        "mlflow.note.content",
        f"**test accuracy {metrics['test_accuracy']:.4f}** (balanced {metrics['test_balanced_accuracy']:.4f}, "
        f"macro F1 {metrics['test_macro_f1']:.4f}) on {metrics['test_images']} test images",
    )
    client.log_artifact(run_id, str(figure))
    client.log_artifact(run_id, str(reports / PREDICTIONS_FILE))  # per image: compare pairs classes by image
    client.log_dict(run_id, {**metrics, "per_class": per_class}, "classification_report.json")


main = stage_entry(
    run,
    reads=(
        "data.image_size",
        "data.cache",
        "model.frozen_runtime",
        "model.frozen_precision",
        "train.batch_size",
        "tracking",
        "paths",
    ),
)

if __name__ == "__main__":
    main()
