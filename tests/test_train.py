"""Training with MLflow tracking: a real sqlite store, a real `mlflow server`, real Keras fits."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (
    free_port,
    make_image,
    make_tiny_dataset,
    new_store,
    run_in_process,
    run_module,
    split_tiny,
    train_args,
)

pytestmark = pytest.mark.slow


def only_run(uri: str, experiment: str = "augmentation"):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def lesson_run(tmp_path_factory):
    """One tiny `lesson` run, trained once for the tests below, each of which reads one part of its
    record, so that one failure does not hide the others (they change nothing the others read)."""
    tmp_path = tmp_path_factory.mktemp("lesson-run")
    split_tiny(tmp_path, make_tiny_dataset(tmp_path))
    uri = new_store(tmp_path)
    result = run_in_process(
        "pipeline.train", *train_args(tmp_path, uri, "augmentation=lesson", "tracking.system_metrics_interval_s=0.5")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, uri, result.stdout


def logged_model_of(uri: str, run):
    mlflow.set_tracking_uri(uri)
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    return logged


def test_the_run_records_its_config_metrics_and_datasets(lesson_run):
    """Params, tags, the per-epoch history and the kept epoch's metrics, artifacts, the datasets."""
    tmp_path, uri, stdout = lesson_run
    client, run = only_run(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["augmentation.rotation_range"] == "30.0"
    assert run.data.params["model.name"] == "residual_cnn" and run.data.params["data.classes"] == "cat,dog,fox"
    # the data it trained on: the split's source, though this command line named none (the default URL)
    assert run.data.params["data.source"] == str(tmp_path / "tiny") and "was split from" in stdout
    assert run.data.tags["augmentation"] == "lesson" and run.data.tags["augmented"] == "true"
    assert len(run.data.tags["data_manifest_sha256"]) == 64 and run.data.tags["git_commit"]
    assert len(run.data.tags["config_hash"]) == 64
    process = json.loads(run.data.tags["process"])  # for a later orphan check: one tag, out of the UI's way
    assert process["pid"].isdigit() and process["host"] and not any(k.startswith("process.") for k in run.data.tags)

    # MLflow autolog's convention: every epoch under the plain names, then the kept (best) epoch once more
    def steps(metric: str) -> list:
        return client.get_metric_history(run.info.run_id, metric)

    assert run.data.metrics["epochs_trained"] == 2
    best = int(run.data.metrics["best_epoch"])
    for metric in ("val_accuracy", "val_loss", "train_accuracy", "train_loss"):
        history = steps(metric)
        assert [m.step for m in history] == [1, 2, 3], metric
        assert history[-1].value == history[best - 1].value == run.data.metrics[metric], metric  # the table: kept
    assert run.data.metrics["val_accuracy"] == run.data.metrics["best_val_accuracy"]
    for metric in ("log10_learning_rate", "epoch_seconds", "train_images_per_second"):
        assert [m.step for m in steps(metric)] == [1, 2], metric
    assert "accuracy" not in run.data.metrics and "learning_rate" not in run.data.metrics  # charted as 0: history.csv
    logs = [m.value for m in steps("log10_learning_rate")]
    assert logs == pytest.approx([math.log10(float(run.data.params["model.learning_rate"]))] * 2)  # -3, not "0"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "augmentation_preview.png", "history.csv", "training_curves.png"} <= artifacts
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)  # system metrics, psutil

    # MLflow 3's vocabulary: the experiment is model development, the UI link lands on its runs
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # a local store's link opens in the model-training view through the app its command line starts
    assert f"#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}" in stdout
    assert "mlflow ui --app-name model-training --backend-store-uri sqlite:///" in stdout
    # ... the manifests are the run's datasets, digests from the files themselves
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "validation", "testing"}
    assert inputs["training"].name == "tiny-train" and inputs["testing"].name == "tiny-test"
    assert inputs["training"].digest == hashlib.sha256((tmp_path / "split" / "train.csv").read_bytes()).hexdigest()[:16]


