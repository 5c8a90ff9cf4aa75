"""dvc.yaml's stages re-run when their code changes: each stage depends on every module of
`pipeline/` that its command imports, directly or through another module."""

from __future__ import annotations

import ast

import pytest
import yaml

from tests.conftest import ROOT

PIPELINE = ROOT / "pipeline"


def imported_modules(module: str) -> set[str]:
    """The pipeline modules `pipeline/<module>.py` imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse((PIPELINE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return {name for name in found if (PIPELINE / f"{name}.py").is_file()}


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(name)
    return seen


@pytest.mark.parametrize("stage", ["split", "train", "evaluate"])
def test_each_stage_depends_on_the_code_it_runs(stage):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    assert spec["cmd"].startswith(f"python -m pipeline.{stage} ")
    listed = {dep for dep in spec["deps"] if isinstance(dep, str) and dep.startswith("pipeline/")}
    needed = {f"pipeline/{name}.py" for name in import_closure(stage)}
    assert needed - listed == set(), f"add to the deps of stage {stage} in dvc.yaml"
    assert listed - needed == set(), f"stage {stage} does not import these: drop them from its deps"
    assert len(needed) > 5  # the closure was followed, not just the command's own file
