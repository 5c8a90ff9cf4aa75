"""The configuration: the typed schema (`schema`, `augmentation`, `compare`), composing and
validating it (`compose`), the command line of every stage (`cli`), a sweep's jobs (`sweeps`) and
the reference written from the schema (`comments`, `reference`)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"  # Hydra's config folder: the presets every group option names


def group_options(group: str, config_dirs: tuple[Path, ...] | list[Path] = ()) -> list[str]:
    """The options of config group `group`: its YAML files in conf/<group>/ (and in <dir>/<group>/ of
    `config_dirs`, the command line's hydra.searchpath), by name."""
    return sorted({p.stem for folder in (CONF_DIR, *config_dirs) for p in (folder / group).glob("*.yaml")})


def did_you_mean(given: str, choices: list[str], spelt: str = "{}") -> str:
    """' (did you mean <the closest choice, as `spelt`>?)' for a misspelt `given`, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(given, choices, n=1)
    return f" (did you mean {spelt.format(close[0])}?)" if close else ""
