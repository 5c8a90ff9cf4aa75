"""The DVC pipeline in a real git + DVC repository: exp run, no-op repro, what re-runs."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, make_image

pytestmark = pytest.mark.slow


def readme_command(readme: str, start: str) -> list[str]:
    """The README's command that starts with `start`, split as the shell splits it (its comment dropped)."""
    import shlex

    line = next(line for line in readme.splitlines() if line.startswith(start))
    return shlex.split(line, comments=True)


def sh(*args: str, cwd: Path, columns: int | None = None) -> str:
    env = {
        **os.environ,
        **({"COLUMNS": str(columns)} if columns else {}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the venv's dvc
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path) -> Path:
    """A fresh clone-like copy of the project's tracked files, committed in its own git repo."""
    repo = tmp_path / "project"
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, repo / name)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "init", cwd=repo)
    return repo


TINY = [
    "model=residual_cnn",
    "model.residual_stages=[[32,1]]",
    "train.epochs=1",
    "train.batch_size=8",
    "data.image_size=[32,32]",
]  # seconds a run


def test_exp_run_repro_and_what_reruns(project, tiny_dataset, tmp_path):
    settings = [f"data.source={tiny_dataset}", *TINY, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    out = sh("dvc", "exp", "run", *[a for s in settings for a in ("-S", s)], cwd=project)
    for stage in ("split", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and "test_macro_f1" in metrics  # the names MLflow has

    manifests = {p.name: p.read_bytes() for p in (project / "data" / "split").iterdir()}
    again = sh("dvc", "repro", cwd=project)  # split re-reads the images; nothing changed, so nothing else runs
    assert "Running stage 'train'" not in again and "Running stage 'evaluate'" not in again
    assert {p.name: p.read_bytes() for p in (project / "data" / "split").iterdir()} == manifests
    readme = (ROOT / "README.md").read_text()
    diff = sh(*readme_command(readme, "dvc metrics diff"), cwd=project)  # against the committed baseline
    baseline = json.loads((ROOT / "reports" / "metrics.json").read_text())["test_accuracy"]
    assert "failed to load" not in diff and f"{baseline:.5f}" in diff and "test_accuracy" in diff

    # committed as the README says: the result equals the baseline, and the README's table still shows it
    sh("git", "add", "params.yaml", "dvc.lock", "reports/metrics.json", "reports/per_class.json", cwd=project)
    sh("git", "commit", "-qm", "the first experiment", cwd=project)
    table = sh(*readme_command(readme, "dvc exp show"), cwd=project, columns=120)
    assert "test_accuracy" in table and "augmentation.name" in table, table  # 120 columns wide, kept
    rows = list(csv.DictReader(io.StringIO(sh(*readme_command(readme, "dvc exp show"), "--csv", cwd=project))))
    assert float(rows[0]["test_accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-5)
    equal = sh(*readme_command(readme, "dvc metrics diff"), cwd=project)
    assert "test_accuracy" in equal  # unchanged, still said
    shown = sh("dvc", "metrics", "show", cwd=project)
    assert "test_accuracy" in shown and "recall" not in shown  # the headline; per-class figures have their own file
    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=project))
    assert set(plots["data"]) == {"reports/training_curves.png", "reports/confusion.png"}  # no default junk
    sh("dvc", "plots", "show", "-o", str(tmp_path / "dvc_plots"), cwd=project)
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "<img" in page and "<script" not in page and "http" not in page  # it loads nothing: it works offline

    out = sh("dvc", "exp", "run", *[a for s in settings for a in ("-S", s)], "-S", "augmentation=lesson", cwd=project)
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    assert {p.name: p.read_bytes() for p in (project / "data" / "split").iterdir()} == manifests  # same data
    assert (project / "params.yaml").read_text().count("rotation_range: 30") == 1
    # The experiment table a newcomer reads: the varied params and the headline test metrics, no per-class columns.
    rows = list(csv.DictReader(io.StringIO(sh("dvc", "exp", "show", "--only-changed", "--csv", cwd=project))))
    columns = set(rows[0])
    assert {"augmentation.name", "augmentation.rotation_range", "test_accuracy", "test_balanced_accuracy"} <= columns
    assert not [c for c in columns if "recall" in c or "precision" in c]
    assert {r["augmentation.name"] for r in rows if r["test_accuracy"] not in ("", "!")} == {"none", "lesson"}
    table = sh(*readme_command(readme, "dvc exp show"), "--csv", cwd=project)  # as the README shows it
    columns = next(csv.reader(io.StringIO(table)))
    assert {"augmentation.name", "test_accuracy"} <= set(columns) and not [c for c in columns if "/" in c]

    # A verdict reworded: the study wing is no stage's dependency, so no stage is stale ...
    verdicts = project / "pipeline" / "study" / "verdicts.py"
    verdicts.write_text(verdicts.read_text() + "\n# a reworded verdict\n")
    assert "up to date" in sh("dvc", "status", "train", "evaluate", cwd=project)  # split: always_changed
    fitting = project / "pipeline" / "training" / "fitting.py"  # ... while the fitting code is train's
    kept = fitting.read_text()
    fitting.write_text(kept + "\n# a change to fitting\n")
    assert "changed deps: modified: pipeline/training/fitting.py" in " ".join(
        sh("dvc", "status", "train", cwd=project).split()
    )
    fitting.write_text(kept)

    # An image edited in place (same name, same label): split's manifests change with it, so the
    # next repro trains and evaluates again (a full repro here would add a minute, not a check).
    assert "up to date" in sh("dvc", "status", "train", cwd=project)
    make_image(tiny_dataset / "cat" / "cat_00.png", size=(48, 40), seed=999, pattern=0)
    assert "Running stage 'split'" in sh("dvc", "repro", "split", cwd=project)
    stale = sh("dvc", "status", "train", cwd=project)
    assert "changed deps: modified: data/split" in " ".join(stale.split()), stale


def test_queued_experiments_run_and_land_in_the_project_store(project, tiny_dataset):
    """dvc exp run --queue with a Hydra sweep, dvc queue start -j 2, dvc exp show: no tracking.uri is
    set, so the runs must reach <project>/mlflow.db although DVC runs them in temporary copies."""
    settings = [f"data.source={tiny_dataset}", *TINY]
    out = sh(
        "dvc",
        "exp",
        "run",
        "--queue",
        *[a for s in settings for a in ("-S", s)],
        "-S",
        "augmentation=none,lesson",
        cwd=project,
    )
    assert out.count("Queued experiment") == 2
    sh("dvc", "queue", "start", "--jobs", "2", cwd=project)  # two at once on a brand-new store
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = sh("dvc", "queue", "status", cwd=project)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1)
    assert status.count("Success") == 2, status + sh("dvc", "queue", "logs", status.split()[-1], cwd=project)

    rows = list(csv.DictReader(io.StringIO(sh("dvc", "exp", "show", "--csv", cwd=project))))
    experiments = [r for r in rows if r.get("Experiment")]
    assert {r["augmentation.name"] for r in experiments} == {"none", "lesson"}
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in experiments)

    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])
    assert sorted(r.data.tags["augmentation"] for r in runs) == ["lesson", "none"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("test_accuracy" in r.data.metrics for r in runs)  # evaluate logged to the same runs
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))  # no stray store in the copies
    for run in runs:  # artifacts beside the store, not in the deleted copies
        assert run.info.artifact_uri.startswith((project / "mlruns").as_uri())
        (output,) = run.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.artifact_location.startswith((project / "mlruns").as_uri())
        assert (Path(model.artifact_location.removeprefix("file://")) / "MLmodel").is_file()
