"""Command `compare`: does each augmentation help, over seeds? A report from the MLflow runs.

    python -m pipeline.compare
    python -m pipeline.compare tracking.experiment=augmentation compare.filter="params.`model.name` = 'residual_cnn'"

Reads the FINISHED training runs of `tracking.experiment`, groups them by augmentation
preset (and any other setting that was varied), and writes to <paths.reports_dir>:
comparison.md (the tables and verdicts, also printed), comparison.png (curves with bands
over seeds, every seed's difference and the intervals) and comparison.json (the same
numbers, for scripts). They are also logged as the artifacts of a comparison run in the
experiment `<tracking.experiment>-comparisons` (tag run_kind=comparison). With
compare.register=true a `keep` verdict registers the winning group's best model
(alias `champion`, see tracking.register_champion).
Ablation runs (`augmentation.ablate=<operation>`) get a table of their own: each
operation's contribution to its preset. Every verdict in one report is Holm-corrected over
the report's comparisons and needs converged runs; beside it stand the comparison's
affinity, diversity and cost, and its per-class effects (class_effects.png,
affinity_diversity.png).

A Hydra multirun of `pipeline.train` ends with this comparison over the runs of that sweep
(`CompareAfterSweep`; compare.after_sweep=false turns it off).
Statistics and verdict rules: pipeline/comparison.py and pipeline/statistics.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import mlflow
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline import tracking
from pipeline.comparison import (SEEDS_ADVISED, ablation_contributions, choose_metric, class_flags, compare_groups,
                                 correct_for_many, group_runs, group_table)
from pipeline.config import Config, stage_entry, validate
from pipeline.errors import TrackingError, UserError
from pipeline.statistics import MOST_SEEDS_ADVISED
from pipeline.visuals import affinity_diversity_figure, class_effects_figure, comparison_figure

FIGURES = ("comparison.png", "class_effects.png", "affinity_diversity.png")
CURVES = ("val_accuracy", "val_loss", "loss", "epoch_seconds")  # per-epoch histories the report reads


def run(config: Config, run_ids: set[str] | None = None) -> dict:
    """Compare the FINISHED training runs of the experiment (only `run_ids`, when given)."""
    settings = config.compare
    tracking.connect(config, create_experiment=False)
    runs, left_out = tracking.training_runs(config.tracking.experiment, settings.filter, run_ids, CURVES)
    if not runs:
        raise TrackingError(f"No FINISHED training runs in experiment '{config.tracking.experiment}'"
                            f"{' matching compare.filter' if settings.filter else ''} ({left_out} other runs): "
                            "train some first, e.g. python -m pipeline.train -m augmentation=none,lesson "
                            "seed=1,2,3,4,5")
    groups = group_runs(runs)
    metric = choose_metric(settings.metric, groups)
    differences = compare_groups(groups, settings.baseline, metric, settings.confidence, settings.power)
    ablations = ablation_contributions(groups, metric, settings.confidence, settings.power)
    correct_for_many(differences + ablations, settings.confidence, settings.power)
    notes = []
    if settings.affinity and (differences or ablations):
        from pipeline.affinity import measure_affinities  # TensorFlow and the models load here, only when asked

        notes = measure_affinities(groups, differences, ablations, settings.baseline, config.paths.split_dir,
                                   config.train.batch_size)
    report = {"experiment": config.tracking.experiment, "filter": settings.filter, "metric": metric,
              "baseline": settings.baseline, "confidence": settings.confidence, "power": settings.power,
              "runs": sum(len(g.runs) for g in groups), "runs_left_out": left_out,
              "repeats_dropped": sum(g.repeats_dropped for g in groups), "groups": group_table(groups),
              "differences": [vars(d) for d in differences], "ablations": [vars(d) for d in ablations],
              "class_flags": [flag for d in differences + ablations for flag in class_flags(d)], "notes": notes}

    reports = Path(config.paths.reports_dir)
    reports.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    (reports / "comparison.md").write_text(markdown)
    (reports / "comparison.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    comparison_figure(groups, differences + ablations, reports / "comparison.png")
    class_effects_figure(differences + ablations, reports / "class_effects.png")
    affinity_diversity_figure(differences + ablations, reports / "affinity_diversity.png")
    print(markdown)
    if settings.register:
        print(register_winner(config, groups, differences, metric))
    experiment_id = log_comparison_run(config, report, reports)
    print(f"-> {reports / 'comparison.md'}, {reports / 'comparison.json'}, "
          + ", ".join(str(reports / name) for name in FIGURES))
    print(tracking.ui_hint(tracking.tracking_uri(config), experiment_id) + "   (this comparison)")
    return report


def register_winner(config: Config, groups: list, differences: list, metric: str) -> str:
    """compare.register=true: the best run of the group with the largest `keep` difference
    becomes a registered model version; the alias `champion` moves to it only if its group is
    better than the current champion's."""
    kept = [d for d in differences if d.verdict == "keep"]
    if not kept:
        return "registry: nothing registered, no group has a keep verdict"
    winner = max(kept, key=lambda d: d.mean)
    group = next(g for g in groups if g.label == winner.group)
    values = group.values(metric)
    best_run = max((r for r in group.runs if r.seed in values), key=lambda r: values[r.seed])
    group_mean = sum(values.values()) / len(values)
    return tracking.register_champion(config.tracking.model_name, best_run.run_id, group.label, metric, group_mean)


