"""The model registry's champion: on a `keep` verdict (compare.register=true) the best run of the
winning group becomes a version of `tracking.model_name`, and the alias `champion` moves to it
only when its group beat the current champion's on the same metric.
Then `python -m pipeline.predict models:/<name>@champion photo.jpg` serves it.
"""

from __future__ import annotations

import mlflow
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException

from pipeline.errors import TrackingError
from pipeline.study.records import Difference, Group


def register_winner(model_name: str, groups: list[Group], differences: list[Difference], metric: str) -> str:
    """compare.register=true: the best run of the group with the largest `keep` difference
    becomes a registered model version; the alias `champion` moves to it only if its group is
    better than the current champion's."""
    kept = [d for d in differences if d.verdict == "keep"]
    if not kept:
        return "registry: nothing registered, no group has a keep verdict"
    winner = max(kept, key=lambda d: d.mean)
    group = next(g for g in groups if g.label == winner.group)
    values = group.values(metric)
    best_run = max((r for r in group.runs if r.seed in values), key=lambda r: values[r.seed])
    group_mean = sum(values.values()) / len(values)
    return register_champion(model_name, best_run.run_id, group.label, metric, group_mean)


def register_champion(model_name: str, run_id: str, group: str, metric: str, group_mean: float) -> str:
    """Register the LoggedModel of `run_id` as a version of `model_name` (once per run) and give it
    the alias `champion` when there is none yet or the current champion's group scored lower on
    the same metric. Returns a one-line account of what happened."""
    client = mlflow.MlflowClient()
    models = [
        m
        for m in mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
        if m.status == LoggedModelStatus.READY
    ]
    if not models:
        raise TrackingError(
            f"run {run_id} has no READY logged model to register (trained with tracking.log_model=false?)"
        )
    try:
        client.create_registered_model(model_name, tags={"created_by": "pipeline.compare"})
    except MlflowException:
        pass  # exists
    version = next((v for v in client.search_model_versions(f"name = '{model_name}'") if v.run_id == run_id), None)
    if version is None:
        version = mlflow.register_model(
            f"models:/{models[0].model_id}",
            model_name,
            tags={"group": group, "metric": metric, "group_mean": f"{group_mean:.6f}"},
        )
    try:
        champion = client.get_model_version_by_alias(model_name, "champion")
    except MlflowException:
        champion = None
    where = f"models:/{model_name}@champion"
    if champion is not None and champion.version == version.version:
        return f"registry: {model_name} version {version.version} ({group}) is already the champion: {where}"
    if champion is None or (
        champion.tags.get("metric") == metric and float(champion.tags.get("group_mean", "-inf")) < group_mean
    ):
        client.set_registered_model_alias(model_name, "champion", version.version)
        return f"registry: {model_name} version {version.version} ({group}, {metric} {group_mean:.4f}) is the champion: {where}"
    return (
        f"registry: {model_name} version {version.version} ({group}, {metric} {group_mean:.4f}) registered; the "
        f"champion stays version {champion.version} ({champion.tags.get('group')}, "
        f"{champion.tags.get('metric')} {champion.tags.get('group_mean')})"
    )
