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
(alias `champion`, see pipeline/study/registry.py).
Ablation runs (`augmentation.ablate=<operation>`) get a table of their own: each
operation's contribution to its preset. Every verdict in one report is Holm-corrected over
the report's comparisons and needs converged runs; beside it stand the comparison's
affinity, diversity and cost, and its per-class effects (class_effects.png,
affinity_diversity.png).

A Hydra multirun of `pipeline.train` ends with this comparison over the runs of that sweep
(`CompareAfterSweep`; compare.after_sweep=false turns it off).
Statistics and verdict rules: pipeline/study/verdicts.py and pipeline/study/seed_statistics.py; the
markdown: pipeline/study/report.py. MLflow, scipy, matplotlib (and TensorFlow, for affinity) load
inside `run`, so that `--help` and a wrong key answer at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.config.cli import stage_entry
from pipeline.config.compare import CompareConfig
from pipeline.config.compose import validate
from pipeline.config.schema import Config, TrackingConfig
from pipeline.errors import TrackingError, UserError
from pipeline.stopping import stop_requested
from pipeline.tracking.store import experiment_link, save_runs_view, tracking_uri, ui_lines, use_experiment

FIGURES = ("comparison.png", "class_effects.png", "affinity_diversity.png")
CURVES = ("val_accuracy", "val_loss", "train_loss", "epoch_seconds")  # per-epoch histories the report reads


def run(config: Config, run_ids: set[str] | None = None, record: bool = True) -> dict:
    """Compare the FINISHED training runs of the experiment (only `run_ids`, when given); `record`:
    also as a comparison run in MLflow (and a champion registered), not just the files."""
    from pipeline.study.grouping import choose_metric
    from pipeline.study.report import terminal_summary, verdict_lines
    from pipeline.tracking.runs import connect

    connect(config.tracking, config.paths.cache_dir, create_experiment=False)
    groups, left_out = finished_groups(config.compare, config.tracking.experiment, run_ids)
    metric = choose_metric(config.compare.metric, groups)
    comparisons, notes = decided(groups, metric, config.compare)  # (differences, ablations, tta)
    differences, ablations, _ = comparisons
    notes += affinity_notes(config, groups, differences, ablations)
    report = report_of(config.compare, config.tracking.experiment, groups, metric, left_out, comparisons, notes)
    reports = write_report(report, groups, comparisons, Path(config.paths.reports_dir))
    width = shutil.get_terminal_size((100, 24)).columns
    print(terminal_summary(report, width))
    print(f"the whole report: {reports / 'comparison.md'} (figures beside it)")
    if record:
        record_report(config.tracking, config.compare.register, report, groups, differences, run_ids, reports)
    print("\n" + "\n".join(verdict_lines(report, width)))
    return report


def finished_groups(settings: CompareConfig, experiment: str, run_ids: set[str] | None) -> tuple[list, int]:
    """The compared runs of `experiment` in their groups, and how many runs were left out (not FINISHED, or
    not matching compare.filter); an error saying what to train when there is nothing to compare."""
    from pipeline.study.grouping import group_runs
    from pipeline.study.runs import training_runs

    runs, left_out = training_runs(experiment, settings.filter, run_ids, CURVES)
    if not runs:
        raise TrackingError(
            f"No FINISHED training runs in experiment '{experiment}'"
            f"{' matching compare.filter' if settings.filter else ''} ({left_out} other runs): "
            "train some first, e.g. python -m pipeline.train -m augmentation=none,lesson "
            "seed=1,2,3,4,5"
        )
    groups = group_runs(runs)
    presets = sorted({g.preset for g in groups})
    if settings.baseline not in presets and not any(r.ablated for g in groups for r in g.runs):
        raise UserError(
            f"compare.baseline={settings.baseline}: none of these {len(runs)} runs used it; their presets are "
            f"{', '.join(presets)}. Set compare.baseline to one of them, or train the baseline first "
            f"(python -m pipeline.train -m augmentation={settings.baseline} seed=...)."
        )
    return groups, left_out


