"""The jobs of a Hydra multirun (`-m`): every job's configuration checked before the first one
trains, and one failing job that does not take the others' results with it.

A sweep of `augmentation.rotation_range=10,-5 seed=1,2,3` would otherwise train the three valid
jobs, fail on the fourth and end without the comparison of the runs it did finish. Here the
sweep is refused in one line before anything runs (for Hydra's basic sweeper, whose jobs are
known in advance; Optuna draws its values as it goes). A job that fails anyway (an image gone, a
bug) writes why into its folder and hands the sweep no objective (None: Optuna's sweeper records the
trial FAILED and goes on; a NaN would stop it, its second `tell` refused);
when the sweep ends, the comparison covers the jobs that finished, then each failed one is named
and the command exits 1. Both are `SweepJobs`, a callback registered in conf/config.yaml.
"""

from __future__ import annotations

import itertools
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError, UserError

FAILED_JOB_FILE = "job_failed.txt"  # in a job's folder: why it failed (removed when it runs again)


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of each job of this multirun, in the basic sweeper's order (the product of each
    key's values, keys in command-line order; a key set twice keeps its first place, its last value); None
    when the sweeper draws its jobs as it goes (Optuna) or the command line is not one the basic
    sweeper can split. Hydra's public override parser reads the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    sweeper_params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in sweeper_params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except (HydraException, ValueError):
        return None  # Hydra itself says what is wrong with the command line
    values: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override() and not override.is_discrete_sweep():
            return None  # interval(...): only the Optuna sweeper takes it
        if override.is_sweep_override():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*values.values())]


def check_every_job(jobs: list[list[str]], config_name: str, hydra_overrides: list[str] = ()) -> None:
    """Compose (with the running Hydra, as the sweep will: the command line's `hydra.*` overrides, such as
    hydra.searchpath, then the job's) and validate each job's configuration; a ConfigError naming the
    first bad job."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from pipeline.config.compose import validate

    hydra = GlobalHydra.instance().hydra
    for number, overrides in enumerate(jobs):
        try:
            validate(hydra.compose_config(config_name, [*hydra_overrides, *overrides], run_mode=RunMode.MULTIRUN))
        except ConfigError as error:
            swept = " ".join(overrides)
            raise ConfigError(
                f"job #{number} of this sweep ({swept}): {error} Nothing has run; fix that value and "
                "run the sweep again."
            ) from None


class SweepJobs(Callback):
    """Hydra callback: refuse a sweep with an invalid job before its first job runs; when the
    sweep ends (after its comparison: Hydra ends callbacks in reverse order), name the jobs that
    failed and exit 1, so that scripts see the failure."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        jobs = sweep_jobs(config)
        progress.clear()
        progress["jobs"] = len(jobs) if jobs else config.hydra.sweeper.get("n_trials")  # Optuna: its trials
        if not jobs or len(jobs) < 2:
            return  # one job is checked as it starts, as a single run is
        try:
            hydra_overrides = list(OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False))
            check_every_job(jobs, kwargs.get("config_name") or "config", hydra_overrides)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(error.exit_code) from None

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.rglob(FAILED_JOB_FILE), key=lambda path: (len(path.parts), str(path)))
        if not failed:
            return
        print(f"\n{len(failed)} job(s) of this sweep failed; the others' runs are recorded:", file=sys.stderr)
        for record in failed:
            lines = [line.strip() for line in record.read_text().strip().splitlines()] or ["?"]
            why = lines[-1] if lines[0].startswith("Traceback") else " ".join(lines)  # a bug: its last line
            print(f"  job {record.parent.name} ({record.parent}): {why}", file=sys.stderr)
        print("Fix what they say and run the same command again: the finished jobs are skipped.", file=sys.stderr)
        raise SystemExit(1)


progress: dict[str, Any] = {}  # this sweep's jobs (`SweepJobs`), and the seconds of those done in this process


def job_line() -> str:
    """`sweep: job 3 of 10 (2 done, 8 left, about 6 min left)`: the next job and, from the jobs done
    in this process, how long the rest takes."""
    done, total = progress.setdefault("seconds", []), progress.get("jobs")
    left = f", {total - len(done)} left" if total else ""
    eta = ""
    if done and total:
        minutes = (total - len(done)) * sum(done) / len(done) / 60
        eta = f", about {minutes:.0f} min left" if minutes >= 1 else ", under a minute left"
    return f"sweep: job {len(done) + 1}{f' of {total}' if total else ''} ({len(done)} done{left}{eta})"


def run_job(job: Callable[[], Any], job_dir: str | Path) -> Any:
    """Run one job of a multirun, said in one line (`job_line`). A failure is printed (a UserError as
    one line, anything else with its traceback), written to the job's folder for `SweepJobs`, and
    returned as None (no objective) so that the sweep goes on; an interruption (Ctrl-C, SIGTERM) stops the
    whole sweep."""
    failure = Path(job_dir) / FAILED_JOB_FILE
    failure.unlink(missing_ok=True)
    print(job_line(), flush=True)
    start = time.monotonic()
    try:
        return job()
    except UserError as error:
        message = f"error: {error}"
    except Exception:
        message = traceback.format_exc()
    finally:
        progress.setdefault("seconds", []).append(time.monotonic() - start)
    print(message, file=sys.stderr)
    failure.parent.mkdir(parents=True, exist_ok=True)
    failure.write_text(message)
    return None
