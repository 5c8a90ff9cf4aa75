"""When two training runs are the same configuration: everything that makes a trained model what
it is, hashed (tag `config_hash`). A sweep skips a configuration whose hash already has a FINISHED
run (`finished_run_with`), a resumed training refuses a work folder left by another configuration,
and the study groups runs by the same settings (`defines_a_run`).
"""

from __future__ import annotations

import hashlib
import json

import mlflow

from pipeline.config.compose import flatten, to_dict
from pipeline.config.schema import Config

# Settings that do not change what is trained: where things go, how they are reported, and how the
# data was found (the manifest hash stands for the data itself); and what a run records beside its
# settings (`train.start_epoch`, where a resumed run started; the runtime its frozen part ran in).
NOT_DEFINING = (
    "tracking.",
    "paths.",
    "compare.",
    "search.",
    "evaluate.",  # how the trained model is evaluated: the evaluation logs it beside its metrics
    "data.download_dir",
    "data.cache",
    "data.source",
    "data.source_link",
    "data.sha256",
    "train.resume",
    "train.rerun",
    "train.start_epoch",
    "model.frozen_runtime",  # the runtimes' features agree within 1e-4; their precision is identity
    "model.frozen_runtime_used",
)

# Settings of augmented training only: a plain run trains the same model whatever they say
# (and `compare` pairs a plain baseline with augmented groups of any value of them).
AUGMENTED_ONLY = ("train.augment_views",)


def defines_a_run(key: str, ignored: tuple[str, ...] = NOT_DEFINING) -> bool:
    """False for a dotted key of `ignored`, or under one of its sections (`tracking.`)."""
    return not any(key == p or (p.endswith(".") and key.startswith(p)) for p in ignored)


def training_identity(config: Config, manifest_sha256: str) -> dict[str, str]:
    """Everything that makes a trained model what it is, as dotted keys, plus the data's manifest hash."""
    ignored = NOT_DEFINING + (AUGMENTED_ONLY if config.augmentation.is_identity else ())
    identity = {k: v for k, v in flatten(to_dict(config)).items() if defines_a_run(k, ignored)}
    if config.model.fine_tune_from is not None and not config.augmentation.is_identity:
        # train.augment_views was not applied above a fine-tuned cut before views were reused there:
        # such a run trained on a fresh view every epoch, so it is not this configuration
        identity["train.augment_views.above_fine_tune_cut"] = "reused"
    return {**identity, "data.manifest_sha256": manifest_sha256}


def digest_of(values: dict[str, str]) -> str:
    """A stable sha256 of string key/values (order-independent)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


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
