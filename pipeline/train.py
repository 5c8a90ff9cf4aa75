"""Stage `train`: fit a classifier on the train split, augmented or plain, tracked in MLflow.

    python -m pipeline.train experiment=cpu augmentation=lesson    # frozen ImageNet EfficientNet-Lite0 (the default)
    python -m pipeline.train -m experiment=cpu augmentation=none,lesson seed=1,2,3,4,5   # a sweep, then its verdict

Writes <paths.models_dir>/model.keras (the best epoch by val_accuracy) and classes.json,
<paths.reports_dir>/history.csv and run.json (the MLflow run, for `evaluate`).
In a Hydra multirun each job writes into its own job folder instead and ends by evaluating its
model on the test split (`train.test_in_sweeps=false`: not), and a job whose configuration
(tag config_hash) already has a FINISHED run is skipped (`train.rerun=true` trains it again):
an interrupted sweep resumes by running the same command again.
Returns the best val_accuracy (the objective of Optuna sweeps).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipeline.config.cli import in_multirun, stage_entry
from pipeline.config.schema import Config, PathsConfig
from pipeline.data.manifests import Split
from pipeline.tracking.store import check_store


def run(config: Config) -> float:
    check_store(config.tracking)  # a dead or locked server is said at once, before TensorFlow loads
    # TensorFlow, Keras and MLflow load here, not at import: `--help` and a wrong key answer at once
    from pipeline.backend import keras
    from pipeline.stopping import raise_if_stopped
    from pipeline.tracking import record, runs
    from pipeline.tracking.identity import digest_of, finished_run_with, training_identity
    from pipeline.training import devices
    from pipeline.training.checkpoints import WorkFolder
    from pipeline.training.fitting import (
        fit_from_state,
        prepare_fit,
        refuse_a_changed_schedule,
        require_images,
        save_model,
    )
    from pipeline.visuals import training_curves

    strategy = devices.make_strategy(config.train)  # first: a multi-worker strategy must precede other TF work
    keras.utils.set_random_seed(config.seed)
    split = Split.read(config.paths.split_dir)  # read once: every step of this stage gets it from here
    require_images(split)  # before anything is recorded
    config = with_split_source(config, split)
    chief = devices.is_chief(strategy)
    uri = runs.connect(config) if chief else None  # a dead server fails here, before any work
    models_dir, reports_dir, work_root = output_dirs(config.paths, chief)
    identity = training_identity(config, split.version)
    if in_multirun() and not config.train.rerun and not devices.is_multi_worker(strategy):
        finished = finished_run_with(config.tracking.experiment, digest_of(identity))
        if finished:
            return skip_finished(config, finished, models_dir, reports_dir, split, uri)
    work = WorkFolder(work_root, identity)
    with work.opened(config.train.resume, refuse_other=not in_multirun()) as state:
        refuse_a_changed_schedule(work, config.train)
        setup = prepare_fit(config, strategy, split)
        if not chief:  # a helper in a cluster: same steps, nothing recorded
            fit_from_state(config, setup, work, state)
            return state.best_val_accuracy or 0.0
        with record.training_run(config, split, work, state, uri, setup.facts()) as tracked:
            fit_from_state(config, setup, work, state, on_commit=tracked.log_epoch)
            raise_if_stopped()
            model_path, classes_path = save_model(setup, models_dir)
            title = f"{config.augmentation.label}, seed {config.seed}, {config.model.name}"
            curves = training_curves(state.history, state.best_epoch, reports_dir / "training_curves.png", title)
            model_id = tracked.finish(model_path, classes_path, reports_dir, curves)
    print(
        f"best val_accuracy {state.best_val_accuracy:.4f} at epoch {state.best_epoch} of {state.epochs_done}; "
        f"model {model_path}" + (f", MLflow model models:/{model_id}" if model_id else "")
    )
    if in_multirun() and config.train.test_in_sweeps:  # the sweep's verdict can then be on test accuracy
        evaluate_in_job(config, models_dir, reports_dir, split)
    return state.best_val_accuracy or 0.0


def with_split_source(config: Config, split: Split) -> Config:
    """The config with `data.source` set to the folder the split read (links followed): a run records
    the data it trains on, whatever `data.source` says on this command line."""
    from pipeline.data.cache import say_once

    folder = split.source.get("folder") or split.source.get("source")
    if folder is None or folder == config.data.source:
        return config
    if config.data.source != split.source.get("source"):
        say_once(f"{split.folder} was split from {folder}; the runs record that as data.source")
    return replace(config, data=replace(config.data, source=folder))


def output_dirs(paths: PathsConfig, chief: bool = True) -> tuple[Path, Path, Path]:
    """(models dir, reports dir, work root): the configured ones, or the job folder in a multirun.

    The work root holds the per-configuration checkpoint folders (`WorkFolder`); it stays
    `paths.models_dir` in a multirun, so that a sweep run again finds its interrupted jobs.
    The non-chief processes of a multi-worker cluster write their checkpoints into
    `<models>/workers/<type>-<index>` so that no two processes write the same file.
    """
    work_root = models_dir = Path(paths.models_dir)
    reports_dir = Path(paths.reports_dir)
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        job_dir = Path(HydraConfig.get().runtime.output_dir)
        models_dir, reports_dir = job_dir / "models", job_dir / "reports"
    if not chief:
        from pipeline.training import devices

        work_root = models_dir = work_root / "workers" / devices.task_name()
    return models_dir, reports_dir, work_root


def skip_finished(config: Config, finished, models_dir: Path, reports_dir: Path, split: Split, uri: str) -> float:
    """A sweep job whose configuration was trained already: its images must still be the ones that
    run recorded; the run is named, not redone, and evaluated when it stopped before its test."""
    from pipeline.data.cache import disk_cache
    from pipeline.tracking import record

    split.require_unchanged(disk_cache(config.paths.cache_dir, config.data.cache))
    best_val = record.skip_finished(finished, reports_dir, uri)
    if config.train.test_in_sweeps and "test_accuracy" not in finished.data.metrics:
        model_dir = record.saved_model_folder(finished, models_dir)
        if model_dir is None:
            print(
                "note: that run has no test metrics and its model.keras is gone or was replaced since, so this "
                "sweep's comparison falls back to best_val_accuracy; train.rerun=true trains it again"
            )
        else:
            print(f"that run has no test metrics yet (stopped before its evaluation): evaluating {model_dir}/model.keras")
            evaluate_in_job(config, model_dir, reports_dir, split)
    return best_val


def evaluate_in_job(config: Config, models_dir: Path, reports_dir: Path, split: Split) -> None:
    """The `evaluate` stage on a sweep job's own model and reports folder."""
    from pipeline import evaluate

    evaluate.run(
        replace(config, paths=replace(config.paths, models_dir=str(models_dir), reports_dir=str(reports_dir))), split
    )


main = stage_entry(
    run, reads=("data", "augmentation", "model", "train", "tracking", "paths", "seed", "compare.after_sweep")
)

if __name__ == "__main__":
    main()
