"""What each configuration key does: the comment beside its field in the schema's source
(schema.py, augmentation.py and compare.py of this package), read from there so that it is written once.
`reference` writes them into docs/configuration.md and conf/schema/; `--help` prints them."""

from __future__ import annotations

import ast
import dataclasses
import io
import tokenize
from pathlib import Path

from pipeline.config import augmentation, compare, schema


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


def schema_comments() -> dict[tuple[str, str], str]:
    comments = {}
    for module in (schema, augmentation, compare):  # the schema's files
        comments |= field_comments(Path(module.__file__).read_text())
    return comments


def key_comments() -> dict[str, str]:
    """Every settable key, dotted (`train.epochs`), and the comment beside its field: what it does."""
    comments, found = schema_comments(), {}

    def walk(node: type, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(value):
                walk(type(value), f"{prefix}{f.name}.")
            else:
                found[prefix + f.name] = comments.get((node.__name__, f.name), "")

    walk(schema.Config, "")
    return found
