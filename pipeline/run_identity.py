"""When two training runs are the same configuration: everything that makes a trained model what
it is, hashed. A sweep skips a configuration whose hash already has a FINISHED run, and a
resumed training refuses a work folder left by another configuration.
"""

from __future__ import annotations

import hashlib
import json

from pipeline.config import Config, flatten, to_dict

# Settings that do not change what is trained: where things go, how they are reported, and
# how the data was found (the manifest hash stands for the data itself).
NOT_IDENTITY = (
    "tracking.",
    "paths.",
    "compare.",
    "data.download_dir",
    "data.cache",
    "data.source",
    "data.sha256",
    "train.resume",
    "train.rerun",
    "model.frozen_runtime",  # the runtimes' features agree within 1e-4; their precision is identity
)


# Settings of augmented training only: a plain run trains the same model whatever they say
# (and `compare` pairs a plain baseline with augmented groups of any value of them).
AUGMENTED_ONLY = ("train.augment_views",)


def training_identity(config: Config, manifest_sha256: str) -> dict[str, str]:
    """Everything that makes a trained model what it is, as dotted keys, plus the data's manifest hash."""
    flat = flatten(to_dict(config))
    ignored = NOT_IDENTITY + (AUGMENTED_ONLY if config.augmentation.is_identity else ())
    identity = {
        k: v for k, v in flat.items() if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in ignored)
    }
    if config.model.fine_tune_from is not None and not config.augmentation.is_identity:
        # train.augment_views was not applied above a fine-tuned cut before views were reused there:
        # such a run trained on a fresh view every epoch, so it is not this configuration
        identity["train.augment_views.above_fine_tune_cut"] = "reused"
    return {**identity, "data.manifest_sha256": manifest_sha256}


def digest_of(values: dict[str, str]) -> str:
    """A stable sha256 of string key/values (order-independent)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
