"""Beyond one machine: a sweep through Hydra's submitit launcher (its local executor), the
refusal of a sqlite store for a cluster launcher, two Optuna search workers on one shared
study, and a tracking server with MLflow's basic auth - all real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import (
    ROOT,
    free_port,
    new_store,
    run_in_process,
    run_module,
    running_mlflow_server,
    sweep_args,
    train_args,
    training_runs,
)

pytestmark = pytest.mark.slow


def test_a_sweep_through_the_submitit_launcher(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    result = run_module(
        "pipeline.train", "-m", "hydra/launcher=local", "augmentation=none,lesson", *sweep_args(tmp_path, uri)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = training_runs(uri)
    assert sorted(r.data.tags["augmentation"] for r in runs) == ["lesson", "none"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    # each job ran in its own submitit process, with its own log
    logs = sorted((tmp_path / "multirun").glob("*/.submitit/*/*_log.out"))
    assert len(logs) == 2
    for log, run in zip(logs, sorted(runs, key=lambda r: r.data.tags["sweep_job"])):
        assert f"MLflow run {run.info.run_id}" in log.read_text()
    assert "comparison of the 2 runs of this sweep" in result.stdout  # the submitting process compares


def test_a_cluster_launcher_refuses_a_sqlite_store(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    result = run_module("pipeline.train", "-m", "hydra/launcher=slurm", "seed=1,2", *sweep_args(tmp_path, uri))
    assert result.returncode == 2
    assert "run on other machines and cannot write this machine's store" in result.stderr
    assert "tracking.uri=http://<server>:5000" in result.stderr
    assert not list((tmp_path / "multirun").glob("*/.submitit"))  # nothing was submitted


def test_two_search_workers_share_one_optuna_study(split_done):
    """Two processes, n_jobs=1 each, one storage and study name: one study holding every trial
    of both, each trial an MLflow run, none lost or duplicated."""
    tmp_path = split_done
    uri = new_store(tmp_path)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.train",
                "-m",
                "hparams_search=augmentation",
                "hydra.sweeper.n_trials=2",
                "hydra.sweeper.n_jobs=1",
                f"hydra.sweeper.storage.url={storage}",
                "hydra.sweeper.study_name=shared",
                f"hydra.sweeper.sampler.seed={worker}",
                *sweep_args(tmp_path, uri),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in (1, 2)
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]

    import optuna  # here, not at the top: the fast suite collects this module too

    from pipeline.tracking.optuna_storage import study_storage

    trials = optuna.load_study(study_name="shared", storage=study_storage(storage)).trials
    assert len(trials) == 4 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    runs = training_runs(uri)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["config_hash"] for r in runs}) == 4
    searched = ("rotation_range", "width_shift_range", "height_shift_range", "shear_range", "zoom_range")

    def key(values: dict) -> tuple:
        return tuple(round(float(values[f"augmentation.{name}"]), 6) for name in searched)

    by_params = {key(r.data.params): r for r in runs}
    assert sorted(by_params) == sorted(key(t.params) for t in trials)  # each trial is one run, and back
    for trial in trials:
        assert trial.value == pytest.approx(by_params[key(trial.params)].data.metrics["best_val_accuracy"])


@pytest.fixture
def auth_server(tmp_path):
    """`mlflow server --app-name basic-auth` on 127.0.0.1, its users in a store of its own."""
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path}/auth.db\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-admin-pw",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-only-secret",
    }
    with running_mlflow_server(tmp_path, "--app-name", "basic-auth", env=env) as uri:
        yield uri


def test_a_server_with_basic_auth_lets_in_only_who_it_knows(split_done, auth_server):
    tmp_path = split_done
    args = [a for a in train_args(tmp_path, auth_server, "train.epochs=1") if not a.startswith("hydra.run")]
    no_credentials = {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}
    for env, expected in (
        (no_credentials, "asks for credentials"),
        (
            {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"},
            "refuses user 'admin': wrong password or unknown user",
        ),
    ):
        started = time.monotonic()
        refused = run_module("pipeline.train", *args, env=env)
        assert refused.returncode == 1 and expected in refused.stderr, refused.stderr[-2000:]
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in refused.stderr
        assert "does not answer" not in refused.stderr  # not mistaken for a dead server
        assert time.monotonic() - started < 60
    elsewhere = [a for a in args if not a.startswith("tracking.uri=")]
    down = run_module("pipeline.train", *elsewhere, f"tracking.uri=http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "does not answer" in down.stderr
    in_uri = run_module("pipeline.train", *elsewhere, f"tracking.uri={auth_server.replace('//', '//admin:pw@')}")
    assert in_uri.returncode == 1 and "tracking.uri holds credentials" in in_uri.stderr

    credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "s3cret-admin-pw"}
    trained = run_in_process("pipeline.train", *args, env=credentials)
    assert trained.returncode == 0, trained.stderr[-3000:]
    os.environ.update(credentials)
    try:
        (run,) = training_runs(auth_server)
    finally:
        for name in credentials:
            os.environ.pop(name)
    assert run.info.status == "FINISHED"
    assert not any("s3cret" in value for value in run.data.params.values())  # never recorded
