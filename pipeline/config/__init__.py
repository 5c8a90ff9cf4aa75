"""The configuration: the typed schema (`schema`, `augmentation`, `compare`), composing and
validating it (`compose`), the command line of every stage (`cli`), a sweep's jobs (`sweeps`) and
the reference written from the schema (`comments`, `reference`)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"  # Hydra's config folder: the presets every group option names