def decided(groups: list, metric: str, settings: CompareConfig) -> tuple[tuple[list, list, list], list[str]]:
    """((differences with the baseline, ablations, test-time augmentation's differences), notes): in a
    fixed study Holm-corrected together; in a sequential one (compare.rounds) each look at its own share
    of the false-verdict rate. The notes say what the reader must know to trust them."""
    from pipeline.study.decisions import correct_for_many
    from pipeline.study.records import DATA_VERSION
    from pipeline.study.sequential import decide_in_rounds
    from pipeline.study.verdicts import ablation_contributions, compare_groups, tta_differences

    notes = []
    versions = sorted({r.params[DATA_VERSION] for g in groups for r in g.runs})
    if len(versions) > 1:
        notes.append(
            f"these runs trained on {len(versions)} versions of the data ({', '.join(versions)}: "
            f"the tag data_manifest_sha256): each group holds one version and is compared only with the "
            f'{settings.baseline!r} runs of the same version. compare.filter="tags.data_manifest_sha256 LIKE '
            f"'{versions[-1]}%'\" keeps one."
        )
    confidence, power, margin = settings.confidence, settings.power, settings.margin / 100
    if settings.rounds:
        if any("evaluate.tta" in r.params for g in groups for r in g.runs):
            notes.append("test-time augmentation gets its verdicts in a fixed study: compare with compare.rounds=null")
        rounds = list(settings.rounds)
        return (*decide_in_rounds(groups, settings.baseline, metric, rounds, confidence, power, margin), []), notes
    differences = compare_groups(groups, settings.baseline, metric, confidence, power)
    ablations = ablation_contributions(groups, metric, confidence, power)
    tta = tta_differences(groups, metric, confidence, power)
    correct_for_many(differences + ablations + tta, confidence, power, margin)
    seed_counts = sorted({len(g.runs) for g in groups})
    if len(seed_counts) > 1:
        notes.append(
            f"the groups have {seed_counts[0]} to {seed_counts[-1]} seeds: if seeds were added after looking at "
            "the verdicts (python -m pipeline.rounds), compare with that study's compare.rounds, or these "
            "verdicts are too sure of themselves"
        )
    return (differences, ablations, tta), notes


def affinity_notes(config: Config, groups: list, differences: list, ablations: list) -> list[str]:
    """Each comparison's affinity, measured with the baseline's models on the validation split
    (compare.affinity; pipeline/study/affinity.py) into the differences; notes on what could not be."""
    if not (config.compare.affinity and (differences or ablations)):
        return []
    if not (Path(config.paths.split_dir) / "val.csv").is_file():
        return [f"no affinity: no validation split at {config.paths.split_dir} (python -m pipeline.split)"]
    from pipeline.data.cache import disk_cache
    from pipeline.study.affinity import measure_affinities  # TensorFlow and the models load here, only when asked

    return measure_affinities(
        groups,
        differences,
        ablations,
        config.compare.baseline,
        config.paths.split_dir,
        config.train.batch_size,
        config.model,
        config.paths.cache_dir,
        disk_cache(config.paths.cache_dir, config.data.cache),
    )


def report_of(settings: CompareConfig, experiment: str, groups, metric, left_out: int, comparisons, notes) -> dict:
    """The report: the settings, the compared runs, the groups' table and every comparison
    (comparison.json holds it as it is)."""
    from pipeline.study.grouping import group_table
    from pipeline.study.verdicts import class_flags

    differences, ablations, tta = comparisons
    return {
        "experiment": experiment,
        "filter": settings.filter,
        "metric": metric,
        "baseline": settings.baseline,
        "confidence": settings.confidence,
        "power": settings.power,
        "margin": settings.margin,
        "rounds": list(settings.rounds) if settings.rounds else None,
        "runs": sum(len(g.runs) for g in groups),
        "compared_runs": [{"run_id": r.run_id, "group": g.label, "seed": r.seed} for g in groups for r in g.runs],
        "runs_left_out": left_out,
        "repeats_dropped": sum(g.repeats_dropped for g in groups),
        "groups": group_table(groups),
        "differences": [vars(d) for d in differences],
        "ablations": [vars(d) for d in ablations],
        "tta": [vars(d) for d in tta],
        "class_flags": [flag for d in differences + ablations + tta for flag in class_flags(d)],
        "notes": notes,
    }


