"""A cache that proves what it serves: every entry checked against its digest before it is used, keys
that name every input of their bytes, images checked against the manifest whatever the cache holds,
recorded results that never change silently. Real files, a real store, real trainings (tiny ones)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (
    ROOT,
    make_image,
    make_tiny_dataset,
    new_store,
    run_in_process,
    run_module,
    split_tiny,
    train_args,
)

FROZEN = ["model=mobilenet_v2", "model.weights=null"]  # a frozen base: its features are kept in the cache


# ------------------------------------------------------------------ entries


def test_an_entry_is_served_only_as_written(tmp_path, capsys):
    """Changed, cut short, its card lost or naming other inputs: the entry is removed and computed again,
    in one line naming the file; never served."""
    from pipeline.data import cache as disk

    cache = disk.DiskCache(tmp_path, limit_bytes=10**9)
    values = np.arange(1000, dtype=np.float32)
    calls = []

    def compute():
        calls.append(1)
        return values

    key = {"images": "abc", "size": [8, 8]}
    np.testing.assert_array_equal(cache.get_or_compute("features", key, compute), values)
    content, card = cache.paths("features", key, ".npy")
    damages = {
        "changed": lambda: np.load(content, mmap_mode="r+").__setitem__(slice(None), 7.0),
        "cut short": lambda: content.write_bytes(content.read_bytes()[:900]),
        "card lost": lambda: card.unlink(),
        "card of other inputs": lambda: card.write_text(
            json.dumps({**json.loads(card.read_text()), "key": {"images": "xyz", "size": [8, 8]}})
        ),
    }
    for name, damage in damages.items():
        disk._verified.clear()  # a new process: nothing proven yet
        damage()
        served = cache.get_or_compute("features", key, compute)
        np.testing.assert_array_equal(served, values, err_msg=name)
        said = capsys.readouterr().out
        if name != "card lost":  # without its card the content is no entry: computed, nothing to remove
            assert f"the cache entry {content} is damaged" in said and "computing it again" in said, name
    assert len(calls) == 1 + len(damages)
    assert cache.get("features", key) is not None and len(calls) == 1 + len(damages)  # proven once: no hash again


def test_an_entry_removed_by_another_process_is_computed_again(tmp_path):
    from pipeline.data.cache import DiskCache

    cache = DiskCache(tmp_path)
    cache.put("decoded", {"k": 1}, np.ones(10))
    content, _ = cache.paths("decoded", {"k": 1}, ".npy")
    content.unlink()  # evicted meanwhile
    assert cache.get("decoded", {"k": 1}) is None
    np.testing.assert_array_equal(cache.get_or_compute("decoded", {"k": 1}, lambda: np.zeros(3)), np.zeros(3))


def test_decoded_images_go_to_the_cache_file_part_by_part(tmp_path):
    """A split's decoded images are written to their entry as they are decoded (memory holds one part):
    the entry is the file np.save writes of the whole array, served proven; a file changed since the split
    stops the decoding with its error and leaves no entry and no scratch file; a cache folder that cannot be
    written decodes into memory instead."""
    from pipeline.data import cache as disk
    from pipeline.data import images
    from pipeline.data.manifests import Split
    from pipeline.errors import DataError

    folder = split_tiny(tmp_path, make_tiny_dataset(tmp_path))
    train = Split.read(folder / "split").train
    whole = images.decode_all(train.paths, train.sha256, (20, 24))
    assert [len(p) for p in images.decode_chunks(train.paths, train.sha256, (20, 24), chunk_images=8)] == [8, 8, 8, 6]

    cache = disk.DiskCache(tmp_path / "cache")
    kept = train.decoded((20, 24), cache)
    assert isinstance(kept, np.memmap) and np.array_equal(kept, whole)
    content, _ = cache.paths("decoded", train.decoded_key((20, 24)), ".npy")
    np.save(tmp_path / "whole.npy", whole)
    assert content.read_bytes() == (tmp_path / "whole.npy").read_bytes()
    disk._verified.clear()  # a new process: the entry is proven before it is served
    assert np.array_equal(cache.get("decoded", train.decoded_key((20, 24))), whole)

    not_a_folder = tmp_path / "a-file"  # a cache folder that cannot be made, even by root
    not_a_folder.write_text("")
    in_memory = train.decoded((20, 24), disk.DiskCache(not_a_folder))
    assert not isinstance(in_memory, np.memmap) and np.array_equal(in_memory, whole)

    entries = sorted(p.name for p in cache.root.iterdir())
    make_image(Path(train.paths[-1]), size=(48, 40), seed=999, pattern=1)  # changed after the split
    with pytest.raises(DataError, match="has changed since the split was made"):
        train.decoded((16, 16), cache)  # a new entry: decoded until the changed file
    assert sorted(p.name for p in cache.root.iterdir()) == entries  # no part of it kept, no scratch


def test_least_recently_used_entries_go_past_the_limit(tmp_path):
    from pipeline.data.cache import DiskCache

    cache = DiskCache(tmp_path, limit_bytes=3000)
    for k in range(4):
        cache.put("features", {"k": k}, np.full(100, float(k)))  # 928 bytes each
    assert cache.get("features", {"k": 0}) is None and cache.get("features", {"k": 3}) is not None
    assert not cache.paths("features", {"k": 0}, ".npy")[1].exists()  # its card went with it


# ------------------------------------------------------------------ trainings through the cache


def run_ok(*args: str, user: int | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m <args>` in a process of its own (a new process proves the cache's files anew)."""
    if user is None:
        result = run_module(*args, env=env)
    else:
        result = subprocess.run(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
            capture_output=True,
            text=True,
            user=user,
            group=user,
            timeout=600,
        )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def runs_of(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs(
        [client.get_experiment_by_name("augmentation").experiment_id], order_by=["attributes.start_time ASC"]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny frozen-base run, trained and evaluated once: its cache holds the decoded images, the
    features, the exported and the compiled network."""
    tmp_path = tmp_path_factory.mktemp("cached")
    split_tiny(tmp_path, make_tiny_dataset(tmp_path))
    uri = new_store(tmp_path)
    args = train_args(tmp_path, uri, *FROZEN, "train.epochs=3")
    for stage in ("pipeline.train", "pipeline.evaluate"):  # in this process: the tests below prove its files in theirs
        done = run_in_process(stage, *args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return tmp_path, uri, args


@pytest.mark.slow
def test_damaged_features_and_networks_are_computed_again_with_the_same_result(trained, tmp_path):
    source, uri, _ = trained
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [a.replace(str(source), str(tmp_path)) for a in trained[2]]
    cache = tmp_path / "cache"
    first = runs_of(uri)[0].data.metrics["best_val_accuracy"]

    features = max(cache.glob("arrays/features-*[0-9a-f].npy"), key=lambda p: p.stat().st_size)  # train's
    np.load(features, mmap_mode="r+")[:] = np.random.default_rng(0).normal(size=np.load(features).shape)
    result = run_ok("pipeline.train", *args)
    assert f"the cache entry {features} is damaged" in result.stdout

    for entry in cache.glob("arrays/features-*"):
        entry.unlink()  # so that the network computes them again
    blob = max(
        (p for p in (cache / "frozen-networks" / "compiled").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(blob.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    blob.write_bytes(bytes(data))
    (variables,) = (cache / "frozen-networks").glob("*/variables/variables.data-*")
    variables.write_bytes(variables.read_bytes()[:-64] + bytes(64))
    result = run_ok("pipeline.train", *args)
    assert "is not the one written from these weights: exporting it again" in result.stdout
    assert "compiling again" in result.stdout or blob.parent.exists() is False

    best = [r.data.metrics["best_val_accuracy"] for r in runs_of(uri)]
    assert best == [first] * 3  # the same training on the same features every time


@pytest.mark.slow
def test_a_damaged_decoded_entry_never_changes_a_recorded_metric(trained, tmp_path):
    source, _, source_args = trained
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [a.replace(str(source), str(tmp_path)) for a in source_args]
    (run,) = runs_of(uri)
    recorded = run.data.metrics["test_accuracy"], run.data.metrics["test_loss"]
    for entry in (tmp_path / "cache" / "arrays").glob("decoded-*[0-9a-f].npy"):
        np.load(entry, mmap_mode="r+")[:] = 255 - np.load(entry)  # every decoded split inverted
    result = run_ok("pipeline.evaluate", *args)
    assert "is damaged" in result.stdout and "records these test results already" in result.stdout
    (run,) = runs_of(uri)
    assert (run.data.metrics["test_accuracy"], run.data.metrics["test_loss"]) == recorded

    # another model in the run's place: an error naming both figures, nothing overwritten
    other = train_args(tmp_path, uri, *FROZEN, "train.epochs=1", "seed=7", f"paths.models_dir={tmp_path}/other")
    run_ok("pipeline.train", *other)
    shutil.copy(tmp_path / "other" / "model.keras", tmp_path / "models" / "model.keras")
    metrics_file = (tmp_path / "reports" / "metrics.json").read_text()
    (tmp_path / "reports" / "run.json").write_text(
        json.dumps({**json.loads((tmp_path / "reports" / "run.json").read_text()), "run_id": run.info.run_id})
    )
    result = run_module("pipeline.evaluate", *args)
    assert result.returncode == 1 and "already records its test results and this evaluation differs" in result.stderr
    assert "recorded" in result.stderr and "now" in result.stderr and "Nothing was written" in result.stderr
    assert (tmp_path / "reports" / "metrics.json").read_text() == metrics_file
    assert MlflowClient(uri).get_run(run.info.run_id).data.metrics["test_loss"] == recorded[1]


@pytest.mark.slow
def test_the_evaluation_is_linked_to_its_datasets(trained):
    """The logged model's test metrics on the test dataset, each class's validation recall on the
    validation dataset (the model's page in MLflow lists each metric with its dataset)."""
    _, uri, _ = trained
    (run,) = runs_of(uri)
    mlflow.set_tracking_uri(uri)
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    datasets = {d.dataset.name.rsplit("-", 1)[1]: d.dataset for d in run.inputs.dataset_inputs}
    metrics = {m.key: m for m in mlflow.get_logged_model(logged.model_id).metrics}
    for key, split in (("test_accuracy", "test"), ("test_recall.cat", "test"), ("val_recall.cat", "val")):
        assert (metrics[key].dataset_name, metrics[key].dataset_digest) == (
            datasets[split].name,
            datasets[split].digest,
        ), key


@pytest.mark.slow
def test_mixed_precision_features_are_not_the_f32_runs(trained, tmp_path):
    """`train.mixed_precision=true` computes the frozen part in float16: its features are entries of their
    own, and an f32 run on the same cache reads the f32 ones (the same training as before)."""
    source, source_uri, source_args = trained
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [a.replace(str(source), str(tmp_path)) for a in source_args]
    before = set((tmp_path / "cache" / "arrays").glob("features-*[0-9a-f].npy"))
    run_ok("pipeline.train", *args, "train.mixed_precision=true")
    after = set((tmp_path / "cache" / "arrays").glob("features-*[0-9a-f].npy"))
    assert len(after - before) == 2  # its own train and val features, under keys of their own
    result = run_ok("pipeline.train", *args)  # f32 again
    assert "base features" not in result.stderr  # read from the cache, not computed
    f32_before, _, f32_again = (r.data.metrics["best_val_accuracy"] for r in runs_of(uri))
    assert f32_again == f32_before


@pytest.mark.slow
def test_an_image_edited_after_the_split_is_refused_whatever_the_cache_holds(trained, tmp_path):
    """The decoded images, the features and the run are all kept: an image overwritten after the split is
    still refused by every command that would use it, naming the file (the README's promise)."""
    source, _, source_args = trained
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [a.replace(str(source), str(tmp_path)) for a in source_args]
    sweep = ["-m", *args, f"hydra.sweep.dir={tmp_path}/sweep", "compare.after_sweep=false"]
    first_of = {
        name: (tmp_path / "split" / f"{name}.csv").read_text().splitlines()[1].split(",")[0]
        for name in ("train", "test")
    }
    for name, refusing in (("train", ("train", "sweep")), ("test", ("evaluate", "sweep"))):
        edited = Path(first_of[name])
        original = edited.read_bytes()
        make_image(edited, size=(48, 40), seed=4242)  # overwritten in place, after the split
        for command in refusing:
            result = run_module(*(("pipeline.train", *sweep) if command == "sweep" else (f"pipeline.{command}", *args)))
            assert result.returncode != 0, (name, command)
            assert f"{edited} has changed since the split was made" in result.stderr, (name, command)
            assert "Traceback" not in result.stderr, (name, command)
        edited.write_bytes(original)  # back as it was: accepted again
    assert len(runs_of(uri)) == 1  # no run was started on the edited images
    run_ok("pipeline.evaluate", *args)


@pytest.mark.slow
def test_a_dataset_behind_a_link_is_recorded_as_the_folder_read_and_a_moved_link_refused(tmp_path):
    real = make_tiny_dataset(tmp_path / "real")
    link = tmp_path / "current"
    link.symlink_to(real)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = train_args(tmp_path, uri, "train.epochs=1")
    run_ok("pipeline.split", f"data.source={link}", *[a for a in args if a.startswith(("paths.", "hydra."))])
    run_ok("pipeline.train", *args)
    (run,) = runs_of(uri)
    assert run.data.params["data.source"] == str(real.resolve())
    assert run.data.params["data.source_link"] == str(link)

    other = make_tiny_dataset(tmp_path / "other")
    link.unlink()
    link.symlink_to(other)
    result = run_module("pipeline.train", *args)
    assert result.returncode == 1 and len(runs_of(uri)) == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"data.source={link} led to {real.resolve()}" in line and f"leads to {other.resolve()} now" in line


READ_ONLY_AS_ROOT = (
    "mount --bind {cache} {cache} && mount -o remount,ro,bind {cache} && exec {python} -m {module} {args}"
)


def run_on_read_only_cache(cache: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m module args` with `cache` read-only: a read-only bind mount of it in a mount namespace of
    the command's own (root writes anywhere else), or, for another user, the folder's permissions."""
    if os.geteuid() != 0:
        return run_ok(module, *args)
    import shlex

    script = READ_ONLY_AS_ROOT.format(
        cache=shlex.quote(str(cache)), python=shlex.quote(sys.executable), module=module, args=shlex.join(args)
    )
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if "unshare failed" in result.stderr or "mount:" in result.stderr:
        pytest.skip(f"no read-only bind mount here ({result.stderr.strip()[:200]})")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_read_only_cache_serves_its_entries(trained, tmp_path):
    """A populated cache that cannot be written (a read-only file system, another user's folder): train
    and evaluate read every entry and finish, the same training as with a writable one."""
    source, _, source_args = trained
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [a.replace(str(source), str(tmp_path)) for a in source_args]
    cache = tmp_path / "cache"
    if os.geteuid() != 0:
        for path in (cache, *cache.rglob("*")):
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
    entries = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    trained_again = run_on_read_only_cache(cache, "pipeline.train", *args)
    evaluated = run_on_read_only_cache(cache, "pipeline.evaluate", *args)
    assert "is damaged" not in trained_again.stdout + evaluated.stdout
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == entries  # untouched
    first, again = (r.data.metrics["best_val_accuracy"] for r in runs_of(uri))
    assert again == first


# ------------------------------------------------------------------ keys


def entry_keys(overrides: list[str], split_dir: Path) -> dict[str, dict | None]:
    """The keys under which a training with `overrides` keeps its decoded images and its frozen part's
    features, through the training's own setup (`fitting.prepare_fit`)."""
    from pipeline.backend import keras
    from pipeline.config.compose import compose
    from pipeline.data.manifests import Split
    from pipeline.training import devices
    from pipeline.training.fitting import prepare_fit
    from pipeline.training.frozen_features import features_key

    config = compose([*overrides, f"paths.split_dir={split_dir}"])
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(config.seed)  # as train.run: an untrained base is drawn from the seed
    split = Split.read(split_dir)
    setup = prepare_fit(config, devices.make_strategy(config.train), split)
    size = tuple(config.data.image_size)
    return {
        "decoded": split.train.decoded_key(size),
        "features": features_key(setup.network, split.train, size) if setup.network else None,
    }


# configuration keys that change what an entry holds, and the entries they change
CHANGES = {
    "data.image_size=[40,40]": {"decoded", "features"},
    "model.name=efficientnet_lite0": {"features"},
    "seed=7": {"features"},  # an untrained base (model.weights=null) is initialised by the seed
    "model.fine_tune_from=block_13": {"features"},  # the frozen part is the bottom below block_13
    "model.trainable_base=true": {"features"},  # nothing frozen: no features kept
    "train.mixed_precision=true": {"features"},  # float16 compute
    "model.frozen_runtime=openvino": {"features"},  # the flips' base runs it in TensorFlow
}
# ... and keys that do not (the split itself is read from paths.split_dir, whatever data.* says)
SAME = [
    "augmentation=lesson",
    "augmentation.rotation_range=10",
    "data.source=/elsewhere",
    "data.split.fractions=[0.6,0.2,0.2]",
    "data.limit_per_class=5",
    "data.cache=file",
    "train.epochs=3",
    "train.batch_size=16",
    "train.patience=2",
    "train.optimizer=sgd",
    "train.lr_schedule=warmup_cosine",
    "train.label_smoothing=0.1",
    "train.weight_decay=0.01",
    "train.augment_views=2",
    "train.jit_compile=true",
    "model.learning_rate=0.01",
    "model.dropout=0.3",
    "model.inner_units=10",
    "model.fine_tune_learning_rate=0.0001",
    "tracking.experiment=other",
    "tracking.log_model=false",
    "compare.margin=2",
    "paths.reports_dir=elsewhere",
]


@pytest.mark.slow
def test_each_key_names_every_input_of_its_entry(tmp_path, monkeypatch):
    """Flip each setting that changes an entry's bytes: its key changes; flip the others: it does not. The
    inputs no setting reaches (an image's bytes, the decoder's, Keras' and the runtime's versions, the
    precision a CPU offers) are flipped where they live. The flips run the frozen part in TensorFlow, so
    a flipped network is not exported for OpenVINO each time; OpenVINO's own inputs are flipped on one
    export."""
    import keras
    import PIL

    from pipeline.model import frozen_runtime

    split_tiny(tmp_path, make_tiny_dataset(tmp_path))
    base = [*FROZEN, "data.image_size=[32,32]", f"paths.cache_dir={tmp_path}/cache", "model.frozen_runtime=tensorflow"]
    reference = entry_keys(base, tmp_path / "split")
    assert reference["features"] is not None
    for flip, changed in CHANGES.items():
        keys = entry_keys([*base, flip], tmp_path / "split")
        assert {kind for kind in keys if keys[kind] != reference[kind]} == changed, flip
    if entry_keys([*base, *SAME], tmp_path / "split") != reference:  # flipped together: one setup, not 23
        moved = [flip for flip in SAME if entry_keys([*base, flip], tmp_path / "split") != reference]
        pytest.fail(f"a key changed with {', '.join(moved) or 'these settings together'}: {SAME}")

    trained = ["experiment=cpu", "data.image_size=[32,32]", f"paths.cache_dir={tmp_path}/cache"]
    assert entry_keys([*trained, "seed=7"], tmp_path / "split") == entry_keys(trained, tmp_path / "split")

    base = [*base, "model.frozen_runtime=openvino"]  # from here on: OpenVINO, one export
    reference = entry_keys(base, tmp_path / "split")
    if frozen_runtime.supports_bf16():
        keys = entry_keys([*base, "model.frozen_precision=bf16"], tmp_path / "split")
        assert keys["decoded"] == reference["decoded"] and keys["features"] != reference["features"]

    monkeypatch.setattr(PIL, "__version__", "0.0.1")  # another decoder
    keys = entry_keys(base, tmp_path / "split")
    assert keys["decoded"] != reference["decoded"] and keys["features"] != reference["features"]
    monkeypatch.undo()
    monkeypatch.setattr(keras, "__version__", "0.0.1")  # another Keras computes the network
    assert entry_keys(base, tmp_path / "split")["features"] != reference["features"]
    monkeypatch.undo()
    monkeypatch.setattr(frozen_runtime, "_openvino_version", lambda: "0.0.1")  # another runtime version
    assert entry_keys(base, tmp_path / "split")["features"] != reference["features"]
    monkeypatch.undo()

    edited = Path((tmp_path / "split" / "train.csv").read_text().splitlines()[1].split(",")[0])
    make_image(edited, size=(48, 40), seed=4242)  # another image's bytes: split again
    split_tiny(tmp_path / "again", tmp_path / "tiny")
    keys = entry_keys(base, tmp_path / "again" / "split")
    assert keys["decoded"] != reference["decoded"] and keys["features"] != reference["features"]
