"""Why does an augmentation help? Its affinity, measured with the baseline's own models.

Gontijo-Lopes et al. 2020 ("Affinity and diversity: quantifying mechanisms of data
augmentation") found that an augmentation's gain is predicted by two cheap numbers:

- affinity: the accuracy of a model trained on clean data, on validation images augmented by
  the operation, divided by its accuracy on the clean images. Near 1: the augmented images
  still look like the data; low: the operation moves them off the data's distribution.
- diversity: how much harder the augmentation makes the training data (final training loss
  with it over without it); `verdicts.diversity` reads it from the recorded histories.

Affinity needs no training: the baseline group's logged models (`models:/<id>`) are
loaded and run on the validation split, clean and augmented. An operation is measured alone
(`AugmentationConfig.only`) at its preset's magnitudes, a preset whole; the draws are seeded,
so a report is reproducible. MixUp and CutMix mix labels too and have no affinity here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import yaml

from pipeline.augmentation import BatchAugmenter
from pipeline.backend import tf
from pipeline.config.augmentation import AugmentationConfig, read_ablation_label
from pipeline.config.compose import validate
from pipeline.config.schema import ModelConfig
from pipeline.console import progress_bar
from pipeline.data.cache import DiskCache
from pipeline.data.manifests import Split
from pipeline.model.frozen_runtime import SplitClassifier
from pipeline.study.grouping import baseline_for
from pipeline.study.records import Difference, Group

LABEL_MIXING = ("mixup", "cutmix")
AFFINITY_SEED = 0  # augmentation draws [AFFINITY_SEED, batch index]


def accuracy(
    classifier: SplitClassifier,
    pixels: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    augmentation: AugmentationConfig | None = None,
) -> float:
    """The classifier's accuracy on the decoded `pixels` (uint8 [n, h, w, 3]), augmented by
    `augmentation` (draws [AFFINITY_SEED, batch index]) when given."""
    augmenter = BatchAugmenter(augmentation, pixels.shape[1:3]) if augmentation is not None else None

    def batches():
        for index, start in enumerate(range(0, len(pixels), batch_size)):
            batch = pixels[start : start + batch_size]
            if augmenter is None:
                yield batch.astype(np.float32)
            else:
                yield augmenter(tf.constant(batch), tf.constant([AFFINITY_SEED, index], tf.int64)).numpy()

    predicted = classifier.probabilities(batches()).argmax(axis=1)
    return float(np.mean(predicted == labels))


def logged_augmentation(group: Group, notes: list[str]) -> AugmentationConfig | None:
    """The augmentation a group's runs used, from the first run's logged config.yaml (the
    ablation applied); None, with a note, when the run has none."""
    run_id = group.runs[0].run_id
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=scratch)
        except Exception as error:  # MLflow raises several kinds for a missing artifact
            notes.append(
                f"no affinity for {group.label}: its run {run_id} has no logged config.yaml "
                f"({str(error).splitlines()[0][:120]})"
            )
            return None
        return validate(yaml.safe_load(Path(path).read_text())).augmentation


def measure_affinities(
    groups: list[Group],
    differences: list[Difference],
    ablations: list[Difference],
    baseline_preset: str,
    split_dir: str,
    batch_size: int,
    model_settings: ModelConfig,
    cache_dir: str,
    cache: DiskCache | None,
) -> list[str]:
    """Fill `affinity` of every difference (a preset whole) and ablation (its operation alone)
    from the baseline group's models (on the validation split at `split_dir`, which must exist); returns
    notes on what could not be measured."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar here, not one per download
    images = Split.read(split_dir).val
    notes: list[str] = []
    wanted: list[tuple[Difference, Group, AugmentationConfig]] = []
    for d in differences:
        group = next((g for g in groups if g.label == d.group), None)
        baseline = baseline_for(group, groups, baseline_preset) if group else None
        augmentation = logged_augmentation(group, notes) if baseline else None
        if augmentation:
            wanted.append((d, baseline, augmentation))
    for d in ablations:
        ablated = next((g for g in groups if g.label == d.baseline), None)
        baseline = baseline_for(ablated, groups, baseline_preset) if ablated else None
        if baseline and d.group not in LABEL_MIXING:
            full_name = read_ablation_label(ablated.preset)[0]
            full = next(g for g in groups if g.preset == full_name and g.settings == ablated.settings)
            augmentation = logged_augmentation(full, notes)
            if augmentation:
                wanted.append((d, baseline, augmentation.only(d.group)))
    if not wanted:
        return notes
    clean: dict[str, float] = {}  # run id -> clean val accuracy
    under: dict[tuple[str, str], float] = {}
    model_ids = {r.run_id: r.model_id for _, baseline, _ in wanted for r in baseline.runs}
    augmentations = {a.name: a for *_, a in wanted}.values()  # each measured once per model
    decoded: dict[tuple[int, int], np.ndarray] = {}  # image size -> val images, decoded once
    labels = np.asarray(images.labels)
    progress = progress_bar(total=len(model_ids) * (1 + len(augmentations)), desc="affinity", unit="pass")
    for run_id in sorted(model_ids):
        try:
            model = mlflow.keras.load_model(f"models:/{model_ids[run_id]}")
        except Exception as error:  # a run without a logged model (tracking.log_model=false), or a damaged one
            notes.append(f"no affinity from run {run_id}: its model cannot be loaded ({str(error).splitlines()[0]})")
            continue
        image_size = tuple(model.input_shape[1:3])
        if image_size not in decoded:
            decoded[image_size] = images.decoded(image_size, cache)
        # converted only when cached: the baselines' frozen base was, by their training on this machine
        classifier = SplitClassifier(
            model, model_settings.frozen_runtime, model_settings.frozen_precision, cache_dir, convert=False
        )
        clean[run_id] = accuracy(classifier, decoded[image_size], labels, batch_size)
        progress.update()
        for augmentation in augmentations:
            under[run_id, augmentation.name] = accuracy(
                classifier, decoded[image_size], labels, batch_size, augmentation
            )
            progress.update()
    progress.close()
    for d, baseline, augmentation in wanted:
        ratios = [
            under[r.run_id, augmentation.name] / clean[r.run_id]
            for r in baseline.runs
            if r.run_id in clean and clean[r.run_id] > 0
        ]
        d.affinity = float(np.mean(ratios)) if ratios else None
    return notes
