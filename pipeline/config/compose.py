"""Composing and validating a config: Hydra's compose API over `conf/`, merged into the schema
(`schema.py`), where unknown keys and wrong types fail, then every range checked.

One schema serves the three ways a stage runs:

* `python -m pipeline.<stage> [overrides]` and Hydra multirun (`-m`): Hydra composes
  `conf/config.yaml` with the overrides;
* DVC: `dvc exp run -S ...` composes the same `conf/` into `params.yaml` and the stages
  in `dvc.yaml` run `python -m pipeline.<stage> --params params.yaml`.

Either way the config is checked before the stage does any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import CONF_DIR
from pipeline.config.augmentation import AugmentationConfig, read_ablation_label
from pipeline.config.schema import Config
from pipeline.errors import ConfigError

# ------------------------------------------------------------------ keys and validation


def _collect_problems(node: Any, prefix: str = "") -> list[str]:
    found = []
    if hasattr(node, "problems"):
        found += [f"{prefix}{key}: {message}" for key, message in node.problems()]
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            found += _collect_problems(value, f"{prefix}{f.name}.")
    return found


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(value):
            keys += _dotted_keys(value, f"{prefix}{f.name}.")
    return keys


SETTABLE_KEYS = frozenset(_dotted_keys(Config()))
LEAF_KEYS = SETTABLE_KEYS - {k.rpartition(".")[0] for k in SETTABLE_KEYS}


# Keys that were renamed: the old name is refused, saying the new one.
RENAMED_KEYS = {"augmentation.device": "augmentation.placement"}


def unknown_key_message(key: str) -> str:
    """'Unknown config key ...; did you mean ...?' with the closest settable key."""
    if key in RENAMED_KEYS:
        return f"The config key '{key}' is now '{RENAMED_KEYS[key]}' (same values): use that name."
    parent = key.rpartition(".")[0]
    siblings = [k for k in SETTABLE_KEYS if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, sorted(SETTABLE_KEYS), n=1, cutoff=0.7
    )
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"Unknown config key '{key}': {hint}Every key is listed in docs/configuration.md "
        "(python -m pipeline.config.reference)."
    )


@functools.cache
def _schema() -> DictConfig:
    """The typed schema as OmegaConf builds it from the dataclasses (17 ms; a sweep validates every job)."""
    return OmegaConf.structured(Config)


def validate(raw: DictConfig | dict) -> Config:
    """Merge a composed config into the schema and check every range.

    Raises ConfigError naming each bad key; nothing else has happened yet.
    """
    if isinstance(raw, dict):
        raw = OmegaConf.create(raw)
    raw = OmegaConf.masked_copy(raw, [k for k in raw.keys() if k != "hydra"]) if "hydra" in raw else raw
    try:
        merged = OmegaConf.merge(_schema(), raw)  # merge copies the schema: the cached one stays as it is
        config: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        if key not in SETTABLE_KEYS and key != "?":
            raise ConfigError(unknown_key_message(key)) from None
        reason = str(error).splitlines()[0]
        raise ConfigError(f"Invalid config key '{key}': {reason}") from None
    problems = _collect_problems(config)
    if problems:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
    config.augmentation = config.augmentation.with_ablation_applied()
    return config


def preset_overrides(augmentation: AugmentationConfig) -> list[str]:
    """`key=value` for each augmentation key that differs from its preset's file
    (conf/augmentation/<name>.yaml): a title that names the preset must name these too."""
    name = read_ablation_label(augmentation.name)[0]
    if not (CONF_DIR / "augmentation" / f"{name}.yaml").exists():
        return []
    preset = dataclasses.replace(preset_config(name), ablate=augmentation.ablate).with_ablation_applied()
    return [
        f"augmentation.{f.name}={_value_text(getattr(augmentation, f.name))}"
        for f in dataclasses.fields(augmentation)
        if f.name not in ("name", "ablate") and getattr(augmentation, f.name) != getattr(preset, f.name)
    ]


def preset_config(name: str) -> AugmentationConfig:
    """A preset of conf/augmentation/ as it stands in its file, without Hydra (which may be composing
    the command that asks)."""
    preset_file = CONF_DIR / "augmentation" / f"{name}.yaml"
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AugmentationConfig), OmegaConf.load(preset_file)))


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(list(value) if isinstance(value, tuple) else value)


def compose_raw(overrides: list[str] | None = None, with_hydra: bool = False) -> DictConfig:
    """`conf/` composed by Hydra's compose API with `overrides`, not yet validated (`with_hydra`:
    with Hydra's own section, whose `runtime.choices` say which option each group got)."""
    from hydra import __version__, initialize_config_dir
    from hydra import compose as hydra_compose

    defaults_of_1_3 = {"version_base": "1.3"} if __version__.startswith("1.3.") else {}  # 1.4 deprecates it
    with initialize_config_dir(config_dir=str(CONF_DIR), **defaults_of_1_3):
        return hydra_compose(config_name="config", overrides=list(overrides or []), return_hydra_config=with_hydra)


def compose(overrides: list[str] | None = None) -> Config:
    """Compose `conf/` with Hydra's compose API (tests, notebooks) and validate it."""
    return validate(compose_raw(overrides))


def to_dict(config: Config) -> dict:
    """The config as plain Python data (for YAML dumps and MLflow params)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def flatten(node: dict, prefix: str = "") -> dict[str, str]:
    """Nested config data as dotted keys with string values: augmentation.rotation_range -> '30.0'."""
    flat: dict[str, str] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = str(value)
    return flat
