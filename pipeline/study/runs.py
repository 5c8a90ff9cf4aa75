"""The FINISHED training runs a comparison reads from MLflow: params, metrics, the per-epoch curves
it draws and every test image's prediction (for per-class effects paired by image)."""

from __future__ import annotations

import os

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.errors import TrackingError
from pipeline.study.records import DATA_VERSION, PER_SEED_SPLIT, TRAIN_VAL, RunSummary
from pipeline.tracking.record import EPOCH_PREFIX, SPLIT_NAMES

DATA_VERSION_DIGITS = 12  # of the tag data_manifest_sha256, as the setting verdicts.DATA_VERSION


def training_runs(
    experiment: str,
    search_filter: str | None = None,
    run_ids: set[str] | None = None,
    curves: tuple[str, ...] = ("val_accuracy", "val_loss"),
):
    """The FINISHED training runs of `experiment` (with their per-epoch `curves`), only those in
    `run_ids` when given, and how many other runs (FAILED, KILLED, RUNNING) were left out.
    Comparison runs are not training runs."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    runs, token = [], None
    try:
        while True:
            page = client.search_runs(
                [found.experiment_id], filter_string=search_filter or "", max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    except MlflowException as error:
        raise TrackingError(
            f"compare.filter={search_filter!r} is not a valid MLflow search filter: {error.message}"
        ) from None
    training = [
        r
        for r in runs
        if "augmentation" in r.data.tags
        and r.data.tags.get("run_kind") != "comparison"
        and (run_ids is None or r.info.run_id in run_ids)
    ]
    finished = [r for r in training if r.info.status == "FINISHED"]
    summaries = []
    for r in finished:
        epochs = r.data.metrics.get("epochs_trained")
        histories = {name: epoch_curve(client, r.info.run_id, name, epochs) for name in curves}
        summaries.append(
            RunSummary(
                r.info.run_id,
                r.data.tags["augmentation"],
                r.data.tags.get("seed", "?"),
                {
                    PER_SEED_SPLIT: "False",  # runs from before the key: the split stage's train/val
                    **r.data.params,
                    DATA_VERSION: r.data.tags.get("data_manifest_sha256", "unknown")[:DATA_VERSION_DIGITS],
                    TRAIN_VAL: r.data.tags.get("train_val_sha256", "unknown")[:DATA_VERSION_DIGITS],
                    **({"evaluate.tta": r.data.tags["evaluate.tta"]} if "evaluate.tta" in r.data.tags else {}),
                },
                dict(r.data.metrics),
                histories,
                r.info.start_time or 0,
                augmented=r.data.tags.get("augmented", "true") == "true",
                test_predictions=logged_test_predictions(client, r.info.run_id),
                model_id=next((m.model_id for m in (r.outputs.model_outputs if r.outputs else [])), None),
            )
        )
    return summaries, len(training) - len(finished)


LEGACY_NAMES = {ours: keras for keras, ours in SPLIT_NAMES.items()}  # runs recorded before the `epoch/` history


def epoch_curve(client: mlflow.MlflowClient, run_id: str, name: str, epochs: float | None) -> list[float]:
    """A run's per-epoch values of `name`: steps 1..`epochs` of its plain-named history (the step after
    them repeats the kept epoch, `tracking.record`); an older run's `epoch/` history; or, older still,
    its Keras-named one."""
    if epochs is not None:
        history = [m for m in client.get_metric_history(run_id, name) if 1 <= m.step <= epochs]
    else:
        history = client.get_metric_history(run_id, EPOCH_PREFIX + name)
        if not history:
            history = [m for m in client.get_metric_history(run_id, LEGACY_NAMES.get(name, name)) if m.step > 0]
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def logged_test_predictions(client: mlflow.MlflowClient, run_id: str) -> dict[str, tuple[str, str]]:
    """{image sha256: (actual class, predicted class)} of a run's test split, as evaluate logged them
    (`PREDICTIONS_FILE`); empty for a run evaluated before they were logged, or not at all."""
    import csv
    import tempfile

    from pipeline.evaluate import PREDICTIONS_FILE

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per run would bury the report
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, PREDICTIONS_FILE, folder)
        except (MlflowException, OSError):
            return {}
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    if not rows or "sha256" not in rows[0]:
        return {}
    return {row["sha256"]: (row["actual"], row["predicted"]) for row in rows}
