"""dvc.yaml's stages re-run when their code changes: each stage depends on every module of
`pipeline/` that its command imports, directly or through another module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PIPELINE = ROOT / "pipeline"


def module_file(dotted: str) -> Path | None:
    """pipeline/<a>/<b>.py of `pipeline.a.b` (a package's __init__.py), None outside pipeline/."""
    parts = dotted.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return None
    path = ROOT.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(module: str) -> set[str]:
    """The pipeline modules (dotted) that `module` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pipeline.study import x`
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline.")}
    return {name for name in found if module_file(name) is not None and name != "pipeline"}


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(name)
    return seen


def closure_files(stage: str) -> set[str]:
    return {str(module_file(name).relative_to(ROOT)) for name in import_closure(f"pipeline.{stage}")}


@pytest.mark.parametrize("stage", ["split", "train", "evaluate"])
def test_each_stage_depends_on_the_code_it_runs(stage):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    assert spec["cmd"].startswith(f"python -m pipeline.{stage} ")
    listed = {dep for dep in spec["deps"] if isinstance(dep, str) and dep.startswith("pipeline/")}
    needed = closure_files(stage)
    assert needed - listed == set(), f"add to the deps of stage {stage} in dvc.yaml"
    assert listed - needed == set(), f"stage {stage} does not import these: drop them from its deps"
    assert len(needed) > 5  # the closure was followed, not just the command's own file


@pytest.mark.parametrize("stage", ["split", "train", "evaluate"])
def test_no_stage_reaches_the_study_wing(stage):
    """Comparing runs is not training them: a verdict's wording must never make `dvc repro` retrain."""
    reached = sorted(path for path in closure_files(stage) if path.startswith("pipeline/study/"))
    assert reached == [], f"stage {stage} imports the study wing through these: move what it needs out of it"
    assert "pipeline/study/verdicts.py" in closure_files("study.compare")  # the check can see the wing
