"""Command `compare`: does each augmentation help, over seeds? A report from the MLflow runs.

    python -m pipeline.compare
    python -m pipeline.compare tracking.experiment=augmentation compare.filter="params.`model.name` = 'residual_cnn'"

Reads the FINISHED training runs of `tracking.experiment`, groups them by augmentation
preset (and any other setting that was varied), and writes to <paths.reports_dir>:
comparison.md (the tables and verdicts, also printed), comparison.png (curves with bands
over seeds, and the differences with their intervals) and comparison.json (the same
numbers, for scripts). They are also logged as the artifacts of a comparison run in the
same MLflow experiment (tag run_kind=comparison; later comparisons skip it).
Statistics and verdict rules: pipeline/comparison.py.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import mlflow

from pipeline import tracking
from pipeline.comparison import choose_metric, compare_groups, group_runs, group_table
from pipeline.config import Config, stage_entry
from pipeline.errors import TrackingError
from pipeline.visuals import comparison_figure


def run(config: Config) -> dict:
    settings = config.compare
    tracking.connect(config, create_experiment=False)
    runs, left_out = tracking.training_runs(config.tracking.experiment, settings.filter)
    if not runs:
        raise TrackingError(f"No FINISHED training runs in experiment '{config.tracking.experiment}'"
                            f"{' matching compare.filter' if settings.filter else ''} ({left_out} other runs): "
                            "train some first, e.g. python -m pipeline.train -m augmentation=none,lesson seed=1,2,3")
    groups = group_runs(runs)
    metric = choose_metric(settings.metric, groups)
    differences = compare_groups(groups, settings.baseline, metric, settings.confidence)
    report = {"experiment": config.tracking.experiment, "filter": settings.filter, "metric": metric,
              "baseline": settings.baseline, "confidence": settings.confidence, "runs": len(runs),
              "runs_left_out": left_out, "groups": group_table(groups),
              "differences": [vars(d) for d in differences]}

    reports = Path(config.paths.reports_dir)
    reports.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    (reports / "comparison.md").write_text(markdown)
    (reports / "comparison.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    comparison_figure(groups, differences, reports / "comparison.png")
    print(markdown)
    log_comparison_run(report, reports)
    print(f"-> {reports / 'comparison.md'}, {reports / 'comparison.png'}, {reports / 'comparison.json'}")
    return report


def log_comparison_run(report: dict, reports: Path) -> None:
    name = time.strftime("comparison-%Y%m%d-%H%M%S")
    with mlflow.start_run(run_name=name, tags={"run_kind": "comparison", "metric": report["metric"],
                                               "baseline": report["baseline"]}):
        mlflow.log_params({"filter": report["filter"] or "", "confidence": report["confidence"],
                           "runs": report["runs"]})
        for d in report["differences"]:
            if not math.isnan(d["mean"]):
                mlflow.log_metric(_metric_key(f"diff {d['group']}"), d["mean"])
        for file in ("comparison.md", "comparison.png", "comparison.json"):
            mlflow.log_artifact(str(reports / file))


def _metric_key(text: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)


def _points(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 100:+.2f}"


def _percent(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{mean * 100:.2f}" + ("" if math.isnan(std) else f" ± {std * 100:.2f}")


def render_markdown(report: dict) -> str:
    """The report as markdown: groups (accuracy in %, mean ± std over seeds), then the verdicts."""
    lines = [f"# Augmentation comparison: experiment `{report['experiment']}`", "",
             f"{report['runs']} finished runs"
             + (f" ({report['runs_left_out']} failed/killed/running runs left out)" if report["runs_left_out"] else "")
             + (f", filter `{report['filter']}`" if report["filter"] else "") + ".", "",
             "| group | runs | seeds | best val accuracy % | test accuracy % | epochs to best |",
             "|---|---|---|---|---|---|"]
    for g in report["groups"]:
        epochs = "-" if math.isnan(g["best_epoch_mean"]) else f"{g['best_epoch_mean']:.1f}"
        lines.append(f"| {g['group']} | {g['runs']} | {g['seeds']} "
                     f"| {_percent(g['best_val_accuracy_mean'], g['best_val_accuracy_std'], g['best_val_accuracy_n'])} "
                     f"| {_percent(g['test_accuracy_mean'], g['test_accuracy_std'], g['test_accuracy_n'])} "
                     f"| {epochs} |")
    lines += ["", f"## Against `{report['baseline']}`: {report['metric']}, "
                  f"difference in points with a {report['confidence']:.0%} interval", "",
              "| group | vs | difference | interval | method | verdict |", "|---|---|---|---|---|---|"]
    for d in report["differences"]:
        interval = "-" if d["low"] is None else f"[{_points(d['low'])}, {_points(d['high'])}]"
        lines.append(f"| {d['group']} | {d['baseline']} | {_points(d['mean'])} | {interval} | {d['method']} "
                     f"| **{d['verdict']}**: {d['reason']} |")
    if not report["differences"]:
        lines.append(f"| (no group to compare with `{report['baseline']}`) | | | | | |")
    lines += ["", "keep: the whole interval is above 0; drop: below 0; inconclusive: it includes 0, or there are "
                  "too few runs. One run per setting cannot tell a 2-point gain from noise: run several seeds.", ""]
    return "\n".join(lines)


def _json_safe(value):
    """NaN -> null, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


main = stage_entry(run)

if __name__ == "__main__":
    main()
