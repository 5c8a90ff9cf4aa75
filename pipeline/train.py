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

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli import stage_entry
from pipeline.config import Config
from pipeline.store import check_store

if TYPE_CHECKING:  # its type only: the datasets module loads TensorFlow, which `--help` must not wait for
    from pipeline.datasets import Split


def run(config: Config) -> float:
    check_store(config)  # a dead or locked server is said at once, before TensorFlow loads
    # TensorFlow, Keras and MLflow load here, not at import: `--help` and a wrong key answer at once
    from pipeline import devices, run_search, tracking
    from pipeline.backend import keras
    from pipeline.checkpoints import WorkFolder
    from pipeline.cli import in_multirun
    from pipeline.datasets import Split
    from pipeline.fitting import fit_from_state, prepare_fit, refuse_a_changed_schedule, require_images
    from pipeline.run_identity import digest_of, training_identity
    from pipeline.run_record import (
        output_dirs,
        record_training,
        require_unchanged_images,
        saved_model_folder,
        skip_finished,
        with_split_source,
    )

    strategy = devices.make_strategy(config.train)  # first: a multi-worker strategy must precede other TF work
    keras.utils.set_random_seed(config.seed)
    split = Split.read(config.paths.split_dir)  # read once: every part of this stage gets it from here
    require_images(split)  # before anything is recorded
    config = with_split_source(config, split)
    chief = devices.is_chief(strategy)
    uri = tracking.connect(config) if chief else None  # a dead server fails here, before any work
    models_dir, reports_dir, work_root = output_dirs(config.paths, chief)
    identity = training_identity(config, split.version)
    if in_multirun() and not config.train.rerun and not devices.is_multi_worker(strategy):
        finished = run_search.finished_run_with(config.tracking.experiment, digest_of(identity))
        if finished:
            require_unchanged_images(split)  # that run's record must describe today's files
            best_val = skip_finished(finished, reports_dir, uri)
            if config.train.test_in_sweeps and "test_accuracy" not in finished.data.metrics:
                evaluate_skipped(config, saved_model_folder(finished, models_dir), reports_dir, split)
            return best_val
    work = WorkFolder(work_root, identity)
    with work.opened(config.train.resume, refuse_other=not in_multirun()) as state:
        refuse_a_changed_schedule(work, config.train)
        setup = prepare_fit(config, strategy, split)
        if not chief:  # a helper in a cluster: same steps, nothing recorded
            fit_from_state(config, setup, work, state)
            return state.best_val_accuracy or 0.0
        best_val = record_training(config, setup, work, state, uri, models_dir, reports_dir, split)
    if in_multirun() and config.train.test_in_sweeps:  # the sweep's verdict can then be on test accuracy
        evaluate_in_job(config, models_dir, reports_dir, split)
    return best_val


def evaluate_skipped(config: Config, model_dir: Path | None, reports_dir: Path, split: Split) -> None:
    """A skipped run stopped before its test evaluation (it has no test metrics): evaluate its model
    (the sweep's verdict is on test accuracy), or say why not and what then."""
    if model_dir is None:
        print(
            "note: that run has no test metrics and its model.keras is gone or was replaced since, so this "
            "sweep's comparison falls back to best_val_accuracy; train.rerun=true trains it again"
        )
        return
    print(f"that run has no test metrics yet (stopped before its evaluation): evaluating {model_dir}/model.keras")
    evaluate_in_job(config, model_dir, reports_dir, split)


def evaluate_in_job(config: Config, models_dir: Path, reports_dir: Path, split: Split) -> None:
    """The `evaluate` stage on a sweep job's own model and reports folder."""
    from dataclasses import replace

    from pipeline import evaluate

    evaluate.run(
        replace(config, paths=replace(config.paths, models_dir=str(models_dir), reports_dir=str(reports_dir))), split
    )


main = stage_entry(
    run, reads=("data", "augmentation", "model", "train", "tracking", "paths", "seed", "compare.after_sweep")
)

if __name__ == "__main__":
    main()