class CompareAfterSweep(Callback):
    """Hydra callback: when a multirun of `pipeline.train` ends, compare the runs of that sweep
    (trained or skipped as already FINISHED: every job's reports/run.json names its run) and
    print the verdict table. Registered in conf/config.yaml; compare.after_sweep=false: off."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        settings = validate(config)
        if not settings.compare.after_sweep:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        run_ids = set()
        for record in sweep_dir.glob("**/reports/run.json"):
            run_ids.add(json.loads(record.read_text())["run_id"])
        if not run_ids:
            return
        print(f"\n== comparison of the {len(run_ids)} runs of this sweep ({sweep_dir}) ==")
        settings.paths.reports_dir = str(sweep_dir / "comparison")
        try:
            run(settings, run_ids)
        except UserError as error:  # the sweep itself succeeded: say why there is no comparison
            print(f"no comparison: {error}")


def log_comparison_run(config: Config, report: dict, reports: Path) -> str:
    """The report as a run of its own experiment (`<experiment>-comparisons`, so that it never
    sits among the training runs); returns that experiment's id."""
    name = time.strftime("comparison-%Y%m%d-%H%M%S")
    experiment = config.tracking.experiment
    target = tracking.use_experiment(tracking.comparisons_experiment(experiment), tracking.tracking_uri(config))
    with mlflow.start_run(run_name=name, tags={"run_kind": "comparison", "metric": report["metric"],
                                               "baseline": report["baseline"], "compared_experiment": experiment}):
        mlflow.log_params({"filter": report["filter"] or "", "confidence": report["confidence"],
                           "runs": report["runs"]})
        for d in report["differences"]:
            if not math.isnan(d["mean"]):
                mlflow.log_metric(_metric_key(f"diff {d['group']}"), d["mean"])
        for d in report["ablations"]:
            if not math.isnan(d["mean"]):
                mlflow.log_metric(_metric_key(f"contribution {d['group']}"), d["mean"])
        for file in ("comparison.md", "comparison.json", *FIGURES):
            mlflow.log_artifact(str(reports / file))
    return target.experiment_id


METRIC_KEY_LENGTH = 200  # MLflow refuses metric names over 250 characters


