"""The MLflow UI in a real headless Chromium: what a user sees first, from the links the tool prints."""

from __future__ import annotations

import shutil

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_tiny_dataset, run_module, running_mlflow_server, split_tiny, train_args

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


def test_the_readme_loop_says_each_note_once_and_its_links_open_the_first_look(tmp_path):
    """The README's loop, tiny: none and lesson over 3 seeds as one sweep, recorded to a real `mlflow server
    --app-name model-training`. The sweep says each note once and a line per job. In the MLflow UI, the runs
    link it prints shows every run's test accuracy without a click; the experiment opened from MLflow's
    experiment list and a model opened from its run's page are in the model-training view; the comparison
    run opens on its verdicts. (One test: the sweep is the slow part, and a module fixture is built once
    per xdist worker.)"""
    split_tiny(tmp_path, make_tiny_dataset(tmp_path))
    with running_mlflow_server(tmp_path / "server", "--app-name", "model-training") as server:
        args = [a for a in train_args(tmp_path, server, "train.epochs=1") if not a.startswith("hydra.run")]
        trained = run_module("pipeline.train", "-m", "augmentation=none,lesson", "seed=1,2,3", *args)
        assert trained.returncode == 0, trained.stderr[-3000:]
        sweep_says_each_note_once(trained)
        first_look_in_the_ui(server, trained, tmp_path)


def sweep_says_each_note_once(trained) -> None:
    said = trained.stdout + trained.stderr
    jobs = [line for line in trained.stdout.splitlines() if line.startswith("sweep: job ")]
    assert [line.split(" (")[0] for line in jobs] == [f"sweep: job {k} of 6" for k in range(1, 7)]
    assert "4 left, about" in jobs[2] or "4 left, under a minute left" in jobs[2]  # the time left, from jobs done
    assert said.count("was split from") <= 1 and said.count("MLflow UI:") == 1  # once per sweep
    assert "retracing" not in said and "\r" not in said and "0%|" not in said  # no warnings, no bar fragments
    assert "cuInit" not in said


def first_look_in_the_ui(server: str, trained, tmp_path) -> None:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    browser_path = system_chromium()
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("augmentation")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 6 and all("test_accuracy" in r.data.metrics for r in runs)
    (runs_link,) = [line.split(": ", 1)[1] for line in trained.stdout.splitlines() if line.startswith("  runs: ")]
    (comparison_link,) = [
        line.split(": ", 1)[1] for line in trained.stdout.splitlines() if line.startswith("  comparison: ")
    ]
    run = runs[0]
    (model,) = run.outputs.model_outputs
    comparisons = client.get_experiment_by_name("augmentation-comparisons").experiment_id
    (comparison,) = client.search_runs([comparisons])

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(runs_link, wait_until="load")
        page.get_by_text("6 matching runs").first.wait_for(timeout=60_000)
        page.get_by_text("test_accuracy", exact=True).first.wait_for(timeout=60_000)
        table = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "mlflow-runs.png"))

        page = browser.new_page(viewport={"width": 1600, "height": 1000})  # another visit: the experiment list
        page.goto(f"{server}/#/experiments", wait_until="load")
        page.get_by_text("augmentation-comparisons").first.wait_for(timeout=60_000)  # listed: loaded
        page.get_by_text("augmentation", exact=True).first.click()
        page.get_by_text("matching runs").first.wait_for(timeout=60_000)  # the runs table, not traces
        from_list = page.url

        page = browser.new_page(viewport={"width": 1600, "height": 1000})  # a run's page, then its model
        page.goto(f"{server}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}", wait_until="load")
        with page.expect_popup() as opened:  # the run's model links open in a new tab
            page.locator(f'a[href*="{model.model_id}"]:visible').first.click()
        page = opened.value
        page.get_by_text(run.info.run_name).first.wait_for(timeout=60_000)  # the model's page: its run
        model_page, model_text = page.url, page.inner_text("body")

        page.goto(comparison_link, wait_until="load")
        page.get_by_text("Compared runs:").first.wait_for(timeout=60_000)
        overview = page.inner_text("body")
        browser.close()

    for r in runs:  # every run and its test accuracy, as the UI prints a metric: 6 digits at most
        assert r.info.run_name in table and f"{r.data.metrics['test_accuracy']:.6g}" in table, r.info.run_name
    genai = ("Judges", "Sessions", "Observability")  # the GenAI view's menu; the model-training one: Runs, Models
    assert "workflowType=genai" not in from_list and "/runs" in from_list
    assert f"/models/{model.model_id}" in model_page and not any(item in model_text for item in genai)
    verdict, difference = comparison.data.tags["verdict.lesson"], comparison.data.metrics["difference/lesson"]
    assert f"lesson vs none: {verdict}, {difference:+.2f} points" in overview, overview[:3000]
