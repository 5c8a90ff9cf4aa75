"""Command `search`: then what would help? An Optuna search over augmentation whose best settings are
confirmed on fresh seeds before anyone adopts them.

    python -m pipeline.search experiment=cpu                  # 30 trials; the top 3 confirmed on 5 fresh seeds
    python -m pipeline.search experiment=cpu search.trials=50 search.top_k=5 search.seeds=8

A search's best trial is the luckiest of many, so its score is biased upward (the winner's curse):
1. Search: `search.trials` trials of Hydra's Optuna sweeper over conf/hparams_search/<search.space>.yaml,
   each a run of `pipeline.train` on seed `seed`, scored on its best val_accuracy; `none` on that seed too.
2. Candidates: the `search.top_k` best distinct settings, written as presets (<paths.reports_dir>/presets/).
3. Confirm: each candidate and `none` on `search.seeds` fresh seeds (seed+1 ..., never searched), tested;
   `compare` gives each candidate its verdict against `none`, Holm-corrected over the candidates.
4. Report (search.md, .json and .png beside comparison.md, and on the comparison run in MLflow): per
   candidate the search's estimate (its val accuracy minus none's, on the search seed), the confirmed
   difference on validation (the same measure; the estimate minus it is the winner's curse) and on
   test, and the verdict. When nothing is kept it says so: the search found nothing that beats `none`.

Every other key=value applies to every run (experiment=cpu, model.*, train.*). `search.space` names an
option of conf/hparams_search/ or a YAML file laid out as those (a copy whose ranges you edited).
Interrupted (Ctrl-C, SIGTERM), the same command resumes: the sampler's seed proposes the same trials
again and every finished run is skipped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config import CONF_DIR
from pipeline.config.cli import stage_entry
from pipeline.config.schema import Config, TrackingConfig
from pipeline.errors import ConfigError, UserError
from pipeline.study.rounds import command_folder_and_overrides, train_sweep

SET_BY_SEARCH = ("seed=", "search.", "compare.", "hydra.", "augmentation=", "augmentation.name=", "hparams_search=")
PRESET_PREFIX = "search-t"  # a candidate preset is named after its trial: search-t17-<digest>


@dataclass
class Job:
    """A finished job of a sweep: its overrides (key -> value as Hydra wrote them) and its run."""

    number: int
    overrides: dict[str, str]
    run_id: str
    best_val: float
    skipped: bool

    @property
    def seed(self) -> int:
        return int(self.overrides["seed"])


def run(config: Config) -> dict:
    from pipeline.study import compare
    from pipeline.tracking.store import check_store

    settings = config.search
    space_path = space_file(settings.space)
    space = searched_keys(space_path)
    check_store(config.tracking)
    folder, overrides = command_folder_and_overrides(SET_BY_SEARCH)
    fresh = list(range(config.seed + 1, config.seed + 1 + settings.seeds))
    seconds = {}

    started = time.monotonic()
    print(f"== the search: {settings.trials} trials of {space_path} on seed {config.seed} ==")
    search = [*space_overrides(space_path, folder), f"hydra.sweeper.n_trials={settings.trials}", f"seed={config.seed}"]
    train_sweep([*search, "train.test_in_sweeps=false", *overrides], folder / "search", "the search")
    # this search's trials, not those of an older, longer one run into the same folder
    trials = [t for t in finished_jobs(folder / "search") if t.number < settings.trials]
    if not trials:
        raise UserError(f"no trial of the search finished (their folders under {folder / 'search'} say why)")
    candidates = top_settings(trials, settings.top_k, space)
    seconds["search"] = time.monotonic() - started

    started = time.monotonic()
    names = [candidate_name(t, space) for t in candidates]
    for trial, name in zip(candidates, names):  # presets in a config folder of the confirmation's own
        preset = folder / "candidates" / "augmentation" / f"{name}.yaml"
        preset.parent.mkdir(parents=True, exist_ok=True)
        preset.write_text(preset_text(name, trial, space, f"# Trial {trial.number} of the search in {folder}.\n"))
    print(f"\n== confirmation: {', '.join(names)} and none on fresh seeds {fresh[0]}-{fresh[-1]} ==")
    searchpath = f"hydra.searchpath=[file://{folder / 'candidates'}]"
    arms = f"augmentation=none,{','.join(names)}"
    train_sweep(
        [arms, f"seed={','.join(map(str, fresh))}", searchpath, *overrides], folder / "confirmation", "the confirmation"
    )
    # none on the search seed: what the search's estimates are measured from
    train_sweep(["augmentation=none", f"seed={config.seed}", *overrides], folder / "none-on-search-seed", "none")
    confirmed = [j for j in finished_jobs(folder / "confirmation") if j.overrides["augmentation"] in ("none", *names)]
    seconds["confirmation"] = time.monotonic() - started

    started = time.monotonic()
    final = copy.deepcopy(config)
    final.compare.baseline, final.compare.rounds = "none", None
    reports = Path(config.paths.reports_dir)
    comparison = compare.run(final, {j.run_id for j in confirmed})
    seconds["comparison"] = time.monotonic() - started

    none_search = next((j for j in finished_jobs(folder / "none-on-search-seed") if j.seed == config.seed), None)
    report = {
        "space": str(space_path.relative_to(CONF_DIR.parent) if space_path.is_relative_to(CONF_DIR) else space_path),
        "searched_keys": space,
        "search_seed": config.seed,
        "confirmation_seeds": fresh,
        "trials": [vars(t) for t in trials],
        "trials_requested": settings.trials,
        "none_search_val": none_search.best_val if none_search else math.nan,
        "candidates": winners_curse(candidates, names, space, none_search, confirmed, comparison),
        "seconds": seconds,
        "comparison_run_id": comparison.get("comparison_run_id"),
    }
    write_report(report, candidates, reports, config.tracking)
    return report


def space_file(space: str) -> Path:
    """conf/hparams_search/<space>.yaml, or `space` itself: a YAML file laid out as those are (a copy to
    edit). `SearchConfig.problems` has checked that it is there."""
    if not space.endswith((".yaml", ".yml")):
        return CONF_DIR / "hparams_search" / f"{space}.yaml"
    return Path(space).expanduser().resolve()


def space_overrides(path: Path, folder: Path) -> list[str]:
    """How the search's sweep takes the space: its option, or a file given by path copied in as an option
    of its own (a name no option of conf/ has: Hydra would take conf/'s first)."""
    if path.parent == CONF_DIR / "hparams_search":
        return [f"hparams_search={path.stem}"]
    option = folder / "space" / "hparams_search" / "searched_space.yaml"
    option.parent.mkdir(parents=True, exist_ok=True)
    option.write_text(path.read_text())
    return [f"hydra.searchpath=[file://{folder / 'space'}]", "hparams_search=searched_space"]


def searched_keys(path: Path) -> list[str]:
    """The keys a space file searches (its hydra.sweeper.params), each an augmentation.* key."""
    try:
        layout = yaml.safe_load(path.read_text()) or {}
        params = ((layout.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    except (yaml.YAMLError, AttributeError) as error:
        raise ConfigError(f"search.space: {path} is not laid out as conf/hparams_search/'s files: {error}") from None
    if not params:
        raise ConfigError(f"search.space: {path} searches no keys (its hydra.sweeper.params is empty)")
    others = [key for key in params if not key.startswith("augmentation.")]
    if others:
        raise ConfigError(
            f"search.space: {path} searches {', '.join(others)}; a confirmed search writes presets of "
            "augmentation, so every searched key must be an augmentation.* key"
        )
    return list(params)


def finished_jobs(sweep_dir: Path) -> list[Job]:
    """The jobs of a sweep that have a run (trained or skipped as FINISHED), by job number."""
    jobs = []
    for record in sweep_dir.glob("*/reports/run.json"):
        job_dir = record.parent.parent
        written = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
        overrides = dict(o.split("=", 1) for o in written if "=" in o)
        run = json.loads(record.read_text())
        jobs.append(
            Job(int(job_dir.name), overrides, run["run_id"], run["best_val_accuracy"], bool(run.get("skipped")))
        )
    return sorted(jobs, key=lambda j: j.number)


def top_settings(trials: list[Job], k: int, keys: list[str]) -> list[Job]:
    """The `k` trials of best val accuracy with distinct settings of `keys` (the earlier trial of a tie)."""
    chosen, seen = [], set()
    for trial in sorted(trials, key=lambda t: (-t.best_val, t.number)):
        setting = tuple(settings_overrides(trial, keys))
        if setting not in seen:
            seen.add(setting)
            chosen.append(trial)
    return chosen[:k]


def settings_overrides(trial: Job, keys: list[str]) -> list[str]:
    return [f"{key}={trial.overrides[key]}" for key in keys if key in trial.overrides]


def candidate_name(trial: Job, keys: list[str]) -> str:
    """search-t<trial>-<digest of its settings>: two searches' trials of one number never share a name."""
    digest = hashlib.sha256(" ".join(settings_overrides(trial, keys)).encode()).hexdigest()[:4]
    return f"{PRESET_PREFIX}{trial.number}-{digest}"


def winners_curse(
    candidates: list[Job],
    names: list[str],
    keys: list[str],
    none_search: Job | None,
    confirmed: list[Job],
    comparison: dict,
) -> list[dict]:
    """Per candidate: the search's estimate, its confirmed differences (validation: the same measure as the
    estimate, so their gap is the winner's curse; test: the verdict's) and the verdict, differences as fractions."""
    val_by_arm: dict[str, dict[int, float]] = {}
    for job in confirmed:
        val_by_arm.setdefault(job.overrides["augmentation"], {})[job.seed] = job.best_val
    none_val = val_by_arm.get("none", {})
    rows = []
    for trial, name in zip(candidates, names):
        val = val_by_arm.get(name, {})
        paired = [val[s] - none_val[s] for s in sorted(val) if s in none_val]
        confirmed_val = sum(paired) / len(paired) if paired else math.nan
        estimate = trial.best_val - none_search.best_val if none_search else math.nan
        verdict = next((d for d in comparison["differences"] if d["group"] == name), None) or {}
        rows.append(
            {
                "name": name,
                "trial": trial.number,
                "settings": {k.removeprefix("augmentation."): trial.overrides[k] for k in keys if k in trial.overrides},
                "search_val": trial.best_val,
                "estimate": estimate,
                "confirmed_val": confirmed_val,
                "curse": estimate - confirmed_val,
                "seeds": len(paired),
                "confirmed_test": verdict.get("mean", math.nan),
                "low": verdict.get("low"),
                "high": verdict.get("high"),
                "verdict": verdict.get("verdict", "no comparison"),
            }
        )
    return rows


def preset_text(name: str, trial: Job, keys: list[str], comment: str) -> str:
    """A trial's settings as a preset of conf/augmentation/ named `name`, `comment` (lines) above it."""
    values = {"name": name}
    values |= {
        k.removeprefix("augmentation."): yaml.safe_load(trial.overrides[k]) for k in keys if k in trial.overrides
    }
    return comment + "".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items())  # JSON is YAML


def adoption_comment(candidate: dict, report: dict) -> str:
    """Where a candidate came from and what its confirmation said, above its preset in the report."""
    seeds = report["confirmation_seeds"]
    return (
        f"# Trial {candidate['trial']} of python -m pipeline.search over {report['space']} (seed "
        f"{report['search_seed']}): best val_accuracy {candidate['search_val']:.4f}.\n# Confirmed on seeds "
        f"{seeds[0]}-{seeds[-1]}: {candidate['verdict']}, {_points(candidate['confirmed_test'])} points of test accuracy.\n"
        f"# To adopt it, copy this file into conf/augmentation/ and train with augmentation={candidate['name']}.\n"
    )


def _points(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:+.2f}"


def _shown(value: str) -> str:
    """A setting as Hydra wrote it (`False`, `0.0688374424391886`, `[0.7,1.3]`), shown short: false, 0.0688."""
    loaded = yaml.safe_load(value)
    return f"{loaded:.3g}" if isinstance(loaded, float) else json.dumps(loaded)


def markdown(report: dict) -> str:
    """search.md: the winner's curse table, the conclusion, each candidate's settings, and where the time went."""
    seeds = report["confirmation_seeds"]
    trained = sum(not t["skipped"] for t in report["trials"])
    lines = [
        f"# Confirmed search over {report['space']}",
        "",
        f"The search: {len(report['trials'])} of {report['trials_requested']} trials finished on seed "
        f"{report['search_seed']} ({trained} trained here), scored on best val_accuracy; `none` on that seed "
        f"{report['none_search_val']:.4f}. The confirmation: the top {len(report['candidates'])} and `none` on "
        f"seeds {seeds[0]}-{seeds[-1]}, never searched, compared on test accuracy (Holm over the candidates; "
        "comparison.md has the full report).",
        "",
        "| candidate | trial | search estimate (val, 1 seed) | confirmed (val) | winner's curse | confirmed (test) "
        "| interval (test) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report["candidates"]:
        interval = f"[{_points(c['low'])}, {_points(c['high'])}]" if c["low"] is not None else "n/a"
        lines.append(
            f"| {c['name']} | {c['trial']} | {_points(c['estimate'])} | {_points(c['confirmed_val'])} | "
            f"{_points(c['curse'])} | {_points(c['confirmed_test'])} | {interval} | {c['verdict']} |"
        )
    lines += ["", "Differences in points against `none`, paired by seed.", "", *conclusion(report), ""]
    lines += ["## The candidates' settings", ""]
    lines += [
        f"- `{c['name']}`: " + ", ".join(f"{k} {_shown(v)}" for k, v in c["settings"].items())
        for c in report["candidates"]
    ]
    s = report["seconds"]
    lines += [
        "",
        "## Time",
        "",
        f"search {s['search'] / 60:.1f} min, confirmation {s['confirmation'] / 60:.1f} min, comparison "
        f"{s['comparison']:.0f} s: {sum(s.values()) / 60:.1f} min in all.",
    ]
    return "\n".join(lines) + "\n"


def conclusion(report: dict, reports: Path | None = None) -> list[str]:
    """The answer in a line or two: which candidates beat `none`, or that none did."""
    kept = [c for c in report["candidates"] if c["verdict"] == "keep"]
    if not kept:
        best = max(report["candidates"], key=lambda c: c["estimate"], default=None)
        lines = ["the search found nothing that beats `none`"]
        if best is not None and not math.isnan(best["estimate"]):
            lines[0] += (
                f": its best estimate, {best['name']} at {_points(best['estimate'])} points on the search seed, "
                f"came out {_points(best['confirmed_test'])} on test over {best['seeds']} fresh seeds ({best['verdict']})"
            )
        return lines
    where = f"{reports / 'presets'}/" if reports else "presets/"
    return [
        f"{c['name']} beats `none`: keep, {_points(c['confirmed_test'])} points on test "
        f"[{_points(c['low'])}, {_points(c['high'])}]; adopt it: cp {where}{c['name']}.yaml conf/augmentation/"
        for c in kept
    ]


def write_report(report: dict, candidates: list[Job], reports: Path, tracking: TrackingConfig) -> None:
    """search.md, search.json, search.png and the candidates' presets into `reports`; the same files on the
    comparison run in MLflow, whose description gains the search's table and the trials as links."""
    from pipeline.study.figures import search_figure
    from pipeline.study.report import json_safe

    presets = reports / "presets"
    presets.mkdir(parents=True, exist_ok=True)
    for c, trial in zip(report["candidates"], candidates):
        (presets / f"{c['name']}.yaml").write_text(
            preset_text(c["name"], trial, report["searched_keys"], adoption_comment(c, report))
        )
    text = markdown(report)
    (reports / "search.md").write_text(text)
    (reports / "search.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    search_figure(report, reports / "search.png")
    if report["comparison_run_id"]:
        record_on_comparison_run(report, reports, tracking)
    print("\n" + text.split("\n## The candidates' settings")[0].split("\n", 2)[2].rstrip())
    print(f"the whole report: {reports / 'search.md'} (search.png beside it; the candidates' presets in {presets})")


def record_on_comparison_run(report: dict, reports: Path, tracking: TrackingConfig) -> None:
    import mlflow

    from pipeline.tracking.store import experiment_link, save_runs_view, tracking_uri

    client, run_id = mlflow.MlflowClient(), report["comparison_run_id"]
    for name in ("search.md", "search.json", "search.png"):
        client.log_artifact(run_id, str(reports / name))
    client.log_artifacts(run_id, str(reports / "presets"), "presets")
    trained_in = client.get_experiment_by_name(tracking.experiment).experiment_id
    trial_ids = [t["run_id"] for t in report["trials"]]
    columns = ["metrics.best_val_accuracy", *(f"params.{key}" for key in report["searched_keys"])]
    view = f"search-{report['comparison_run_id'][:8]}"
    save_runs_view(
        trained_in,
        view,
        f"the {len(trial_ids)} trials of a search",
        columns,
        f"attributes.run_id IN ({', '.join(map(repr, trial_ids))})",
    )
    trials_link = experiment_link(tracking_uri(tracking), trained_in, view=view)
    description = client.get_run(run_id).data.tags.get("mlflow.note.content", "")
    table = markdown(report).split("\n## The candidates' settings")[0]
    client.set_tag(run_id, "mlflow.note.content", f"{table}\n[The search's trials]({trials_link})\n\n{description}")
    client.set_tag(run_id, "search.conclusion", conclusion(report)[0][:5000])
    client.set_tag(run_id, "search.trials", ",".join(trial_ids)[:5000])
    print(f"  the search's trials: {trials_link}")


main = stage_entry(
    run, reads=("search", "compare", "seed", "tracking", "paths", "train.epochs", "train.patience"), sweeps=False
)

if __name__ == "__main__":
    main()
