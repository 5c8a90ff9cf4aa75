"""Command `rounds`: seeds in rounds, spent only where a verdict is still open.

    python -m pipeline.rounds experiment=cpu compare.groups=[none,light,lesson,lesson-no-vertical_flip]
    python -m pipeline.rounds experiment=cpu compare.groups=[none,lesson] compare.rounds=[3,4,5,6,8,10]

Round 1 trains the first seeds of every group of `compare.groups` (seeds `seed`, `seed`+1, ... up to
the first of `compare.rounds`; null: 3, 5, 7, 10) as a multirun of `pipeline.train`, then compares
them. Each later round trains the next seeds of only the groups whose comparisons are still open
(inconclusive), up to the last round. Looking after every round would inflate false verdicts; the
comparison spends the study's 1 - compare.confidence over the rounds instead (pipeline/study/sequential.py),
so the verdicts are as trustworthy as a fixed study's, and a large difference stops at 3 seeds.

Every other key=value applies to every run (experiment=cpu, model.*, train.*). The rounds' sweeps
and comparisons go under this command's folder (outputs/<date>/<time>/round-<k>); the final
comparison into paths.reports_dir and MLflow. Interrupted, the same command resumes: finished runs
are skipped. `python -m pipeline.compare compare.rounds=[...]` later gives the same verdicts.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.config import did_you_mean
from pipeline.config.augmentation import ABLATABLE, read_ablation_label
from pipeline.config.cli import check_group_option, stage_entry
from pipeline.config.schema import Config
from pipeline.errors import ConfigError, UserError
from pipeline.study.sequential import DEFAULT_ROUNDS, open_comparisons

SET_PER_ROUND = ("seed=", "compare.", "hydra.", "augmentation=", "augmentation.ablate=")  # not passed on as given


def run(config: Config) -> dict:
    from pipeline.study import compare
    from pipeline.tracking.store import check_store

    settings = config.compare
    rounds = list(settings.rounds or DEFAULT_ROUNDS)
    groups = check_groups(list(settings.groups), settings.baseline)
    check_store(config.tracking)
    folder, overrides = command_folder_and_overrides()
    print(f"rounds of seeds per group: {rounds}; groups: {', '.join(groups)}")
    looking = copy.deepcopy(config)  # each round's look: its files only, no affinity (the final look has them)
    looking.compare.rounds, looking.compare.affinity = rounds, False
    training, trained_before = groups, 0
    for look, seeds in enumerate(rounds, start=1):
        new_seeds = list(range(config.seed + trained_before, config.seed + seeds))
        print(f"\n== round {look} of {len(rounds)}: seeds {new_seeds[0]}-{new_seeds[-1]} of {', '.join(training)} ==")
        for number, sweep in enumerate(group_sweeps(training, new_seeds)):
            train_sweep(sweep + overrides, folder / f"round-{look}" / str(number), f"round {look}")
        looking.paths.reports_dir = str(folder / f"round-{look}" / "comparison")
        still_open = open_comparisons(compare.run(looking, compare.sweep_run_ids(folder), record=False))
        trained_before = seeds
        if not still_open:
            break
        training = groups_to_train(still_open, settings.baseline)
        if look < len(rounds):
            print(f"still open after round {look}: {', '.join(label(d) for d in still_open)}")
    print(f"\n== the study's verdicts, into {config.paths.reports_dir} and MLflow ==")
    final = copy.deepcopy(config)
    final.compare.rounds = rounds
    report = compare.run(final, compare.sweep_run_ids(folder))
    print(study_summary(report, rounds, len(groups)))
    return report


def check_groups(groups: list[str], baseline: str) -> list[str]:
    """The groups, each a preset of conf/augmentation/ or `<preset>-no-<operation>`, the baseline among
    them; a misspelt preset or operation is named with its closest valid spelling."""
    for group in groups:
        preset, mark, operation = group.rpartition("-no-")
        if mark and operation not in ABLATABLE:
            hint = did_you_mean(operation, list(ABLATABLE), f"{preset}-no-{{}}")
            raise ConfigError(
                f"compare.groups: {group!r} names no operation {operation!r}; a preset's operations are "
                f"{', '.join(ABLATABLE)}{hint}"
            )
        check_group_option("augmentation", preset if mark else group)
    if baseline not in groups:
        raise ConfigError(
            f"compare.groups={groups}: the baseline {baseline!r} (compare.baseline) must be one of them, "
            f"e.g. compare.groups=[{baseline},{','.join(g for g in groups if g != baseline) or 'lesson'}]"
        )
    if len(groups) < 2:
        raise ConfigError(f"compare.groups={groups}: name at least one group besides the baseline")
    return groups


def command_folder_and_overrides(set_here: tuple[str, ...] = SET_PER_ROUND) -> tuple[Path, list[str]]:
    """This command's Hydra folder, and its command line's overrides that every run takes (all but those
    starting with one of `set_here`)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hydra = HydraConfig.get()
    except ValueError:
        raise UserError("this command takes key=value settings, not --params") from None
    overrides = [o for o in hydra.overrides.task if not o.lstrip("+~").startswith(set_here)]
    return Path(hydra.runtime.output_dir), overrides


