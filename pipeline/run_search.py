"""Finding a recorded run again: the FINISHED run that already trained a configuration, which a
sweep skips instead of training it twice."""

from __future__ import annotations

import mlflow


def finished_run_with(experiment_name: str, config_hash: str) -> mlflow.entities.Run | None:
    """The latest FINISHED training run of the experiment tagged with `config_hash` (None if none)."""
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    found = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id],
        f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None
