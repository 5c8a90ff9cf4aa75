"""What a training run records in MLflow, and the stage's files that point at it.

In MLflow's own terms: the configuration as params; tags that say what the run is (preset, seed,
model, data version, versions, git commit, sweep); the train/val/test manifests as its input
datasets; every epoch's metrics under their plain names, as MLflow's Keras autolog logs them
(`train_accuracy`, `val_accuracy`, `val_loss`, `learning_rate`'s log10, `epoch_seconds`, ...), then
the kept (best) epoch's accuracy and loss once more as the last step, so that the runs table shows
the model that was kept and the charts the whole curve; `best_epoch`, `best_val_accuracy` and
`epochs_trained` as summaries; the model as a LoggedModel (`logged_model.py`); pictures and files.
Beside the run: `run.json` (the run behind the stage's outputs) and `history.csv`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import platform
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
import yaml

from pipeline.config import PROJECT_ROOT
from pipeline.config.cli import in_multirun
from pipeline.config.compose import flatten, to_dict
from pipeline.config.schema import Config
from pipeline.data.manifests import Split
from pipeline.errors import DataError
from pipeline.files import write_atomically
from pipeline.tracking import logged_model, outages
from pipeline.tracking.identity import digest_of
from pipeline.tracking.runs import tracked_run, unended_runs_dir
from pipeline.tracking.store import experiment_link, ui_lines

SPLIT_NAMES = {"accuracy": "train_accuracy", "loss": "train_loss"}  # Keras' names for the training split's
KEPT = ("train_accuracy", "train_loss", "val_accuracy", "val_loss")  # logged again for the kept epoch
NOTE = "mlflow.note.content"  # a run's or a logged model's description: the top of its page in the UI
EPOCH_PREFIX = "epoch/"  # runs recorded from 2026-11 to 2026-12 kept their per-epoch history here (study.runs reads it)


def flat_params(config: Config) -> dict[str, str]:
    """The whole training config as dotted keys (`compare.*`, `search.*` and `evaluate.*`, settings of later stages,
    left out: the evaluation records its own)."""
    return flatten({k: v for k, v in to_dict(config).items() if k not in ("compare", "search", "evaluate")})


def git_state() -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(git("status", "--porcelain"))).lower()}


def sweep_tags() -> dict[str, str]:
    """Hydra's sweep folder and job number, when this run is part of a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
    except (ImportError, ValueError):
        return {}
    if hydra.mode.name != "MULTIRUN":
        return {}
    tags = {
        "sweep_id": str(hydra.sweep.dir),
        "sweep_job": str(hydra.job.num),
        "hydra_overrides": " ".join(hydra.overrides.task),
    }
    study = hydra.sweeper.get("study_name")
    if study:  # an Optuna search: group its trials under the study
        tags["optuna_study"] = str(study)
    return tags


def run_tags(config: Config, split: Split) -> dict[str, str]:
    """What a training run is, as tags: what the UI's columns and `compare` read."""
    return {
        "augmentation": config.augmentation.label,
        "augmented": str(not config.augmentation.is_identity).lower(),
        "model": config.model.name,
        "seed": str(config.seed),
        "data_manifest_sha256": split.version,
        "train_val_sha256": split.train_val_digest(),  # one per seed with data.split.train_val_per_seed
        "tensorflow_version": importlib.metadata.version("tensorflow"),
        "keras_version": importlib.metadata.version("keras"),
        "python_version": platform.python_version(),
        **git_state(),
        **sweep_tags(),
    }


