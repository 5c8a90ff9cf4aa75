"""The jobs of a sweep: every job's configuration is checked before the first one trains, and a
job that fails anyway is named when the sweep ends, after the others' comparison."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pipeline.config.sweeps import FAILED_JOB_FILE, SweepJobs, run_job
from tests.conftest import run_module, sweep_args


def test_a_sweep_with_an_invalid_job_is_refused_before_any_job_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # a store this sweep must not even create
    args = sweep_args(tmp_path, uri, "augmentation=lesson", "augmentation.rotation_range=10,-5", "seed=1,2")
    result = run_module("pipeline.train", "-m", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()
    assert error[0].startswith("error: job #2 of this sweep (") and "augmentation.rotation_range=-5" in error[0]
    assert "augmentation.rotation_range: must be [0, 360], got -5" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing trained, nothing recorded
    assert not list(tmp_path.glob("multirun/*/0"))


def test_a_failing_job_is_written_down_and_the_sweep_goes_on(tmp_path, capsys):
    def broken_job():
        raise RuntimeError("a bug in one job")

    assert run_job(broken_job, tmp_path / "3") is None  # no objective: Optuna's sweeper records a failed trial
    assert "RuntimeError: a bug in one job" in capsys.readouterr().err  # a bug keeps its traceback
    assert "Traceback" in (tmp_path / "3" / FAILED_JOB_FILE).read_text()
    assert run_job(lambda: 0.8, tmp_path / "5") == 0.8 and not (tmp_path / "5" / FAILED_JOB_FILE).exists()

    with pytest.raises(SystemExit) as ended:  # when the sweep ends: named, exit 1
        SweepJobs().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert ended.value.code == 1
    said = capsys.readouterr().err
    assert (
        "1 job(s) of this sweep failed" in said and f"job 3 ({tmp_path / '3'}): RuntimeError: a bug in one job" in said
    )

    assert run_job(lambda: 0.7, tmp_path / "3") == 0.7  # the same job run again and passing: no longer failed
    SweepJobs().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