def test_its_model_is_a_logged_model_at_the_best_epoch_that_loads_from_either_uri(lesson_run):
    """The run's LoggedModel: its tags and params, linked at the best epoch, loadable, its environment pinned."""
    tmp_path, uri, stdout = lesson_run
    client, run = only_run(uri)
    experiment = client.get_experiment(run.info.experiment_id)
    # ... and the model is one READY LoggedModel, linked at the best epoch, with that epoch's metrics
    mlflow.set_tracking_uri(uri)
    (logged,) = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    assert str(logged.status).endswith("READY") and logged.source_run_id == run.info.run_id
    assert {k: logged.tags[k] for k in ("augmentation", "model", "seed")} == {  # in the UI's model list: one name
        "augmentation": run.data.tags["augmentation"],
        "model": run.data.params["model.name"],
        "seed": run.data.params["seed"],
    }
    assert logged.params["augmentation.rotation_range"] == "30.0" and logged.params["train.epochs"] == "2"  # its setup
    assert logged.name == run.info.run_name  # named after its run, and it says what it is
    assert logged.tags["mlflow.note.content"].startswith(f"lesson, seed {run.data.params['seed']}, residual_cnn: ")
    best_epoch = int(run.data.metrics["best_epoch"])
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(logged.model_id, best_epoch)]
    model_metrics = {m.key: m for m in mlflow.get_logged_model(logged.model_id).metrics}
    assert model_metrics["val_accuracy"].value == pytest.approx(run.data.metrics["best_val_accuracy"])
    assert model_metrics["val_accuracy"].step == best_epoch
    assert json.loads((tmp_path / "reports" / "run.json").read_text())["model_id"] == logged.model_id
    for model_uri in (f"runs:/{run.info.run_id}/{run.info.run_name}", f"models:/{logged.model_id}"):
        loaded = mlflow.keras.load_model(model_uri)
        probabilities = loaded.predict(np.full((2, 32, 32, 3), 100.0, np.float32), verbose=0)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    folder = mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}")
    assert {"MLmodel", "classes.json", "input_example.json"} <= set(os.listdir(folder))
    # its environment pins what it loads with, at the installed versions
    pinned = dict(line.split("==") for line in Path(folder, "requirements.txt").read_text().split())
    assert pinned["tensorflow"] == importlib.metadata.version("tensorflow")
    assert pinned["keras"] == importlib.metadata.version("keras") and pinned["mlflow"] == mlflow.__version__


def test_mlflow_s_own_cli_serves_the_model(lesson_run):
    """`mlflow models predict` answers as the model does."""
    tmp_path, uri, stdout = lesson_run
    client, run = only_run(uri)
    (output,) = run.outputs.model_outputs
    loaded = mlflow.keras.load_model(f"models:/{output.model_id}")
    probabilities = loaded.predict(np.full((2, 32, 32, 3), 100.0, np.float32), verbose=0)
    # ... and MLflow's own CLI serves it
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": np.full((1, 32, 32, 3), 100.0).tolist()}))
    served = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "mlflow"),
            "models",
            "predict",
            "-m",
            f"models:/{output.model_id}",
            "--env-manager",
            "local",
            "-i",
            str(request),
            "-t",
            "json",
        ],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert served.returncode == 0, served.stderr[-2000:]
    (answer,) = json.loads(served.stdout.strip().splitlines()[-1])["predictions"]
    np.testing.assert_allclose(answer, probabilities[0], atol=1e-5)