def _metric_key(text: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and spaces; a long group label (many
    varied settings) is cut and made unique by a digest of the whole (the report has it in full)."""
    key = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)
    if len(key) <= METRIC_KEY_LENGTH:
        return key
    return f"{key[:METRIC_KEY_LENGTH - 9]}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _points(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 100:+.2f}"


def _percent(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{mean * 100:.2f}" + ("" if math.isnan(std) else f" ± {std * 100:.2f}")


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None else f"[{_points(low)}, {_points(high)}]"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _p(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _difference_rows(differences: list[dict]) -> list[str]:
    rows = []
    for d in differences:
        wins = "-" if d["probability_of_improvement"] is None else f"{d['probability_of_improvement']:.2f}"
        seeds = "-" if d["low"] is None else " / ".join(
            str(n) if n else f">{MOST_SEEDS_ADVISED}" for n in (d["seeds_needed"], d["seeds_needed_1pt"]))
        level = "" if d["verdict_confidence"] is None else f" at {d['verdict_confidence']:.1%}"
        rows.append(f"| {d['group']} | {d['baseline']} | {_points(d['mean'])} | {_interval(d['t_low'], d['t_high'])} "
                    f"| {_interval(d['bootstrap_low'], d['bootstrap_high'])} | {_p(d['t_p_value'])} "
                    f"| {_p(d['p_adjusted'])} | {_interval(d['low'], d['high'])}{level} | {_p(d['p_value'])} | {wins} "
                    f"| {_ratio(d['affinity'])} | {_ratio(d['diversity'])} | {_ratio(d['cost'])} | {seeds} "
                    f"| {d['method']} | **{d['verdict']}**: {d['reason']} |")
    return rows


DIFFERENCE_HEADER = ["| {what} | vs | difference | t interval | bootstrap interval | t-test p | Holm p "
                     "| verdict interval | sign-flip p | P(better) | affinity | diversity | cost "
                     "| seeds to resolve it / 1 point | method | verdict |", "|---" * 16 + "|"]


def class_table(differences: list[dict]) -> list[str]:
    """Classes x comparisons: mean difference of test recall in points, ** where significant."""
    shown = [d for d in differences if d["per_class"]]
    if not shown:
        return []
    classes = sorted({name for d in shown for name in d["per_class"]})
    lines = ["| class | " + " | ".join(f"{d['group']} vs {d['baseline']}" for d in shown) + " |",
             "|---" * (len(shown) + 1) + "|"]
    for name in classes:
        cells = []
        for d in shown:
            c = d["per_class"].get(name)
            cells.append("-" if c is None else (f"**{_points(c['mean'])}** [{_points(c['low'])}, {_points(c['high'])}]"
                                                if c["significant"] else f"{_points(c['mean'])}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: dict) -> str:
    """The report as markdown: groups (accuracy in %, mean ± std over seeds), the verdicts
    against the baseline, each ablated operation's contribution, the per-class effects and
    notes on the evidence."""
    lines = [f"# Augmentation comparison: experiment `{report['experiment']}`", "",
             f"{report['runs']} finished runs"
             + (f" ({report['runs_left_out']} failed/killed/running runs left out)" if report["runs_left_out"] else "")
             + (f", filter `{report['filter']}`" if report["filter"] else "") + ".", "",
             "| group | runs | seeds | best val accuracy % | test accuracy % | test balanced accuracy % | epochs to best "
             "| not converged |", "|---|---|---|---|---|---|---|---|"]
    for g in report["groups"]:
        epochs = "-" if math.isnan(g["best_epoch_mean"]) else f"{g['best_epoch_mean']:.1f}"
        lines.append(f"| {g['group']} | {g['runs']} | {g['seeds']} "
                     f"| {_percent(g['best_val_accuracy_mean'], g['best_val_accuracy_std'], g['best_val_accuracy_n'])} "
                     f"| {_percent(g['test_accuracy_mean'], g['test_accuracy_std'], g['test_accuracy_n'])} "
                     f"| {_percent(*(g[f'test_balanced_accuracy_{k}'] for k in ('mean', 'std', 'n')))} "
                     f"| {epochs} | {g['not_converged']} of {g['runs']} |")
    lines += ["", f"## Against `{report['baseline']}`: {report['metric']}, difference in points, "
                  f"{report['confidence']:.0%} intervals", "", *[h.format(what="group") for h in DIFFERENCE_HEADER]]
    lines += _difference_rows(report["differences"])
    if not report["differences"]:
        lines.append(f"| (no group to compare with `{report['baseline']}`) |" + " |" * 15)
    if report["ablations"]:
        lines += ["", f"## Which operation helps: the full preset minus the preset without it, {report['metric']}", "",
                  *[h.format(what="operation") for h in DIFFERENCE_HEADER]]
        lines += _difference_rows(report["ablations"])
    lines += ["", "keep: the verdict interval (the union of the t and bootstrap intervals, widened by Holm's correction "
                  "over this report's comparisons) is above 0 and the Holm-adjusted t-test p is below "
                  f"{1 - report['confidence']:.2f}; drop: the same, below 0; not converged: a run's best epoch came "
                  "within its last train.patience epochs (raise train.epochs); inconclusive: otherwise. "
                  "The sign-flip p (exact, no normality assumed) is shown but not corrected: it cannot go below "
                  "2/2^n (0.0625 at 5 seeds). P(better): the share of seeds on which the group beats the baseline. "
                  "affinity: the baseline models' val accuracy on images augmented by it alone / on clean images; "
                  "diversity: final training loss with it / without; cost: median epoch time with it / without. "
                  "Seeds to resolve it: seeds per group for a corrected verdict on this difference, and on a "
                  f"1-point one, with {report['power']:.0%} power given the spread seen. An ablation's keep means "
                  "the operation helps its preset.", ""]
    per_class = class_table(report["differences"] + report["ablations"])
    if per_class:
        lines += ["## Per class: test recall, difference in points (** Holm-corrected over the classes, "
                  "with its interval)", "", *per_class, ""]
        lines += [f"- {flag}" for flag in report["class_flags"]] or ["- no class moves significantly against the "
                                                                     "average"]
        lines.append("")
    lines += [f"- {note}" for note in evidence_notes(report) + report["notes"]]
    return "\n".join(lines) + "\n"


def evidence_notes(report: dict) -> list[str]:
    """What limits the evidence: repeated runs left out, runs still improving, too few seeds."""
    notes = []
    if report["repeats_dropped"]:
        notes.append(f"{report['repeats_dropped']} repeated run(s) of a seed already counted were left out "
                     "(the latest FINISHED run of each group and seed is used).")
    for g in report["groups"]:
        if g["not_converged"]:
            notes.append(f"{g['group']}: {g['not_converged']} of {g['runs']} runs had their best epoch within their "
                         "last train.patience epochs, so they may still have been improving: raise train.epochs "
                         "(train.resume=true continues them) for a verdict at convergence.")
    few = [g["group"] for g in report["groups"] if g["runs"] < SEEDS_ADVISED]
    if few:
        notes.append(f"fewer than {SEEDS_ADVISED} seeds in {', '.join(few)}: use at least {SEEDS_ADVISED} "
                     f"(seed=1,2,3,4,5); fewer give wide intervals, and below 3 there is no verdict at all.")
    return notes


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
