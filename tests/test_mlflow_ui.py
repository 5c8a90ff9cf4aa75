"""The MLflow UI in a real headless Chromium: a plain and an augmented training run, tracked to a
real `mlflow server`, are listed in the experiment and shown side by side in the compare view."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_module, train_args

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def system_chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium found (looked for chromium, chromium-browser, google-chrome): "
        "install Debian's package with `apt-get install chromium` (.ci/run does this when it can)"
    )


def ui_number(value: float) -> str:
    """How the MLflow UI prints a metric: rounded to 3 decimals, no trailing zeros."""
    return f"{round(value, 3):g}"


def test_runs_and_their_val_accuracy_in_the_mlflow_ui(split_done, mlflow_server):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    browser_path = system_chromium()
    tmp_path = split_done
    # test_in_sweeps off: with a job's test metrics (a dozen test_* keys) the last "val_accuracy" text of the
    # compare view was no longer a visible one (CI, 3b10add); the sweep's test evaluation is tested in test_train
    args = [
        a
        for a in train_args(tmp_path, mlflow_server, "train.epochs=1", "train.test_in_sweeps=false")
        if not a.startswith("hydra.run")
    ]
    trained = run_module("pipeline.train", "-m", "augmentation=none,lesson", *args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("augmentation")
    runs = {r.data.tags["augmentation"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"none", "lesson"}

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        # the link training prints lands on the runs, in the UI's model-training mode
        link = f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
        assert f"MLflow UI: {link}" in trained.stdout
        page.goto(link, wait_until="load")
        for run in runs.values():
            page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "mlflow-runs.png"))

        ids = json.dumps([r.info.run_id for r in runs.values()])
        page.goto(
            f'{mlflow_server}/#/compare-runs?runs={ids}&experiments=["{experiment.experiment_id}"]', wait_until="load"
        )
        page.get_by_text("Run details").first.wait_for(timeout=60_000)
        for run in runs.values():
            page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("val_accuracy", exact=True).last.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "mlflow-compare.png"), full_page=True)
        shown = page.inner_text("body")

        # the sweep's comparison run opens on its verdict, in points, and links the runs it compared
        comparisons = client.get_experiment_by_name("augmentation-comparisons")
        (comparison,) = client.search_runs([comparisons.experiment_id])
        verdict = comparison.data.tags["verdict.lesson"]
        difference = comparison.data.metrics["difference/lesson"]
        link = f"{mlflow_server}/#/experiments/{comparisons.experiment_id}/runs/{comparison.info.run_id}"
        link += "?workflowType=machine_learning"
        assert f"MLflow UI: {link}   (this comparison: its verdicts)" in trained.stdout  # printed after the sweep
        page.goto(link)
        page.get_by_text("Compared runs:").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "mlflow-comparison-run.png"), full_page=True)
        overview = page.inner_text("body")
        links = [page.locator(f'a[href*="/runs/{run.info.run_id}"]').count() for run in runs.values()]
        browser.close()

    assert f"lesson vs none: {verdict}, {difference:+.2f} points" in overview, overview[:3000]
    assert all(links), links

    assert "Comparing 2 Runs from 1 Experiment" in shown
    details = shown[shown.index("Run details") :]  # the table below the plots
    parameters, metrics = (
        details[details.index("Parameters") : details.index("Metrics")],
        details[details.index("Metrics") :],
    )
    assert "augmentation.name" in parameters and "lesson" in parameters and "none" in parameters
    assert "val_accuracy" in metrics
    for run in runs.values():
        assert ui_number(run.data.metrics["val_accuracy"]) in metrics
    assert (tmp_path / "mlflow-compare.png").stat().st_size > 20_000
