"""Shared fixtures: generated image trees (no network) and the shared clothing dataset."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASET = ROOT.parent / "shared" / "datasets" / "clothing-small"


@functools.cache
def migrated_store() -> Path:
    """An MLflow sqlite store with its tables made, once per test process: MLflow's migrations take 1-2 s
    a store, so a test (or a test's server) that only needs a new store copies this file."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="empty-store-"))
    atexit.register(shutil.rmtree, folder, True)
    SqlAlchemyStore(f"sqlite:///{folder}/mlflow.db", str(folder / "mlruns")).engine.dispose()
    return folder / "mlflow.db"


def new_store(folder: Path) -> str:
    """A new, empty MLflow store at folder/mlflow.db (a copy of `migrated_store`), as its `sqlite:///` URI.
    Tests of a store's first use (made by the command itself, two commands at once) name a new file."""
    shutil.copyfile(migrated_store(), folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


@pytest.fixture
def store_uri(tmp_path) -> str:
    return new_store(tmp_path)


def make_image(path: Path, size=(40, 30), seed=0, mode="RGB", fmt=None, pattern=None) -> Path:
    """Write a small image with a per-seed pattern; `pattern` picks a class-like look."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.ogrid[0:h, 0:w]  # broadcast: a 4000 x 3000 image needs no full grids
    base = rng.integers(0, 60, size=(h, w, 3))
    if pattern is not None:  # classes differ by stripe direction and colour: learnable
        stripes = ((xx if pattern % 2 else yy) // (3 + pattern)) % 2
        base[..., pattern % 3] += 180 * stripes
    array = base.astype(np.uint8)  # at most 59 + 180: in range
    image = Image.fromarray(array).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def pytest_configure(config):
    """Each pytest-xdist worker's TensorFlow (and that of the commands it starts, which inherit the setting)
    runs an op on its share of the cores: with two workers on two cores and TensorFlow's default of every
    core for each op, the sweep and rounds tests took 224 s against 196 s (docs/benchmarks.md)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A pytest-xdist worker ends as soon as it is done: its results are sent (with `workerfinished`, at the
    session's end) and its exit handlers run here, but the interpreter does not unload TensorFlow and the
    rest, which kept the run waiting about 3 s for its workers (the quick end of our commands)."""
    if hasattr(config, "workerinput"):
        from pipeline.stopping import end_process_now

        end_process_now(0)


DURATIONS = Path(__file__).with_name("durations.json")  # seconds per test id, as last recorded
GUESS_S = {True: 30.0, False: 1.0}  # a test not recorded yet: by its mark, slow or not


def pytest_addoption(parser):
    parser.addoption(
        "--store-durations",
        action="store_true",
        help="record every test's duration in tests/durations.json, which orders the next runs",
    )


def recorded_durations() -> dict[str, float]:
    return json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}


def pytest_collection_modifyitems(config, items):
    """The longest tests first, by their recorded durations (tests/durations.json; a new test by a
    guess from its `slow` mark). With `-n auto --dist load --maxschedchunk 1` (pytest-xdist) each
    worker takes the next test when it is free: the long ones start side by side at once and the
    short ones fill the gaps at the end, so no long test is left running alone."""
    recorded = recorded_durations()

    def expected_s(item) -> float:
        return recorded.get(item.nodeid, GUESS_S[item.get_closest_marker("slow") is not None])

    items.sort(key=expected_s, reverse=True)


MEASURED_S: dict[str, float] = {}
FAILED: set[str] = set()  # a failure's duration says nothing of the test's: its record is kept


def pytest_runtest_logreport(report):
    MEASURED_S[report.nodeid] = MEASURED_S.get(report.nodeid, 0.0) + report.duration  # setup, call, teardown
    if report.failed:
        FAILED.add(report.nodeid)


def pytest_sessionfinish(session):
    """With --store-durations: this run's durations over the recorded ones (in the controller only)."""
    if session.config.getoption("--store-durations") and not hasattr(session.config, "workerinput"):
        measured = {k: round(v, 2) for k, v in MEASURED_S.items() if k not in FAILED}
        merged = {**recorded_durations(), **measured}
        DURATIONS.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI: without this, one test's store
    would become the default of every later test's subprocesses."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path)


def make_tiny_dataset(folder: Path) -> Path:
    """3 classes x 12 learnable images, one folder per class, in folder/tiny."""
    root = folder / "tiny"
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i in range(12):
            make_image(root / name / f"{name}_{i:02d}.png", size=(48, 40), seed=100 * c + i, pattern=c)
    return root


@pytest.fixture
def shared_dataset() -> Path:
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"the shared clothing dataset is not at {SHARED_DATASET}")
    return SHARED_DATASET


def run_module(module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout=600):
    """Run `python -m module args` as a user would; return the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` inside this test's process: the same entry point, command line,
    exit code and output as run_module, without a fresh interpreter loading TensorFlow again
    (seconds a call). What only a fresh process shows (start-up, signals, the same batches in
    two processes, two processes at once, a multirun's launcher) keeps run_module.

    Hydra is told to leave logging alone (`hydra/job_logging=none`): its logging.config call
    would close every handler of this process, pytest's and absl's included. No stage logs
    through `logging`, so the output is the same."""
    import io
    import runpy
    import warnings

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_env = sys.argv, dict(os.environ)
    os.environ.update({"TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    hydra_composes = args[:1] != ("--params",) and module != "pipeline.predict"
    sys.argv = [module, *args, *(["hydra/job_logging=none", "hydra/hydra_logging=none"] if hydra_composes else [])]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*found in sys.modules", RuntimeWarning)  # imported before: fine
            try:
                runpy.run_module(module, run_name="__main__")
            except SystemExit as exit:
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()  # the next command (or compose()) starts from a clean Hydra
        HydraConfig.instance().cfg = None
    return subprocess.CompletedProcess([module, *args], code, stdout.getvalue(), stderr.getvalue())


def path_overrides(tmp_path: Path) -> list[str]:
    """Overrides that keep every output of a run inside tmp_path."""
    return [
        f"paths.split_dir={tmp_path}/split",
        f"paths.reports_dir={tmp_path}/reports",
        f"paths.models_dir={tmp_path}/models",
        f"hydra.run.dir={tmp_path}/hydra",
        f"hydra.sweep.dir={tmp_path}/multirun",
        f"data.download_dir={tmp_path}/downloads",
        f"paths.cache_dir={tmp_path}/cache",
    ]


def train_args(tmp_path: Path, uri: str, *extra: str) -> list[str]:
    """A tiny, fast training: a one-block residual_cnn on 32x32 images, 2 epochs, outputs under tmp_path."""
    return [
        "model=residual_cnn",
        "model.residual_stages=[[32,1]]",
        "train.epochs=2",
        "train.batch_size=8",
        "data.image_size=[32,32]",
        f"tracking.uri={uri}",
        *path_overrides(tmp_path),
        *extra,
    ]


@pytest.fixture
def split_done(tmp_path, tiny_dataset):
    """tmp_path with the tiny dataset already split (train 30 / val 3 / test 3)."""
    return split_tiny(tmp_path, tiny_dataset)


def split_tiny(folder: Path, dataset: Path) -> Path:
    """`folder` with `dataset` split into its split/ (the paths of `path_overrides`)."""
    from pipeline import split
    from pipeline.config.compose import compose

    overrides = [o for o in path_overrides(folder) if not o.startswith("hydra.")]
    split.run(compose([f"data.source={dataset}", *overrides]))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_mlflow_server(
    tmp_path: Path, *options: str, env: dict | None = None, port: int | None = None
) -> Iterator[str]:
    """A real `mlflow server [options]` on 127.0.0.1 (on `port`, or a free one) with its store in
    tmp_path; yields its URI. Started again with the same tmp_path and port, it is the same server.
    A new store starts from a migrated copy, and MLflow's job runner (GenAI jobs, not used here) stays
    off: the server answers 2-3 s sooner."""
    port = port or free_port()
    if not (tmp_path / "server.db").exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_store(), tmp_path / "server.db")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            *options,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"mlflow server {' '.join(options)} did not start")
    try:
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path):
    with running_mlflow_server(tmp_path) as uri:
        yield uri


def sweep_args(tmp_path: Path, uri: str, *extra: str) -> list[str]:
    """train_args for a 1-epoch multirun: each sweep gets its own timestamped folder, as by default."""
    return [a for a in train_args(tmp_path, uri, "train.epochs=1", *extra) if not a.startswith("hydra.")] + [
        f"hydra.sweep.dir={tmp_path}/multirun/${{now:%H-%M-%S-%f}}"
    ]


def training_runs(uri: str) -> list:
    """The training runs of the store's `augmentation` experiment, in every state."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])