def group_sweeps(groups: list[str], seeds: list[int]) -> list[list[str]]:
    """The multirun overrides that train `seeds` of `groups`: one sweep for the presets, one per ablation."""
    seed_list = "seed=" + ",".join(map(str, seeds))
    presets = [g for g in groups if read_ablation_label(g)[1] is None]
    sweeps = [[f"augmentation={','.join(presets)}", seed_list]] if presets else []
    for group in groups:
        preset, operation = read_ablation_label(group)
        if operation:
            sweeps.append([f"augmentation={preset}", f"augmentation.ablate={operation}", seed_list])
    return sweeps


def train_sweep(arguments: list[str], sweep_dir: Path, what: str) -> None:
    """`python -m pipeline.train -m ...` into `sweep_dir`, its output passed through. Stopped (Ctrl-C,
    SIGTERM), this command hands the stop on and waits: the sweep's run ends KILLED at a safe point."""
    command = [sys.executable, "-m", "pipeline.train", "-m", *arguments]
    command += ["compare.after_sweep=false", f"hydra.sweep.dir={sweep_dir}"]
    print("$", " ".join(command), flush=True)
    sweep = subprocess.Popen(command, env=os.environ)
    try:
        code = sweep.wait()
    except KeyboardInterrupt:
        sweep.send_signal(signal.SIGTERM)
        sweep.wait()
        raise
    if code:
        raise UserError(
            f"{what}: the sweep failed (exit code {code}; its jobs' folders under {sweep_dir} say why). "
            "Fix that and run the same command again: the finished runs are skipped."
        )


def groups_to_train(comparisons: list[dict], baseline: str) -> list[str]:
    """The groups the open comparisons need: a group and the baseline; an ablation's full preset and its ablated one."""
    needed = []
    for d in comparisons:
        ablated = read_ablation_label(d["baseline"].split(", ")[0])
        pair = [ablated[0], d["baseline"]] if ablated[1] else [baseline, d["group"]]
        needed += [g.split(", ")[0] for g in pair if g.split(", ")[0] not in needed]
    return needed


def label(d: dict) -> str:
    return f"{d['group']} vs {d['baseline']}"


def study_summary(report: dict, rounds: list[int], groups: int) -> str:
    """Which comparison stopped where, and the runs spent against a fixed study of `rounds[-1]` seeds."""
    lines = ["", "== the study =="]
    for d in report["differences"] + report["ablations"]:
        lines.append(f"{label(d)}: {d['verdict']} after {min(d['n_group'], d['n_baseline'])} seeds")
    runs, fixed = report["runs"], groups * rounds[-1]
    lines.append(f"{runs} runs, where a fixed study of {rounds[-1]} seeds per group trains {fixed}")
    return "\n".join(lines)


main = stage_entry(run, reads=("compare", "seed", "tracking", "paths", "train.epochs", "train.patience"), sweeps=False)

if __name__ == "__main__":
    main()
