"""Command `python -m pipeline.config.reference`: the configuration reference and the defaults YAML, written from the schema.

    python -m pipeline.config.reference > docs/configuration.md   # or --write: both, in place

Every key of `config.Config` with its type, its default and the comment beside its field in
pipeline/config/schema.py (augmentation.py beside it for `augmentation.*`, compare.py for `compare.*`), and the options of every config group in conf/. A test keeps
docs/configuration.md equal to this output, so the reference cannot drift from the code.

The defaults are written once, in the dataclasses. Hydra and DVC compose YAML, though: DVC's
`dvc exp run -S` composes `conf/` in its own process, which never imports this package. So
`conf/schema/<section>.yaml` (every key of a section with its default and comment, laid under
the chosen preset so that any key is settable on any preset) is generated from the dataclasses
by `--write`, and a test keeps it equal.
"""

from __future__ import annotations

import dataclasses
import textwrap

from pipeline.config import CONF_DIR, PROJECT_ROOT, schema
from pipeline.config.comments import schema_comments

GROUPS = ("experiment", "augmentation", "model", "hparams_search")
# The sections whose defaults conf/config.yaml lays from conf/schema/ (presets name themselves).
SCHEMA_SECTIONS = ("data", "augmentation", "model", "train", "tracking", "evaluate", "compare", "search", "paths")
NAMED_BY_PRESET = ("augmentation", "model")


def default_value(f: dataclasses.Field):
    """A field's default, built by its factory when it has one (MISSING when it has neither)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _default(f: dataclasses.Field) -> str:
    value = default_value(f)
    if value is dataclasses.MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value}"


def key_rows(node: type, comments: dict, prefix: str = "") -> list[str]:
    """Markdown table rows for the dataclass `node`, its nested dataclasses expanded."""
    rows = []
    for f in dataclasses.fields(node):
        value = default_value(f)
        if dataclasses.is_dataclass(value):
            rows += key_rows(type(value), comments, f"{prefix}{f.name}.")
            continue
        note = comments.get((node.__name__, f.name), "").replace("|", "\\|")
        kind = str(f.type).replace("Optional[", "").replace("]", "]").replace("|", "or")
        if str(f.type).startswith("Optional["):
            kind = kind[:-1] + " or null"
        rows.append(f"| `{prefix}{f.name}` | {kind} | `{_default(f)}` | {note} |")
    return rows


def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, float) and "e" in repr(value) and "." not in repr(value):
        return repr(value).replace("e", ".0e")  # 1e-05 is a string to YAML 1.1 readers; 1.0e-05 a float
    return str(value)


def schema_yaml(section: str, comments: dict) -> str:
    """conf/schema/<section>.yaml: every key of the section's dataclass with its default and comment."""
    node = type(getattr(schema.Config(), section))
    module = node.__module__.replace(".", "/")
    where = (
        "conf/config.yaml lays these keys under the chosen preset, so any key can be set on any preset and "
        "a preset file lists only what it changes."
        if section in NAMED_BY_PRESET
        else f"conf/config.yaml composes them as the defaults of `{section}`: set a key on the command line, "
        "with dvc exp run -S, or in conf/experiment/."
    )
    header = (
        f"Generated from {node.__name__} in {module}.py by `python -m pipeline.config.reference "
        f"--write`: change a default there, not here. {where}"
    )
    lines = ["# " + line for line in textwrap.wrap(header, 96)]

    def rows(cls: type, indent: str) -> None:
        for f in dataclasses.fields(cls):
            value = default_value(f)
            comment = comments.get((cls.__name__, f.name), "")
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:" + (f"  # {comment}" if comment else ""))
                rows(type(value), indent + "  ")
                continue
            if f.name == "name" and section in NAMED_BY_PRESET and not indent:
                value, comment = "???", "every preset names itself"
            text = f"{indent}{f.name}: {_yaml_value(value)}"
            lines.append(f"{text:<{max(34, len(text) + 2)}}# {comment}" if comment else text)

    rows(node, "")
    return "\n".join(lines) + "\n"


def group_options(group: str) -> str:
    return ", ".join(f"`{p.stem}`" for p in sorted((CONF_DIR / group).glob("*.yaml")))


def default_experiment_keys(name: str = "cpu") -> str:
    """What the default experiment (conf/config.yaml) sets: its group choices and keys, in words."""
    from omegaconf import OmegaConf

    from pipeline.config.compose import flatten

    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml"))
    choices = [f"`{next(iter(d)).split('/')[-1]}={v}`" for d in raw.pop("defaults", []) for v in d.values()]
    keys = [f"`{key}={value}`" for key, value in flatten(raw).items()]
    return ", ".join(choices + keys)


def reference(comments: dict[tuple[str, str], str] | None = None) -> str:
    comments = comments if comments is not None else schema_comments()
    lines = [
        "# Configuration",
        "",
        "Generated from the schema (`pipeline/config/schema.py`, `augmentation.py` and `compare.py` beside it) by `python -m pipeline.config.reference`;",
        "a test keeps it current. Set any key on the command line (`train.epochs=30`), with",
        "`dvc exp run -S train.epochs=30`, or in a `conf/experiment/` file. A misspelt key or a value",
        "out of range is refused before any work starts, naming the key.",
        "",
        "## Config groups",
        "",
        "Choose one option per group (`augmentation=lesson`). With no experiment named, `experiment=cpu`",
        f"applies: {default_experiment_keys()} over the schema's defaults listed below.",
        "",
    ]
    lines += [f"- `{group}`: {group_options(group)}" for group in GROUPS if (CONF_DIR / group).is_dir()]
    for section in dataclasses.fields(schema.Config):
        value = section.default_factory() if section.default_factory is not dataclasses.MISSING else None
        lines += ["", f"## `{section.name}`", ""]
        doc = (type(value).__doc__ or "") if value is not None else ""
        if doc and not doc.startswith(type(value).__name__ + "("):  # dataclasses' generated doc is no doc
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | what it does |", "|---|---|---|---|"]
        if value is None:
            lines += key_rows(schema.Config, comments)[-1:] if section.name == "seed" else []
        else:
            lines += key_rows(type(value), comments, f"{section.name}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.config.reference", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/configuration.md and conf/schema/*.yaml")
    if not parser.parse_args().write:
        print(reference(), end="")
        return
    comments = schema_comments()
    (PROJECT_ROOT / "docs" / "configuration.md").write_text(reference(comments))
    for section in SCHEMA_SECTIONS:
        (CONF_DIR / "schema" / f"{section}.yaml").write_text(schema_yaml(section, comments))
    print(f"wrote docs/configuration.md and conf/schema/{{{','.join(SCHEMA_SECTIONS)}}}.yaml")


if __name__ == "__main__":
    main()
