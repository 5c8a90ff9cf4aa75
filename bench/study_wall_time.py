"""The README's loop, timed as a user runs it: split, a sweep, its verdict.

    python bench/study_wall_time.py --data ../shared/datasets/clothing-small                 # 5 seeds
    python bench/study_wall_time.py --data ../shared/datasets/clothing-small --ablation      # 3 seeds, 6 operations
    python bench/study_wall_time.py --data ../shared/datasets/clothing-small \
        --groups none,light,randaugment,mixup,cutmix,strong,lesson,lesson-no-vertical_flip   # the presets' map

The default is `python -m pipeline.train -m experiment=cpu augmentation=none,lesson seed=1,2,3,4,5`;
`--ablation` runs the README's ablation instead, over 3 seeds: the baselines `none,lesson`, then
`lesson` without each of its six operations (24 runs). `--groups` names the groups instead: presets,
and `<preset>-no-<op>` for a preset without one operation (`augmentation.ablate`); their verdicts
compare the whole experiment against `none`. `--seeds` sets the seeds (`1,2,3` or `1-5`).
Everything goes into a fresh folder (or `--folder`, where a rerun resumes the sweeps): a new
MLflow store and an empty `paths.cache_dir`, so the first run converts the frozen base and decodes
the split as on a new machine. Trailing arguments are Hydra overrides for every sweep.

Prints the wall time of each command, the MLflow durations summed per group (and the augmented
groups' ratio to the plain one), and the verdict lines of the comparison. Last line:
study_minutes=<wall time of split + sweeps, minutes>.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from frozen_runtime import cpu_model

from pipeline.study.rounds import group_sweeps  # one sweep for the presets, one per <preset>-no-<op>

ROOT = Path(__file__).resolve().parent.parent
ABLATED = "rotation,width_shift,height_shift,shear,zoom,vertical_flip"


def run(command: list[str], env: dict) -> float:
    """Run a command from the project root, its output passed through; return its wall seconds."""
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode:
        raise SystemExit(f"failed with exit code {done.returncode}: {' '.join(command)}")
    return time.perf_counter() - start


def seed_numbers(text: str) -> list[int]:
    """`1-5` -> [1, 2, 3, 4, 5]; `1,3,4` -> [1, 3, 4]."""
    if "-" in text:
        first, last = (int(part) for part in text.split("-"))
        return list(range(first, last + 1))
    return [int(seed) for seed in text.split(",")]


def sweep_folder(sweep: list[str]) -> str:
    """A folder name for a sweep, from its overrides and free of Hydra's syntax:
    `augmentation=none,lesson seed=1,2,3` -> `augmentation-none.lesson_seed-1.2.3`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(sweep).replace("=", "-").replace(",", "."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--ablation", action="store_true", help="the README's ablation over 3 seeds")
    parser.add_argument("--groups", help="comma-separated presets and <preset>-no-<op> groups (default none,lesson)")
    parser.add_argument("--seeds", help="seeds, e.g. 1,2,3 or 1-5 (default 1-5; 1-3 with --ablation)")
    parser.add_argument("--folder", type=Path, help="work here instead of a temporary folder (kept)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every sweep")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        work = (args.folder or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        paths = [
            f"paths.split_dir={work}/split",
            f"paths.cache_dir={work}/cache",
            f"paths.models_dir={work}/models",
            f"paths.reports_dir={work}/reports",
            f"tracking.uri=sqlite:///{work}/mlflow.db",
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        python = [sys.executable, "-m"]
        walls = {"split": run([*python, "pipeline.split", f"data.source={args.data.resolve()}", *paths], env)}
        seeds = seed_numbers(args.seeds or ("1-3" if args.ablation else "1-5"))
        sweeps = group_sweeps((args.groups or "none,lesson").split(","), seeds)
        if args.ablation:
            sweeps.append(
                ["augmentation=lesson", f"augmentation.ablate={ABLATED}", "seed=" + ",".join(map(str, seeds))]
            )
        whole_experiment = args.ablation or len(sweeps) > 1
        for sweep in sweeps:  # each sweep's folder named by its overrides: studies in one --folder never share one
            command = [*python, "pipeline.train", "-m", "experiment=cpu", *sweep, *paths, *args.overrides]
            command.append(f"hydra.sweep.dir={work}/multirun/{sweep_folder(sweep)}")
            walls[" ".join(sweep)] = run(command, env)
        comparison = (
            json.loads((work / "multirun" / sweep_folder(sweeps[-1]) / "comparison" / "comparison.json").read_text())
            if not whole_experiment
            else None
        )
        if whole_experiment:  # verdicts over several sweeps compare the whole experiment, as the README says
            walls["compare"] = run([*python, "pipeline.compare", *paths, "hydra.run.dir=" + str(work / "compare")], env)
            comparison = json.loads((work / "reports" / "comparison.json").read_text())

        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
        durations = defaultdict(list)
        for r in mlflow.search_runs(experiment_names=["augmentation"], output_format="list"):
            label = r.data.tags.get("augmentation", "?")
            durations[label].append((r.info.end_time - r.info.start_time) / 1000)

    print(f"\nmachine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores")
    print("| command | wall time |")
    print("|---|---|")
    for name, seconds in walls.items():
        print(f"| {name} | {seconds / 60:.1f} min |")
    plain = sum(durations.get("none", [])) or float("nan")
    print("| group | runs | summed MLflow durations | vs none |")
    print("|---|---|---|---|")
    for label, values in sorted(durations.items()):
        print(f"| {label} | {len(values)} | {sum(values) / 60:.1f} min | {sum(values) / plain:.2f}x |")
    for d in comparison["differences"] + comparison["ablations"]:
        low, high, mean = d.get("low"), d.get("high"), d.get("mean")
        interval = f"[{low * 100:+.2f}, {high * 100:+.2f}]" if low is not None else "-"
        difference = f"{mean * 100:+.2f} points" if mean is not None else "no difference measured"  # no runs to pair
        print(f"{d['group']} vs {d['baseline']}: {d['verdict']}, {difference}, interval {interval}")
    print(f"study_minutes={sum(walls.values()) / 60:.1f}")


if __name__ == "__main__":
    main()
