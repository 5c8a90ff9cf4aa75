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

import json
from dataclasses import replace
from pathlib import Path

from pipeline.config.cli import in_multirun, stage_entry
from pipeline.config.schema import Config, PathsConfig
from pipeline.data.manifests import SPLITS, Split
from pipeline.data.partition import draw_train_val
from pipeline.tracking.store import check_store


def run(config: Config) -> float:
    check_store(config.tracking)  # a dead or locked server is said at once, before TensorFlow loads
    # TensorFlow, Keras and MLflow load here, not at import: `--help` and a wrong key answer at once
    from pipeline.backend import keras
    from pipeline.data.cache import disk_cache
    from pipeline.stopping import raise_if_stopped
    from pipeline.tracking import record, runs
    from pipeline.tracking.identity import digest_of, finished_run_with, training_identity
    from pipeline.training import devices
    from pipeline.training.checkpoints import WorkFolder
    from pipeline.training.fitting import fit_from_state, prepare_fit, refuse_a_changed_schedule, save_model
    from pipeline.visuals import training_curves

    strategy = devices.make_strategy(config.train)  # first: a multi-worker strategy must precede other TF work
    keras.utils.set_random_seed(config.seed)
    split = Split.read(config.paths.split_dir)  # read once: every step of this stage gets it from here
    split.require_training_images()  # before anything is recorded
    if config.data.split.train_val_per_seed:
        split = draw_train_val(split, config.seed)
        print(f"train/val drawn for seed {config.seed}: {len(split.train)} and {len(split.val)} images (test fixed)")
    config = replace(config, data=split.recorded_source(config.data))
    chief = devices.is_chief(strategy)
    uri = runs.connect(config.tracking, config.paths.cache_dir) if chief else None  # a dead server fails here
    models_dir, reports_dir, work_root = job_folders(config.paths, devices.task_name() if not chief else None)
    identity = training_identity(config, split.version)
    if in_multirun() and not config.train.rerun and not devices.is_multi_worker(strategy):
        finished = finished_run_with(config.tracking.experiment, digest_of(identity))
        if finished:  # its record must describe today's files: the images are checked first
            split.require_unchanged(disk_cache(config.paths.cache_dir, config.data.cache), SPLITS)
            return record.skip_finished(finished, models_dir, reports_dir, uri, config.evaluate.tta_record())
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
        f"model {model_path}; MLflow run {tracked.run.info.run_id}"
        + (f", its model models:/{model_id}" if model_id else "")
    )
    return state.best_val_accuracy or 0.0


def job_folders(paths: PathsConfig, worker: str | None = None) -> tuple[Path, Path, Path]:
    """(models dir, reports dir, work root) of a training: the configured ones, or the job folder in a
    multirun. The work root holds the per-configuration checkpoint folders (`WorkFolder`); it stays
    `paths.models_dir` in a multirun, so that a sweep run again finds its interrupted jobs. A `worker`
    of a multi-worker cluster (not the chief) writes its checkpoints into `<models>/workers/<worker>`,
    so that no two processes write the same file."""
    work_root = models_dir = Path(paths.models_dir)
    reports_dir = Path(paths.reports_dir)
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        job_dir = Path(HydraConfig.get().runtime.output_dir)
        models_dir, reports_dir = job_dir / "models", job_dir / "reports"
    if worker:
        work_root = models_dir = work_root / "workers" / worker
    return models_dir, reports_dir, work_root


def sweep_job(config: Config) -> float:
    """A job of a multirun: `run`, then the `evaluate` stage on the job's model (its own folder, or that
    of the FINISHED run it skipped when that run stopped before its test), so that the sweep's verdict is
    on test accuracy (`train.test_in_sweeps=false`: not)."""
    best_val = run(config)
    models_dir, reports_dir, _ = job_folders(config.paths)
    job = json.loads((reports_dir / "run.json").read_text())
    if not config.train.test_in_sweeps or job.get("tested"):
        return best_val
    if job.get("model_dir") is None:
        print(
            "note: that run has no test metrics and its model.keras is gone or was replaced since, so this "
            "sweep's comparison falls back to best_val_accuracy; train.rerun=true trains it again"
        )
        return best_val
    if job.get("skipped"):
        missing = f"evaluate.tta={config.evaluate.tta} results" if job.get("test_metrics") else "test metrics"
        print(f"that run has no {missing} yet: evaluating {Path(job['model_dir']) / 'model.keras'}")
    from pipeline import evaluate

    evaluate.run(
        replace(config, paths=replace(config.paths, models_dir=job["model_dir"], reports_dir=str(reports_dir)))
    )
    return best_val


main = stage_entry(
    run,
    reads=("data", "augmentation", "model", "train", "evaluate", "tracking", "paths", "seed", "compare.after_sweep"),
    sweep_job=sweep_job,
)

if __name__ == "__main__":
    main()
