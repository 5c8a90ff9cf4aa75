"""Command `config_reference`: the configuration reference, written from the schema itself.

    python -m pipeline.config_reference > docs/configuration.md

Every key of `config.Config` with its type, its default and the comment beside its field in
pipeline/config.py, and the options of every config group in conf/. A test keeps
docs/configuration.md equal to this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import tokenize
from pathlib import Path

from pipeline import config as schema

CONF = schema.PROJECT_ROOT / "conf"
GROUPS = ("experiment", "augmentation", "model", "data", "train", "tracking", "compare", "hparams_search")


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): its comment}: the comment on the field's line, continued by
    comment-only lines right below it (a long comment wraps that way)."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                row = item.end_lineno
                text = [comments[row]] if row in comments else []
                while row + 1 in comments and lines[row].strip().startswith("#"):
                    row += 1
                    text.append(comments[row])
                found[node.name, item.target.id] = " ".join(text)
    return found


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
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
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(value):
            rows += key_rows(type(value), comments, f"{prefix}{f.name}.")
            continue
        note = comments.get((node.__name__, f.name), "").replace("|", "\\|")
        kind = str(f.type).replace("Optional[", "").replace("]", "]").replace("|", "or")
        if str(f.type).startswith("Optional["):
            kind = kind[:-1] + " or null"
        rows.append(f"| `{prefix}{f.name}` | {kind} | `{_default(f)}` | {note} |")
    return rows


def group_options(group: str) -> str:
    return ", ".join(f"`{p.stem}`" for p in sorted((CONF / group).glob("*.yaml")))


def reference() -> str:
    comments = field_comments(Path(schema.__file__).read_text())
    lines = [
        "# Configuration",
        "",
        "Generated from the schema (`pipeline/config.py`) by `python -m pipeline.config_reference`;",
        "a test keeps it current. Set any key on the command line (`train.epochs=30`), with",
        "`dvc exp run -S train.epochs=30`, or in a `conf/experiment/` file. A misspelt key or a value",
        "out of range is refused before any work starts, naming the key.",
        "",
        "## Config groups",
        "",
        "Choose one option per group (`augmentation=lesson`):",
        "",
    ]
    lines += [f"- `{group}`: {group_options(group)}" for group in GROUPS if (CONF / group).is_dir()]
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
    print(reference(), end="")


if __name__ == "__main__":
    main()