def named_for_the_record(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch's Keras metrics under the names of the record: `accuracy` -> `train_accuracy`, and the
    learning rate as its log10 (MLflow's charts round 0.0001 to 0, not -4; history.csv keeps the rate)."""
    named = {SPLIT_NAMES.get(k, k): v for k, v in metrics.items() if k != "learning_rate"}
    if metrics.get("learning_rate", 0) > 0:
        named["log10_learning_rate"] = math.log10(metrics["learning_rate"])
    return named


def log_data_inputs(split: Split) -> None:
    """The run's train, validation and test manifests as MLflow datasets (the UI's Datasets
    column), named after the folder the images come from (e.g. clothing-small-train), each with
    its manifest file's sha256 as digest (MLflow's own digest reads only the first 10,000 rows)."""
    for name, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        mlflow.log_input(split_dataset(split, name), context=context)


def split_dataset(split: Split, name: str):
    """One split's manifest as an MLflow dataset (`log_data_inputs`)."""
    import pandas as pd

    images = getattr(split, name)
    frame = pd.DataFrame(
        {"path": images.paths, "label": [images.classes[i] for i in images.labels], "sha256": images.sha256}
    )
    root = split.image_root()
    with warnings.catch_warnings():  # a local folder "can be interpreted in multiple ways": it is a folder
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(
            frame,
            source=root,
            targets="label",
            name=f"{Path(root).name or 'data'}-{name}",
            digest=split.digests[name][:16],
        )


class TrainingRecord:
    """The open MLflow run of one training (`training_run`): each committed epoch's metrics
    (`log_epoch`, through `outages.EpochLog`), then the finished training's record (`finish`)."""

    def __init__(self, config: Config, run: mlflow.ActiveRun, uri: str, state):
        self.config, self.run, self.uri, self.state = config, run, uri, state
        self.epochs = outages.EpochLog(run.info.run_id, uri, config.tracking.server_patience_s)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs(epoch, named_for_the_record(metrics))

    def finish(self, model_path: Path, classes_path: Path, reports_dir: Path, curves_figure: Path) -> str | None:
        """The finished training: history, curves, summaries, the kept epoch as the last step, the
        logged model and run.json. Returns the LoggedModel's id (None with tracking.log_model=false)."""
        self.epochs.finish()  # a server that went away must be back for the run's last records
        state, config = self.state, self.config
        mlflow.set_tag("model_file", str(model_path.resolve()))  # a resumed sweep can evaluate it (train.py)
        mlflow.log_artifact(str(write_history(state.history, reports_dir / "history.csv")))
        mlflow.log_artifact(str(curves_figure))
        best_epoch = state.best_epoch
        kept = named_for_the_record(state.history[best_epoch - 1])
        mlflow.log_metrics({k: v for k, v in kept.items() if k in KEPT}, step=state.epochs_done + 1)
        mlflow.log_metrics(
            {
                "best_val_accuracy": state.best_val_accuracy or 0.0,
                "best_epoch": best_epoch,
                "epochs_trained": state.epochs_done,
            }
        )
        model_id = None
        if config.tracking.log_model:
            describe = {
                "augmentation": config.augmentation.label,
                "model": config.model.name,
                "seed": str(config.seed),
                NOTE: f"{config.augmentation.label}, seed {config.seed}, {config.model.name}: the weights of epoch "
                f"{best_epoch} of {state.epochs_done} (its val accuracy {state.best_val_accuracy:.2%})",
            }
            model_id = logged_model.log_keras_model(
                model_path,
                tuple(config.data.image_size),
                classes_path,
                best_epoch,
                self.run.info.run_name,
                describe,
                flat_params(config),
            )
        best_val = state.best_val_accuracy or 0.0
        write_run_record(
            reports_dir, self.run.info, self.uri, model_id, best_val, best_epoch, model_dir=str(model_path.parent)
        )
        return model_id


@contextlib.contextmanager
def training_run(config: Config, split: Split, work, state, uri: str, facts: dict) -> Iterator[TrainingRecord]:
    """One training as one MLflow run (the interrupted run itself when resuming), ended FINISHED,
    FAILED or KILLED (`runs.tracked_run`). A new run gets its params, tags, datasets, config file and
    (augmented) a preview of its training images; `facts` ({"params": ..., "tags": ..., "node": ...})
    are what the fit's setup adds (image counts, runtime, device)."""
    run_name = f"{config.augmentation.label}-seed{config.seed}-{config.model.name}"  # cut from the end in the UI
    interval = config.tracking.system_metrics_interval_s if config.tracking.system_metrics else None
    unended_dir = unended_runs_dir(config.paths.cache_dir)
    with tracked_run(run_name, state.mlflow_run_id, interval, facts.get("node"), unended_dir) as active:
        if active.info.run_id == state.mlflow_run_id:
            record_resume(state.epochs_done, state.history)
            # params are immutable: what the resume changed (train.epochs, train.patience) is a tag, and the
            # run now stands for the configuration it finishes as (a constant schedule: the same training)
            for key, value in work.resumed_with().items():
                mlflow.set_tag(f"resumed_with.{key}", value)
        else:
            state.mlflow_run_id = active.info.run_id
            link = {"data.source_link": split.source["link"]} if "link" in split.source else {}
            mlflow.log_params(
                {**flat_params(config), **facts["params"], **link, "train.start_epoch": state.epochs_done}
            )
            mlflow.set_tags({**run_tags(config, split), **facts["tags"]})
            log_data_inputs(split)
            log_config_and_preview(config, split)
        mlflow.set_tag("config_hash", digest_of(work.identity))  # same hash = same trained model
        yield TrainingRecord(config, active, uri, state)
    if not in_multirun():  # a sweep ends with one link, to its runs (the comparison)
        print(
            "\n".join(ui_lines(uri, {"this run": experiment_link(uri, active.info.experiment_id, active.info.run_id)}))
        )


def log_config_and_preview(config: Config, split: Split) -> None:
    from pipeline.visuals import augmentation_grid

    with tempfile.TemporaryDirectory() as scratch:
        config_file = Path(scratch) / "config.yaml"
        config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        mlflow.log_artifact(str(config_file))
        if not config.augmentation.is_identity:  # a plain run's "augmented" images are its originals
            preview = augmentation_grid(
                config.augmentation,
                config.data.image_size,
                config.seed,
                split.train,
                Path(scratch) / "augmentation_preview.png",
                rows=5,
                variants=4,
            )
            mlflow.log_artifact(str(preview))


def record_resume(epochs_done: int, history: list[dict[str, float]]) -> None:
    """On the reopened run: note where it resumed, and log the finished epochs it lacks.

    An epoch is logged right after its checkpoint is committed; a kill between the two
    leaves the run one epoch short, which is filled in here, so steps neither repeat nor skip.
    """
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    logged = max((m.step for m in client.get_metric_history(run_id, "val_accuracy")), default=0)
    for epoch in range(logged + 1, epochs_done + 1):
        mlflow.log_metrics(named_for_the_record(history[epoch - 1]), step=epoch)
    earlier = mlflow.active_run().data.tags.get("resumed_at_epochs")
    mlflow.set_tag("resumed_at_epochs", f"{earlier},{epochs_done}" if earlier else str(epochs_done))


# ------------------------------------------------------------------ a sweep job trained before


def saved_model_folder(finished: mlflow.entities.Run, models_dir: Path) -> Path | None:
    """The folder of the finished run's model.keras while the file is still the one it saved: its tag
    `model_file` (or this job folder, for runs from before the tag), written between the run's start
    and end. None: gone, or replaced since."""
    model_file = Path(finished.data.tags.get("model_file") or models_dir / "model.keras")
    info = finished.info
    try:
        saved_ms = model_file.stat().st_mtime * 1000
    except OSError:
        return None
    return model_file.parent if info.start_time <= saved_ms <= (info.end_time or 0) + 1000 else None


def skip_finished(
    finished: mlflow.entities.Run, models_dir: Path, reports_dir: Path, uri: str, tta: str | None
) -> float:
    """A sweep job whose configuration was trained already: name that run, return its objective. Its
    run.json points at the earlier run (the end-of-sweep comparison includes it), says whether it has
    test metrics (`tested`: and those of the test-time augmentation `tta` asks for, if any), and where
    its model is while the file is still its own (`saved_model_folder`)."""
    best_val = finished.data.metrics.get("best_val_accuracy", 0.0)
    print(
        f"skip: this configuration already has the FINISHED MLflow run {finished.info.run_id} "
        f"({finished.info.run_name}, best val_accuracy {best_val:.4f}); train.rerun=true trains it again"
    )
    model_dir = saved_model_folder(finished, models_dir)
    write_run_record(
        reports_dir,
        finished.info,
        uri,
        None,
        best_val,
        finished.data.metrics.get("best_epoch"),
        skipped=True,
        test_metrics="test_accuracy" in finished.data.metrics,
        tested="test_accuracy" in finished.data.metrics and tta in (None, finished.data.tags.get("evaluate.tta")),
        model_dir=str(model_dir) if model_dir else None,
    )
    return best_val


# ------------------------------------------------------------------ the stage's files


def write_run_record(
    reports_dir: Path,
    run: mlflow.entities.RunInfo,
    uri: str,
    model_id: str | None,
    best_val: float,
    best_epoch: float | None,
    **extra,
) -> None:
    """run.json: the MLflow run behind this stage's outputs, for `evaluate` and the end-of-sweep comparison."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": run.run_id,
        "run_name": run.run_name,
        "experiment_id": run.experiment_id,
        "tracking_uri": uri,
        "model_id": model_id,
        "best_val_accuracy": best_val,
        "best_epoch": best_epoch,
        **extra,
    }
    write_atomically(reports_dir / "run.json", json.dumps(record, indent=2) + "\n")


def write_history(history: list[dict[str, float]], target: Path) -> Path:
    """history.csv: one row per epoch (1-based), one column per metric, each named for its split as
    DVC's and MLflow's test_accuracy is (train_accuracy, val_accuracy, ...; Keras logs `accuracy`)."""
    keys = sorted({k for row in history for k in row})
    rows = [",".join(["epoch", *(SPLIT_NAMES.get(k, k) for k in keys)])]
    rows += [
        ",".join([str(epoch), *(f"{row[k]:.6f}" if k in row else "" for k in keys)])
        for epoch, row in enumerate(history, start=1)
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, "\n".join(rows) + "\n")
    return target


# ------------------------------------------------------------------ the evaluation of a trained run


def require_same_evaluation(run_record: dict, metrics: dict[str, float], tta: str | None) -> bool:
    """A run's recorded results never change silently: a second evaluation of its model that gives
    other test metrics than the run records is an error naming both figures (the `tta_` ones only
    when the run records the same test-time augmentation, `tta`; another replaces them). Returns True
    when the run already records these same metrics (nothing to log again)."""
    mlflow.set_tracking_uri(run_record["tracking_uri"])
    run = mlflow.MlflowClient().get_run(run_record["run_id"]).data
    recorded = dict(run.metrics)
    if run.tags.get("evaluate.tta") != tta:
        recorded = {k: v for k, v in recorded.items() if not k.startswith("tta_")}
    differing = {
        key: (recorded[key], value)
        for key, value in metrics.items()
        if key in recorded and not math.isclose(recorded[key], value, rel_tol=1e-4, abs_tol=1e-6)
    }
    if differing:
        figures = ", ".join(f"{key} {was:.6g} recorded, {now:.6g} now" for key, (was, now) in differing.items())
        raise DataError(
            f"MLflow run {run_record['run_id']} already records its test results and this evaluation differs "
            f"({figures}): the model file or the test images are not the ones evaluated then. Nothing was "
            "written. Train again to record a new model, or check the model file and paths.split_dir."
        )
    return all(key in recorded for key in metrics)


def log_evaluation(
    run_record: dict, test: dict[str, float], val: dict[str, float], split: Split, files: list, tags: dict
) -> None:
    """Log the `test` metrics (and each class's recall) to the finished training run of `run_record`
    without reopening it, measured by its LoggedModel on the test dataset; the validation split's
    per-class recalls (`val`) on the validation dataset; `files` as the run's artifacts and `tags` (how
    it was evaluated) as its tags; the headline as its description, at the top of its page in the UI."""
    mlflow.set_tracking_uri(run_record["tracking_uri"])
    run_id, client, model_id = run_record["run_id"], mlflow.MlflowClient(), run_record.get("model_id")
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for values, name in ((test, "test"), (val, "val")):
        mlflow.log_metrics(values, run_id=run_id, model_id=model_id, dataset=split_dataset(split, name))
    headline = (
        f"**test accuracy {test['test_accuracy']:.2%}** (balanced {test['test_balanced_accuracy']:.2%}, "
        f"macro F1 {test['test_macro_f1']:.3f}) on {len(split.test)} test images"
    )
    client.set_tag(run_id, NOTE, headline)
    if model_id:  # the model's description says it too, after what it is
        model = client.get_logged_model(model_id)
        client.set_logged_model_tags(model_id, {NOTE: f"{model.tags.get(NOTE, model.name)}. {headline}"})
    for path in files:
        client.log_artifact(run_id, str(path))
