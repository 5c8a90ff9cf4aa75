"""Command `predict`: the top-k classes of your own images, from a trained model.

    python -m pipeline.predict models/model.keras photo.jpg shirt.png
    python -m pipeline.predict models:/<model_id> photo.jpg --top-k 5 --json
    python -m pipeline.predict models:/clothing/1 photos/*.webp
    python -m pipeline.predict models/model.keras photos/          # every image below a folder

MODEL is a saved Keras file or an MLflow model URI (runs:/..., models:/..., or a logged
model folder; the tracking store is $MLFLOW_TRACKING_URI or the project's sqlite store).
Images are decoded and resized exactly as in training (any format the split stage
accepts; the model applies its own preprocessing), in batches of PREDICT_BATCH with a
progress bar when there are more. A named file that is not a usable image gets an error line
of its own; the others are still predicted. In a folder, files that are not images are
counted in one note. Exit code 1 if any named image failed, 2 if the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.console import progress_bar
from pipeline.data.images import inspect_image, is_ignored, load_image
from pipeline.errors import ModelError, UserError
from pipeline.model.model_file import check_model_file

PREDICT_BATCH = 64  # images decoded and predicted at a time: memory stays bounded on any folder


def load_model_and_classes(source: str, classes_file: Path | None = None):
    """(Keras model, class names in output order) from a .keras file or an MLflow model URI."""
    local = Path(source)
    if local.suffix == ".keras" or (local.exists() and local.is_file()):
        check_model_file(local)  # before TensorFlow loads: a missing or damaged file is said at once
        from pipeline.model.classifier import load_saved_model

        model, folder = load_saved_model(local), local.parent
    else:
        model, folder = _load_mlflow_model(source)
    classes_file = classes_file or folder / "classes.json"
    outputs = int(model.output_shape[-1])
    if classes_file.is_file():
        classes = json.loads(classes_file.read_text())
    else:
        print(f"note: {classes_file} not found; classes are shown by index (pass --classes FILE)", file=sys.stderr)
        classes = [f"class_{i}" for i in range(outputs)]
    if len(classes) != outputs:
        raise ModelError(f"{classes_file} names {len(classes)} classes but the model has {outputs} outputs.")
    return model, classes


def _load_mlflow_model(uri: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    import pipeline.backend  # noqa: F401 - TensorFlow starts quietly here, before MLflow's Keras flavour loads it
    from pipeline.config.compose import compose
    from pipeline.tracking.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(compose([]).tracking))
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        return mlflow.keras.load_model(str(folder)), folder
    except (MlflowException, OSError) as error:
        raise ModelError(
            f"cannot load the model {uri!r} ({getattr(error, 'message', error)}). Give a .keras file or "
            f"an MLflow model URI (models:/<model_id>, runs:/<run_id>/<run name>) from the store {mlflow.get_tracking_uri()}; "
            "set $MLFLOW_TRACKING_URI for another store."
        ) from None


def expand_folders(names: list[str]) -> tuple[list[str], list[str]]:
    """(named files, files found below named folders), in a stable order; hidden and system files left out."""
    named, found = [], []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found += [
                str(f)
                for f in sorted(path.rglob("*"))
                if f.is_file() and not any(is_ignored(part) for part in f.relative_to(path).parts)
            ]
        else:
            named.append(name)
    return named, found


def predict_files(model, classes: list[str], files: list[str], top_k: int) -> list[dict]:
    """One result per file: {"file", "top": [(class, probability), ...]} or {"file", "error"}.

    The model's frozen part runs in OpenVINO when this machine has it converted already (a model
    trained here on a frozen base has), else in TensorFlow."""
    from pipeline.config.schema import DEFAULT_CACHE_DIR, ModelConfig
    from pipeline.model.frozen_runtime import SplitClassifier

    defaults = ModelConfig()
    classifier = SplitClassifier(
        model, defaults.frozen_runtime, defaults.frozen_precision, DEFAULT_CACHE_DIR, convert=False
    )
    height, width = model.input_shape[1:3]
    results = [{"file": name} for name in files]
    with progress_bar(total=len(files), desc="predict", unit="files", disable=len(files) <= PREDICT_BATCH) as progress:
        for start in range(0, len(files), PREDICT_BATCH):
            batch, images = [], []
            for result in results[start : start + PREDICT_BATCH]:
                _, problem = inspect_image(Path(result["file"]))
                if problem:
                    result["error"] = problem
                else:
                    batch.append(result)
                    images.append(load_image(result["file"], (height, width)))
            if images:
                for result, row in zip(batch, classifier.probabilities([np.stack(images).astype(np.float32)])):
                    result["top"] = [(classes[i], float(row[i])) for i in np.argsort(row)[::-1][:top_k]]
            progress.update(min(PREDICT_BATCH, len(files) - start))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="models/model.keras or an MLflow model URI (models:/<model_id>)")
    parser.add_argument("images", nargs="+", help="image files, or folders (every image below them)")
    parser.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    parser.add_argument(
        "--classes", type=Path, help="JSON list of class names (default: classes.json beside the model)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")

    try:
        model, classes = load_model_and_classes(args.model, args.classes)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    named, found = expand_folders(args.images)
    results = predict_files(model, classes, named + found, min(args.top_k, len(classes)))
    not_images = [r for r in results[len(named) :] if "error" in r]
    results = results[: len(named)] + [r for r in results[len(named) :] if "error" not in r]
    if not_images:
        print(
            f"note: {len(not_images)} file(s) in the folder(s) are not usable images and were left out, e.g. "
            f"{not_images[0]['file']}: {not_images[0]['error']}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(results, indent=2))
    for result in results:
        if "error" in result:
            print(f"error: {result['file']}: {result['error']}", file=sys.stderr)
        elif not args.json:
            ranked = "  ".join(f"{name} {p:.1%}" for name, p in result["top"])
            print(f"{result['file']}: {ranked}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    from pipeline.config.cli import command

    command(lambda: sys.exit(main()))  # the exit code is main's
