"""Stage `evaluate`: the trained model on the test split (never augmented).

    python -m pipeline.evaluate

Writes <paths.reports_dir>/metrics.json (the headline, named as in MLflow: test_accuracy,
test_balanced_accuracy, test_macro_f1, test_loss, and tta_test_* with evaluate.tta; DVC metrics), per_class.json (each class's precision, recall and F1, and its val recall) and
confusion.csv (actual,predicted,sha256 per test image, also logged: compare pairs by image), and logs test_* metrics (accuracy, balanced accuracy, macro F1, loss,
and each class's recall as test_recall.<class>) and a confusion-matrix PNG to the training's
MLflow run, without reopening it. The same model's per-class recall on the validation split
(the best epoch's weights) goes in as val_recall.<class> and under "val_per_class_recall".
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from pipeline.config.cli import stage_entry
from pipeline.config.schema import Config
from pipeline.data.manifests import ImageSet, Split
from pipeline.files import write_atomically
from pipeline.tta import averaged_probabilities

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
    from pipeline.data.cache import disk_cache
    from pipeline.model.classifier import frozen_backbone, load_saved_model
    from pipeline.model.frozen_runtime import SplitClassifier
    from pipeline.tracking import record
    from pipeline.visuals import confusion_matrix_figure

    reports = Path(config.paths.reports_dir)
    split = split or Split.read(config.paths.split_dir)
    cache = disk_cache(config.paths.cache_dir, config.data.cache)
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
    probabilities = predict_split(classifier, test_set, image_size, config.train.batch_size, cache)
    actual = np.asarray(test_set.labels)
    predicted = probabilities.argmax(axis=1)
    report = classification_metrics(actual, predicted, classes)
    test_record = headline_metrics(actual, probabilities, classes, "test_")  # what the run records
    tta = config.evaluate.tta_record()
    if tta:  # the same images, each averaged with its views (pipeline/tta.py)
        pixels = test_set.decoded(image_size, cache)
        averaged = averaged_probabilities(classifier, pixels, config.evaluate, config.train.batch_size)
        test_record |= headline_metrics(actual, averaged, classes, "tta_test_")
    # metrics.json: the headline, named as in MLflow; test_accuracy first: the first metric column of `dvc exp show`
    metrics = {k: v for k, v in test_record.items() if "recall." not in k} | {"test_images": len(actual)}
    val_predicted = predict_split(classifier, split.val, image_size, config.train.batch_size, cache).argmax(1)
    val = classification_metrics(np.asarray(split.val.labels), val_predicted, classes)["per_class"]
    per_class = {"test": report["per_class"], "val_recall": {k: c["recall"] for k, c in val.items() if c["support"]}}
    val_record = {f"val_recall.{name}": recall for name, recall in per_class["val_recall"].items()}

    run_record = json.loads((reports / "run.json").read_text()) if (reports / "run.json").exists() else None
    recorded = record.require_same_evaluation(run_record, test_record, tta) if run_record else False
    reports.mkdir(parents=True, exist_ok=True)
    write_atomically(reports / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_atomically(reports / "per_class.json", json.dumps(per_class, indent=2) + "\n")
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["actual", "predicted", "sha256"])  # sha256: the image, for comparisons paired by image
    writer.writerows(
        (classes[a], classes[p], h) for a, p, h in zip(actual, predicted, test_set.sha256 or test_set.paths)
    )
    write_atomically(reports / PREDICTIONS_FILE, rows.getvalue())
    title = f"{run_record['run_name']}, test split" if run_record and "run_name" in run_record else "test split"
    figure = confusion_matrix_figure(actual, predicted, classes, reports / "confusion.png", title)
    if run_record is None:
        print(f"note: {reports / 'run.json'} is missing, so the test metrics are not logged to MLflow")
    elif recorded:
        print(f"MLflow run {run_record['run_id']} records these test results already")
    else:
        files = [figure, reports / PREDICTIONS_FILE]
        record.log_evaluation(run_record, test_record, val_record, split, files, {"evaluate.tta": tta} if tta else {})
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}, balanced accuracy {metrics['test_balanced_accuracy']:.4f}, "
        f"macro F1 {metrics['test_macro_f1']:.4f}, loss {metrics['test_loss']:.4f} "
        f"on {len(actual)} images -> {reports / 'metrics.json'}"
    )
    if tta:
        print(
            f"with test-time augmentation ({tta}): accuracy {metrics['tta_test_accuracy']:.4f} "
            f"({metrics['tta_test_accuracy'] - metrics['test_accuracy']:+.4f}), balanced accuracy "
            f"{metrics['tta_test_balanced_accuracy']:.4f}, macro F1 {metrics['tta_test_macro_f1']:.4f}"
        )
    return {**metrics, "per_class": per_class}


def headline_metrics(actual: np.ndarray, probabilities: np.ndarray, classes: list[str], prefix: str) -> dict:
    """Accuracy, balanced accuracy, macro F1, the cross-entropy loss and each present class's recall, named
    `<prefix>accuracy` ... `<prefix>recall.<class>`."""
    from pipeline.backend import keras

    one_hot = keras.ops.one_hot(actual, len(classes))
    loss = float(keras.losses.CategoricalCrossentropy()(one_hot, probabilities))
    report = classification_metrics(actual, probabilities.argmax(axis=1), classes)
    return {
        f"{prefix}accuracy": report["accuracy"],
        f"{prefix}balanced_accuracy": report["balanced_accuracy"],
        f"{prefix}macro_f1": report["macro_f1"],
        f"{prefix}loss": round(loss, 6),
        **{f"{prefix}recall.{name}": c["recall"] for name, c in report["per_class"].items() if c["support"]},
    }


def predict_split(classifier, images: ImageSet, image_size: tuple[int, int], batch: int, cache) -> np.ndarray:
    """The classifier's probabilities for every image of a split, decoded as in training (kept in
    `paths.cache_dir`, each file checked against its manifest sha256 whatever the cache holds)."""
    pixels = images.decoded(image_size, cache)
    return classifier.probabilities(pixels[i : i + batch].astype(np.float32) for i in range(0, len(pixels), batch))


main = stage_entry(
    run,
    reads=(
        "evaluate",
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