def test_evaluate_logs_the_test_metrics_to_the_model_and_every_image_s_prediction(lesson_run):
    """evaluate on the run's model: test metrics on the model and the test dataset, each image's prediction."""
    tmp_path, uri, stdout = lesson_run
    client, run = only_run(uri)
    logged = logged_model_of(uri, run)
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in run.inputs.dataset_inputs
    }
    # evaluate: the test metrics belong to the model and to the test dataset; the run's times stay the training's
    trained = client.get_run(run.info.run_id).info
    evaluated = run_in_process(
        "pipeline.evaluate",
        *[a for a in train_args(tmp_path, uri) if a.startswith("paths.")],
        "data.image_size=[32,32]",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    model_metrics = {m.key: m for m in mlflow.get_logged_model(logged.model_id).metrics}
    assert model_metrics["test_accuracy"].dataset_name == "tiny-test"
    assert model_metrics["test_accuracy"].dataset_digest == inputs["testing"].digest
    assert model_metrics["test_accuracy"].value == pytest.approx(
        json.loads((tmp_path / "reports" / "metrics.json").read_text())["test_accuracy"]
    )
    after = client.get_run(run.info.run_id)
    assert (after.info.status, after.info.end_time) == (trained.status, trained.end_time)
    assert "test_accuracy" in after.data.metrics
    test_accuracy = json.loads((tmp_path / "reports" / "metrics.json").read_text())["test_accuracy"]
    assert f"test accuracy {test_accuracy:.2%}" in after.data.tags["mlflow.note.content"]  # atop the run's page
    # ... and its prediction of every test image, which compare pairs by image and seed
    from pipeline.study.runs import logged_test_predictions

    test_rows = (tmp_path / "split" / "test.csv").read_text().splitlines()[1:]
    logged_predictions = logged_test_predictions(client, run.info.run_id)
    assert {row.split(",")[-1]: row.split(",")[1] for row in test_rows} == {
        image: actual for image, (actual, _) in logged_predictions.items()
    }
    confusion = (tmp_path / "reports" / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted,sha256" and len(confusion) == len(test_rows) + 1
    assert (tmp_path / "models" / "model.keras").exists()
    header = (tmp_path / "reports" / "history.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and {"train_accuracy", "train_loss", "val_accuracy", "val_loss"} <= set(header)
    assert "accuracy" not in header  # one name per metric: DVC and MLflow say test_accuracy, this says train_


def test_predict_names_the_clothes_and_each_file_it_cannot_read(lesson_run):
    """predict from the saved file and from the MLflow URI."""
    tmp_path, uri, stdout = lesson_run
    client, run = only_run(uri)
    # predict: the saved file and the MLflow URI; a broken file gets its own error line
    good = make_image(tmp_path / "mine" / "photo.webp", size=(64, 50), seed=7, pattern=1, fmt="WEBP")
    broken = tmp_path / "mine" / "notes.jpg"
    broken.write_text("not an image")
    for model in (str(tmp_path / "models" / "model.keras"), f"models:/{run.outputs.model_outputs[0].model_id}"):
        result = run_in_process(
            "pipeline.predict",
            model,
            str(good),
            str(broken),
            "--top-k",
            "2",
            "--json",
            env={"MLFLOW_TRACKING_URI": uri},
        )
        assert result.returncode == 1, result.stderr[-2000:]  # one file failed, the other was predicted
        photo, notes = json.loads(result.stdout)
        assert [name for name, _ in photo["top"]] != [] and len(photo["top"]) == 2
        assert {name for name, _ in photo["top"]} <= {"cat", "dog", "fox"}
        assert photo["top"][0][1] >= photo["top"][1][1] and 0 < sum(p for _, p in photo["top"]) <= 1.0 + 1e-6
        assert "not an image" in notes["error"] and f"{broken}: not an image" in result.stderr
    missing = run_in_process("pipeline.predict", str(tmp_path / "nope.keras"), str(good))
    assert missing.returncode == 2 and "no such model file" in missing.stderr


def test_failure_is_recorded_failed(split_done):
    """An error inside the run (its artifacts cannot be written: a file stands where their folder goes)."""
    tmp_path = split_done
    uri = new_store(tmp_path)
    (tmp_path / "mlruns").write_text("not a folder")
    result = run_in_process("pipeline.train", *train_args(tmp_path, uri))
    assert result.returncode != 0
    _, run = only_run(uri)
    assert run.info.status == "FAILED" and "end_reason" in run.data.tags


def test_an_image_gone_or_changed_since_the_split_stops_before_any_record(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    rows = (tmp_path / "split" / "val.csv").read_text().splitlines()
    gone = Path(rows[1].split(",")[0])
    gone.rename(gone.with_name("renamed.png"))
    result = run_in_process("pipeline.train", *train_args(tmp_path, uri))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {gone} is listed in the split but cannot be read (No such file or directory). Run the split "
        "stage again (python -m pipeline.split, or dvc repro) so that the manifests match the files."
    )
    gone.with_name("renamed.png").rename(gone)
    changed = Path(rows[2].split(",")[0])
    make_image(changed, size=(48, 40), seed=4242)  # other pixels under the manifest's record
    result = run_in_process("pipeline.train", *train_args(tmp_path, uri))
    assert result.returncode == 1 and f"error: {changed} has changed since the split" in result.stderr
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("augmentation")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []  # nothing recorded


def start_and_stop_after(args: list[str], epoch_line: str) -> subprocess.Popen:
    """Start training and send SIGTERM once `epoch_line` (e.g. 'Epoch 3/') is printed."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in process.stdout:
            if epoch_line in line:
                break
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        process.kill()
    return process


def work_state(tmp_path) -> dict:
    [state] = (tmp_path / "models" / "work").glob("*/state.json")
    return json.loads(state.read_text())


def val_accuracy_of(model_path, tmp_path) -> float:
    """The saved model's accuracy on the val split, computed here from the images."""
    import keras

    from pipeline.data.images import load_image
    from pipeline.data.manifests import read_classes, read_manifest

    paths, labels = read_manifest(tmp_path / "split", "val")
    classes = read_classes(tmp_path / "split")
    images = np.stack([load_image(p, (32, 32)) for p in paths]).astype(np.float32)
    predicted = keras.models.load_model(model_path).predict(images, verbose=0).argmax(axis=1)
    return float(np.mean(predicted == np.array([classes.index(label) for label in labels])))


def test_sigterm_marks_the_run_killed_and_resume_is_the_same_run(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    long_run = train_args(tmp_path, uri, "train.epochs=200", "train.patience=200", "model.learning_rate=0.003")
    process = start_and_stop_after(long_run, "Epoch 4/")
    assert process.returncode != 0
    client, run = only_run(uri)
    assert run.info.status == "KILLED"
    before = work_state(tmp_path)
    done = before["epochs_done"]
    assert done >= 3 and len(before["history"]) == done
    best_before = max(row["val_accuracy"] for row in before["history"])

    # resumed with another seed or preset: refused, naming the keys, nothing trained
    for other in (["seed=7"], ["augmentation=lesson"]):
        refused = run_in_process(
            "pipeline.train",
            *train_args(
                tmp_path, uri, f"train.epochs={done + 2}", "model.learning_rate=0.003", "train.resume=true", *other
            ),
        )
        assert refused.returncode == 2 and "another configuration" in refused.stderr
        assert (
            "seed: 42 there, 7 now" if other == ["seed=7"] else "augmentation.name: none there, lesson now"
        ) in refused.stderr
        assert "Traceback" not in refused.stderr
    assert work_state(tmp_path)["epochs_done"] == done

    resumed = run_in_process(
        "pipeline.train",
        *train_args(tmp_path, uri, f"train.epochs={done + 2}", "model.learning_rate=0.003", "train.resume=true"),
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from epoch {done}" in resumed.stdout
    client, run = only_run(uri)  # the same MLflow run, continued
    assert run.info.status == "FINISHED" and run.data.tags["resumed_at_epochs"] == str(done)
    assert run.data.params["train.epochs"] == "200" and run.data.tags["resumed_with.train.epochs"] == str(done + 2)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch_seconds")]
    assert steps == list(range(1, done + 3))  # neither repeated nor skipped
    epochs = [int(line.split(",")[0]) for line in (tmp_path / "reports" / "history.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, done + 3))  # every epoch, also those before the interruption
    best = run.data.metrics["best_val_accuracy"]
    assert best >= best_before
    assert val_accuracy_of(tmp_path / "models" / "model.keras", tmp_path) == pytest.approx(best)
    assert not list((tmp_path / "models").glob("work/*"))  # finished: nothing left to resume


def test_one_sigterm_right_after_the_run_starts_stops_it(split_done):
    """The signal lands while the run is being set up (preview, datasets, first steps), not in an
    epoch loop: one SIGTERM still ends the run KILLED and the process soon after."""
    tmp_path = split_done
    uri = new_store(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.train",
            *train_args(tmp_path, uri, "train.epochs=500", "train.patience=500", "augmentation=lesson"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = MlflowClient(uri)
        for _ in range(600):  # until the MLflow run exists
            experiment = (tmp_path / "mlflow.db").exists() and client.get_experiment_by_name("augmentation")
            if experiment and client.search_runs([experiment.experiment_id]):
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)  # once
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-2000:]
    assert "stopped: received SIGTERM" in stderr
    _, run = only_run(uri)
    assert run.info.status == "KILLED"


def test_a_damaged_checkpoint_is_a_clear_error(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    process = start_and_stop_after(train_args(tmp_path, uri, "train.epochs=200", "train.patience=200"), "Epoch 3/")
    assert process.returncode != 0
    [folder] = (tmp_path / "models" / "work").iterdir()
    (folder / ".last-e0099.tmp-999-1.weights.h5").write_bytes(b"")  # kill -9 in mid-write: never named, ignored
    last = folder / work_state(tmp_path)["last_weights"]
    last.write_bytes(last.read_bytes()[:200])  # a committed file damaged afterwards (disk trouble)
    resumed = run_in_process("pipeline.train", *train_args(tmp_path, uri, "train.epochs=6", "train.resume=true"))
    assert resumed.returncode == 1
    assert f"the checkpoint {last} cannot be read" in resumed.stderr and "train.resume=false" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    again = run_in_process("pipeline.train", *train_args(tmp_path, uri, "train.epochs=2"))  # resume=false starts afresh
    assert again.returncode == 0, again.stderr[-2000:]
    assert "discarding the interrupted state" in again.stdout


def test_two_trainings_at_once_on_a_new_store_both_finish(split_done):
    tmp_path = split_done
    uri = f"sqlite:///{tmp_path}/fresh.db"
    env = {**os.environ}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.train", *train_args(tmp_path, uri, f"seed={seed}", "train.epochs=3")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "epoch_seconds")] == [1, 2, 3]


def test_a_store_that_cannot_be_written_fails_at_once_naming_it(split_done):
    tmp_path = split_done
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    store = blocker / "mlflow.db"
    result = run_module("pipeline.train", *train_args(tmp_path, f"sqlite:///{store}"))
    assert result.returncode == 1
    assert f"The MLflow store {store} cannot be created" in result.stderr and "tracking.uri" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_damaged_model_file_is_explained(tmp_path):
    from tests.conftest import make_image

    model = tmp_path / "model.keras"
    model.write_bytes(b"\x00" * 64)
    photo = make_image(tmp_path / "photo.png", seed=1)
    result = run_in_process("pipeline.predict", str(model), str(photo))
    assert result.returncode == 2
    assert f"{model} exists but is not a Keras model file" in result.stderr and "Traceback" not in result.stderr


def test_training_against_a_real_mlflow_server(split_done, mlflow_server):
    tmp_path = split_done
    result = run_in_process("pipeline.train", *train_args(tmp_path, mlflow_server, "augmentation=light"))
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = only_run(mlflow_server)
    assert run.info.status == "FINISHED" and run.data.tags["augmentation"] == "light"
    assert len(client.get_metric_history(run.info.run_id, "epoch_seconds")) == 2


def test_dead_tracking_server_is_reported_before_training(split_done):
    tmp_path = split_done
    result = run_module("pipeline.train", *train_args(tmp_path, f"http://127.0.0.1:{free_port()}"))
    assert result.returncode != 0
    assert "does not answer" in result.stderr and "tracking.uri" in result.stderr
    assert not (tmp_path / "models" / "model.keras").exists()


def test_multirun_gives_one_run_per_job_and_compare_reads_them(split_done):
    tmp_path = split_done
    uri = new_store(tmp_path)
    # dropout 0.2 (not the default experiment's 0.5): on the tiny data 0.5 lets every seed reach 100%, and an
    # interval needs some spread between seeds
    args = [
        a for a in train_args(tmp_path, uri, "train.epochs=2", "model.dropout=0.2") if not a.startswith("hydra.run")
    ]
    result = run_in_process("pipeline.train", "-m", "augmentation=none,lesson", "seed=1,2,3", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.tags["augmentation"], r.data.tags["seed"]) for r in runs} == {
        (p, s) for p in ("none", "lesson") for s in ("1", "2", "3")
    }
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert len(list((tmp_path / "multirun").glob("*/models/model.keras"))) == 6  # own folder per job
    # each job ended on the test split: metrics.json in its folder, test metrics (per class too) in its run
    assert len(list((tmp_path / "multirun").glob("*/reports/metrics.json"))) == 6
    assert all(
        {"test_accuracy", "test_balanced_accuracy", "test_recall.cat", "val_recall.cat"} <= set(r.data.metrics)
        for r in runs
    )
    assert result.stdout.rstrip().splitlines()[-1].startswith("lesson vs none: ")  # the sweep ends on its verdict

    report = run_in_process(
        "pipeline.compare",
        f"tracking.uri={uri}",
        f"paths.reports_dir={tmp_path}/reports",
        f"paths.split_dir={tmp_path}/split",
        f"hydra.run.dir={tmp_path}/hydra-compare",
    )
    assert report.returncode == 0, report.stderr[-3000:]
    markdown = (tmp_path / "reports" / "comparison.md").read_text()  # the whole report; the terminal: its summary
    assert "| none | 3 | 1,2,3 |" in markdown and "| lesson | 3 | 1,2,3 |" in markdown
    assert "paired over 3 seeds" in markdown
    # 2 epochs under a patience of 10: no run can show it converged, so there is no keep or drop
    assert "**not converged**: raise train.epochs" in markdown
    assert "## Per class: test recall" in markdown
    assert report.stdout.rstrip().splitlines()[-1].startswith("lesson vs none: NOT CONVERGED")
    result = json.loads((tmp_path / "reports" / "comparison.json").read_text())
    (lesson,) = result["differences"]
    assert 0 < lesson["affinity"] <= 1.5 and lesson["diversity"] > 0 and lesson["cost"] > 0
    assert set(lesson["per_class"]) == {"cat", "dog", "fox"}  # 3 seeds: every class has its paired difference
    assert (tmp_path / "reports" / "comparison.png").stat().st_size > 10_000


def test_offline_imagenet_weights_fail_fast_with_advice():
    from pipeline.model.classifier import ModelError, resolve_weights

    start = time.perf_counter()
    with pytest.raises(ModelError, match="model.weights=null"):  # these machines reach package registries only
        resolve_weights("imagenet", timeout_s=3)
    assert time.perf_counter() - start < 30  # never hangs
    with pytest.raises(ModelError, match="no such file"):
        resolve_weights("/nonexistent/weights.h5")


def test_plain_runs_of_a_frozen_backbone_train_the_head_on_cached_features(split_done):
    """A frozen backbone without augmentation: features once, head only; the saved whole model
    predicts what base + trained head predicted during training."""
    import keras

    from pipeline.data.images import load_image
    from pipeline.data.manifests import Split
    from pipeline.model.frozen_runtime import frozen_network
    from pipeline.training.frozen_features import plain_features

    tmp_path = split_done
    uri = new_store(tmp_path)
    args = [a if a != "model=residual_cnn" else "model=mobilenet_v2" for a in train_args(tmp_path, uri)]
    result = run_in_process("pipeline.train", *args, "model.weights=null", "train.epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "frozen base in openvino" in result.stdout and "its outputs for each image are computed once" in result.stdout
    )

    model = keras.models.load_model(tmp_path / "models" / "model.keras")
    val = Split.read(tmp_path / "split").val
    network = frozen_network(model.get_layer("features"), cache_dir=tmp_path / "cache")  # the training-time path
    pixels = np.stack([load_image(p, (32, 32)) for p in val.paths])
    from_cache = model.get_layer("head").predict(
        plain_features(network, val, (32, 32), lambda: pixels, 8, None), verbose=0
    )
    images = pixels.astype(np.float32)
    whole = model.predict(images, verbose=0)
    np.testing.assert_allclose(whole, from_cache, atol=1e-4)

    client, run = only_run(uri)
    assert run.data.params["train.cache_features"] == "True"
    assert run.data.params["model.frozen_runtime_used"] == network.description
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts and "augmentation_preview.png" not in artifacts  # nothing augmented to show
    accuracy = float(np.mean(from_cache.argmax(axis=1) == np.array(val.labels)))
    assert accuracy == pytest.approx(run.data.metrics["best_val_accuracy"])  # measured on cached features

    uncached = run_in_process(
        "pipeline.train", *args, "model.weights=null", "train.epochs=1", "train.cache_features=false"
    )
    assert uncached.returncode == 0 and "computed once" not in uncached.stdout