def write_report(report: dict, groups: list, comparisons: tuple, reports: Path) -> Path:
    """comparison.md, comparison.json and the figures into `reports`; returns that folder."""
    from pipeline.study.figures import affinity_diversity_figure, class_effects_figure, comparison_figure
    from pipeline.study.report import json_safe, render_markdown

    reports.mkdir(parents=True, exist_ok=True)
    (reports / "comparison.md").write_text(render_markdown(report))
    (reports / "comparison.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    # a comparison without runs to pair (method "none") has nothing to draw; the report says why
    differences, ablations, tta = ([d for d in found if d.method != "none"] for found in comparisons)
    comparison_figure(groups, differences + ablations + tta, reports / "comparison.png")
    class_effects_figure(differences + ablations + tta, reports / "class_effects.png")
    affinity_diversity_figure(differences, ablations, reports / "affinity_diversity.png")
    return reports


def record_report(
    tracking: TrackingConfig,
    register: bool,
    report: dict,
    groups: list,
    differences: list,
    run_ids: set[str] | None,
    reports: Path,
) -> None:
    """The comparison as a run of MLflow (`log_comparison_run`), the champion registered (compare.register),
    and the links that open both: the compared runs in a saved view, and the comparison run."""
    import mlflow

    from pipeline.study.registry import register_winner

    if register:
        print(register_winner(tracking.model_name, groups, differences, report["metric"]))
    uri = tracking_uri(tracking)
    training_experiment = mlflow.get_experiment_by_name(tracking.experiment).experiment_id
    view = runs_view(training_experiment, report, groups, run_ids)
    experiment_id, run_id = log_comparison_run(tracking, report, reports)
    report["comparison_run_id"] = run_id
    links = {"runs": experiment_link(uri, training_experiment, view=view)}
    print("\n".join(ui_lines(uri, {**links, "comparison": experiment_link(uri, experiment_id, run_id)})))


def runs_view(experiment_id: str, report: dict, groups, run_ids: set[str] | None) -> str:
    """A saved view of the compared runs in MLflow's runs table: the metric, the best validation
    accuracy, the preset, the seed and every other setting that varied, as columns; returns its key."""
    from pipeline.study.grouping import varied_settings
    from pipeline.study.records import DATA_VERSION

    runs = [r for g in groups for r in g.runs]
    varied = [k for k in varied_settings(runs) if k != DATA_VERSION and not k.startswith("augmentation.")]
    columns = [f"metrics.{report['metric']}", "metrics.best_val_accuracy", "tags.augmentation", "params.seed"]
    columns += [f"params.{key}" for key in varied]
    ids = sorted(run_ids) if run_ids else []
    search = f"attributes.run_id IN ({', '.join(repr(i) for i in ids)})" if ids else (report["filter"] or "")
    slug = "runs-" + hashlib.sha256(search.encode()).hexdigest()[:8]
    name = f"{report['runs']} runs by {report['metric']}" + (" (a sweep)" if ids else "")
    save_runs_view(experiment_id, slug, name, list(dict.fromkeys(columns)), search)
    return slug


class CompareAfterSweep(Callback):
    """Hydra callback: when a multirun of `pipeline.train` ends, compare the runs of that sweep
    (trained or skipped as already FINISHED: every job's reports/run.json names its run) and
    print the verdict table. Registered in conf/config.yaml; compare.after_sweep=false: off."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        settings = validate(config)
        if not settings.compare.after_sweep or stop_requested.is_set():  # stopped: its rerun will compare
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        run_ids = sweep_run_ids(sweep_dir)
        if not run_ids:
            return
        print(f"\n== comparison of the {len(run_ids)} runs of this sweep ({sweep_dir}) ==")
        settings.paths.reports_dir = str(sweep_dir / "comparison")
        try:
            run(settings, run_ids)
        except UserError as error:  # the sweep itself succeeded: say why there is no comparison
            print(f"no comparison: {error}")


def comparisons_experiment(experiment: str) -> str:
    """Comparison runs live in their own experiment, beside the training runs they compare."""
    return f"{experiment}-comparisons"


def sweep_run_ids(folder: Path) -> set[str]:
    """The MLflow runs of the sweeps under `folder`: each job's reports/run.json names its run."""
    return {json.loads(record.read_text())["run_id"] for record in folder.glob("**/reports/run.json")}


def log_comparison_run(tracking: TrackingConfig, report: dict, reports: Path) -> tuple[str, str]:
    """The report as a run of its own experiment (`<experiment>-comparisons`, so that it never
    sits among the training runs); returns that experiment's id and the run's.

    What the MLflow UI shows without a click: its name (what it compares), the description (each verdict
    in a line, in points, and the compared runs as links), a `verdict.<group>` tag per comparison and
    `verdicts` for the list, metrics in points (`difference/<group>`, `interval_low/...`,
    `interval_high/...`) and percent (`<metric> %/<group>`, each group's mean) beside `holm_p/...`; the
    report and its figures are the artifacts."""
    import mlflow

    experiment = tracking.experiment
    compared_id = mlflow.MlflowClient().get_experiment_by_name(experiment).experiment_id
    target = use_experiment(comparisons_experiment(experiment), tracking_uri(tracking))
    comparisons = report["differences"] + report["ablations"] + report["tta"]
    verdicts = ", ".join(f"{d['group']} {d['verdict']}" for d in comparisons)
    with mlflow.start_run(
        run_name=comparison_name(report),
        description=comparison_description(report, compared_id),
        tags={
            "run_kind": "comparison",
            "metric": report["metric"],
            "baseline": report["baseline"],
            "compared_experiment": experiment,
            "compared_runs": ",".join(r["run_id"] for r in report["compared_runs"])[:5000],
            "verdicts": verdicts[:5000],  # the comparisons' list shows them in one column (its saved view)
            **{_metric_key(f"verdict.{d['group']}"): d["verdict"] for d in comparisons},
        },
    ) as run:
        mlflow.log_params(
            {"filter": report["filter"] or "", "confidence": report["confidence"], "runs": report["runs"]}
        )
        for d in comparisons:
            figures = {
                "difference": d["mean"],
                "interval_low": d["low"],
                "interval_high": d["high"],
            }
            points = {k: 100 * v for k, v in figures.items() if v is not None and not math.isnan(v)}
            if d["p_adjusted"] is not None and not math.isnan(d["p_adjusted"]):
                points["holm_p"] = d["p_adjusted"]
            mlflow.log_metrics({_metric_key(f"{kind}/{d['group']}"): value for kind, value in points.items()})
        metric = report["metric"]
        means = {g["group"]: 100 * g[f"{metric}_mean"] for g in report["groups"] if g[f"{metric}_n"]}
        mlflow.log_metrics({_metric_key(f"{metric} %/{group}"): value for group, value in means.items()})
        for file in ("comparison.md", "comparison.json", *FIGURES):
            mlflow.log_artifact(str(reports / file))
    save_runs_view(target.experiment_id, "verdicts", "comparisons and their verdicts", ["tags.verdicts", "params.runs"])
    return target.experiment_id, run.info.run_id


def comparison_name(report: dict) -> str:
    """What a comparison run is called: what it compares, e.g. `lesson, light vs none, 5 seeds`."""
    groups = [d["group"] for d in report["differences"] + report["tta"]] + [
        f"-{d['group']}" for d in report["ablations"]
    ]
    seeds = sorted({len(g["seeds"].split(",")) for g in report["groups"]})
    shown = ", ".join(groups[:3]) + (f" and {len(groups) - 3} more" if len(groups) > 3 else "")
    count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    return f"{shown} vs {report['baseline']}, {count} seeds"


MODEL_TRAINING = "?workflowType=machine_learning"  # the UI's mode for training runs (else it may open GenAI's)


def comparison_description(report: dict, compared_experiment_id: str) -> str:
    """The comparison run's description (markdown, shown at the top of its page): the setup, each
    comparison's verdict with its difference in points, and the compared runs, each a link."""
    confidence = f"{report['confidence']:.0%}"
    lines = [
        f"**{report['runs']} runs** of `{report['experiment']}` against `{report['baseline']}`, on "
        f"`{report['metric']}`: differences in points with {confidence} intervals, Holm-corrected over "
        "the comparisons below.",
        "",
    ]
    for d in report["differences"] + report["ablations"] + report["tta"]:
        if d["mean"] is None or math.isnan(d["mean"]):
            lines.append(f"- **{d['group']}** vs {d['baseline']}: no comparison; {d['reason']}")
            continue
        interval = f" [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]" if d["low"] is not None else ""
        method = f" ({d['method']})" if d["method"] != "none" else ""
        lines.append(
            f"- **{d['group']}** vs {d['baseline']}: **{d['verdict']}**, {100 * d['mean']:+.2f} points{interval}"
            f"{method}; {d['reason']}"
        )
    runs = [
        f"[{r['group']} seed {r['seed']}](#/experiments/{compared_experiment_id}/runs/{r['run_id']}{MODEL_TRAINING})"
        for r in report["compared_runs"]
    ]
    lines += ["", "Compared runs: " + ", ".join(runs)]
    return "\n".join(lines)


METRIC_KEY_LENGTH = 200  # MLflow refuses metric names over 250 characters


def _metric_key(text: str) -> str:
    """MLflow metric (and tag) names allow letters, digits, _ - . / and spaces; a long group label (many
    varied settings) is cut and made unique by a digest of the whole (the report has it in full)."""
    key = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)
    if len(key) <= METRIC_KEY_LENGTH:
        return key
    return f"{key[: METRIC_KEY_LENGTH - 9]}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"


main = stage_entry(
    run,
    reads=(
        "compare",
        "tracking",
        "paths",
        "data.cache",
        "model.frozen_runtime",
        "model.frozen_precision",
        "train.batch_size",
    ),
)

if __name__ == "__main__":
    main()
